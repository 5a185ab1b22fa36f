"""The web app's "Restore faces": its fields reach the handlers as untrusted values like any
request's, the price counts the faces in the upload, and the page says which upscalers suit it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
import skimage.data
from PIL import Image

from app import create_app
from service.config import Settings
from service.ui.handlers import NO_PASS, options_from_page, page_faces
from service.ui.render import face_note
from sr_core.faces.align import FFHQ_TEMPLATE, align
from sr_core.faces.search import FoundFace

from .servers import serving
from .test_ui_security import NO_PASSES, call, file_data, upload

PHOTO = "realesrgan-x4plus"
DRAWN = "realesr-animevideov3"
FACE = "gfpgan-v1.4"


@pytest.fixture
def served(tmp_path: Path, face_registry) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(data_dir=tmp_path / "data", max_upload_bytes=2_000_000), face_registry)
    with serving(app) as url:
        yield url, app


def portrait() -> bytes:
    small = Image.fromarray(skimage.data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_offers_face_models_only_as_the_face_stage(served) -> None:
    _url, app = served
    front = app.state.front
    assert set(front.face_model_names()) == {"codeformer", FACE, "restoreformer"}
    assert not set(front.face_model_names()) & set(front.model_names())
    assert PHOTO in front.model_names()


def test_the_quote_counts_the_faces_in_the_upload(served) -> None:
    url, app = served
    path = upload(url, portrait())
    kind, quoted = call(url, "quote", [file_data(path), PHOTO, 2, False, True, FACE, 0.5, *NO_PASSES])
    assert kind == "complete" and "up to 1 face restored" in quoted and "sats**" in quoted, quoted
    # unticked: no face stage, no faces counted
    _kind, plain = call(url, "quote", [file_data(path), PHOTO, 2, False, False, FACE, 0.5, *NO_PASSES])
    assert "face" not in plain and "sats**" in plain
    assert app.state.service.store.count() == 0


def test_the_face_fields_are_checked_like_any_request(served) -> None:
    url, app = served
    path = upload(url, portrait())
    session = {"current": None, "jobs": []}
    gradio = "not in the list of choices"  # Gradio's own check of a choice, before our handler
    cases = [
        ([True, "nope", 0.5], ("no model named 'nope'", gradio)),
        ([True, PHOTO, 0.5], (f"{PHOTO} is not a face model", gradio)),
        ([True, {"path": "/etc/passwd"}, 0.5], ("face model must be text", gradio)),
        # Gradio's slider refuses text itself, saying nothing of our internals
        ([True, FACE, "half"], ("face weight must be a number", '{"error": null}')),
        ([True, FACE, 7], ("weight must be between 0 and 1", "greater than maximum value 1.0")),
        ([True, "", 0.5], ("Choose a face model", gradio)),
    ]
    for faces, messages in cases:
        data = [file_data(path), PHOTO, 2, "png", 0, "auto", False, session, *faces, *NO_PASSES]
        kind, payload = call(url, "create", data)
        assert kind == "error" and any(m in payload for m in messages), (faces, payload[:300])
        _kind, quoted = call(url, "quote", [file_data(path), PHOTO, 2, False, *faces, *NO_PASSES])
        assert any(m in quoted for m in messages) and "sats**" not in quoted, (faces, quoted[:300])
    # after a model that repaints faces, the server refuses the face stage
    _kind, quoted = call(url, "quote", [file_data(path), DRAWN, 2, False, True, FACE, 0.5, *NO_PASSES])
    assert "paste photographic faces into a drawing" in quoted and "sats**" not in quoted
    assert app.state.service.store.count() == 0


def test_the_page_builds_the_face_stage_and_refuses_odd_shapes() -> None:
    options = options_from_page(PHOTO, 4, None, 0, "auto", False, None, (True, FACE, 0.25))
    assert options.pipeline == [
        {"model": PHOTO, "scale": 4, "tile": None, "precision": "auto"},
        {"face": FACE, "weight": 0.25},
    ]
    assert options_from_page(PHOTO, 4, None, 0, "auto", False, None, (False, FACE, 0.25)).pipeline is None
    assert page_faces("true", FACE, 0.5) is None  # only a real tick turns it on
    for bad in ((True, FACE, True), (True, FACE, [0.5]), (True, 3, 0.5)):
        with pytest.raises(gr.Error):
            page_faces(*bad)


def test_the_page_says_which_upscalers_suit_face_restoration(served) -> None:
    photo, anime = {"name": PHOTO, "faces": "keeps"}, {"name": "anime", "faces": "repaints"}
    assert "Not with anime" in face_note([anime], {"licence": None})
    assert "Suits this model" in face_note([photo], None)
    assert "Not with anime" in face_note([photo, anime], None)  # any pass before the faces counts
    licence = face_note([photo], {"licence": "non-commercial use only"})
    assert "Licence" in licence and "non-commercial" in licence
    # the page's handler reads every pass
    url, _app = served
    kind, payload = call(url, "face_note", [PHOTO, FACE, "realesr-animevideov3", 2, NO_PASS, 2])
    assert kind == "complete" and "Not with realesr-animevideov3" in str(payload), payload
    kind, payload = call(url, "face_note", [PHOTO, FACE, NO_PASS, 2, NO_PASS, 2])
    assert kind == "complete" and "Suits this model" in str(payload), payload


def test_the_faces_a_stage_reports_are_json() -> None:
    """The faces a stage restored go into the job document and the metadata: plain JSON numbers
    even when the detector hands numpy scalars."""
    landmarks = FFHQ_TEMPLATE * 0.3 + 10
    face = FoundFace(tuple(np.float32([1, 2, 3, 4])), np.float32(0.99), landmarks, align(landmarks))
    described = json.loads(json.dumps(face.describe()))
    assert described["score"] == 0.99 and described["box"] == [1.0, 2.0, 3.0, 4.0]


def test_the_faces_preset_ticks_restore_faces(served) -> None:
    url, app = served
    (preset,) = [p for p in app.state.front.presets() if p.id == "upscale-then-faces"]
    assert preset.pipeline(4) == [{"model": PHOTO, "scale": 4}, {"face": FACE}]  # not the non-commercial one
    kind, payload = call(url, "apply_preset", ["upscale-then-faces", 4])
    assert kind == "complete", payload
    values = json.loads(payload)
    assert values[0]["value"] == PHOTO and values[-2]["value"] is True and values[-1]["value"] == FACE
