"""The browser face of Satscale: a Gradio app mounted at / in the same process as the API.

Every handler here is callable over HTTP by anyone (Gradio exposes them all, hidden or
not), so none trusts the page: creating a job only issues an invoice; the upscale runs
in the worker after the payment is held; a result is released only to a caller that
presents the job's macaroon (which only the creating browser received) for a job whose
invoice is held or settled. The dev wallet handler exists only with the dev backend.
"""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pyvips
import qrcode

from payments import l402
from payments.dev import DevNode, DevPaymentError
from sr_core.errors import SatscaleError
from sr_core.imageio import normalise_format

from .jobs import InvoiceStatus, Job, JobRequest, JobState
from .verify import NothingToVerify, Verifier
from .worker import JobService

PREVIEW_SIDE = 1600
FORMATS = ["same as input", "png", "jpeg", "webp", "tiff"]
STATE_TEXT = {
    JobState.AWAITING_PAYMENT: "Waiting for payment",
    JobState.PAYMENT_HELD: "Paid (held) — queued",
    JobState.PROCESSING: "Upscaling",
    JobState.SUCCEEDED: "Done",
    JobState.FAILED: "Failed — the payment was returned",
    JobState.EXPIRED: "Invoice expired unpaid",
}
CSS = """
.satscale-progress { display: flex; align-items: center; gap: .75rem; }
.satscale-progress progress { flex: 1; height: 1.1rem; accent-color: var(--color-accent); }
.satscale-warning { color: var(--error-text-color, #c0392b); }
.satscale-dev { font-size: .85rem; color: var(--body-text-color-subdued); }
#dev-pay { border: 2px dashed var(--color-accent); }
.satscale-provenance { display: grid; grid-template-columns: max-content 1fr; gap: .3rem .9rem; margin: 0; }
.satscale-provenance dt { font-weight: 600; }
.satscale-provenance dd { margin: 0; overflow-wrap: anywhere; }
.satscale-jobs { width: 100%; } .satscale-jobs td { padding: .2rem .5rem; overflow-wrap: anywhere; }
"""


def untouched_upload(image: gr.Image) -> gr.Image:
    """Make an Image input hand the uploaded file over untouched. Gradio's Image opens it with
    Pillow (failing on a damaged file with a bare "Error", and re-encoding modes it dislikes,
    which loses 16-bit samples and the ICC profile); the server's own validation judges the
    file instead. (Set on the instance: a Component subclass makes Gradio write a .pyi file.)"""

    def preprocess(payload: Any) -> str | None:
        return None if payload is None or payload.path is None else str(payload.path)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


# What each embedded model is for, and whether it is safe for faces (none restores faces; the
# anime models repaint them in their own style, which disfigures photographs of people)
MODEL_NOTES = {
    "realesrgan-x4plus": "Photographs. Keeps faces as they are: the safe choice for pictures of people.",
    "realesrgan-x4plus-anime": "Illustrations and anime art. Repaints faces in drawing style: not for photos.",
    "realesr-animevideov3": "Fast; anime and video frames. Repaints faces: not for photos of people.",
}


SUPIR_NOTE = (
    "SUPIR diffusion restoration: rebuilds detail in damaged or blurry photos. It can invent detail, "
    "faces included, so check people's faces; slow, and priced higher per megapixel."
)


CCSR_NOTE = (
    "CCSR diffusion upscaling: sharper detail than the GAN models while staying faithful to the "
    "input; can still invent fine detail, faces included. Slow, priced higher per megapixel."
)


def model_note(model: str) -> str:
    if model.lower().startswith("supir"):
        return SUPIR_NOTE
    if model.lower().startswith("ccsr"):
        return CCSR_NOTE
    return MODEL_NOTES.get(model, "Your checkpoint from weights/.")


class NotYours(Exception):
    """The caller does not hold this job's macaroon."""


@dataclass(frozen=True)
class Ticket:
    """What the browser keeps for each of its jobs (in localStorage)."""

    job_id: str
    macaroon: str

    @classmethod
    def of(cls, value: Any) -> Ticket | None:
        if isinstance(value, dict) and isinstance(value.get("job_id"), str) and isinstance(value.get("macaroon"), str):
            return cls(value["job_id"], value["macaroon"])
        return None

    def to_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "macaroon": self.macaroon}


def _megapixels(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _qr(payment_request: str) -> Any:
    # upper case fits the QR alphanumeric mode: a denser, more readable code
    return qrcode.make(f"LIGHTNING:{payment_request.upper()}", border=2).get_image()


def _preview(source: Path) -> str:
    """A browser-sized PNG copy in a fresh temp dir (the only place Gradio serves it from)."""
    folder = Path(tempfile.mkdtemp(prefix="satscale-preview-"))
    target = folder / f"{source.stem}.png"
    image = pyvips.Image.thumbnail(str(source), PREVIEW_SIDE, height=PREVIEW_SIDE, size="down")
    if image.format == "ushort":
        image = image.colourspace("srgb" if image.bands >= 3 else "b-w")
    image.pngsave(str(target))
    return str(target)


def _full_copy(job: Job) -> str:
    folder = Path(tempfile.mkdtemp(prefix="satscale-download-"))
    target = folder / f"{job.id}{Path(job.output_path or '').suffix}"
    shutil.copyfile(job.output_path or "", target)
    return str(target)


def _progress_html(job: Job, progress: float | None) -> str:
    if job.state is JobState.PROCESSING:
        percent = round(100 * (progress or 0.0))
        label = f"Upscaling · {percent} %"
    elif job.state is JobState.SUCCEEDED:
        percent, label = 100, "Done"
    else:
        percent, label = 0, STATE_TEXT[job.state]
    return (
        f'<div class="satscale-progress" data-state="{job.state.value}">'
        f'<progress value="{percent}" max="100"></progress><span>{html.escape(label)}</span></div>'
    )


def _provenance_html(job: Job, chain: dict | None) -> str:
    """Input/output CIDs with gateway links, hashes, payment and the chain record."""
    rows: list[tuple[str, str]] = []
    for label, cid, sha in (
        ("Input", job.input_cid, job.input_sha256),
        ("Output", job.output_cid, job.output_sha256),
        ("Metadata", job.metadata_cid, None),
    ):
        if cid:
            rows.append((f"{label} CID", f'<a href="/ipfs/{cid}" target="_blank" data-cid="{cid}">{cid}</a>'))
        if sha:
            rows.append((f"{label} sha256", f"<code>{sha}</code>"))
    rows.append(("Payment hash", f"<code>{job.payment_hash}</code>"))
    tx = f" <code data-tx>{job.chain_tx}</code>" if job.chain_tx else ""
    rows.append(
        ("Chain record", f'<span data-chain-status="{job.chain_status.value}">{job.chain_status.value}</span>{tx}')
    )
    if chain:
        rows.append(("Registry", f"<code>{chain.get('registry')}</code> on chain {chain.get('chain_id')}"))
    if job.chain_error:
        rows.append(("Chain note", html.escape(job.chain_error)))
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl class="satscale-provenance">{items}</dl>'


def _tickets(session: Any) -> list[Ticket]:
    """The browser's jobs, oldest first, from its stored session ({"current", "jobs"})."""
    values = session.get("jobs", []) if isinstance(session, dict) else []
    return [ticket for ticket in (Ticket.of(value) for value in values) if ticket is not None]


def _current(session: Any) -> Ticket | None:
    """The job the page shows: the one picked, else the newest."""
    tickets = _tickets(session)
    wanted = session.get("current") if isinstance(session, dict) else None
    return next((t for t in tickets if t.job_id == wanted), tickets[-1] if tickets else None)


def _session(tickets: list[Ticket], current: str | None) -> dict[str, Any]:
    return {"current": current, "jobs": [ticket.to_dict() for ticket in tickets]}


class WebApp:
    def __init__(self, service: JobService, ipfs: Any, sender: Any) -> None:
        self.service = service
        self.ipfs = ipfs
        self.sender = sender
        self.dev_node = service.backend if isinstance(service.backend, DevNode) else None

    # ------------------------------------------------------------------ guards

    def job_for(self, ticket: Ticket | None) -> Job:
        """The job a ticket stands for, checked like an L402 status credential."""
        if ticket is None:
            raise NotYours("no job")
        job = self.service.store.get(ticket.job_id)
        if job is None:
            raise NotYours("no such job")
        try:
            token = l402.verify(
                l402.Credential(ticket.macaroon, None),
                self.service.root_keys,
                now=int(time.time()),
                request_binding=job.request_hash,
                require_preimage=False,
            )
        except l402.L402Error as exc:
            raise NotYours(str(exc)) from None
        if token.payment_hash.hex() != job.payment_hash:
            raise NotYours("this token belongs to another job")
        return job

    @staticmethod
    def releasable(job: Job) -> bool:
        """A result leaves the server only for a finished job whose payment is held or taken."""
        return job.state is JobState.SUCCEEDED and job.invoice_status in (InvoiceStatus.SETTLED, InvoiceStatus.ACCEPTED)

    # ------------------------------------------------------------------ handlers

    async def inspect(self, path: str | None) -> str:
        if not path:
            return ""
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            info = await self.service.inspect(data)
        except (SatscaleError, OSError) as exc:
            gr.Warning(str(exc).replace("upload: ", ""))
            return f'<span class="satscale-warning">Refused: {html.escape(str(exc).replace("upload: ", ""))}</span>'
        kind = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}[info.channels]
        return f"{info.width} × {info.height} px · {info.format.upper()} · {kind} · {info.bit_depth}-bit"

    async def quote(self, path: str | None, model: str, scale: int | None, width: int = 0, height: int = 0) -> str:
        """Price and size of an upscale. From the page: of the uploaded image; over the API: of width x height."""
        try:
            if path:
                data = await asyncio.to_thread(Path(path).read_bytes)
                info = await self.service.inspect(data)
                width, height = info.width, info.height
            if not width or not height:
                return "Upload an image to see the price."
            priced = await self.service.quote(model, int(width), int(height), int(scale) if scale else None)
            estimate = await self.service.estimate(model, int(width), int(height), priced.scale)
        except SatscaleError as exc:
            return f'<span class="satscale-warning">{html.escape(str(exc))}</span>'
        return (
            f"**{priced.amount_sat} sats** · output {priced.output_width} × {priced.output_height} "
            f"({_megapixels(priced.output_megapixels)} MP) · about {max(1, round(estimate.seconds))} s here"
        )

    def scales(self, model: str, scale: int | None) -> Any:
        """The model's scales; the chosen one stays if the new model offers it."""
        try:
            info = self.service.engine_info(model)
        except SatscaleError as exc:
            raise gr.Error(str(exc)) from None
        if scale in info.scales:
            return gr.Radio(choices=list(info.scales))  # no value: a click made meanwhile is not undone
        return gr.Radio(choices=list(info.scales), value=info.native_scale)

    async def create(
        self, path: str | None, model: str, scale: int, fmt: str, tile: float | None, precision: str, session: Any
    ) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("Upload an image first.")
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            info = await self.service.inspect(data)
            output_format = info.format if fmt in (None, "", FORMATS[0]) else normalise_format(fmt)
            request = JobRequest(model, int(scale), output_format, int(tile) if tile else None, precision or "auto")
            challenge = await self.service.create_job(data, request)
        except SatscaleError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # payment backend down and the like: say so, charge nothing
            raise gr.Error(f"No invoice could be issued right now ({exc}); nothing was charged.") from None
        job = challenge.job
        tickets = [t for t in _tickets(session) if t.job_id != job.id] + [Ticket(job.id, job.macaroon or "")]
        session = _session(tickets, job.id)
        return session, *self.render(session, None)

    async def pay_with_dev_wallet(self, session: Any) -> str:
        if self.dev_node is None:
            raise gr.Error("There is no dev wallet: this server takes real Lightning payments.")
        try:
            job = self.job_for(_current(session))
            await self.dev_node.pay(job.payment_request or "")
        except NotYours as exc:
            raise gr.Error(f"Not your job: {exc}") from None
        except DevPaymentError as exc:
            raise gr.Error(str(exc)) from None
        return "Paid with the dev wallet (simulated, not real money)."

    def status(self, job_id: str, macaroon: str) -> dict[str, Any]:
        """A job's status for the holder of its macaroon (public API)."""
        try:
            job = self.job_for(Ticket(job_id, macaroon))
        except NotYours as exc:
            raise gr.Error(f"Not your job: {exc}") from None
        return {
            "job_id": job.id,
            "status": job.state.value,
            "amount_msat": job.amount_msat,
            "progress": self.service.progress(job.id),
            "invoice_status": job.invoice_status.value,
            "chain_status": job.chain_status.value,
            "error": job.error,
        }

    def render(self, session: Any, shown: str | None) -> tuple[Any, ...]:
        """Everything about the current job; the result only when it may be released."""
        ticket = _current(session)
        if ticket is None:
            return self._empty(shown)
        try:
            job = self.job_for(ticket)
        except NotYours:
            return self._empty(shown)
        awaiting = job.state is JobState.AWAITING_PAYMENT
        remaining = int((job.invoice_expires_at or 0) - time.time())
        countdown = f"Expires in {remaining // 60}:{remaining % 60:02d}" if awaiting and remaining > 0 else ""
        status = f"**{STATE_TEXT[job.state]}** · `{job.id}` · {job.amount_msat // 1000} sats"
        if job.error:
            status += f"\n\n{html.escape(job.error)}"
        chain = self.sender.describe() if self.sender else None
        release = self.releasable(job)
        fresh = release and shown != job.id
        slider = gr.ImageSlider(visible=release)
        download = gr.DownloadButton(visible=release)
        if fresh:
            slider = gr.ImageSlider(
                value=(_preview(Path(job.input_path)), _preview(Path(job.output_path or ""))), visible=True
            )
            download = gr.DownloadButton(value=_full_copy(job), visible=True)
        provenance_visible = bool(job.output_cid)
        return (
            gr.Group(visible=awaiting),
            _qr(job.payment_request) if awaiting and job.payment_request else None,
            job.payment_request if awaiting else "",
            countdown,
            status,
            _progress_html(job, self.service.progress(job.id)),
            slider,
            download,
            gr.Accordion(visible=provenance_visible),
            _provenance_html(job, chain) if provenance_visible else "",
            self._metadata(job) if provenance_visible else None,
            job.id if release else shown,
        )

    def _empty(self, shown: str | None) -> tuple[Any, ...]:
        return (
            gr.Group(visible=False),
            None,
            "",
            "",
            "Upload an image, choose a model and get an invoice.",
            "",
            gr.ImageSlider(visible=False),
            gr.DownloadButton(visible=False),
            gr.Accordion(visible=False),
            "",
            None,
            shown,
        )

    def _metadata(self, job: Job) -> Any:
        if not job.metadata_cid:
            return None
        try:
            return json.loads(b"".join(self.ipfs.cat(job.metadata_cid)))
        except Exception:
            return None

    async def verify(self, session: Any) -> str:
        try:
            job = self.job_for(_current(session))
        except NotYours as exc:
            raise gr.Error(f"Not your job: {exc}") from None
        if not job.output_sha256:
            return "Nothing to verify yet."

        def run() -> dict:
            return (
                Verifier(self.sender.chain, self.ipfs, self.service.store, self.service.registry)
                .verify(job.output_sha256 or "")
                .to_dict()
            )

        try:
            report = await asyncio.to_thread(run)
        except NothingToVerify as exc:
            return f"**Not verified:** {html.escape(str(exc))}"
        except Exception as exc:  # the chain is unreachable
            return f"**Cannot verify right now:** {html.escape(str(exc))}"
        lines = ["**Verified** ✓" if report["verified"] else "**Not verified** ✗"]
        for record in report["records"]:
            for check in record["checks"]:
                mark = "✓" if check["ok"] else "✗"
                lines.append(f"- {mark} **{check['name']}**: {html.escape(check['detail'])}")
        return "\n".join(lines)

    def jobs_table(self, session: Any) -> tuple[str, Any]:
        """This browser's jobs, newest first, and the picker to reopen one."""
        rows, choices = [], []
        for ticket in reversed(_tickets(session)):
            try:
                job = self.job_for(ticket)
            except NotYours:
                continue
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
            rows.append(
                f"<tr><td><code>{job.id}</code></td><td>{html.escape(STATE_TEXT[job.state])}</td>"
                f"<td>{html.escape(job.model)} x{job.scale}</td><td>{created}</td></tr>"
            )
            choices.append(job.id)
        if not rows:
            return "No jobs in this browser yet.", gr.Dropdown(choices=[], value=None)
        table = f'<table class="satscale-jobs"><tbody>{"".join(rows)}</tbody></table>'
        return table, gr.Dropdown(choices=choices, value=None)

    def open_job(self, job_id: str | None, session: Any) -> Any:
        tickets = _tickets(session)
        if job_id not in {t.job_id for t in tickets}:
            return session
        return _session(tickets, job_id)

    # ------------------------------------------------------------------ layout

    def blocks(self) -> gr.Blocks:
        names = [entry.name for entry in self.service.registry.entries()]
        default = "realesrgan-x4plus" if "realesrgan-x4plus" in names else names[0]
        with gr.Blocks(title="Satscale") as ui:
            # the browser keeps its jobs (id + macaroon) in localStorage: a reload loses nothing
            session = gr.BrowserState({"current": None, "jobs": []}, storage_key="satscale-session")
            shown = gr.State(None)
            gr.Markdown("# Satscale\nAI upscaling, paid per image over Lightning, with a verifiable record.")
            with gr.Row(equal_height=False):
                with gr.Column(min_width=320):
                    image = untouched_upload(
                        gr.Image(
                            type="filepath",
                            sources=["upload", "clipboard"],
                            label="Image",
                            elem_id="upload",
                            height=320,
                        )
                    )
                    image_info = gr.HTML(elem_id="image-info")
                    model = gr.Dropdown(names, value=default, label="Model", elem_id="model")
                    note = gr.Markdown(model_note(default), elem_id="model-note")
                    scale = gr.Radio([2, 3, 4], value=4, label="Scale", elem_id="scale")
                    fmt = gr.Dropdown(FORMATS, value=FORMATS[0], label="Output format", elem_id="format")
                    with gr.Accordion("Options", open=False):
                        tile = gr.Number(0, label="Tile size (0: automatic)", precision=0, minimum=0, maximum=2048)
                        precision = gr.Dropdown(["auto", "fp32", "bf16", "fp16"], value="auto", label="Precision")
                    quote = gr.Markdown("Upload an image to see the price.", elem_id="quote")
                    create = gr.Button("Get invoice", variant="primary", elem_id="get-invoice")
                with gr.Column(min_width=320):
                    with gr.Group(visible=False) as pay_box:
                        qr = gr.Image(label="Lightning invoice", interactive=False, elem_id="invoice-qr", height=260)
                        bolt11 = gr.Textbox(
                            label="BOLT11 invoice", interactive=False, buttons=["copy"], elem_id="bolt11"
                        )
                        countdown = gr.Markdown(elem_id="countdown")
                        if self.dev_node is not None:
                            dev_pay = gr.Button("Pay with dev wallet", elem_id="dev-pay")
                            gr.Markdown("Simulated Lightning node: **not real money**.", elem_classes=["satscale-dev"])
                    status = gr.Markdown(elem_id="job-status")
                    progress = gr.HTML(elem_id="progress")
                    slider = gr.ImageSlider(label="Before / after", visible=False, elem_id="slider", type="filepath")
                    download = gr.DownloadButton("Download full resolution", visible=False, elem_id="download")
                    with gr.Accordion("Provenance", visible=False) as provenance_box:
                        provenance = gr.HTML(elem_id="provenance")
                        metadata = gr.JSON(label="Metadata document (ERC-721)", elem_id="metadata")
                        verify = gr.Button("Verify", elem_id="verify")
                        verify_result = gr.Markdown(elem_id="verify-result")
            with gr.Accordion("Jobs in this browser", open=False):
                jobs = gr.HTML(elem_id="jobs")
                pick = gr.Dropdown(label="Open a job", choices=[], elem_id="job-pick")
            timer = gr.Timer(1.0)

            job_outputs = [
                pay_box,
                qr,
                bolt11,
                countdown,
                status,
                progress,
                slider,
                download,
                provenance_box,
                provenance,
                metadata,
                shown,
            ]
            image.change(self.inspect, image, image_info, api_visibility="private")
            # one queue for every quote, newest request wins: a slow early answer never overwrites a newer one
            gr.on(
                [image.change, model.change, scale.change],
                self.quote,
                [image, model, scale],
                quote,
                api_visibility="private",
                concurrency_limit=1,
                concurrency_id="quote",
                trigger_mode="always_last",
            )
            model.change(self.scales, [model, scale], scale, api_visibility="private")
            model.change(model_note, model, note, api_visibility="private")
            create.click(
                self.create,
                [image, model, scale, fmt, tile, precision, session],
                [session, *job_outputs],
                api_visibility="private",
            ).then(self.jobs_table, session, [jobs, pick], api_visibility="private")
            if self.dev_node is not None:
                dev_pay.click(self.pay_with_dev_wallet, session, countdown, api_visibility="private")
            timer.tick(self.render, [session, shown], job_outputs, api_visibility="private", show_progress="hidden")
            verify.click(self.verify, session, verify_result, api_visibility="private")
            pick.change(self.open_job, [pick, session], session, api_visibility="private")
            ui.load(self.jobs_table, session, [jobs, pick], api_visibility="private")

            # the public API (gradio_client): pricing and status, nothing that releases a result
            async def price(model: str, scale: int, width: float, height: float) -> str:
                return await self.quote(None, model, scale, int(width), int(height))

            api_quote = gr.Button(visible=False)
            api_quote.click(
                price,
                [model, scale, gr.Number(visible=False), gr.Number(visible=False)],
                gr.Markdown(visible=False),
                api_name="price",
            )
            api_status = gr.Button(visible=False)
            api_status.click(
                self.status,
                [gr.Textbox(visible=False), gr.Textbox(visible=False)],
                gr.JSON(visible=False),
                api_name="status",
            )
        return ui


def mount(app: Any, service: JobService, ipfs: Any, sender: Any) -> Any:
    ui = WebApp(service, ipfs, sender).blocks()
    return gr.mount_gradio_app(app, ui, path="/", theme=gr.themes.Soft(), css=CSS, footer_links=["api"])
