"""The paid API's door, attacked where the web app's holes had counterparts: links that follow
the Host header, quotes for images that could never be uploaded, a shared dev wallet that
hands out other people's preimages, empty idempotency keys."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import create_app
from payments import l402
from service.config import Settings

from .helpers import natural_image

MODEL = "realesr-animevideov3"


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(20, 24, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def client(tmp_path: Path, registry) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry), raise_server_exceptions=False) as c:
        yield c


def create(client: TestClient, seed: int = 0, headers: dict | None = None) -> object:
    return client.post(
        "/v1/upscales",
        files={"image": ("a.png", png(seed), "image/png")},
        data={"model": MODEL, "scale": "2"},
        headers=headers,
    )


def test_links_never_follow_the_host_header(client: TestClient) -> None:
    response = create(client, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
    assert response.status_code == 402
    body = response.json()
    status = client.get(f"/v1/upscales/{body['job_id']}", headers={"Host": "evil.example"})
    for text in (response.text, status.text, response.headers.get("location", "")):
        assert "evil.example" not in text
    assert body["links"]["self"] == f"/v1/upscales/{body['job_id']}"


def test_a_configured_public_address_is_used(tmp_path: Path, registry) -> None:
    settings = Settings(data_dir=tmp_path / "data", public_url="https://upscale.example/")
    with TestClient(create_app(settings, registry)) as client:
        body = create(client).json()
        assert body["links"]["self"] == f"https://upscale.example/v1/upscales/{body['job_id']}"


def test_quotes_obey_the_upload_limits(client: TestClient) -> None:
    never = client.get("/v1/quote", params={"model": MODEL, "width": 100_000, "height": 100_000})
    assert never.status_code == 422 and never.headers["content-type"] == "application/problem+json"
    too_many_pixels = client.get("/v1/quote", params={"model": MODEL, "width": 20_000, "height": 20_000})
    assert too_many_pixels.status_code == 413 and "megapixels" in too_many_pixels.json()["detail"]
    fine = client.get("/v1/quote", params={"model": MODEL, "width": 4000, "height": 4000, "scale": 2})
    assert fine.status_code == 200 and fine.json()["output_width"] == 8000


def test_the_shared_dev_wallet_lists_no_preimages(client: TestClient) -> None:
    response = create(client, 1)
    body = response.json()
    macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
    paid = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}).json()
    assert paid["preimage"]  # the payer gets it, as from a real wallet
    history = client.get("/v1/dev/payments").json()
    assert history and all("preimage" not in entry for entry in history)
    assert paid["preimage"] not in client.get("/v1/dev/payments").text
    # so a leaked macaroon plus the wallet's history is still no credential
    result = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": f"L402 {macaroon}"})
    assert result.status_code == 401 and result.headers["www-authenticate"].startswith("L402")


def test_an_explicitly_private_dev_server_may_list_them(tmp_path: Path, registry) -> None:
    settings = Settings(data_dir=tmp_path / "data", dev_wallet_lists_preimages=True)
    with TestClient(create_app(settings, registry)) as client:
        body = create(client).json()
        paid = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}).json()
        assert [e["preimage"] for e in client.get("/v1/dev/payments").json()] == [paid["preimage"]]


def test_an_empty_idempotency_key_is_refused_not_a_crash(client: TestClient) -> None:
    first = create(client, 2, headers={"Idempotency-Key": ""})
    assert first.status_code == 422 and first.headers["content-type"] == "application/problem+json"
    assert client.app.state.service.store.count() == 0


def test_a_credential_for_another_request_makes_nothing(client: TestClient) -> None:
    response = create(client, 4)
    macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
    before = client.app.state.service.store.count()
    other = create(client, 5, headers={"Authorization": f"L402 {macaroon}"})
    assert other.status_code == 401 and "different image" in other.json()["detail"]
    assert client.app.state.service.store.count() == before


def wait_status(client: TestClient, job_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/upscales/{job_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"{job_id} never became {status}"
        time.sleep(0.1)


def test_unpaid_uploads_are_capped(tmp_path: Path, registry) -> None:
    """Uploads are stored before anyone pays: what waits for payment is capped."""
    cap = len(png(10)) + len(png(11)) + 10  # room for two of these uploads, not three
    settings = Settings(data_dir=tmp_path / "data", max_pending_upload_bytes=cap)
    with TestClient(create_app(settings, registry)) as client:
        inputs = tmp_path / "data" / "inputs"
        assert create(client, 10).status_code == create(client, 11).status_code == 402
        assert len(list(inputs.iterdir())) == 2
        busy = create(client, 12)
        assert busy.status_code == 503 and busy.headers["content-type"] == "application/problem+json"
        assert "waiting for payment" in busy.json()["detail"] and len(list(inputs.iterdir())) == 2
        assert create(client, 10).status_code == 402  # an image already stored adds nothing


def test_unpaid_uploads_are_removed_when_their_jobs_expire(tmp_path: Path, registry) -> None:
    settings = Settings(data_dir=tmp_path / "data", invoice_expiry_seconds=1)
    with TestClient(create_app(settings, registry)) as client:
        inputs = tmp_path / "data" / "inputs"
        lonely = create(client, 20).json()
        wait_status(client, lonely["job_id"], "expired")
        stored = inputs / f"{lonely['input']['sha256']}.png"
        deadline = time.monotonic() + 10  # removed right after the job's state is written
        while stored.exists():
            assert time.monotonic() < deadline, "the expired job's upload is still stored"
            time.sleep(0.05)
        # the same image in a paid job stays, even when another job made from it expires unpaid
        kept = create(client, 21).json()
        client.post("/v1/dev/pay", json={"payment_request": kept["payment_request"], "wait": True})
        wait_status(client, kept["job_id"], "succeeded")
        unpaid = create(client, 21).json()
        wait_status(client, unpaid["job_id"], "expired")
        time.sleep(0.5)  # as long as a removal takes above, many times over
        assert (inputs / f"{kept['input']['sha256']}.png").exists()


def test_the_gateway_serves_only_what_it_holds(client: TestClient) -> None:
    from provenance.cid import IDENTITY, Cid, multihash_of

    forged = Cid(version=1, codec=0x55, multihash=multihash_of(b"\x89PNG\r\n\x1a\n<script>", IDENTITY))
    response = client.get(f"/ipfs/{forged}")
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
