"""Planning a collection upgrade over the API, against real collections on anvil: what each token
gets, what is skipped and why, the price, and that a plan changes nothing anywhere."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import create_app
from service.cli import main
from service.config import Settings

from .collection_world import (
    DATA_IMAGE,
    HTTPS_IMAGE,
    PIXEL_ART,
    SKIPPED,
    TOKENS,
    Client,
    World,
    served_world,
)
from .servers import free_port

pytestmark = pytest.mark.chain
SKIPPED_FIRST = min(SKIPPED)
MODEL = "realesr-animevideov3"  # the light model: prices are what the test checks, not speed


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[tuple[Client, World, str, object]]:
    with served_world(tmp_path_factory, registry, server_chain=False) as served:
        yield served.client, served.world, served.rpc, (served.w3, served.web)


def _plan(client: Client, rpc: str, contract: str, **body):
    return client.post("/v1/collections/plan", json={"rpc_url": rpc, "contract": contract, "model": MODEL, **body})


def test_plan_of_a_third_party_base_uri_collection(setup) -> None:
    client, world, rpc, (w3, web) = setup
    store = client.app.state.ipfs
    service = client.app.state.service
    before = (w3.eth.block_number, w3.eth.get_transaction_count(w3.eth.accounts[0]), sorted(store.pins()))

    response = _plan(client, rpc, world.third_party.address)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["layout"] == {
        "kind": "base-uri",
        "base_uri": f"ipfs://{world.folder_cid}/",
        "suffix": ".json",
        "whole_collection": True,
    }
    assert plan["supports"] == {"enumerable": True, "erc4906": True, "erc7160": False}
    skipped = [t for t in plan["token_plans"] if t["status"] == "skipped"]
    assert (plan["name"], plan["tokens"], len(skipped)) == ("Pixel Pals", TOKENS, len(SKIPPED)), skipped
    tokens = {t["token_id"]: t for t in plan["token_plans"]}
    assert all(t["name"] == f"{i}.json" for i, t in tokens.items())  # the collection's own naming

    for token_id, why in SKIPPED.items():
        assert tokens[token_id]["status"] == "skipped" and why in tokens[token_id]["error"], tokens[token_id]
    ready = [t for t in tokens.values() if t["status"] == "ready"]
    assert len(ready) == TOKENS - len(SKIPPED)

    art = tokens[PIXEL_ART]
    assert art["pixel_art"]["chosen"] and "24x24" in art["pixel_art"]["reason"]
    assert art["pipeline"] == [{"model": "nearest", "scale": 42}]  # 24 px -> 1008 px, exact blocks
    for token_id in (1, DATA_IMAGE, HTTPS_IMAGE):
        assert tokens[token_id]["pipeline"] == [{"model": MODEL, "scale": 4}]
        assert not tokens[token_id]["pixel_art"]["chosen"]
    assert web.requests.count("/art/5.png") == 1  # fetched over real TLS from the allowed host

    assert plan["amount_sat"] == sum(t["amount_sat"] for t in ready) > 0
    assert sorted(i for batch in plan["batches"] for i in batch) == sorted(t["token_id"] for t in ready)

    # a dry run changes nothing anywhere: no transaction, no pin, no job
    after = (w3.eth.block_number, w3.eth.get_transaction_count(w3.eth.accounts[0]), sorted(store.pins()))
    assert after == before and service.store.count() == 0
    assert world.third_party.functions.tokenURI(1).call() == f"ipfs://{world.folder_cid}/1.json"


def test_plan_of_a_per_token_collection_needs_a_range(setup) -> None:
    client, world, rpc, _ = setup
    refused = _plan(client, rpc, world.per_token.address)
    assert refused.status_code == 422 and "--tokens" in refused.json()["detail"]
    assert refused.headers["content-type"].startswith("application/problem+json")

    plan = _plan(client, rpc, world.per_token.address, tokens="1-4").json()
    assert (
        plan["layout"] == {"kind": "per-token", "whole_collection": False} and plan["supports"]["enumerable"] is False
    )
    tokens = {t["token_id"]: t for t in plan["token_plans"]}
    assert [tokens[i]["status"] for i in (1, 2, 3)] == ["ready"] * 3  # IPFS, base64 and percent-encoded JSON
    assert tokens[4]["status"] == "skipped" and "no such token" in tokens[4]["error"]
    assert "name" not in tokens[1]


def test_pixel_art_can_be_overridden(setup) -> None:
    client, world, rpc, _ = setup
    off = _plan(client, rpc, world.third_party.address, tokens=str(PIXEL_ART), pixel_art="off").json()
    assert off["token_plans"][0]["pipeline"] == [{"model": MODEL, "scale": 4}]
    on = _plan(client, rpc, world.third_party.address, tokens="1,2", pixel_art="on", pixel_scale=8).json()
    assert [t["pipeline"] for t in on["token_plans"]] == [[{"model": "nearest", "scale": 8}]] * 2


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"rpc_url": "http://127.0.0.1:{free}"}, 422, "allow"),  # loopback, not allowed by the operator
        ({"rpc_url": "http://169.254.169.254/"}, 422, "refused"),  # cloud metadata, never contacted
        ({"rpc_url": "file:///etc/passwd"}, 422, "http"),
        ({"rpc_url": "http://2130706433:8545/"}, 422, "non-canonical"),
        ({"contract": "0x" + "11" * 20}, 422, "no contract"),
        ({"tokens": "5-1"}, 422, "range"),
        ({"pixel_art": "maybe"}, 422, "pixel_art"),
        ({"contract": "not an address"}, 422, "contract"),
        ({"pipeline": [{"model": "no-such-model"}]}, 422, "no-such-model"),
        ({"model": "no-such-model"}, 422, "no-such-model"),
        ({"model": MODEL, "pipeline": "2x-then-2x"}, 422, "not both"),
    ],
)
def test_refusals_are_problems_and_touch_nothing(setup, change, status, says) -> None:
    client, world, rpc, _ = setup
    body = {"rpc_url": rpc, "contract": world.third_party.address, "model": MODEL, "tokens": "1-2"} | change
    if "pipeline" in change and "model" not in change:
        del body["model"]
    if "{free}" in str(body["rpc_url"]):
        body["rpc_url"] = body["rpc_url"].format(free=free_port())
    response = client.post("/v1/collections/plan", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert says in response.text


def test_the_embedded_chain_needs_no_rpc_url(tmp_path: Path, registry) -> None:
    """`python app.py` plans the demo collection of its own in-process chain (no tokens minted yet)."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        address = client.app.state.chain_sender.chain.collection_address
        plan = client.post("/v1/collections/plan", json={"contract": address, "tokens": "1"}).json()
    assert plan["name"] == "Satscale Upgrades" and plan["supports"]["erc7160"] is True
    assert plan["token_plans"][0]["status"] == "skipped"  # nothing minted on a fresh chain


def test_the_cli_dry_run_prints_the_plan_and_writes_the_report(setup, tmp_path: Path, capsys) -> None:
    client, world, rpc, _ = setup
    report = tmp_path / "plan.json"
    args = ["collection", "upgrade", "--server", str(client.base_url), "--rpc", rpc]
    args += ["--contract", world.third_party.address, "--tokens", "1-9", "--model", MODEL]
    assert main([*args, "--dry-run", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "Pixel Pals (PALS)" in out and ".json" in out
    assert f"#{PIXEL_ART}" in out and "nearest x42  (pixel art: 24x24" in out
    assert "5 of 9 tokens to upgrade (1 as pixel art), 4 skipped" in out
    rows = json.loads(report.read_text())
    assert [r["token_id"] for r in rows] == list(range(1, 10))
    assert {r["status"] for r in rows} == {"planned", "skipped"} and all(r["new_uri"] is None for r in rows)
    with report.with_suffix(".csv").open() as beside:
        table = list(csv.DictReader(beside))
    assert table[0]["token_id"] == "1" and table[SKIPPED_FIRST - 1]["status"] == "skipped"

    # a paid run asks first; with no one to ask it starts nothing
    assert main([*args]) == 2
    assert "--yes" in capsys.readouterr().err
    assert client.app.state.collections.runs.journal.active() == []


def test_a_deeply_nested_body_is_refused_not_a_crash(setup) -> None:
    client = setup[0]
    nested = b"[" * 100_000
    response = client.post("/v1/collections/plan", content=nested, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/models").status_code == 200  # the server is still there


@contextmanager
def rpc_server(answer: Callable[[bytes], bytes | None]) -> Iterator[int]:
    """A JSON-RPC endpoint on 127.0.0.1: `answer(body)` is the answer's body, or None to drop
    the connection without one."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            body = answer(self.rfile.read(int(self.headers["Content-Length"])))
            if body is None:
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def lying_rpc(answers: dict[str, object]) -> AbstractContextManager[int]:
    """Each method answered with what `answers` says."""

    def answer(raw: bytes) -> bytes:
        request = json.loads(raw)
        return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": answers.get(request["method"])}).encode()

    return rpc_server(answer)


def dropping_rpc(upstream: str, selector: str) -> AbstractContextManager[int]:
    """A proxy to `upstream` that drops the connection on every eth_call of `selector` (a public
    RPC rate-limiting or failing one call among thousands)."""

    def answer(raw: bytes) -> bytes | None:
        request = json.loads(raw)
        calls = [c for c in (request if isinstance(request, list) else [request]) if c.get("method") == "eth_call"]
        if any(str(c["params"][0].get("data")).startswith(selector) for c in calls):
            return None
        return httpx.post(upstream, content=raw, headers={"Content-Type": "application/json"}, timeout=30).content

    return rpc_server(answer)


@pytest.mark.parametrize("chain_id", ["hello", None, [1]])
def test_an_rpc_that_lies_is_a_502(tmp_path: Path, registry, chain_id) -> None:
    with lying_rpc({"eth_chainId": chain_id, "eth_getCode": "0x6001"}) as port:
        settings = Settings(data_dir=tmp_path / "data", fetch_allow_private_hosts=[f"127.0.0.1:{port}"])
        with TestClient(create_app(settings, registry), raise_server_exceptions=False) as client:
            body = {"rpc_url": f"http://127.0.0.1:{port}", "contract": "0x" + "22" * 20, "tokens": "1"}
            response = client.post("/v1/collections/plan", json=body)
    assert response.status_code in (422, 502), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_rpc_that_drops_token_reads_is_a_502_not_a_crash(setup, tmp_path: Path, registry) -> None:
    _, world, rpc, _ = setup
    with dropping_rpc(rpc, "0xc87b56dd") as port:  # tokenURI(uint256)
        settings = Settings(data_dir=tmp_path / "data", fetch_allow_private_hosts=[f"127.0.0.1:{port}"])
        with TestClient(create_app(settings, registry), raise_server_exceptions=False) as client:
            body = {"rpc_url": f"http://127.0.0.1:{port}", "contract": world.third_party.address, "tokens": "1-3"}
            response = client.post("/v1/collections/plan", json=body)
    assert response.status_code == 502, response.text
    assert response.json()["type"].endswith("chain-unreachable")
