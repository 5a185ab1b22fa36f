"""The web app's Collection tab: connect (RPC URL + contract), plan for free, start a paid run,
pay its batches' invoices, watch each token, download the report.

The handlers are thin clients of the same desk and runs the API calls, with the API's request
models (service.collections.requests), so a rule exists once. Like every Gradio handler they are
HTTP endpoints anyone can call with any JSON: a run is opened by its id alone (what the API's
status route shows anyone who has it), and a token's new image is shown only once it is paid for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from payments.dev import DevNode

from ..collections.compose import Collections
from ..collections.requests import CollectionPlanBody, CollectionRunBody, checked, plan_request, run_request
from . import render
from .handlers import friendly

#: tokens shown before/after on the page (the report lists them all)
PREVIEW_TOKENS = 4
TABLE_COLUMNS = ["token", "status", "sat", "new URI or reason"]
RUN_ID = re.compile(r"^col_[A-Za-z0-9_-]{16}$")
RELEASED = ("paid", "published", "upgraded")
RUNS_KEPT = 20
PREVIEW_KEY = "collection-preview-key"
#: preview folders not looked at for this long are removed
PREVIEW_SECONDS = 2 * 3600


def _field(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise gr.Error(f"{name} must be text")
    return value.strip() or None


def _scale(value: Any) -> int | None:
    if value in (None, "", "model's own"):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise gr.Error("scale must be a whole number")
    try:
        number = float(value)
    except ValueError:
        raise gr.Error("scale must be a whole number") from None
    if not number.is_integer():
        raise gr.Error("scale must be a whole number")
    return int(number)


def page_body(rpc: Any, contract: Any, tokens: Any, model: Any, scale: Any, pixel_art: Any, setter: Any) -> dict:
    """The page's fields as the API's request body (the models check them)."""
    body = {
        "rpc_url": _field(rpc, "RPC URL"),
        "contract": _field(contract, "contract") or "",
        "tokens": _field(tokens, "tokens"),
        "model": _field(model, "model"),
        "scale": _scale(scale),
        "pixel_art": _field(pixel_art, "pixel art") or "auto",
        "setter": _field(setter, "setter"),
    }
    return {key: value for key, value in body.items() if value is not None}


def session_runs(session: Any) -> tuple[list[str], str | None]:
    """The browser's runs (ids it started) and the one shown, from its stored session."""
    runs = session.get("runs", []) if isinstance(session, dict) else []
    kept = [r for r in runs if isinstance(r, str) and RUN_ID.match(r)][-RUNS_KEPT:] if isinstance(runs, list) else []
    current = session.get("current") if isinstance(session, dict) else None
    return kept, current if isinstance(current, str) and current in kept else None


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def plain(text: str) -> str:
    """Text from a collection or a chain (a name, a reason) shown as itself in Markdown: no
    link, no image, no markup an attacker's contract could put on the page."""
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))


def plan_table(plan: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for token in plan["token_plans"]:
        if token["status"] == "ready":
            stages = " → ".join(f"{s['model']} ×{s['scale']}" for s in token["pipeline"])
            rows.append([token["token_id"], "ready", token["amount_sat"], stages])
        else:
            rows.append([token["token_id"], "skipped", 0, token.get("error") or ""])
    return rows


def plan_text(plan: dict[str, Any]) -> str:
    layout = plan["layout"]
    naming = "a base URI (one folder)" if layout["kind"] == "base-uri" else "a URI per token"
    return (
        f"**{plain(plan['name'] or 'Collection')}** on chain {plan['chain_id']}, {naming}: "
        f"{plan['ready']} of {plan['tokens']} tokens to upgrade ({plan['pixel_art']} as pixel art), "
        f"{plan['skipped']} skipped · **{plan['amount_sat']} sats** in {len(plan['batches'])} invoice(s), "
        f"about {plan['seconds']:.0f} s of work"
    )


def run_table(view: dict[str, Any]) -> list[list[Any]]:
    return [
        [t["token_id"], t["status"], t.get("amount_sat", 0), t.get("new_uri") or t.get("error") or ""]
        for t in view["tokens"]
    ]


def run_text(view: dict[str, Any]) -> str:
    text = (
        f"**{view['state']}** · `{view['id']}` · {view['paid_sat']} of {view['amount_sat']} sats paid · "
        f"{view['progress']['finished']} of {view['progress']['tokens']} tokens finished"
    )
    chain = (view.get("result") or {}).get("chain")
    if chain:
        text += f"\n\nOn chain: {plain(chain['status'])}"
        if chain.get("reason"):
            text += f" — {plain(chain['reason'])}"
    if view.get("error"):
        text += f"\n\n{plain(view['error'])}"
    return text


def run_progress(view: dict[str, Any]) -> str:
    percent = round(100 * view["progress"]["fraction"])
    return (
        f'<div class="satscale-progress" data-state="{html.escape(view["state"])}">'
        f'<progress value="{percent}" max="100"></progress><span>{percent} %</span></div>'
    )


def run_links(view: dict[str, Any]) -> str:
    base = f"/v1/collections/{view['id']}"
    links = [f'<a class="satscale-report" href="{base}/report.csv" download>Report (CSV)</a>']
    if view["state"] == "done":
        links.append(f'<a href="{base}/manifest.json" download>Manifest</a>')
        if (view.get("result") or {}).get("folder_cid"):
            links.append(f'<a href="{base}/folder.car" download>Folder (CAR)</a>')
    return " · ".join(links)


class CollectionPage:
    def __init__(self, collections: Collections, dev_node: DevNode | None) -> None:
        self.collections = collections
        self.dev_node = dev_node
        # the same key across restarts: a run's preview folder keeps its name, and is not copied again
        store = collections.runs.store
        key = store.get_meta(PREVIEW_KEY)
        if key is None:
            key = secrets.token_hex(32)
            store.set_meta(PREVIEW_KEY, key)
        self._preview_key = bytes.fromhex(key)
        self._swept = 0.0

    @friendly
    async def plan(self, *fields: Any) -> tuple[str, list[list[Any]]]:
        body = checked(CollectionPlanBody, page_body(*fields))
        plan = (await self.collections.desk.plan(plan_request(body))).to_dict()
        return plan_text(plan), plan_table(plan)

    @friendly
    async def start(self, *fields_and_session: Any) -> tuple[Any, ...]:
        *fields, session = fields_and_session
        body = checked(CollectionRunBody, page_body(*fields))
        started = await self.collections.runs.create(run_request(body), "web-" + secrets.token_hex(16))
        runs, _ = session_runs(session)
        session = {"runs": [*runs, started.run.id][-RUNS_KEPT:], "current": started.run.id}
        return session, *(await self.render(session))

    @friendly
    async def open_run(self, run_id: Any, session: Any) -> dict[str, Any]:
        """Show a run by its id (one started elsewhere: the CLI, another browser)."""
        text = _field(run_id, "run id") or ""
        if not RUN_ID.match(text) or self.collections.runs.journal.run(text) is None:
            raise gr.Error("no collection run has this id")
        runs, _ = session_runs(session)
        return {"runs": [*(r for r in runs if r != text), text][-RUNS_KEPT:], "current": text}

    @friendly
    async def pay_with_dev_wallet(self, session: Any) -> str:
        _, current = session_runs(session)
        view = self.collections.runs.view(current) if current else None
        if self.dev_node is None:
            raise gr.Error("there is no dev wallet: this server takes real Lightning payments")
        if view is None or not view["invoice"]:
            raise gr.Error("The run has no invoice to pay now.")
        await self.dev_node.pay(view["invoice"]["payment_request"])
        return "Paid with the dev wallet (simulated, not real money)."

    @friendly
    async def render(self, session: Any) -> tuple[Any, ...]:
        _, current = session_runs(session)
        view = self.collections.runs.view(current) if current else None
        if view is None:
            return gr.Group(visible=False), None, "", "", "", [], [], ""
        invoice = view["invoice"]
        payment_request = invoice["payment_request"] if invoice else None
        what = ""
        if invoice:
            kind = "the results of" if invoice["kind"] == "release" else "the work of"
            what = f"Invoice for {kind} batch {invoice['batch']}: **{invoice['amount_sat']} sats**"
        gallery = await asyncio.to_thread(self._previews, view)
        return (
            gr.Group(visible=payment_request is not None),
            render.qr(payment_request) if payment_request else None,
            payment_request or "",
            what,
            run_text(view) + "\n\n" + run_progress(view),
            run_table(view),
            gallery,
            run_links(view),
        )

    def _previews(self, view: dict[str, Any]) -> list[tuple[str, str]]:
        """The first tokens before (the collection's own image, public anyway) and after (only
        once paid for), copied where Gradio serves files, under a name nobody can guess; folders
        not looked at for PREVIEW_SECONDS go."""
        self._sweep()
        folder = self._preview_folder(view["id"])
        tokens = {t.token_id: t for t in self.collections.runs.journal.tokens(view["id"])}
        shown: list[tuple[str, str]] = []
        for row in view["tokens"]:
            token = tokens[row["token_id"]]
            if token.image_path is None or len(shown) >= 2 * PREVIEW_TOKENS:
                continue
            shown.append((self._copy(Path(token.image_path), folder, f"{token.token_id}-before"),
                          f"#{token.token_id} before"))  # fmt: skip
            job = self.collections.runs.store.get(token.job_id) if token.job_id else None
            if token.status in RELEASED and job is not None and job.output_path:
                shown.append((self._copy(Path(job.output_path), folder, f"{token.token_id}-after"),
                              f"#{token.token_id} after"))  # fmt: skip
        return shown

    def _sweep(self) -> None:
        now = time.time()
        if now - self._swept < 60:
            return
        self._swept = now
        root = Path(get_upload_folder()) / "satscale-collection-previews"
        for folder in root.glob("*") if root.exists() else ():
            if folder.is_dir() and now - folder.stat().st_mtime > PREVIEW_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)

    def _preview_folder(self, run_id: str) -> Path:
        name = hmac.new(self._preview_key, run_id.encode(), hashlib.sha256).hexdigest()[:40]
        return Path(get_upload_folder()) / "satscale-collection-previews" / name

    @staticmethod
    def _copy(source: Path, folder: Path, stem: str) -> str:
        target = folder / f"{stem}{source.suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)  # looked at now: the sweep leaves it
        if not target.exists():
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(source, partial)
            partial.replace(target)
        return str(target)


def collection_tab(page: CollectionPage, model_names: list[str], dev_wallet: bool) -> None:
    """The tab's components and events (inside a `gr.Tab`)."""
    session = gr.BrowserState({"runs": [], "current": None}, storage_key="satscale-collections-v1")
    private = {"api_visibility": "private"}
    with gr.Row(equal_height=False):
        with gr.Column(min_width=320):
            rpc = gr.Textbox(label="RPC URL (empty: this server's chain)", elem_id="collection-rpc")
            contract = gr.Textbox(label="Contract address", placeholder="0x…", elem_id="collection-contract")
            tokens = gr.Textbox(label="Tokens (empty: every token listed)", placeholder="1-500",
                                elem_id="collection-tokens")  # fmt: skip
            model = gr.Dropdown(model_names, value=model_names[0] if model_names else None, label="Model",
                                elem_id="collection-model")  # fmt: skip
            scale = gr.Dropdown(["model's own", 2, 3, 4], value="model's own", label="Scale",
                                elem_id="collection-scale")  # fmt: skip
            pixel_art = gr.Radio(["auto", "on", "off"], value="auto", label="Pixel art (nearest-neighbour)",
                                 elem_id="collection-pixel-art")  # fmt: skip
            setter = gr.Textbox(label="Setter (another collection's, e.g. setBaseURI(string))",
                                elem_id="collection-setter")  # fmt: skip
            with gr.Row():
                plan = gr.Button("Plan (free)", elem_id="collection-plan")
                start = gr.Button("Start the run", variant="primary", elem_id="collection-start")
            summary = gr.Markdown(elem_id="collection-summary")
            with gr.Accordion("Open a run by its id", open=False):
                run_id = gr.Textbox(label="Run id", elem_id="collection-run-id")
                open_run = gr.Button("Open", size="sm", elem_id="collection-open")
        with gr.Column(min_width=320):
            with gr.Group(visible=False) as pay_box:
                qr = gr.Image(label="Lightning invoice", interactive=False, elem_id="collection-qr", height=240)
                bolt11 = gr.Textbox(label="BOLT11 invoice", interactive=False, buttons=["copy"],
                                    elem_id="collection-bolt11")  # fmt: skip
                invoice_text = gr.Markdown(elem_id="collection-invoice")
                if dev_wallet:
                    dev_pay = gr.Button("Pay with dev wallet", elem_id="collection-dev-pay")
            status = gr.Markdown(elem_id="collection-status")
            gallery = gr.Gallery(label="Before / after", columns=2, height=320, elem_id="collection-gallery")
            links = gr.HTML(elem_id="collection-links")
    table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="collection-table", wrap=True)
    timer = gr.Timer(1.0)
    fields = [rpc, contract, tokens, model, scale, pixel_art, setter]
    outputs = [pay_box, qr, bolt11, invoice_text, status, table, gallery, links]
    # plans read the chain and fetch every token: one at a time from this page (the desk refuses a second)
    once = {"concurrency_limit": 1, "concurrency_id": "collection-plan"}
    plan.click(page.plan, fields, [summary, table], api_name="collection_plan", **once, **private)
    start.click(page.start, [*fields, session], [session, *outputs], api_name="collection_start", **once, **private)
    open_run.click(page.open_run, [run_id, session], session, api_name="collection_open", **private).then(
        page.render, session, outputs, api_name="collection_render_opened", **private
    )
    if dev_wallet:
        dev_pay.click(page.pay_with_dev_wallet, session, invoice_text, api_name="collection_dev_pay", **private)
    timer.tick(page.render, session, outputs, show_progress="hidden", api_name="collection_render", **private)
