"""The browser face of Satscale: a Gradio app mounted at / in the same process as the API.

The layout lives here; the handlers (service.ui.handlers) are thin clients of the front
door, the same calls the API makes. Every handler is callable over HTTP by anyone, hidden or
not, so none trusts the page (see handlers and uploads for how).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..collections.compose import Collections
from ..frontdoor import FrontDoor
from . import render
from .collections import CollectionPage, collection_tab
from .handlers import FORMATS, MAX_EXTRA_PASSES, NO_PASS, NO_PRESET, PRECISIONS, WebHandlers
from .uploads import UploadGuard, UploadSizeLimit

#: Gradio's temp files (uploads, previews, QR codes): every 10 minutes, those older than an hour go
DELETE_CACHE = (600, 3600)


def untouched_upload(image: gr.Image) -> gr.Image:
    """Make an Image input hand the uploaded file's path over untouched. Gradio's Image opens it
    with Pillow (failing on a damaged file with a bare "Error", and re-encoding modes it
    dislikes, which loses 16-bit samples and the ICC profile); the server's own validation judges
    the file instead, after the upload guard checked that it is one. (Set on the instance: a
    Component subclass makes Gradio write a .pyi file.)"""

    def preprocess(payload: Any) -> str | None:
        path = getattr(payload, "path", None)
        return path if isinstance(path, str) else None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def blocks(web: WebHandlers, front: FrontDoor, page: CollectionPage) -> gr.Blocks:
    names = front.model_names()
    default = front.default_model()
    dev_wallet = front.dev_node is not None
    with gr.Blocks(title="Satscale", delete_cache=DELETE_CACHE, analytics_enabled=False) as ui:
        # the browser keeps its jobs (id + per-job key) in localStorage: a reload loses nothing
        session = gr.BrowserState({"current": None, "jobs": []}, storage_key="satscale-session-v2")
        shown = gr.State(None)
        gr.Markdown("# Satscale\nAI upscaling, paid per image over Lightning, with a verifiable record.")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Upscale", elem_id="tab-upscale"):
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
                        note = gr.Markdown(web.note(default), elem_id="model-note")
                        scale = gr.Radio([2, 3, 4], value=4, label="Scale", elem_id="scale")
                        # further passes run on the result of the one before (2x then 2x, GAN then a 1x restorer)
                        presets = front.presets()
                        preset = gr.Dropdown(
                            [NO_PRESET, *(p.id for p in presets)],
                            value=NO_PRESET,
                            label="Preset",
                            info=" · ".join(f"{p.id}: {p.description}" for p in presets),
                            elem_id="preset",
                            visible=bool(presets),
                        )
                        shown_passes = gr.State(0)
                        pass_rows, pass_fields = [], []
                        for number in range(2, 2 + MAX_EXTRA_PASSES):
                            with gr.Row(visible=False, elem_id=f"pass-{number}") as row:
                                pass_model = gr.Dropdown(
                                    [NO_PASS, *names],
                                    value=NO_PASS,
                                    label=f"Pass {number}",
                                    elem_id=f"pass-{number}-model",
                                )
                                pass_scale = gr.Radio(
                                    [1, 2, 3, 4], value=2, label="Scale", elem_id=f"pass-{number}-scale"
                                )
                            pass_rows.append(row)
                            pass_fields += [pass_model, pass_scale]
                        add_pass = gr.Button("Add a pass", size="sm", elem_id="add-pass")
                        # the face stage runs on the final image of the passes; shown when a face model is there
                        face_names = front.face_model_names()
                        first_face = face_names[0] if face_names else None
                        with gr.Group(visible=bool(face_names), elem_id="faces"):
                            restore = gr.Checkbox(False, label="Restore faces", elem_id="restore-faces")
                            face_model = gr.Dropdown(
                                face_names, value=first_face, label="Face model", elem_id="face-model"
                            )
                            face_weight = gr.Slider(
                                0.0,
                                1.0,
                                value=0.5,
                                step=0.05,
                                label="Keep of each face as it was (0: fully restored, 1: unchanged)",
                                elem_id="face-weight",
                            )
                            face_note = gr.Markdown(web.face_note(default, first_face), elem_id="face-note")
                        fmt = gr.Dropdown(FORMATS, value=FORMATS[0], label="Output format", elem_id="format")
                        publish = gr.Checkbox(
                            front.settings.publish_default,
                            label="Publish on IPFS (public)",
                            info=render.PUBLISH_INFO,
                            elem_id="publish",
                        )
                        with gr.Accordion("Options", open=False):
                            tile = gr.Number(0, label="Tile size (0: automatic)", precision=0, minimum=0, maximum=2048)
                            precision = gr.Dropdown(PRECISIONS, value="auto", label="Precision")
                        quote = gr.Markdown("Upload an image to see the price.", elem_id="quote")
                        create = gr.Button("Get invoice", variant="primary", elem_id="get-invoice")
                    with gr.Column(min_width=320):
                        with gr.Group(visible=False) as pay_box:
                            qr = gr.Image(
                                label="Lightning invoice", interactive=False, elem_id="invoice-qr", height=260
                            )
                            bolt11 = gr.Textbox(
                                label="BOLT11 invoice", interactive=False, buttons=["copy"], elem_id="bolt11"
                            )
                            countdown = gr.Markdown(elem_id="countdown")
                            if dev_wallet:
                                dev_pay = gr.Button("Pay with dev wallet", elem_id="dev-pay")
                                gr.Markdown(
                                    "Simulated Lightning node: **not real money**. Its wallet is shared by everyone "
                                    "using this server; it never shows anyone's preimages.",
                                    elem_classes=["satscale-dev"],
                                )
                        status = gr.Markdown(elem_id="job-status")
                        progress = gr.HTML(elem_id="progress")
                        slider = gr.ImageSlider(
                            label="Before / after", visible=False, elem_id="slider", type="filepath"
                        )
                        download = gr.HTML(visible=False, elem_id="download")
                        with gr.Accordion("Provenance", visible=False) as provenance_box:
                            provenance = gr.HTML(elem_id="provenance")
                            metadata = gr.JSON(label="Metadata document (ERC-721)", elem_id="metadata")
                            verify = gr.Button("Verify", elem_id="verify")
                            verify_result = gr.Markdown(elem_id="verify-result")
                with gr.Accordion("Jobs in this browser", open=False):
                    jobs = gr.HTML(elem_id="jobs")
                    pick = gr.Dropdown(label="Open a job", choices=[], elem_id="job-pick")
            with gr.Tab("Collection", elem_id="tab-collection"):
                collection_tab(page, names, dev_wallet)
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
        private = {"api_visibility": "private"}
        image.change(web.inspect, image, image_info, **private)
        # one queue for every quote, newest request wins: a slow early answer never overwrites a newer one
        face_fields = [restore, face_model, face_weight]
        gr.on(
            [
                image.change,
                model.change,
                scale.change,
                publish.change,
                *(f.change for f in face_fields),
                *(f.change for f in pass_fields),
            ],
            web.quote,
            [image, model, scale, publish, *face_fields, *pass_fields],
            quote,
            concurrency_limit=1,
            concurrency_id="quote",
            trigger_mode="always_last",
            **private,
        )
        model.change(web.scales, [model, scale], scale, **private)
        model.change(web.note, model, note, **private)
        gr.on(
            [model.change, face_model.change, *(f.change for f in pass_fields)],
            web.face_note,
            [model, face_model, *pass_fields],
            face_note,
            **private,
        )
        add_pass.click(web.add_pass, shown_passes, [shown_passes, *pass_rows, add_pass], **private)
        preset.change(
            web.apply_preset,
            [preset, scale],
            [model, scale, *pass_fields, shown_passes, *pass_rows, restore, face_model],
            **private,
        )
        create.click(
            web.create,
            [image, model, scale, fmt, tile, precision, publish, session, *face_fields, *pass_fields],
            [session, *job_outputs],
            **private,
        ).then(web.jobs_table, session, [jobs, pick], **private)
        if dev_wallet:
            dev_pay.click(web.pay_with_dev_wallet, session, countdown, **private)
        timer.tick(web.render, [session, shown], job_outputs, show_progress="hidden", **private)
        verify.click(web.verify, session, verify_result, **private)
        pick.change(web.open_job, [pick, session], session, **private)
        ui.load(web.jobs_table, session, [jobs, pick], **private)

        # the public API (gradio_client): pricing and status, nothing that releases a result
        api_quote = gr.Button(visible=False)
        api_quote.click(
            web.price,
            [model, scale, gr.Number(visible=False), gr.Number(visible=False)],
            gr.Markdown(visible=False),
            api_name="price",
        )
        api_status = gr.Button(visible=False)
        api_status.click(
            web.status,
            [gr.Textbox(visible=False), gr.Textbox(visible=False)],
            gr.JSON(visible=False),
            api_name="status",
        )
    return ui


def mount(app: Any, front: FrontDoor, collections: Collections) -> Any:
    """Mount the web app at /, with its uploads capped like the API's and its own path check on."""
    uploads = UploadGuard(front.settings.max_upload_bytes)
    web = WebHandlers(front, uploads)
    ui = blocks(web, front, CollectionPage(collections, front.dev_node))
    mounted = gr.mount_gradio_app(
        app,
        ui,
        path="/",
        theme=gr.themes.Soft(),
        css=render.CSS,
        footer_links=["api"],
        max_file_size=front.settings.max_upload_bytes,
        show_error=False,
        # Gradio's run history would keep every handler's inputs and outputs (keys, invoices) for a
        # page anyone can open
        run_history=False,
    )
    app.add_middleware(UploadSizeLimit, limit=front.settings.max_upload_bytes)
    # Mounted apps never "launch", and Gradio skips its own check that an input file lies in its
    # upload folder until one has: without this, a handler given {"path": "/etc/..."} would copy
    # that file into the cache before any handler could refuse it. The guard checks again.
    ui.has_launched = True
    uploads.bind(ui.upload_file_set)
    return mounted
