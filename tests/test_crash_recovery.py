"""Crash safety: the real server (`python app.py`) killed with SIGKILL at several points of
paid jobs, restarted on the same data, must end every paid job succeeded (charged once,
output intact) or failed (payment returned); nothing lost, nothing charged twice."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .helpers import natural_image

ROOT = Path(__file__).resolve().parent.parent
MODEL = "realesr-animevideov3"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python app.py` in a subprocess on 127.0.0.1, stopped by PID."""

    def __init__(self, data_dir: Path, weights_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SATSCALE_DATA_DIR": str(data_dir),
            "SATSCALE_WEIGHTS_DIR": str(weights_dir),
            "SATSCALE_PORT": str(self.port),
            "SATSCALE_HOST": "127.0.0.1",
            # a private test server: the shared dev wallet may list preimages (the payers' proofs)
            "SATSCALE_DEV_WALLET_LISTS_PREIMAGES": "1",
        }
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server(tmp_path: Path, weights_folder: Path) -> Iterator[Server]:
    instance = Server(tmp_path / "data", weights_folder, tmp_path / "server.log")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def photo(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(360, 400, seed=seed)).save(buffer, "PNG")  # a few seconds of engine time
    return buffer.getvalue()


def create(server: Server, seed: int) -> dict:
    response = httpx.post(
        f"{server.url}/v1/upscales",
        files={"image": ("photo.png", photo(seed), "image/png")},
        data={"model": MODEL},
        timeout=60,
    )
    assert response.status_code == 402, response.text
    return {**response.json(), "challenge": response.headers["WWW-Authenticate"]}


def pay(server: Server, job: dict) -> None:
    response = httpx.post(f"{server.url}/v1/dev/pay", json={"payment_request": job["payment_request"]}, timeout=30)
    assert response.status_code == 200, response.text


def status(server: Server, job_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/upscales/{job_id}", timeout=30).json()


def wait_for(server: Server, job_id: str, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(server, job_id)
        if body["status"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {states}; last {body}")


def wait_until_settled_or_refunded(server: Server, job_id: str, timeout: float = 180) -> dict:
    """The job state is written before the invoice is settled or cancelled: wait for both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(server, job_id)
        if (body["status"] == "succeeded" and body["charged"]) or (
            body["status"] == "failed" and body["invoice_status"] == "canceled"
        ):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never settled or refunded; last {body}")


def test_kill_nine_at_every_stage_loses_nothing_and_charges_once(server: Server) -> None:
    jobs = []

    # 1. killed while the invoice is unpaid: the invoice survives, paying it later still works
    unpaid = create(server, 1)
    server.restart()
    pay(server, unpaid)
    jobs.append(unpaid)

    # 2. killed right after the payment is held
    held = create(server, 2)
    pay(server, held)
    server.restart()
    jobs.append(held)

    # 3. killed in the middle of the engine run
    running = create(server, 3)
    pay(server, running)
    wait_for(server, running["job_id"], {"processing"})
    time.sleep(0.3)
    server.restart()
    jobs.append(running)

    # 4. killed just after success (settlement may or may not have happened)
    finished = create(server, 4)
    pay(server, finished)
    wait_for(server, finished["job_id"], {"succeeded"})
    server.restart()
    jobs.append(finished)

    # 5. killed at random moments of several overlapping jobs
    rng = random.Random(7)
    for round_number in range(3):
        batch = [create(server, 10 + 3 * round_number + i) for i in range(2)]
        for job in batch:
            pay(server, job)
        time.sleep(rng.uniform(0.0, 2.5))
        server.restart()
        jobs.extend(batch)

    finals = {job["job_id"]: wait_until_settled_or_refunded(server, job["job_id"]) for job in jobs}
    history = httpx.get(f"{server.url}/v1/dev/payments", timeout=30).json()
    by_hash: dict[str, list[dict]] = {}
    for payment in history:
        by_hash.setdefault(payment["payment_hash"], []).append(payment)

    for job in jobs:
        final = finals[job["job_id"]]
        payments = by_hash[job["payment_hash"]]
        assert len(payments) == 1, "a payment hash was paid twice"
        payment = payments[0]
        if final["status"] == "succeeded":
            # charged exactly once, and the output is there, intact, for the holder of the preimage
            assert payment["state"] == "settled" and payment["charged_msat"] == job["amount_msat"]
            assert final["charged"] is True
            macaroon = job["challenge"].split('macaroon="', 1)[1].split('"', 1)[0]
            credential = {"Authorization": f"L402 {macaroon}:{payment['preimage']}"}
            owner = httpx.get(f"{server.url}/v1/upscales/{job['job_id']}", headers=credential, timeout=30).json()
            result = httpx.get(f"{server.url}{owner['output']['url']}", headers=credential, timeout=60)
            assert result.status_code == 200
            assert hashlib.sha256(result.content).hexdigest() == owner["output"]["sha256"]
            assert Image.open(io.BytesIO(result.content)).size == (1600, 1440)
        else:
            assert payment["state"] == "canceled" and payment["charged_msat"] == 0
            assert final["charged"] is False
    # with a 180 s hold budget and seconds of work, every one of these jobs should have succeeded
    assert all(final["status"] == "succeeded" for final in finals.values()), finals
    # the attempts the kills interrupted left nothing half-written behind
    outputs = server.data_dir / "outputs"
    leftovers = [p.name for p in outputs.iterdir() if p.name.endswith((".partial", ".staging.tif"))]
    assert leftovers == [], leftovers
