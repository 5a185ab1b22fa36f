"""Admission and cancellation: the server sells only what it can deliver while a payment is
held, tiny jobs cannot talk its estimates down, and a job that fails mid-run stops its engine
within one batch of tiles so the job behind it starts at once."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import create_app
from service.config import Settings
from service.jobs import JobState

from .helpers import natural_image

SLOW = "realesrgan-x4plus"
FAST = "realesr-animevideov3"


def png(height: int, width: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(height, width, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


def post(client: TestClient, image: bytes, **form) -> object:
    return client.post("/v1/upscales", files={"image": ("in.png", image, "image/png")}, data=form)


def pay(client: TestClient, payment_request: str, wait: bool = True) -> None:
    response = client.post("/v1/dev/pay", json={"payment_request": payment_request, "wait": wait, "timeout": 120})
    assert response.status_code == 200, response.text


def status(client: TestClient, job_id: str) -> dict:
    return client.get(f"/v1/upscales/{job_id}").json()


def wait_state(client: TestClient, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(client, job_id)
        if body["status"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {states}: {body}")


@pytest.fixture
def client(tmp_path: Path, registry) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", hold_budget_seconds=30, max_input_megapixels=4)
    with TestClient(create_app(settings, registry), raise_server_exceptions=False) as test_client:
        yield test_client


def test_tiny_paid_jobs_do_not_poison_the_estimate(client: TestClient) -> None:
    service = client.app.state.service
    big = png(1000, 1000)
    refused = post(client, big, model=SLOW, scale="4")
    assert refused.status_code == 413 and "payment can be held for 30 s" in refused.json()["detail"]
    quoted = client.get("/v1/quote", params={"model": SLOW, "width": 1000, "height": 1000, "scale": 4}).json()
    engine = service.engines.get(SLOW)
    samples = service.meter.samples(engine.info)
    assert samples >= 3  # calibrated on tiles big enough to time

    # the attack: fourteen paid 1x1 jobs (140 sats), each finished in a fraction of a second
    for seed in range(14):
        body = post(client, png(1, 1, seed), model=SLOW, scale="4").json()
        pay(client, body["payment_request"])
        assert wait_state(client, body["job_id"], {"succeeded", "failed"})["status"] == "succeeded"

    assert service.meter.samples(engine.info) == samples  # nothing that small is a measurement
    again = client.get("/v1/quote", params={"model": SLOW, "width": 1000, "height": 1000, "scale": 4}).json()
    assert again["estimated_seconds"] == quoted["estimated_seconds"]
    still_refused = post(client, big, model=SLOW, scale="4")
    assert still_refused.status_code == 413
    assert all(job.model == SLOW and job.input_width == 1 for job in service.store.recent(100))


def test_real_work_is_measured(client: TestClient) -> None:
    service = client.app.state.service
    body = post(client, png(160, 200), model=FAST, scale="2", tile="64").json()
    engine = service.engines.get(FAST)
    before = service.meter.samples(engine.info)
    pay(client, body["payment_request"])
    assert wait_state(client, body["job_id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert service.meter.samples(engine.info) > before


def test_the_queue_ahead_counts(tmp_path: Path, registry) -> None:
    """A job that fits the hold budget alone but not behind the paid work queued ahead is refused
    with 503 and Retry-After (nothing charged), instead of being sold and refunded later."""
    settings = Settings(data_dir=tmp_path / "data", hold_budget_seconds=30)
    with TestClient(create_app(settings, registry), raise_server_exceptions=False) as client:
        service = client.app.state.service
        service.intake.backlog = lambda: 24.0  # seconds of paid work queued ahead (the budget: 0.8 x 30 s)
        busy = post(client, png(24, 32), model=FAST, scale="2")
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
        assert busy.headers["content-type"] == "application/problem+json"
        assert "nothing was charged" in busy.json()["detail"].lower()
        assert service.store.count() == 0
        service.intake.backlog = lambda: 0.0
        assert post(client, png(24, 32), model=FAST, scale="2").status_code == 402


def test_a_job_failed_mid_run_stops_its_engine_and_the_next_job_starts(client: TestClient) -> None:
    service = client.app.state.service
    first = post(client, png(256, 256, 1), model=FAST, scale="2", tile="32").json()
    second = post(client, png(24, 32, 2), model=FAST, scale="2").json()
    engine = service.engines.get(FAST)
    calls: list[tuple[int, ...]] = []
    lock = threading.Lock()
    original = engine.run

    def slow_run(batch):
        with lock:
            calls.append(tuple(batch.shape))
        time.sleep(0.5)  # long enough for the test to act between two batches, even on a loaded machine
        return original(batch)

    engine.run = slow_run
    try:
        first_window = None
        pay(client, first["payment_request"], wait=False)
        pay(client, second["payment_request"], wait=False)
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls, "the first job never reached its engine"
        first_window = calls[0][2:]
        failed = client.portal.call(service.fail, first["job_id"], "failed by the operator")
        assert failed.state is JobState.FAILED
        with lock:
            at_fail = sum(1 for shape in calls if shape[2:] == first_window)
        done = wait_state(client, second["job_id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded"
    finally:
        engine.run = original
    first_calls = sum(1 for shape in calls if shape[2:] == first_window)
    plan_batches = -(-64 // calls[0][0])  # 64 tiles of 32 px, in batches of the first call's size
    assert first_calls <= at_fail + 1, "the engine went on after its job failed"
    assert first_calls < plan_batches, "the whole job ran: nothing was stopped"
    refunded = status(client, first["job_id"])
    assert refunded["status"] == "failed" and refunded["invoice_status"] == "canceled"
    outputs = Path(service.runner.outputs_dir)
    assert not list(outputs.glob(f"*{first['job_id']}*")), "the stopped run left a file behind"
