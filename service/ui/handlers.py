"""The web app's handlers: thin clients of the front door, the same calls the API makes.

Every handler is an HTTP endpoint anyone can call with any JSON (Gradio exposes them all,
hidden or not), so each one treats every input as untrusted: files go through the upload
guard, jobs are opened only with the per-job key the creating browser keeps (checked by
the front door, like an L402 credential), and errors reach the page as the same texts
the API puts in its problem documents, never as exception internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import html
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from gradio.utils import get_upload_folder

from sr_core.device import Precision
from sr_core.imageio import ACCEPTED_FORMATS

from ..access import AccessDenied, Grant, Proof, UnknownJob
from ..frontdoor import FrontDoor
from ..intake import JobOptions
from ..problems import to_problem
from ..views import JobView
from . import render
from .uploads import UploadGuard

log = logging.getLogger("satscale.ui")

FORMATS = ["same as input", *ACCEPTED_FORMATS]
#: previews live in a folder named for the job and the hour: their URL changes every hour, and
#: folders older than two hours are removed (the files are a result: they must not linger)
PREVIEW_SECONDS = 3600
PRECISIONS = [precision.value for precision in Precision]
#: the choice that leaves an extra pass out, and how many the page offers after the first
NO_PASS = "(no further pass)"
MAX_EXTRA_PASSES = 2
NO_PRESET = "(none)"
T = TypeVar("T")


@dataclass(frozen=True)
class Ticket:
    """What the browser keeps for each of its jobs (in localStorage): the id and its key."""

    job_id: str
    key: str

    @classmethod
    def of(cls, value: Any) -> Ticket | None:
        if isinstance(value, dict) and isinstance(value.get("job_id"), str) and isinstance(value.get("key"), str):
            return cls(value["job_id"], value["key"])
        return None

    def to_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "key": self.key}

    @property
    def proof(self) -> Proof:
        return Proof(owner_key=self.key)


def tickets(session: Any) -> list[Ticket]:
    """The browser's jobs, oldest first, from its stored session ({"current", "jobs"})."""
    values = session.get("jobs", []) if isinstance(session, dict) else []
    if not isinstance(values, list):
        return []
    return [ticket for ticket in (Ticket.of(value) for value in values[-200:]) if ticket is not None]


def current(session: Any) -> Ticket | None:
    """The job the page shows: the one picked, else the newest."""
    held = tickets(session)
    wanted = session.get("current") if isinstance(session, dict) else None
    return next((t for t in held if t.job_id == wanted), held[-1] if held else None)


def make_session(held: list[Ticket], shown: str | None) -> dict[str, Any]:
    return {"current": shown, "jobs": [ticket.to_dict() for ticket in held]}


def friendly(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Errors reach the page as the API's problem texts; anything unexpected is logged here and
    shown without internals (the mount turns Gradio's own error display off)."""

    @functools.wraps(handler)
    async def run(*args: Any) -> T:
        try:
            return await handler(*args)
        except gr.Error:
            raise
        except Exception as exc:
            problem = to_problem(exc)
            if problem.slug == "internal":
                log.exception("web app handler %s failed", handler.__name__)
            raise gr.Error(problem.detail) from None

    return run


def _number(value: Any, name: str) -> int | None:
    """A whole number from the page (Gradio sends floats and strings too); None when left empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise gr.Error(f"{name} must be a whole number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"{name} must be a whole number") from None
    if not number.is_integer() or abs(number) > 1e9:
        raise gr.Error(f"{name} must be a whole number")
    return int(number)


def _text(value: Any, name: str, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise gr.Error(f"{name} must be text")
    return value


def page_passes(passes: Any) -> list[tuple[str, int | None]]:
    """The extra passes the page chose: (model, scale) pairs, NO_PASS rows left out. The page's
    values are untrusted like any request's: at most MAX_EXTRA_PASSES, each checked."""
    if passes is None:
        return []
    if not isinstance(passes, list | tuple) or len(passes) > 2 * MAX_EXTRA_PASSES or len(passes) % 2:
        raise gr.Error("passes must be model and scale pairs")
    chosen = []
    for model, scale in zip(passes[::2], passes[1::2], strict=True):
        name = _text(model, "pass model", NO_PASS)
        if name != NO_PASS:
            chosen.append((name, _number(scale, "pass scale")))
    return chosen


def page_faces(restore: Any, model: Any, weight: Any) -> dict[str, Any] | None:
    """The face stage the page asked for ("Restore faces"), or None. Untrusted: the model must
    be text and the weight a number; the engine's own options check its range."""
    if restore is not True:
        return None
    name = _text(model, "face model", "")
    if not name:
        raise gr.Error("Choose a face model to restore faces with.")
    if isinstance(weight, bool) or not isinstance(weight, int | float | None):
        raise gr.Error("face weight must be a number between 0 and 1")
    return {"face": name} | ({} if weight is None else {"weight": float(weight)})


def options_from_page(
    model: Any,
    scale: Any,
    fmt: Any,
    tile: Any,
    precision: Any,
    publish: Any,
    passes: Any = None,
    faces: tuple[Any, Any, Any] | None = None,
) -> JobOptions:
    output_format = _text(fmt, "format", FORMATS[0])
    first = JobOptions(
        model=_text(model, "model", ""),
        scale=_number(scale, "scale"),
        output_format=None if output_format == FORMATS[0] else output_format,
        tile=_number(tile, "tile size") or None,  # 0: automatic
        precision=_text(precision, "precision", "auto"),
        publish=publish is True,
    )
    more = page_passes(passes)
    face = page_faces(*faces) if faces else None
    if not more and face is None:
        return first
    stage = {"model": first.model, "scale": first.scale, "tile": first.tile, "precision": first.precision}
    pipeline = [stage, *({"model": name, "scale": factor} for name, factor in more)]
    if face is not None:
        pipeline.append(face)
    return JobOptions(output_format=first.output_format, publish=first.publish, pipeline=pipeline)


class WebHandlers:
    def __init__(self, front: FrontDoor, uploads: UploadGuard) -> None:
        self.front = front
        self.uploads = uploads
        # preview folders are named with a keyed hash of the job id and the hour: unguessable,
        # handed only to the job's owner, and gone two hours later
        self._preview_key = secrets.token_bytes(32)
        self._sweep_previews()

    # ------------------------------------------------------------ upload, price

    async def _image(self, upload: Any) -> Any:
        facts = self.uploads.remembered(upload)
        if facts is None:
            facts = await self.front.inspect(self.uploads.read(upload))
            self.uploads.remember(upload, facts)
        return facts

    async def inspect(self, upload: Any) -> str:
        if upload in (None, ""):
            return ""
        try:
            info = await self._image(upload)
        except Exception as exc:
            return render.warning(f"Refused: {to_problem(exc).detail.removeprefix('upload: ')}")
        kind = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}[info.channels]
        return f"{info.width} × {info.height} px · {info.format.upper()} · {kind} · {info.bit_depth}-bit"

    async def quote(
        self,
        upload: Any,
        model: Any,
        scale: Any,
        publish: Any = False,
        restore: Any = False,
        face_model: Any = None,
        face_weight: Any = None,
        *passes: Any,
    ) -> str:
        """Price and size of an upscale of the uploaded image, all passes counted (and its faces,
        when faces are to be restored: they are counted in this very image)."""
        if upload in (None, ""):
            return "Upload an image to see the price."
        try:
            faces = (restore, face_model, face_weight)
            options = options_from_page(model, scale, None, None, None, publish, list(passes), faces)
            # the intake validates the upload (once per content) and counts what a stage counts
            priced = await self.front.quote_upload(self.uploads.read(upload), options)
            return self._price_text(priced, options.publish)
        except gr.Error as exc:
            return render.warning(exc.message)
        except Exception as exc:
            return render.warning(to_problem(exc).detail.removeprefix("upload: "))

    @friendly
    async def price(self, model: Any, scale: Any, width: Any, height: Any) -> str:
        """The public API's quote (gradio_client): of an image of width x height."""
        width_px, height_px = _number(width, "width"), _number(height, "height")
        if not width_px or not height_px:
            raise gr.Error("width and height must be positive whole numbers")
        options = options_from_page(model, scale, None, None, None, False)
        return self._price_text(await self.front.quote(options, width_px, height_px), None)

    @staticmethod
    def _price_text(priced: Any, publish: bool | None) -> str:
        quote, seconds = priced.quote, max(1, round(priced.estimate.seconds))
        passes = render.passes_text([(s.model, s.scale) for s in priced.stages])
        counted = render.units_text(quote.stages)
        text = (
            (f"{passes}\n\n" if passes else "")
            + (f"{counted}\n\n" if counted else "")
            + (
                f"**{quote.amount_sat} sats** · output {quote.output_width} × {quote.output_height} "
                f"({render.megapixels(quote.output_megapixels)} MP) · about {seconds} s here"
            )
        )
        if publish is not None:
            text += " · published on IPFS" if publish else " · private (not published)"
        return text

    @friendly
    async def scales(self, model: Any, scale: Any) -> Any:
        """The model's scales; the chosen one stays if the new model offers it."""
        info = await self.front.model_info(_text(model, "model", ""))
        if scale in info.scales:
            return gr.Radio(choices=list(info.scales))  # no value: a click made meanwhile is not undone
        return gr.Radio(choices=list(info.scales), value=info.native_scale)

    def add_pass(self, shown: Any) -> tuple[Any, ...]:
        """Show one more pass row (the page keeps how many it shows)."""
        count = min(MAX_EXTRA_PASSES, (shown if isinstance(shown, int) and shown >= 0 else 0) + 1)
        rows = [gr.Row(visible=index < count) for index in range(MAX_EXTRA_PASSES)]
        return (count, *rows, gr.Button(visible=count < MAX_EXTRA_PASSES))

    def apply_preset(self, preset: Any, scale: Any) -> tuple[Any, ...]:
        """A preset fills the passes: the first model and scale, then each further pass; a face
        stage in it ticks "Restore faces" with its model."""
        chosen = next((p for p in self.front.presets() if p.id == preset), None)
        if chosen is None:
            return (gr.update(),) * (5 + 3 * MAX_EXTRA_PASSES)
        wanted = _number(scale, "scale")
        every = chosen.pipeline(wanted if wanted in chosen.scales else None)
        faces = [stage for stage in every if "face" in stage]
        stages = [stage for stage in every if "face" not in stage]
        rest = stages[1 : 1 + MAX_EXTRA_PASSES]
        updates: list[Any] = [gr.Dropdown(value=stages[0]["model"]), gr.Radio(value=stages[0]["scale"])]
        for index in range(MAX_EXTRA_PASSES):
            if index < len(rest):
                updates += [gr.Dropdown(value=rest[index]["model"]), gr.Radio(value=rest[index]["scale"])]
            else:
                updates += [gr.Dropdown(value=NO_PASS), gr.Radio(value=2)]
        rows = [gr.Row(visible=index < len(rest)) for index in range(MAX_EXTRA_PASSES)]
        face = (
            [gr.Checkbox(value=True), gr.Dropdown(value=faces[0]["face"])]
            if faces
            else [gr.Checkbox(value=False), gr.update()]
        )
        return (*updates, len(rest), *rows, *face)

    def note(self, model: Any) -> str:
        rows = {row.entry.name: row.to_dict() for row in self.front.models()}
        name = model if isinstance(model, str) else ""
        return render.model_note(rows.get(name))

    def face_note(self, model: Any, face_model: Any, *passes: Any) -> str:
        """Whether restoring faces suits the chosen upscalers (every pass: the faces are restored
        after the last), and the face model's own notice."""
        rows = {row.entry.name: row.to_dict() for row in self.front.models()}
        try:
            names = [model, *(name for name, _ in page_passes(list(passes)))]
        except gr.Error:
            names = [model]  # the quote says what is wrong with the passes
        upscalers = [rows[name] for name in names if isinstance(name, str) and name in rows]
        face = rows.get(face_model if isinstance(face_model, str) else "")
        return render.face_note(upscalers, face)

    # ------------------------------------------------------------ jobs

    @friendly
    async def create(
        self,
        upload: Any,
        model: Any,
        scale: Any,
        fmt: Any,
        tile: Any,
        precision: Any,
        publish: Any,
        session: Any,
        restore: Any = False,
        face_model: Any = None,
        face_weight: Any = None,
        *passes: Any,
    ) -> tuple[Any, ...]:
        if upload in (None, ""):
            raise gr.Error("Upload an image first.")
        faces = (restore, face_model, face_weight)
        options = options_from_page(model, scale, fmt, tile, precision, publish, list(passes), faces)
        data = self.uploads.read(upload)
        made = await self.front.create_for_browser(data, options)
        job = made.created.job
        held = [t for t in tickets(session) if t.job_id != job.id] + [Ticket(job.id, made.owner_key)]
        session = make_session(held, job.id)
        return session, *(await self.render(session, None))

    @friendly
    async def pay_with_dev_wallet(self, session: Any) -> str:
        ticket = current(session)
        if ticket is None:
            raise gr.Error("There is no job to pay yet.")
        await self.front.dev_pay(self.front.grant(ticket.job_id, ticket.proof))
        return "Paid with the dev wallet (simulated, not real money)."

    @friendly
    async def status(self, job_id: Any, key: Any) -> dict[str, Any]:
        """A job's status (public API): with the job's key (the web app's) or an `L402 ...` value."""
        proof: Proof | None = None
        if isinstance(key, str) and key:
            proof = Proof.from_authorization(key) if key.startswith(("L402 ", "LSAT ")) else Proof(owner_key=key)
        view = self.front.view(self.front.grant(_text(job_id, "job id", ""), proof))
        return {
            "job_id": view.job_id,
            "status": view.status.value,
            "access": view.level.name.lower(),
            "amount_msat": view.amount_msat,
            "progress": view.progress,
            "invoice_status": view.invoice_status,
            "chain_status": view.provenance.chain_status if view.provenance else None,
            "error": view.error,
        }

    def _owned(self, ticket: Ticket | None) -> tuple[Grant, JobView] | None:
        """The browser's grant and view of one of its jobs; None if the ticket opens nothing."""
        if ticket is None:
            return None
        try:
            grant = self.front.grant(ticket.job_id, ticket.proof)
        except (AccessDenied, UnknownJob):
            return None
        return grant, self.front.view(grant)

    async def render(self, session: Any, shown: Any) -> tuple[Any, ...]:
        """Everything about the current job; the result only for its owner, once released."""
        owned = self._owned(current(session))
        if owned is None:
            return self._empty(shown)
        grant, job = owned
        awaiting = job.payment is not None and job.payment.payment_request is not None
        remaining = int((job.payment.expires_at or 0) - time.time()) if awaiting and job.payment else 0
        countdown = f"Expires in {remaining // 60}:{remaining % 60:02d}" if awaiting and remaining > 0 else ""
        release = job.releasable
        # what does not change once released (previews, link, metadata) goes out when first shown
        slider, download = gr.ImageSlider(visible=release), gr.HTML(visible=release)
        metadata: Any = gr.JSON() if release else None
        if release and shown != job.job_id:
            await asyncio.to_thread(self._sweep_previews)
            before, after = await self.front.previews(grant, self._preview_folder(job.job_id))
            slider = gr.ImageSlider(value=(str(before), str(after)), visible=True)
            links = self.front.intermediate_links(grant)
            download = gr.HTML(render.download_html(self.front.download_link(grant), links), visible=True)
            metadata = self.front.metadata(grant)
        payment_request = job.payment.payment_request if awaiting and job.payment else None
        return (
            gr.Group(visible=awaiting),
            render.qr(payment_request) if payment_request else None,
            payment_request or "",
            countdown,
            render.status_text(job),
            render.progress_html(job),
            slider,
            download,
            gr.Accordion(visible=job.provenance is not None),
            render.provenance_html(job, self.front.chain_description()),
            metadata,
            job.job_id if release else shown if isinstance(shown, str) else None,
        )

    @staticmethod
    def _previews_root() -> Path:
        return Path(get_upload_folder()) / "satscale-previews"

    def _preview_folder(self, job_id: str) -> Path:
        hour = int(time.time() // PREVIEW_SECONDS)
        name = hmac.new(self._preview_key, f"{job_id}:{hour}".encode(), hashlib.sha256).hexdigest()[:40]
        return self._previews_root() / name

    def _sweep_previews(self) -> None:
        root = self._previews_root()
        if not root.is_dir():
            return
        cutoff = time.time() - 2 * PREVIEW_SECONDS
        for folder in root.iterdir():
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)

    @staticmethod
    def _empty(shown: Any) -> tuple[Any, ...]:
        return (
            gr.Group(visible=False),
            None,
            "",
            "",
            "Upload an image, choose a model and get an invoice.",
            "",
            gr.ImageSlider(visible=False),
            gr.HTML(visible=False),
            gr.Accordion(visible=False),
            "",
            None,
            shown if isinstance(shown, str) else None,
        )

    @friendly
    async def verify(self, session: Any) -> str:
        ticket = current(session)
        if ticket is None:
            raise gr.Error("There is no job to verify yet.")
        grant = self.front.grant(ticket.job_id, ticket.proof)
        if not grant.owner or not grant.job.releasable:
            return "Nothing to verify yet."
        try:
            report = await self.front.verify_job(grant)
        except Exception as exc:  # no record yet, or the chain is unreachable
            return f"**Cannot verify right now:** {html.escape(to_problem(exc).detail)}"
        return render.verification_text(report)

    def jobs_table(self, session: Any) -> tuple[str, Any]:
        """This browser's jobs, newest first, and the picker to reopen one."""
        rows, choices = [], []
        for ticket in reversed(tickets(session)):
            owned = self._owned(ticket)
            if owned is None:
                continue
            job = owned[1]
            rows.append((job, time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))))
            choices.append(job.job_id)
        return render.jobs_table(rows), gr.Dropdown(choices=choices, value=None)

    def open_job(self, job_id: Any, session: Any) -> Any:
        held = tickets(session)
        if job_id not in {t.job_id for t in held}:
            return make_session(held, None) if held else {"current": None, "jobs": []}
        return make_session(held, job_id)
