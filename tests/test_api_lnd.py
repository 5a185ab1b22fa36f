"""The whole paid flow with the `lnd` backend, against the LND double over real gRPC, TLS
and macaroons: the server is configured exactly as for a real node (invoice macaroon)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app import create_app
from payments import l402
from service.config import Settings
from tests.lnd_double import LndDouble, State, running_lnd_double

from .helpers import natural_image
from .servers import serving

MODEL = "realesr-animevideov3"


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(20, 28, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def double(tmp_path: Path) -> AsyncIterator[LndDouble]:
    async with running_lnd_double(tmp_path / "lnd") as node:
        yield node


@pytest.fixture
async def server(double: LndDouble, tmp_path: Path, registry) -> AsyncIterator[tuple[str, object]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        backend="lnd",
        lnd_host=double.host,
        lnd_port=double.port,
        lnd_tls_cert=double.files.tls_cert,
        lnd_macaroon=double.files.invoice_macaroon,
        lnd_network="regtest",
    )
    # the app runs on its own loop in a thread; the double stays on the test's loop
    app = create_app(settings, registry)
    server = serving(app)
    url = await asyncio.to_thread(server.__enter__)
    try:
        yield url, app
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


async def create(http: httpx.AsyncClient, seed: int) -> httpx.Response:
    return await http.post(
        "/v1/upscales", files={"image": ("in.png", png(seed), "image/png")}, data={"model": MODEL, "scale": "2"}
    )


def settled(body: dict) -> bool:
    """Succeeded and charged: the state is written first, the invoice settled right after."""
    return body["status"] == "succeeded" and body["charged"]


def refunded(body: dict) -> bool:
    return body["status"] == "failed" and body["invoice_status"] == "canceled"


async def wait_for(http: httpx.AsyncClient, job_id: str, done, timeout: float = 60) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            body = (await http.get(f"/v1/upscales/{job_id}")).json()
            if done(body):
                return body
            await asyncio.sleep(0.05)


async def test_paid_flow_settles_on_lnd(server, double: LndDouble) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        response = await create(http, 1)
        assert response.status_code == 402
        body = response.json()
        challenge = l402.parse_challenge(response.headers["WWW-Authenticate"])
        assert challenge.invoice.startswith("lnbcrt")
        double.pay(challenge.invoice)  # the HTLC arrives: funds held
        await wait_for(http, body["job_id"], settled)
        invoice = double.invoice(bytes.fromhex(body["payment_hash"]))
        assert invoice.state is State.SETTLED
        credential = f"L402 {challenge.macaroon}:{invoice.preimage.hex()}"
        result = await http.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
        assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (56, 40)


async def test_failed_job_cancels_the_held_htlc(server, double: LndDouble) -> None:
    url, app = server

    def broken(job, stop):
        raise RuntimeError("the GPU fell off the bus")

    app.state.service.runner._run_engine = broken
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        body = (await create(http, 2)).json()
        double.pay(body["payment_request"])
        failed = await wait_for(http, body["job_id"], refunded)
        assert failed["charged"] is False and "GPU fell off" in failed["error"]
        assert double.invoice(bytes.fromhex(body["payment_hash"])).state is State.CANCELED


async def test_node_outage_gives_503_then_recovers_and_catches_up(server, double: LndDouble) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        waiting = (await create(http, 3)).json()  # issued before the outage
        await double.stop()
        refused = await create(http, 4)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) > 0 and "nothing was charged" in refused.json()["detail"]
        double.pay(waiting["payment_request"])  # paid while the server cannot see the node
        await double.restart()
        await wait_for(http, waiting["job_id"], settled, timeout=90)  # found by the reconciler
        assert double.invoice(bytes.fromhex(waiting["payment_hash"])).state is State.SETTLED
        async with asyncio.timeout(60):
            while (await http.get("/healthz")).json()["lightning"] != "up":
                await asyncio.sleep(0.1)
        assert (await create(http, 5)).status_code == 402


async def test_dropped_streams_are_resumed(server, double: LndDouble) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        body = (await create(http, 6)).json()
        async with asyncio.timeout(30):
            while double.open_streams == 0:
                await asyncio.sleep(0.05)
        double.drop_streams()
        double.pay(body["payment_request"])
        await wait_for(http, body["job_id"], settled, timeout=90)
        assert double.invoice(bytes.fromhex(body["payment_hash"])).state is State.SETTLED
