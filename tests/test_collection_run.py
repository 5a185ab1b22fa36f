"""Paid collection runs end to end, against real collections on anvil and the server's own
registry there: the batch's hold invoice, every token through the job queue, a token that fails
never paid for, the new metadata published (a folder for a base-URI collection, a document per
token for Satscale's own), the collection updated on chain once, and the report."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from payments import l402
from provenance.car import read_car
from service.cli import main
from service.collections.batches import record_key

from .collection_world import (
    DATA_IMAGE,
    HTTPS_IMAGE,
    NOT_JSON,
    PIXEL_ART,
    PRIVATE,
    SKIPPED,
    TOKENS,
    Client,
    World,
    build_satscale_collection,
    served_world,
)

pytestmark = pytest.mark.chain
MODEL = "realesr-animevideov3"  # the light model: the flow is under test, not the pixels
SATSCALE_SKIPPED = {PRIVATE, NOT_JSON}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[tuple[Client, World, str, Web3, dict]]:
    with served_world(tmp_path_factory, registry, server_chain=True) as served:
        yield served.client, served.world, served.rpc, served.w3, served.files


def drive(client: httpx.Client, run_id: str, timeout: float = 300) -> dict:
    """Pay each invoice the run shows, as a payer would, until the run is done."""
    paid: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/collections/{run_id}").json()
        if body["state"] == "done":
            return body
        invoice = body["invoice"]
        if invoice and invoice["payment_request"] not in paid:
            paid.add(invoice["payment_request"])
            assert client.post("/v1/dev/pay", json={"payment_request": invoice["payment_request"]}).status_code == 200
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish: {body}")


def settled_payments(client: httpx.Client) -> list[dict]:
    return client.get("/v1/dev/payments").json()


def ipfs_document(client: Client, uri: str) -> dict:
    cid, _, path = uri.removeprefix("ipfs://").partition("/")
    store = client.app.state.ipfs
    target = store.resolve_path(cid, path) if path else cid
    return json.loads(b"".join(store.cat(target)))


def test_a_third_party_base_uri_collection_upgraded_and_its_base_uri_set(setup) -> None:
    client, world, rpc, _, _ = setup
    collection = world.third_party
    response = client.post(
        "/v1/collections",
        json={"rpc_url": rpc, "contract": collection.address, "model": MODEL, "setter": "setBaseURI(string)"},
    )
    assert response.status_code == 402, response.text
    run = response.json()
    challenge = l402.parse_challenge(response.headers["WWW-Authenticate"])
    assert challenge.invoice == run["invoice"]["payment_request"]
    ready = TOKENS - len(SKIPPED)
    assert run["invoice"]["amount_sat"] == run["amount_sat"] > 0
    assert run["progress"] == {"tokens": ready, "finished": 0, "fraction": 0.0}
    assert collection.functions.tokenURI(1).call() == f"ipfs://{world.folder_cid}/1.json"  # nothing sent yet

    done = drive(client, run["id"])
    result = done["result"]
    assert result["chain"]["status"] == "sent" and result["chain"]["method"] == "setBaseURI"
    base_uri = result["base_uri"]
    assert base_uri == f"ipfs://{result['folder_cid']}/" and result["missing_documents"] == []
    assert result["documents"] == TOKENS  # every token keeps a document under its own name
    rows = {row["token_id"]: row for row in done["tokens"]}
    store = client.app.state.ipfs
    chain = client.app.state.chain_sender.chain
    for token_id, original in world.documents.items():
        assert collection.functions.tokenURI(token_id).call() == f"{base_uri}{token_id}.json"
        row = rows[token_id]
        if token_id in SKIPPED:
            assert row["status"] == "skipped" and SKIPPED[token_id] in row["error"]
            assert row["new_uri"] is None and row["record_key"] is None
            continue
        assert row["status"] == "upgraded", row
        assert row["new_uri"] == f"{base_uri}{token_id}.json" and row["update_tx"]
        document = ipfs_document(client, row["new_uri"])
        for key in ("name", "description", "attributes"):  # the collection's own fields, untouched
            assert document[key] == original[key]
        assert document["original_image"] == original["image"]
        assert document["image"] == f"ipfs://{row['output_cid']}"
        provenance = document["properties"]["provenance"]
        record = chain.record_of(provenance["record_key"])
        assert record is not None and record.fields.output_cid == row["output_cid"]
        assert provenance["transaction"] == row["record_tx"] and provenance["registry"] == chain.address
        assert provenance["payment_hash"] == done["batches"][0]["payment_hash"]
        assert b"".join(store.cat(row["output_cid"]))  # the new image is in the public store
    assert rows[PIXEL_ART]["pixel_art"]["chosen"] is True
    assert ipfs_document(client, rows[PIXEL_ART]["new_uri"])["properties"]["provenance"]["model"] == "nearest"
    assert rows[DATA_IMAGE]["status"] == rows[HTTPS_IMAGE]["status"] == "upgraded"
    # a document the run did not upgrade is in the new folder byte for byte as it was
    old = b"".join(store.cat(store.resolve_path(world.folder_cid, f"{NOT_JSON}.json")))
    assert b"".join(store.cat(store.resolve_path(result["folder_cid"], f"{NOT_JSON}.json"))) == old

    # paid once, for what succeeded
    payments = [p for p in settled_payments(client) if p["payment_hash"] == done["batches"][0]["payment_hash"]]
    assert [p["state"] for p in payments] == ["settled"]
    assert done["paid_sat"] == done["amount_sat"]

    # the report, the CAR and the manifest
    report = list(csv.DictReader(io.StringIO(client.get(f"/v1/collections/{run['id']}/report.csv").text)))
    assert len(report) == TOKENS and {r["status"] for r in report} == {"upgraded", "skipped"}
    car = client.get(f"/v1/collections/{run['id']}/folder.car")
    assert car.status_code == 200
    header, blocks = read_car(io.BytesIO(car.content))
    assert [root.encode() for root in header.roots] == [result["folder_cid"]] and len(list(blocks)) > TOKENS
    manifest = client.get(f"/v1/collections/{run['id']}/manifest.json").json()
    assert manifest["base_uri"] == base_uri and len(manifest["tokens"]) == ready


def test_a_satscale_collection_a_failed_token_is_never_paid_for(setup, tmp_path: Path) -> None:
    client, _, rpc, w3, files = setup
    chain = client.app.state.chain_sender.chain
    collection, documents = build_satscale_collection(
        w3, client.app.state.ipfs, chain.address, _https_origin(client), files
    )
    body = {"rpc_url": rpc, "contract": collection.address, "model": MODEL, "tokens": f"1-{TOKENS}"}
    response = client.post("/v1/collections", json=body)
    assert response.status_code == 402, response.text
    run = response.json()
    rows = {row["token_id"]: row for row in run["tokens"]}
    assert {i for i, row in rows.items() if row["status"] == "skipped"} == SATSCALE_SKIPPED
    # the disk loses one token's kept image before the batch runs: that token fails
    lost = 2
    kept = client.app.state.collections.runs.journal.tokens(run["id"])
    Path(next(t.image_path for t in kept if t.token_id == lost)).unlink()
    first = run["batches"][0]

    done = drive(client, run["id"])
    rows = {row["token_id"]: row for row in done["tokens"]}
    assert rows[lost]["status"] == "failed" and rows[lost]["record_key"] is None
    assert [b["kind"] for b in done["batches"]] == ["work", "release"]
    assert [b["status"] for b in done["batches"]] == ["canceled", "settled"]
    states = {p["payment_hash"]: p["state"] for p in settled_payments(client)}
    assert states[first["payment_hash"]] == "canceled"  # the whole batch's payment went back
    release = done["batches"][1]
    assert states[release["payment_hash"]] == "settled"
    assert release["amount_sat"] == first["amount_sat"] - rows[lost]["amount_sat"]
    assert done["paid_sat"] == release["amount_sat"]
    assert done["result"]["chain"]["method"] == "upgradeBatch"
    upgraded = [i for i, row in rows.items() if row["status"] == "upgraded"]
    assert len(upgraded) == TOKENS - len(SATSCALE_SKIPPED) - 1
    for token_id in upgraded:
        index, uris, pinned = collection.functions.tokenURIs(token_id).call()
        assert len(uris) == 2 and index == 1 and not pinned  # revision 0 is the original, kept on chain
        assert uris[1] == rows[token_id]["new_uri"] == collection.functions.tokenURI(token_id).call()
        assert collection.functions.provenanceOf(token_id).call().hex() == rows[token_id]["record_key"]
        document = ipfs_document(client, uris[1])
        assert document["name"] == documents[token_id]["name"]
        assert document["attributes"] == documents[token_id]["attributes"]
    index, uris, _ = collection.functions.tokenURIs(lost).call()
    assert len(uris) == 1  # the failed token is untouched
    assert not chain.exists(record_key(run["id"], done["chain_id"], collection.address, lost))  # nor recorded


def _https_origin(client: Client) -> str:
    hosts = client.app.state.collections.desk.settings.fetch_allow_private_hosts
    return f"https://{hosts[1]}"


def test_the_cli_runs_a_paid_upgrade_and_reports_it(setup, tmp_path: Path, capsys) -> None:
    client, world, rpc, _, _ = setup
    report = tmp_path / "run.json"
    args = ["collection", "upgrade", "--server", str(client.base_url), "--rpc", rpc, "--model", MODEL]
    args += ["--contract", world.per_token.address, "--tokens", "1-3", "--yes", "--pay-dev", "--report", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"run (col_[A-Za-z0-9_-]{16})", out).group(1)
    assert "invoice for the work of batch 1" in out and "paid from the server's simulated wallet" in out
    # not a Satscale collection and no setter: nothing sent, the report says what to send
    assert "chain: manual" in out
    rows = json.loads(report.read_text())
    assert [r["status"] for r in rows] == ["published"] * 3
    for row in rows:  # one document per token, its original fields kept
        assert row["new_uri"].startswith("ipfs://") and ipfs_document(client, row["new_uri"])["image"].startswith(
            "ipfs://"
        )
        on_chain = world.per_token.functions.tokenURI(row["token_id"]).call()  # untouched on chain
        assert on_chain == row["old_uri"] or on_chain.startswith(row["old_uri"].removesuffix("…"))  # (cut if long)
    assert report.with_suffix(".csv").read_text().count("published") == 3

    assert main(["collection", "status", run_id, "--server", str(client.base_url), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "done"


def test_the_same_idempotency_key_is_the_same_run(setup) -> None:
    client, world, rpc, _, _ = setup
    body = {"rpc_url": rpc, "contract": world.per_token.address, "tokens": "2", "model": MODEL}
    headers = {"Idempotency-Key": "collection-key-1"}
    first = client.post("/v1/collections", json=body, headers=headers)
    again = client.post("/v1/collections", json=body, headers=headers)
    assert first.status_code == again.status_code == 402
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["WWW-Authenticate"] == again.headers["WWW-Authenticate"]
    other = client.post("/v1/collections", json=body | {"tokens": "3"}, headers=headers)
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-mismatch")


def test_runs_refuse_what_they_cannot_finish(setup) -> None:
    client, world, rpc, _, _ = setup
    base = {"rpc_url": rpc, "model": MODEL}
    # a base-URI setter for a per-token collection, and a selection with nothing to upgrade
    refusals = [
        ({"contract": world.per_token.address, "tokens": "1-3", "setter": "setBaseURI(string)"}, "sets a base URI"),
        ({"contract": world.third_party.address, "tokens": "6-9"}, "no token of this selection can be upgraded"),
        ({"contract": world.third_party.address, "setter": "transferOwnership(address)"}, "not a setter"),
    ]
    for change, text in refusals:
        response = client.post("/v1/collections", json=base | change)
        assert response.status_code == 422 and text in response.json()["detail"], response.text
    for bad in ("col_x", "col_" + "A" * 16, "../etc"):
        assert client.get(f"/v1/collections/{bad}").status_code in (404, 422)
    run = client.post("/v1/collections", json=base | {"contract": world.per_token.address, "tokens": "1"}).json()
    for name in ("folder.car", "%2E%2E", "report.json", "manifest.json"):  # nothing before it is done
        assert client.get(f"/v1/collections/{run['id']}/{name}").status_code in (404, 422)
    # nothing a refused request read was kept
    folders = {p.name for p in (client.app.state.collections.runs.folder).iterdir()}
    journal = client.app.state.collections.runs.journal
    assert all(journal.run(name) is not None for name in folders)


def test_unpaid_work_is_bounded_and_a_run_nobody_pays_publishes_nothing(setup, monkeypatch) -> None:
    client, world, rpc, _, _ = setup
    runs = client.app.state.collections.runs
    before = set(runs.folder.iterdir())
    with monkeypatch.context() as patch:  # room for less than the collection's images
        patch.setattr(runs, "max_pending_bytes", runs.journal.unpaid()[1] + 20_000)
        body = {"rpc_url": rpc, "contract": world.third_party.address, "model": MODEL}
        response = client.post("/v1/collections", json=body)
    assert response.status_code == 422 and "can hold for unpaid work" in response.json()["detail"]
    assert set(runs.folder.iterdir()) == before  # nothing it read stays

    payments = runs.payments
    monkeypatch.setattr(payments, "settings", payments.settings.model_copy(update={"invoice_expiry_seconds": 1}))
    store = client.app.state.ipfs
    pins = sorted(store.pins())
    body = {"rpc_url": rpc, "contract": world.per_token.address, "tokens": "1-2", "model": MODEL}
    run = client.post("/v1/collections", json=body).json()
    deadline = time.monotonic() + 60
    while (done := client.get(f"/v1/collections/{run['id']}").json())["state"] != "done":
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert [b["status"] for b in done["batches"]] == ["expired"]
    assert {t["status"] for t in done["tokens"]} == {"unpaid"} and done["paid_sat"] == 0
    assert done["result"]["published"] == 0 and done["result"]["chain"]["status"] == "nothing to send"
    assert sorted(store.pins()) == pins  # nothing published
    folder = runs.folder / run["id"]
    deadline = time.monotonic() + 10  # nor kept: removed once the run is done (just after it says so)
    while (folder / "images").exists() or (folder / "metadata").exists():
        assert time.monotonic() < deadline, "the run's kept files stayed"
        time.sleep(0.05)


def test_an_l402_client_pays_and_repeats_the_request(setup) -> None:
    """What lnget and the other L402 clients do: pay the challenge, send the same request again
    with `L402 <macaroon>:<preimage>`; that is the same run, never a second one."""
    client, world, rpc, _, _ = setup
    body = {"rpc_url": rpc, "contract": world.per_token.address, "tokens": "1-3", "model": MODEL}
    first = client.post("/v1/collections", json=body)
    assert first.status_code == 402
    challenge = l402.parse_challenge(first.headers["WWW-Authenticate"])
    paid = client.post("/v1/dev/pay", json={"payment_request": challenge.invoice, "wait": True, "timeout": 120})
    assert paid.status_code == 200 and paid.json()["preimage"], paid.text  # settled: the work is done
    credential = f"L402 {challenge.macaroon}:{paid.json()['preimage']}"
    again = client.post("/v1/collections", json=body, headers={"Authorization": credential})
    assert again.status_code in (200, 202), again.text
    assert again.json()["id"] == first.json()["id"] and "WWW-Authenticate" not in again.headers
    # the credential is bound to this request, and must prove the payment
    other = client.post("/v1/collections", json=body | {"tokens": "1"}, headers={"Authorization": credential})
    assert other.status_code == 401
    forged = f"L402 {challenge.macaroon}:{'00' * 32}"
    unpaid = client.post("/v1/collections", json=body, headers={"Authorization": forged})
    assert unpaid.status_code == 401
    assert drive(client, first.json()["id"])["paid_sat"] == first.json()["amount_sat"]
