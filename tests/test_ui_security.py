"""The web app as an attacker sees it: every Gradio handler is an HTTP endpoint, hidden or
not. None may release a result (or run an upscale) without a paid invoice and the job's
own macaroon. Also the public API through gradio_client."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app import create_app
from payments import l402
from service.config import Settings
from service.jobs import InvoiceStatus, JobState

from .helpers import natural_image
from .servers import serving

MODEL = "realesr-animevideov3"


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(20, 24, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path: Path, registry) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(data_dir=tmp_path / "data"), registry)
    with serving(app) as url:
        yield url, app


def new_job(url: str, seed: int) -> tuple[dict, str]:
    response = httpx.post(
        f"{url}/v1/upscales",
        files={"image": ("a.png", png(seed), "image/png")},
        data={"model": MODEL, "scale": "2"},
        timeout=60,
    )
    assert response.status_code == 402
    return response.json(), l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon


def paid_job(url: str, seed: int) -> tuple[dict, str]:
    body, macaroon = new_job(url, seed)
    httpx.post(f"{url}/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}, timeout=120)
    return httpx.get(f"{url}/v1/upscales/{body['job_id']}", timeout=30).json(), macaroon


def call(url: str, api_name: str, data: list[Any]) -> tuple[str, str]:
    """A raw Gradio API call, as a script would make it: ("complete" | "error", payload text)."""
    started = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    kind, payload = "error", ""
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{event_id}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ").strip()
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = line.removeprefix("data: ")
                break
    return kind, payload


def forged_inputs(component: dict, victim_id: str, macaroon: str) -> Any:
    """A plausible value for each input of a handler, with the victim's job id where a job goes."""
    forged_session = {"current": victim_id, "jobs": [{"job_id": victim_id, "macaroon": macaroon}]}
    return {
        "browserstate": forged_session,
        "state": victim_id,
        "image": None,
        "dropdown": MODEL,
        "radio": 2,
        "number": 0,
        "textbox": victim_id,
    }.get(component["type"])


def test_no_handler_releases_a_result_without_the_paid_jobs_macaroon(served) -> None:
    url, app = served
    victim, victim_macaroon = paid_job(url, 1)
    assert victim["status"] == "succeeded"
    attacker_job, attacker_macaroon = new_job(url, 2)  # the attacker's own, unpaid
    store = app.state.service.store
    secrets = [victim["output"]["sha256"], victim["provenance"]["output_cid"], victim["provenance"]["input_cid"]]

    config = httpx.get(f"{url}/config", timeout=30).json()
    components = {component["id"]: component for component in config["components"]}
    handlers = [d for d in config["dependencies"] if d["backend_fn"]]
    assert {d["api_name"] for d in handlers} >= {"create", "render", "pay_with_dev_wallet", "verify", "open_job"}
    for macaroon in ("garbage", attacker_macaroon, victim_macaroon[:-6] + "AAAAAA"):
        for handler in handlers:
            data = [forged_inputs(components[i], victim["job_id"], macaroon) for i in handler["inputs"]]
            kind, payload = call(url, handler["api_name"], data)
            for secret in secrets:
                assert secret not in payload, f"{handler['api_name']} leaked the victim's result ({kind})"
            assert '"path"' not in payload or "satscale-preview" not in payload, handler["api_name"]

    # the attacker's job was never paid, so never run; the victim's payment is untouched
    attacker = store.get(attacker_job["job_id"])
    assert attacker.state is JobState.AWAITING_PAYMENT and attacker.invoice_status is InvoiceStatus.OPEN
    assert store.get(victim["job_id"]).invoice_status is InvoiceStatus.SETTLED
    for job in store.recent(50):  # nothing ran without its invoice held or settled
        if job.state in (JobState.PROCESSING, JobState.SUCCEEDED):
            assert job.invoice_status in (InvoiceStatus.ACCEPTED, InvoiceStatus.SETTLED)


def test_the_owner_sees_the_result_through_the_same_handler(served) -> None:
    url, _ = served
    victim, macaroon = paid_job(url, 3)
    session = {"current": victim["job_id"], "jobs": [{"job_id": victim["job_id"], "macaroon": macaroon}]}
    deadline = time.monotonic() + 30
    while True:
        kind, payload = call(url, "render", [session, None])
        if victim["provenance"]["output_cid"] in payload or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert kind == "complete"
    outputs = json.loads(payload)
    slider = next(o for o in outputs if isinstance(o, dict) and o.get("__type__") == "update" and o.get("value"))
    assert slider["visible"] is True  # the before/after images are released to the macaroon holder


def test_public_api_with_gradio_client(served) -> None:
    url, _ = served
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/price", "/status"}  # nothing else is advertised
    price = client.predict(MODEL, 2, 100, 80, api_name="/price")
    assert "10 sats" in price and "output 200 × 160" in price

    victim, macaroon = paid_job(url, 4)
    status = client.predict(victim["job_id"], macaroon, api_name="/status")
    assert status["status"] == "succeeded" and status["invoice_status"] == "settled"
    assert set(status) == {"job_id", "status", "amount_msat", "progress", "invoice_status", "chain_status", "error"}
    with pytest.raises(AppError, match="Not your job"):
        client.predict(victim["job_id"], "forged", api_name="/status")
    _, other_macaroon = new_job(url, 5)
    with pytest.raises(AppError, match="Not your job"):
        client.predict(victim["job_id"], other_macaroon, api_name="/status")
