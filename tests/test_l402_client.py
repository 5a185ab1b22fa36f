"""A third-party L402 client pays for an upscale: the PyPI package `l402-requests`, with its
own challenge parsing and retry logic, against a real server on 127.0.0.1, paying through
the dev node with a small wallet adapter."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from l402_requests import L402Client
from l402_requests.budget import BudgetController
from l402_requests.wallets import WalletBase
from PIL import Image

from app import create_app
from service.config import Settings

from .helpers import natural_image
from .servers import serving


class DevWallet(WalletBase):
    """Pays through the server's simulated wallet and, like a real wallet, returns the
    preimage only when the payment settles (for a hold invoice: after the job succeeded)."""

    supports_preimage = True

    def __init__(self, server: str) -> None:
        self.server = server
        self.paid: list[str] = []

    async def pay_invoice(self, bolt11: str) -> str:
        async with httpx.AsyncClient(timeout=180) as client:
            response = await client.post(
                f"{self.server}/v1/dev/pay", json={"payment_request": bolt11, "wait": True, "timeout": 150}
            )
        response.raise_for_status()
        self.paid.append(bolt11)
        return response.json()["preimage"]


@pytest.fixture
def server_url(tmp_path: Path, registry) -> Iterator[str]:
    with serving(create_app(Settings(data_dir=tmp_path / "data"), registry)) as url:
        yield url


def test_l402_requests_pays_and_gets_the_upscale(server_url: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(30, 40, seed=5)).save(buffer, "PNG")
    wallet = DevWallet(server_url)
    client = L402Client(wallet=wallet, budget=BudgetController(max_sats_per_request=50))

    response = client.post(
        f"{server_url}/v1/upscales",
        files={"image": ("art.png", buffer.getvalue(), "image/png")},
        data={"model": "realesr-animevideov3", "scale": "3", "format": "webp"},
        timeout=180,
    )

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["charged"] is True
    assert len(wallet.paid) == 1 and wallet.paid[0].startswith("lnbcrt")
    assert client.spending_log.records[-1].amount_sats == job["amount_msat"] // 1000
    # the credential the client built and sent on its paid retry
    credential = response.request.headers["Authorization"]
    assert credential.startswith("L402 ")
    assert job["output"]["url"].startswith("/v1/")  # relative: links never follow the request's Host header
    result = httpx.get(f"{server_url}{job['output']['url']}", headers={"Authorization": credential}, timeout=60)
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"
    assert hashlib.sha256(result.content).hexdigest() == job["output"]["sha256"]
    assert Image.open(io.BytesIO(result.content)).size == (120, 90)
