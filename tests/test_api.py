"""The paid API end to end, in process, on the embedded dev node: what a client sees."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import create_app
from payments import l402
from payments.backend import InvoiceState
from payments.dev import DevNode
from service.config import Settings
from service.jobs import JobState

from .helpers import natural_image

MODEL = "realesr-animevideov3"
PROBLEM = "application/problem+json"


def png(height: int = 24, width: int = 32, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(height, width, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


def make_client(tmp_path: Path, registry, **overrides) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", **overrides)
    return TestClient(create_app(settings, registry), raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path: Path, registry) -> Iterator[TestClient]:
    with make_client(tmp_path, registry) as test_client:
        yield test_client


def post_upscale(client: TestClient, image: bytes, headers: dict | None = None, **form) -> object:
    data = {"model": MODEL, "scale": "2", **form}
    return client.post("/v1/upscales", files={"image": ("in.png", image, "image/png")}, data=data, headers=headers)


def pay(client: TestClient, payment_request: str, wait: bool = True) -> dict:
    response = client.post("/v1/dev/pay", json={"payment_request": payment_request, "wait": wait, "timeout": 60})
    assert response.status_code == 200, response.text
    return response.json()


def settled(body: dict) -> bool:
    """Succeeded and charged: the job state is written first, the invoice settled right after."""
    return body["status"] == "succeeded" and body["charged"]


def refunded(body: dict) -> bool:
    return body["status"] == "failed" and body["invoice_status"] == "canceled"


def wait_for(client: TestClient, job_id: str, done, timeout: float = 60, credential: str | None = None) -> dict:
    """Poll the job's status (public, or as the holder of `credential`) until `done`."""
    headers = {"Authorization": credential} if credential else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/upscales/{job_id}", headers=headers).json()
        if done(body) if callable(done) else body["status"] in done:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {done}: {body}")


def dev_node(client: TestClient):
    return client.app.state.service.backend


def test_quote(client: TestClient) -> None:
    quote = client.get("/v1/quote", params={"model": MODEL, "width": 1000, "height": 500, "scale": 4}).json()
    assert quote["output_width"] == 4000 and quote["output_megapixels"] == 8.0
    assert quote["amount_msat"] == 16_000 and quote["amount_sat"] == 16  # light class: 2 sat/MP
    tiny = client.get("/v1/quote", params={"model": MODEL, "width": 10, "height": 10}).json()
    assert tiny["amount_msat"] == tiny["minimum_msat"] == 10_000
    unknown = client.get("/v1/quote", params={"model": "nope", "width": 10, "height": 10})
    assert unknown.status_code == 422 and unknown.headers["content-type"] == PROBLEM
    assert "no model named 'nope'" in unknown.json()["detail"]
    bad_scale = client.get("/v1/quote", params={"model": MODEL, "width": 10, "height": 10, "scale": 8})
    assert bad_scale.status_code == 422 and "x8 is not offered" in bad_scale.json()["detail"]
    missing = client.get("/v1/quote", params={"model": MODEL})
    assert missing.status_code == 422 and missing.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    ("payload", "status", "slug"),
    [
        (b"this is not an image", 415, "unsupported-image"),
        (b"", 415, "unsupported-image"),
        (png()[:300], 422, "invalid-image"),
    ],
)
def test_bad_images_get_no_invoice(client: TestClient, payload: bytes, status: int, slug: str) -> None:
    response = post_upscale(client, payload)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith(slug) and response.json()["status"] == status
    assert "WWW-Authenticate" not in response.headers


def test_too_large_upload_is_refused(tmp_path: Path, registry) -> None:
    with make_client(tmp_path, registry, max_upload_bytes=1000) as small:
        response = post_upscale(small, png(64, 64))
        assert response.status_code == 413 and response.headers["content-type"] == PROBLEM


def test_paid_flow_end_to_end(client: TestClient) -> None:
    image = png()
    response = post_upscale(client, image)
    assert response.status_code == 402
    body = response.json()
    assert body["status"] == "awaiting_payment" and body["amount_msat"] == 10_000
    assert response.headers["Location"] == f"/v1/upscales/{body['job_id']}"
    challenge = l402.parse_challenge(response.headers["WWW-Authenticate"])
    assert challenge.invoice == body["payment_request"] and challenge.invoice.startswith("lnbcrt")
    assert l402.payment_hash_of(challenge.macaroon).hex() == body["payment_hash"]

    paid = pay(client, challenge.invoice)  # the dev wallet returns once the hold invoice settles
    preimage = bytes.fromhex(paid["preimage"])
    assert hashlib.sha256(preimage).hexdigest() == body["payment_hash"]
    public = wait_for(client, body["job_id"], settled)
    assert public["invoice_status"] == "settled" and public["access"] == "public"
    assert "output" not in public and "provenance" not in public and "input" not in public

    credential = f"L402 {challenge.macaroon}:{preimage.hex()}"
    done = client.get(f"/v1/upscales/{body['job_id']}", headers={"Authorization": credential}).json()
    assert done["access"] == "owner"
    assert done["output"]["width"] == 64 and done["output"]["height"] == 48
    assert done["output"]["url"] == f"/v1/upscales/{body['job_id']}/result"  # relative: no Host header in links
    result = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert hashlib.sha256(result.content).hexdigest() == done["output"]["sha256"]
    assert Image.open(io.BytesIO(result.content)).size == (64, 48)

    # repeating the original request with the credential returns the same job, no new one
    again = post_upscale(client, image, headers={"Authorization": credential})
    assert again.status_code == 200 and again.json()["job_id"] == body["job_id"]
    lsat = post_upscale(client, image, headers={"Authorization": credential.replace("L402", "LSAT", 1)})
    assert lsat.status_code == 200 and lsat.json()["job_id"] == body["job_id"]
    ledger = client.app.state.service.store
    assert ledger.get(body["job_id"]).state is JobState.SUCCEEDED


def test_status_needs_only_the_job_id_but_the_result_needs_the_preimage(client: TestClient) -> None:
    response = post_upscale(client, png())
    body = response.json()
    macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
    # anyone with the job id sees its state, never the macaroon or the invoice
    anonymous_status = client.get(f"/v1/upscales/{body['job_id']}")
    assert anonymous_status.status_code == 202 and "WWW-Authenticate" not in anonymous_status.headers
    assert "payment_request" not in anonymous_status.json() and anonymous_status.json()["status"] == "awaiting_payment"
    # the holder of the macaroon is sent its challenge again
    status_only = client.get(f"/v1/upscales/{body['job_id']}", headers={"Authorization": f"L402 {macaroon}"})
    assert status_only.status_code == 402 and "WWW-Authenticate" in status_only.headers
    assert status_only.json()["payment_request"] == body["payment_request"]
    pay(client, body["payment_request"])
    wait_for(client, body["job_id"], {"succeeded"})
    no_preimage = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": f"L402 {macaroon}"})
    assert no_preimage.status_code == 401 and no_preimage.headers["content-type"] == PROBLEM
    anonymous = client.get(f"/v1/upscales/{body['job_id']}/result")
    assert anonymous.status_code == 401


def test_tokens_never_unlock_another_job(client: TestClient) -> None:
    first = post_upscale(client, png(seed=1))
    second = post_upscale(client, png(seed=2))
    a, b = first.json(), second.json()
    mac_a = l402.parse_challenge(first.headers["WWW-Authenticate"]).macaroon
    mac_b = l402.parse_challenge(second.headers["WWW-Authenticate"]).macaroon
    preimage_a = pay(client, a["payment_request"])["preimage"]
    preimage_b = pay(client, b["payment_request"])["preimage"]
    wait_for(client, a["job_id"], settled)
    wait_for(client, b["job_id"], settled)
    cases = {
        "token A on job B": f"L402 {mac_a}:{preimage_a}",
        "macaroon B with preimage A": f"L402 {mac_b}:{preimage_a}",
        "tampered macaroon": f"L402 {mac_a[:-8]}AAAAAAA=:{preimage_a}",
        "not even base64": f"L402 %%%:{preimage_a}",
    }
    for name, header in cases.items():
        response = client.get(f"/v1/upscales/{b['job_id']}/result", headers={"Authorization": header})
        assert response.status_code == 401, name
        assert response.headers["content-type"] == PROBLEM, name
    # a valid token replayed on a different request is refused, and makes no job
    store = client.app.state.service.store
    before = store.count()
    replay = post_upscale(client, png(seed=3), headers={"Authorization": f"L402 {mac_a}:{preimage_a}"})
    assert replay.status_code == 401
    assert store.count() == before
    assert (
        client.get(
            f"/v1/upscales/{b['job_id']}/result", headers={"Authorization": f"L402 {mac_b}:{preimage_b}"}
        ).status_code
        == 200
    )


def test_idempotency_key(client: TestClient) -> None:
    image = png()
    key = {"Idempotency-Key": "2f6e0c1a-93b4-4c57-9d3e-1f0a8b7c6d5e"}
    first = post_upscale(client, image, headers=key)
    second = post_upscale(client, image, headers=key)
    assert first.status_code == second.status_code == 402
    assert first.json()["job_id"] == second.json()["job_id"]
    assert first.headers["WWW-Authenticate"] == second.headers["WWW-Authenticate"]
    other = post_upscale(client, png(seed=9), headers=key)
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-mismatch")
    guessable = post_upscale(client, image, headers={"Idempotency-Key": "order-2"})
    assert guessable.status_code == 422 and "Idempotency-Key" in guessable.json()["detail"]
    # once paid, whoever replays the key (the key may have leaked) gets the state, not the macaroon
    pay(client, first.json()["payment_request"])
    wait_for(client, first.json()["job_id"], settled)
    late = post_upscale(client, image, headers=key)
    assert late.status_code == 200 and "WWW-Authenticate" not in late.headers
    assert late.json()["access"] == "public" and "payment_request" not in late.json()


def test_a_failed_job_is_not_charged(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.service

    def broken_engine(job):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(service.runner, "_run_engine", lambda job, stop: broken_engine(job))
    body = post_upscale(client, png()).json()
    refused = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True})
    assert refused.status_code == 422 and "cancel" in refused.json()["detail"].lower()
    failed = wait_for(client, body["job_id"], refunded)
    assert failed["charged"] is False
    assert "CUDA out of memory" in failed["error"]
    payments = {p.payment_hash: p for p in client.portal.call(dev_node(client).payments)}
    assert payments[body["payment_hash"]].state is InvoiceState.CANCELED
    assert payments[body["payment_hash"]].charged_msat == 0


def test_hold_budget_returns_the_payment(tmp_path: Path, registry, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(tmp_path, registry, hold_budget_seconds=1) as client:
        service = client.app.state.service
        original = service.runner._run_engine

        def slow_engine(job, stop):
            time.sleep(3)
            return original(job, stop)

        monkeypatch.setattr(service.runner, "_run_engine", slow_engine)
        body = post_upscale(client, png()).json()
        pay(client, body["payment_request"], wait=False)
        failed = wait_for(client, body["job_id"], refunded)
        assert "hold budget" in failed["error"] and failed["charged"] is False
        time.sleep(3.5)  # the engine finishes late: its output must not resurrect the job
        late = client.get(f"/v1/upscales/{body['job_id']}").json()
        assert late["status"] == "failed" and late["invoice_status"] == "canceled"
        assert not list((tmp_path / "data" / "outputs").glob(f"{body['job_id']}*"))


def test_unpaid_invoice_expires(tmp_path: Path, registry) -> None:
    with make_client(tmp_path, registry, invoice_expiry_seconds=1) as client:
        body = post_upscale(client, png()).json()
        expired = wait_for(client, body["job_id"], {"expired"}, timeout=30)
        assert expired["charged"] is False
        late = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"]})
        assert late.status_code == 422


def test_unknown_job_and_docs(client: TestClient) -> None:
    missing = client.get("/v1/upscales/job_nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert client.get("/openapi.json").json()["paths"]["/v1/upscales"]["post"]
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").json()["lightning"] == "up"


def test_a_job_too_slow_for_the_hold_budget_is_refused_before_payment(tmp_path: Path, registry) -> None:
    with make_client(tmp_path, registry, hold_budget_seconds=2, max_input_megapixels=64) as client:
        quote = client.get("/v1/quote", params={"model": "realesrgan-x4plus", "width": 1500, "height": 1000}).json()
        assert quote["estimated_seconds"] > 2
        image = io.BytesIO()
        Image.fromarray(natural_image(1000, 1500)).save(image, "PNG")
        response = post_upscale(client, image.getvalue(), model="realesrgan-x4plus", scale="4")
        assert response.status_code == 413 and response.headers["content-type"] == PROBLEM
        assert "payment can be held for 2 s" in response.json()["detail"]
        assert client.app.state.service.store.count() == 0


class PlainOnlyNode(DevNode):
    """A backend without hold invoices: the node makes the preimage and settles on payment."""

    features = frozenset()


def test_plain_invoices_when_the_backend_has_no_hold_invoices(tmp_path: Path, registry) -> None:
    node = PlainOnlyNode(tmp_path / "plain-node.sqlite3")
    app = create_app(Settings(data_dir=tmp_path / "data"), registry, backend=node)
    with TestClient(app) as client:
        response = post_upscale(client, png())
        assert response.status_code == 402
        body = response.json()
        paid = pay(client, body["payment_request"], wait=False)
        assert paid["state"] == "settled" and paid["preimage"]  # a plain invoice hands over the preimage at once
        done = wait_for(client, body["job_id"], {"succeeded"})
        assert done["charged"] is True and done["invoice_status"] == "settled"
        macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
        result = client.get(
            f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": f"L402 {macaroon}:{paid['preimage']}"}
        )
        assert result.status_code == 200


def test_expired_and_forged_tokens_are_refused(tmp_path: Path, registry) -> None:
    with make_client(tmp_path, registry, token_validity_seconds=1) as client:
        response = post_upscale(client, png())
        body = response.json()
        macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
        preimage = pay(client, body["payment_request"])["preimage"]
        wait_for(client, body["job_id"], settled)
        # a macaroon for the same payment hash and request, signed with the attacker's own root key
        forged = l402.mint(
            bytes.fromhex(body["payment_hash"]),
            client.app.state.service.store.get(body["job_id"]).request_hash,
            int(time.time()) + 3600,
            l402.MemoryRootKeyStore(),
        ).macaroon
        result_url = f"/v1/upscales/{body['job_id']}/result"
        forged_response = client.get(result_url, headers={"Authorization": f"L402 {forged}:{preimage}"})
        assert forged_response.status_code == 401
        time.sleep(1.5)
        expired = client.get(result_url, headers={"Authorization": f"L402 {macaroon}:{preimage}"})
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_tile_and_precision_options(client: TestClient) -> None:
    body = post_upscale(client, png(), tile="32", precision="fp32").json()
    assert body["tile"] == 32 and body["precision"] == "fp32"
    pay(client, body["payment_request"])
    done = wait_for(client, body["job_id"], settled)
    assert done["tile"] == 32
    too_small = post_upscale(client, png(), tile="8")
    assert too_small.status_code == 422 and "tile" in too_small.json()["detail"]
    unknown = post_upscale(client, png(), precision="int4")
    assert unknown.status_code == 422 and "precision" in unknown.json()["detail"]


def test_an_engine_is_built_once_per_model_and_precision(tmp_path: Path, weights_folder: Path, monkeypatch) -> None:
    from sr_core.registry import ModelRegistry

    fresh = ModelRegistry(weights_folder)
    builds: list[tuple[str, str]] = []
    kind = fresh.kind_of(fresh.get(MODEL))
    original = kind.load

    def counted(entry, weights, device, precision, settings):
        builds.append((entry.name, precision.value))
        return original(entry, weights, device, precision, settings)

    monkeypatch.setattr(kind, "load", counted)
    with make_client(tmp_path, fresh) as client:
        builds.clear()  # the listing at start builds each model once, at the server's precision
        for _ in range(2):
            assert post_upscale(client, png(), precision="fp32").status_code == 402
            assert post_upscale(client, png()).status_code == 402
            assert client.get("/v1/quote", params={"model": MODEL, "width": 10, "height": 10}).status_code == 200
        server = fresh.load_engine(MODEL).info.precision.value
        assert builds == ([] if server == "fp32" else [(MODEL, "fp32")])
