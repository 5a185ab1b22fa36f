"""Provenance as a client sees it: CIDs, the gateway, the metadata document, the on-chain
record on the embedded chain, verification, and the replay into a fresh embedded chain."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from app import create_app
from payments import l402
from provenance.car import read_car
from provenance.cid import Cid, hash_bytes
from service.config import Settings

from .helpers import natural_image

MODEL = "realesr-animevideov3"


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(24, 30, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


def paid_job(client: TestClient, image: bytes, publish: bool = True) -> tuple[dict, str]:
    response = client.post(
        "/v1/upscales",
        files={"image": ("a.png", image, "image/png")},
        data={"model": MODEL, "scale": "2", "publish": str(publish).lower()},
    )
    assert response.status_code == 402
    body = response.json()
    preimage = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}).json()[
        "preimage"
    ]
    macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
    return body, f"L402 {macaroon}:{preimage}"


def wait_confirmed(client: TestClient, job_id: str, credential: str, timeout: float = 60) -> dict:
    """The owner's view of the job once its record is on chain."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/upscales/{job_id}", headers={"Authorization": credential}).json()
        if body.get("provenance", {}).get("chain", {}).get("status") == "confirmed":
            return body
        time.sleep(0.05)
    raise AssertionError(f"never confirmed: {body}")


def test_a_paid_job_is_pinned_recorded_and_verifiable(tmp_path: Path, registry) -> None:
    image = png()
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, image)
        job = wait_confirmed(client, body["job_id"], credential)
        provenance = job["provenance"]
        result = client.get(job["output"]["url"], headers={"Authorization": credential}).content

        # the CIDs name exactly the bytes (CIDv1, raw leaves, as Kubo computes them)
        assert provenance["input_cid"] == hash_bytes(image, cid_version=1).cid
        assert provenance["output_cid"] == hash_bytes(result, cid_version=1).cid
        assert provenance["output_cid"].startswith("bafk")  # small file: one raw block

        # the gateway serves them, as a file, as a raw block, and as a CAR
        gateway = client.get(f"/ipfs/{provenance['output_cid']}")
        assert gateway.status_code == 200 and gateway.content == result
        assert gateway.headers["content-type"] == "image/png" and "immutable" in gateway.headers["cache-control"]
        raw = client.get(f"/ipfs/{provenance['output_cid']}?format=raw")
        assert raw.headers["content-type"] == "application/vnd.ipld.raw"
        assert Cid.parse(provenance["output_cid"]).matches(raw.content)
        car = client.get(f"/ipfs/{provenance['input_cid']}", headers={"Accept": "application/vnd.ipld.car"})
        header, blocks = read_car(io.BytesIO(car.content))
        assert [str(root) for root in header.roots] == [provenance["input_cid"]]
        assert all(block.cid.matches(block.data) for block in blocks)

        # the metadata document follows the ERC-721 convention and carries the provenance
        metadata = json.loads(client.get(f"/ipfs/{provenance['metadata_cid']}").content)
        assert metadata["image"] == f"ipfs://{provenance['output_cid']}"
        assert metadata["properties"]["provenance"]["payment_hash"] == body["payment_hash"]
        assert metadata["properties"]["provenance"]["output_sha256"] == hashlib.sha256(result).hexdigest()

        # the record on chain, and a verification that re-hashes everything
        chain = provenance["chain"]
        assert chain["tx"].startswith("0x") and chain["block"] > 0 and chain["embedded"] is True
        assert chain["collection"].startswith("0x")  # the embedded chain also has an ERC-4906 collection
        record = client.app.state.chain_sender.chain.record_of(body["payment_hash"])
        assert record.fields.output_cid == provenance["output_cid"]
        assert record.fields.output_sha256 == job["output"]["sha256"]
        assert record.fields.model == MODEL

        report = client.get(f"/v1/provenance/{job['output']['sha256']}").json()
        assert report["verified"] is True
        (entry,) = report["records"]
        assert entry["role"] == "output" and entry["chain"]["tx"] == chain["tx"]
        assert entry["custody"]["input"]["cid"] == provenance["input_cid"]
        assert {check["name"] for check in entry["checks"]} >= {
            "input sha256",
            "input CID",
            "output sha256",
            "output CID",
            "model weights",
            "parameters",
            "payment",
        }
        by_cid = client.get(f"/v1/provenance/{provenance['output_cid']}").json()
        assert by_cid["verified"] is True and by_cid["sha256"] == job["output"]["sha256"]
        as_input = client.get(f"/v1/provenance/{hashlib.sha256(image).hexdigest()}").json()
        assert as_input["records"][0]["role"] == "input"


def test_verification_says_what_does_not_match(tmp_path: Path, registry) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, png(1))
        job = wait_confirmed(client, body["job_id"], credential)
        store = client.app.state.ipfs
        block = store.block_path(job["provenance"]["output_cid"])
        block.write_bytes(block.read_bytes()[:-10] + b"tampered!!")
        report = client.get(f"/v1/provenance/{job['output']['sha256']}").json()
        assert report["verified"] is False
        failed = [c for c in report["records"][0]["checks"] if not c["ok"]]
        assert [c["name"] for c in failed] == ["output content"]
        assert job["provenance"]["output_cid"] in failed[0]["detail"]
        missing = client.get(f"/v1/provenance/{'ab' * 32}")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert client.get("/ipfs/not-a-cid").status_code == 400
        unknown = hash_bytes(b"never added", cid_version=1).cid
        assert client.get(f"/ipfs/{unknown}").status_code == 404


def test_the_embedded_chain_is_replayed_after_a_restart(tmp_path: Path, registry) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings, registry)) as client:
        body, credential = paid_job(client, png(2))
        first = wait_confirmed(client, body["job_id"], credential)["provenance"]["chain"]
    with TestClient(create_app(settings, registry)) as client:  # a new process: a new, empty chain
        job = wait_confirmed(client, body["job_id"], credential)
        second = job["provenance"]["chain"]
        assert second["status"] == "confirmed" and second["tx"] and first["tx"]
        assert client.app.state.chain_sender.chain.record_of(body["payment_hash"]) is not None
        assert client.get(f"/v1/provenance/{job['output']['sha256']}").json()["verified"] is True


def test_an_unpublished_job_keeps_its_files_to_its_owner(tmp_path: Path, registry) -> None:
    """publish=false: the chain gets the hashes, nobody gets the bytes without the credential, and
    holding the (public) input leads nobody to the paid upscale."""
    image = png(3)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, image, publish=False)
        job = wait_confirmed(client, body["job_id"], credential)
        provenance = job["provenance"]
        assert job["publish"] is False and provenance["published"] is False and provenance["gateway"] == {}
        result = client.get(job["output"]["url"], headers={"Authorization": credential})
        assert result.status_code == 200 and hashlib.sha256(result.content).hexdigest() == job["output"]["sha256"]
        # the CIDs are content hashes (on chain), but no gateway serves their bytes
        assert provenance["output_cid"] == hash_bytes(result.content, cid_version=1).cid
        for cid in (provenance["input_cid"], provenance["output_cid"], provenance["metadata_cid"]):
            assert client.get(f"/ipfs/{cid}").status_code == 404
            assert client.get(f"/ipfs/{cid}?format=car").status_code == 404
        record = client.app.state.chain_sender.chain.record_of(body["payment_hash"])
        assert record.fields.output_sha256 == job["output"]["sha256"]

        # by the input's hash: the record exists, the output is not named anywhere in the answer
        input_sha = hashlib.sha256(image).hexdigest()
        anonymous = client.get(f"/v1/provenance/{input_sha}")
        assert anonymous.status_code == 200
        (entry,) = anonymous.json()["records"]
        assert entry["role"] == "input" and entry["withheld"] is True
        assert entry["custody"]["output"] == {"published": False}
        for secret in (job["output"]["sha256"], provenance["output_cid"], provenance["chain"]["tx"]):
            assert secret not in anonymous.text
        for holder_only in (body["payment_hash"], body["job_id"]):  # what only the token's holder sees
            assert holder_only not in anonymous.text
        assert client.get(f"/v1/provenance/{provenance['input_cid']}").status_code == 404  # not held publicly
        # the owner sees it whole, and everything verifies against the private copies
        owner = client.get(f"/v1/provenance/{input_sha}", headers={"Authorization": credential}).json()
        assert (
            owner["verified"] is True and owner["records"][0]["custody"]["output"]["sha256"] == job["output"]["sha256"]
        )
        assert client.get(f"/v1/provenance/{input_sha}", headers={"Authorization": "L402 forged:00"}).status_code == 401
        # whoever holds the output (and so its hash) may check it
        assert client.get(f"/v1/provenance/{job['output']['sha256']}").json()["verified"] is True
        assert client.get(f"/v1/upscales/{body['job_id']}").json().get("provenance") is None
