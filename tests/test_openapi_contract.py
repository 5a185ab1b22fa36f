"""The OpenAPI document is the contract: schemathesis, run as a third-party client would run it
against /openapi.json of the live app, finds no response the document does not describe.

Its standard checks all run (server errors, status codes, content types, response schemas and
headers, schema-valid requests accepted, invalid ones rejected, undeclared methods answered
405 with Allow), over the examples, coverage and fuzzing phases, with a fixed seed and a
bounded number of cases. Where a multipart part is an image, it is given real image bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import create_app
from service.config import Settings

from .servers import serving

pytestmark = pytest.mark.slow

HOOKS = """
import io
import uuid

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def encoded(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


for fmt, name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP"), ("tiff", "TIFF")):
    schemathesis.openapi.media_type(f"image/{fmt}", st.just(encoded(name)))


# A pipeline is a JSON document checked against the models there are, as an image is bytes
# that decode: a schema cannot say which strings are pipelines. A request meant to be valid
# gets a real one (instead of the single-model fields, as the API asks); invalid ones are left.
PIPELINE = '[{"model": "realesr-animevideov3", "scale": 2}, {"model": "realesr-animevideov3", "scale": 2}]'
SINGLE = ("model", "scale", "tile", "precision")


@schemathesis.hook
def map_case(context, case):
    from schemathesis.generation import GenerationMode

    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    for part in (case.query, case.body):
        if isinstance(part, dict) and "pipeline" in part:
            part["pipeline"] = PIPELINE
            for name in SINGLE:
                part.pop(name, None)
        elif isinstance(part, dict) and part.get("scale") is not None and "contract" not in part:
            # which scales are offered depends on the model: a valid request asks for one it offers
            part["scale"] = 2
    for name in list(case.headers or {}):
        if name.lower() == "idempotency-key":
            # a key means "the same request again": a valid new request gets a key of its own
            case.headers[name] = uuid.uuid4().hex
    return case


@schemathesis.hook
def before_call(context, case, kwargs):
    # a collection plan connects to the RPC URL it is given: the fuzzer's stay on this server's chain
    if isinstance(case.body, dict) and "contract" in case.body:
        case.body.pop("rpc_url", None)
"""

CONFIG = """
[generation]
database = "none"

# What a schema-valid request may get besides 2xx: 402 is this API's normal first answer (pay,
# then repeat), 413 an image over the pixel limit (a product of two fields, which a schema
# cannot state) or over what a payment can be held for, 503 a busy server; 401/404/409 as usual.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "402", "404", "409", "413", "503"]

# A schema can say a CID or an invoice is a string, not which strings decode, nor which contract
# addresses hold a collection: a generated one is refused (400 / 422) however valid its shape.
# Every other check still runs on these.
[[operations]]
include-path-regex = "^/(ipfs/|v1/dev/pay$|v1/collections(/plan)?$)"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture
def live(tmp_path: Path, registry) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(data_dir=tmp_path / "data"), registry)
    with serving(app) as url:
        yield url, app


def test_the_document_says_what_the_server_does(live, tmp_path: Path) -> None:
    url, _ = live
    (tmp_path / "hooks.py").write_text(HOOKS)
    (tmp_path / "schemathesis.toml").write_text(textwrap.dedent(CONFIG))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--max-examples",
        "25",
        "--seed",
        "1234",
        "--request-timeout",
        "120",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks"}
    run = subprocess.run(
        command, cwd=tmp_path, env=env | {"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=1200
    )
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "10 selected" in run.stdout or "Operations:" in run.stdout, report  # it really tested the operations


def test_the_document_names_the_real_constraints(live) -> None:
    url, _ = live
    document = httpx.get(f"{url}/openapi.json", timeout=60).json()
    quote = {p["name"]: p["schema"] for p in document["paths"]["/v1/quote"]["get"]["parameters"]}
    offered = sorted({scale for row in httpx.get(f"{url}/v1/models", timeout=60).json() for scale in row["scales"]})
    assert "realesrgan-x4plus" in quote["model"]["enum"] and "nearest" in quote["model"]["enum"]
    assert quote["scale"]["enum"] == offered == list(range(1, 65))  # every scale some model offers
    assert quote["width"]["maximum"] == 20000 and quote["tile"]["minimum"] == 32
    assert "anyOf" not in quote["scale"] and "anyOf" not in quote["tile"]  # optional, not nullable
    post = document["paths"]["/v1/upscales"]["post"]
    for status in ("401", "409", "413", "415", "422", "503"):
        assert list(post["responses"][status]["content"]) == ["application/problem+json"], status
    # an undeclared method is 405 with Allow, an unknown path under /v1 a 404 problem
    wrong = httpx.delete(f"{url}/v1/quote", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert wrong.headers["content-type"] == "application/problem+json"
    assert httpx.head(f"{url}/v1/models", timeout=30).status_code == 405
    for path in ("/v1/nothing/here", "/v1", "/ipfs"):
        missing = httpx.get(f"{url}{path}", timeout=30)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json", path
    not_a_cid = httpx.get(f"{url}/ipfs/a/b", timeout=30)  # a path inside a folder, whose CID is not one
    assert not_a_cid.status_code == 400 and not_a_cid.headers["content-type"] == "application/problem+json"
