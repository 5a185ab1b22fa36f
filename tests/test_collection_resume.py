"""A collection run survives SIGKILL: the real server (`python app.py`) upgrading both anvil
collections (a third party's base-URI one with its setter, and Satscale's own) is killed while
its tokens are being upscaled and again while it finishes, restarted on the same data, and ends
with every token upgraded once (the second kill lands while its chain records wait in the pool
unmined): one chain record per token, one revision per token, one
setBaseURI, every batch charged once, and the new folder's CID the one Kubo computes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from provenance.contracts import load_artifact
from provenance.ipfs import LocalIpfsStore

from .anvil import ANVIL_KEY_0, running_anvil
from .collection_world import SKIPPED, TOKENS, build_satscale_collection, build_world, https_files
from .kubo_double import KuboNode
from .test_crash_recovery import Server
from .tls import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.chain]
#: a model slow enough on these CPUs that a kill lands while the tokens are being upscaled
MODEL = "realesrgan-x4plus-anime"
SATSCALE_SKIPPED = {6, 7}


@pytest.fixture
def world(tmp_path: Path, weights_folder: Path) -> Iterator[dict]:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    files: dict[str, tuple[bytes, str]] = {}
    with running_anvil() as (w3, port), https_files(pki, files) as web:
        data = tmp_path / "data"
        store = LocalIpfsStore(data / "ipfs")  # the server's own store: the collections' content is in it
        collections = build_world(w3, store, web.origin, files)
        server = Server(data, weights_folder, tmp_path / "server.log")
        server.env |= {
            "SATSCALE_CHAIN_RPC_URL": f"http://127.0.0.1:{port}",
            "SATSCALE_CHAIN_PRIVATE_KEY": ANVIL_KEY_0,
            "SATSCALE_FETCH_ALLOW_PRIVATE_HOSTS": json.dumps([f"127.0.0.1:{port}", f"127.0.0.1:{web.port}"]),
            "SATSCALE_FETCH_CA_BUNDLE": str(pki.ca_pem),
        }
        server.start()
        try:
            registry = _registry(data, f"http://127.0.0.1:{port}")
            ours, _ = build_satscale_collection(w3, store, Web3.to_checksum_address(registry), web.origin, files)
            yield {
                "server": server,
                "w3": w3,
                "rpc": f"http://127.0.0.1:{port}",
                "third_party": collections.third_party,
                "ours": ours,
                "registry": registry,
                "store": store,
                "tmp": tmp_path,
            }
        finally:
            server.stop()


def _registry(data: Path, rpc: str, timeout: float = 60) -> str:
    """The registry the server deployed on anvil at its start (it remembers it in its store)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(data / "satscale.sqlite3")) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (f"registry_address:{rpc}",)).fetchone()
        if row:
            return row[0]
        time.sleep(0.2)
    raise AssertionError("the server deployed no registry")


def _status(server: Server, run_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/collections/{run_id}", timeout=30).json()


def _pay(server: Server, run: dict, paid: set[str]) -> None:
    invoice = run.get("invoice")
    if invoice and invoice["payment_request"] not in paid:
        paid.add(invoice["payment_request"])
        response = httpx.post(f"{server.url}/v1/dev/pay", json={"payment_request": invoice["payment_request"]})
        assert response.status_code == 200, response.text


def _until(server: Server, run_id: str, paid: set[str], done: callable, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = _status(server, run_id)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if done(run):
            return run
        _pay(server, run, paid)
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not get there: {run}")


def _logs(w3: Web3, address: str, event: str, abi: list) -> list:
    contract = w3.eth.contract(address=address, abi=abi)
    return list(getattr(contract.events, event)().get_logs(from_block=0))


def test_a_killed_run_resumes_and_writes_nothing_twice(world) -> None:
    server, w3 = world["server"], world["w3"]
    rpc = world["rpc"]
    third_party, ours = world["third_party"], world["ours"]

    # a dry run first: it changes nothing anywhere
    before = (w3.eth.block_number, w3.eth.get_transaction_count(w3.eth.accounts[0]))
    plan = httpx.post(f"{server.url}/v1/collections/plan", json={"rpc_url": rpc, "contract": third_party.address,
                                                                   "model": MODEL}, timeout=300)  # fmt: skip
    assert plan.status_code == 200, plan.text
    assert (w3.eth.block_number, w3.eth.get_transaction_count(w3.eth.accounts[0])) == before

    requests = {
        "third_party": {
            "rpc_url": rpc,
            "contract": third_party.address,
            "model": MODEL,
            "setter": "setBaseURI(string)",
        },
        "ours": {"rpc_url": rpc, "contract": ours.address, "model": MODEL, "tokens": f"1-{TOKENS}"},
    }
    runs = {}
    for name, body in requests.items():
        response = httpx.post(f"{server.url}/v1/collections", json=body, timeout=300)
        assert response.status_code == 402, response.text
        runs[name] = response.json()["id"]
    paid: set[str] = set()

    # kill 1: while the first run's tokens are being upscaled (some done, some not)
    first = runs["third_party"]
    halfway = _until(server, first, paid, lambda r: 2 <= sum(t["status"] == "upscaled" for t in r["tokens"]) < 10)
    server.restart()
    after = _status(server, first)
    kept = {t["token_id"] for t in halfway["tokens"] if t["status"] == "upscaled"}
    assert kept <= {t["token_id"] for t in after["tokens"] if t["status"] in ("upscaled", "paid", "published",
                                                                             "upgraded")}  # fmt: skip

    _until(server, first, paid, lambda r: r["state"] == "done")

    # kill 2: while the second run's chain records are sent and not mined (anvil stops mining)
    second = runs["ours"]
    w3.provider.make_request("evm_setAutomine", [False])
    _until(server, second, paid, lambda r: r["state"] == "finishing")
    time.sleep(2)  # the sender has submitted the records it could
    assert w3.eth.get_block("pending")["transactions"], "no record was waiting in the pool"
    server.restart()
    w3.provider.make_request("evm_setAutomine", [True])
    w3.provider.make_request("evm_mine", [])

    results = {name: _until(server, run_id, paid, lambda r: r["state"] == "done") for name, run_id in runs.items()}

    # every ready token upgraded, once
    for name, skipped in (("third_party", set(SKIPPED)), ("ours", SATSCALE_SKIPPED)):
        rows = {t["token_id"]: t for t in results[name]["tokens"]}
        assert {i for i, t in rows.items() if t["status"] == "skipped"} == skipped, name
        assert all(t["status"] == "upgraded" for i, t in rows.items() if i not in skipped), rows
    registry_abi = load_artifact("ProvenanceRegistry").abi
    records = [log["args"]["paymentHash"].hex() for log in _logs(w3, world["registry"], "ProvenanceRecorded",
                                                                  registry_abi)]  # fmt: skip
    upgraded = [t for r in results.values() for t in r["tokens"] if t["status"] == "upgraded"]
    assert len(records) == len(set(records)) == len(upgraded)  # no record written twice
    assert set(records) == {t["record_key"] for t in upgraded}

    for token in results["ours"]["tokens"]:
        if token["status"] == "upgraded":
            _, uris, _ = ours.functions.tokenURIs(token["token_id"]).call()
            assert len(uris) == 2 and uris[1] == token["new_uri"]  # upgraded once: one new revision
    ours_abi = load_artifact("SatscaleCollection").abi
    upgrades = _logs(w3, ours.address, "TokenUpgraded", ours_abi)
    assert sorted(log["args"]["tokenId"] for log in upgrades) == sorted(
        t["token_id"] for t in results["ours"]["tokens"] if t["status"] == "upgraded"
    )

    third = results["third_party"]["result"]
    base_updates = _logs(w3, third_party.address, "BatchMetadataUpdate", third_party.abi)
    assert len(base_updates) == 1  # setBaseURI sent once
    assert third_party.functions.tokenURI(1).call() == f"{third['base_uri']}1.json"

    # every batch charged once, nothing charged for what did not run
    payments = httpx.get(f"{server.url}/v1/dev/payments").json()
    hashes = [p["payment_hash"] for p in payments]
    assert len(hashes) == len(set(hashes))
    for result in results.values():
        charged = sum(p["amount_msat"] for p in payments if p["state"] == "settled"
                      and p["payment_hash"] in {b["payment_hash"] for b in result["batches"]}) // 1000  # fmt: skip
        assert charged == result["paid_sat"] == result["amount_sat"]

    # the new folder is the one Kubo builds from the same files
    store: LocalIpfsStore = world["store"]
    folder = world["tmp"] / "folder"
    folder.mkdir()
    for entry in store.list_directory(third["folder_cid"]):
        (folder / entry.name).write_bytes(b"".join(store.cat(entry.cid.encode())))
    with KuboNode.start(world["tmp"] / "kubo") as kubo:
        assert kubo.add_directory(folder, only_hash=True) == third["folder_cid"]
