"""The collection update of a finishing run on anvil when its transaction is not mined at once
(a slow chain, a crash right after sending): nothing is signed again while it may still be
mined, a transaction the pool lost is sent again as it was, and each token gets one revision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_utils import keccak

from provenance.chain import ProvenanceChain, _deploy
from provenance.collection.writer import CollectionWriter
from service.collections.finish import ChainAccess, ChainUpdateDelayed, RunFinisher
from service.collections.journal import CollectionJournal, RunRow, TokenRow
from service.store import SqliteJobStore

from .anvil import ANVIL_KEY_0, running_anvil
from .collection_world import send
from .test_collection_writer import _record

pytestmark = pytest.mark.chain


@dataclass(frozen=True)
class Recorded:
    payment_hash: str  # what the update needs of a token's job: its record key


@pytest.fixture
def world(tmp_path: Path):
    with running_anvil() as (w3, port):
        chain = ProvenanceChain.connect(f"http://127.0.0.1:{port}", ANVIL_KEY_0)
        account = chain.account
        address = _deploy(w3, account, "SatscaleCollection", "Pals", "PAL", chain.address, account.address)
        collection = w3.eth.contract(address=address, abi=CollectionWriter(w3, account, address).satscale.abi)
        for role in ("MINTER_ROLE", "UPGRADER_ROLE"):
            send(collection.functions.grantRole(keccak(text=role), account.address), w3)
        for token_id in (1, 2):
            send(collection.functions.mint(account.address, f"ipfs://old{token_id}"), w3)
        keys = {token_id: _record(chain, token_id) for token_id in (1, 2)}
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        journal = CollectionJournal(store)
        facts = {"erc7160": True, "provenance_registry": chain.address}
        planned = json.dumps({"facts": facts, "layout": {"kind": "per-token"}})
        run = RunRow("col_" + "a" * 16, 0.0, 0.0, "finishing", address, chain.chain_id, None, "{}", planned,
                     str(tmp_path), "0" * 64)  # fmt: skip
        journal.create(run, [TokenRow(run.id, i, "published") for i in (1, 2)], [])
        lock = chain.lock

        def finisher() -> RunFinisher:  # a new one each time: what a restarted server builds
            access = ChainAccess(CollectionWriter(w3, account, address, lock), lambda: _Free())
            made = RunFinisher(journal, store, None, lambda _run: access, lambda: {"registry": chain.address})
            made.receipt_wait = 1.0
            return made

        yield w3, collection, journal, run, keys, finisher
        store.close()


class _Free:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _update(finisher: RunFinisher, run: RunRow, keys: dict[int, str]) -> dict:
    uris = {i: f"ipfs://new{i}" for i in keys}
    jobs = {i: Recorded(key) for i, key in keys.items()}
    return finisher._update_chain(run, uris, jobs, {})


def _revisions(collection, token_id: int) -> list[str]:
    return collection.functions.tokenURIs(token_id).call()[1]


def test_an_unmined_update_is_awaited_not_sent_again(world) -> None:
    w3, collection, journal, run, keys, finisher = world
    w3.provider.make_request("evm_setAutomine", [False])
    with pytest.raises(ChainUpdateDelayed, match="not mined yet"):
        _update(finisher(), run, keys)
    pending = json.loads(journal.run(run.id).pending_tx)
    assert pending["tokens"] == [1, 2]
    assert len(w3.eth.get_block("pending")["transactions"]) == 1
    # "restarted": the journaled transaction is awaited, nothing new is signed
    for _ in range(2):
        with pytest.raises(ChainUpdateDelayed):
            _update(finisher(), run, keys)
    assert len(w3.eth.get_block("pending")["transactions"]) == 1
    w3.provider.make_request("evm_mine", [])
    w3.provider.make_request("evm_setAutomine", [True])
    result = _update(finisher(), run, keys)
    assert result["status"] == "sent" and result["already_done"] == 2 and result["transactions"] == []
    assert journal.run(run.id).pending_tx is None
    assert [t.status for t in journal.tokens(run.id)] == ["upgraded", "upgraded"]
    for token_id in keys:
        assert _revisions(collection, token_id) == [f"ipfs://old{token_id}", f"ipfs://new{token_id}"]


def test_a_transaction_the_pool_lost_is_sent_again_as_it_was(world) -> None:
    w3, collection, journal, run, keys, finisher = world
    w3.provider.make_request("evm_setAutomine", [False])
    with pytest.raises(ChainUpdateDelayed):
        _update(finisher(), run, keys)
    tx_hash = json.loads(journal.run(run.id).pending_tx)["tx_hash"]
    w3.provider.make_request("anvil_dropTransaction", [tx_hash])
    assert w3.eth.get_block("pending")["transactions"] == []
    w3.provider.make_request("evm_setAutomine", [True])
    result = _update(finisher(), run, keys)  # sent again, byte for byte: the same hash
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    assert result["already_done"] == 2 and journal.run(run.id).pending_tx is None
    for token_id in keys:
        assert len(_revisions(collection, token_id)) == 2
