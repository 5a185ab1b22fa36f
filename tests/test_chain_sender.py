"""The outbox sender against a real EVM (anvil from npm), through a proxy that can cut the RPC:
records survive an outage in the middle of sending, and nothing is ever recorded twice."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from provenance.chain import ProvenanceChain, RecordFields
from provenance.contracts import load_artifact
from service.chain_sender import ChainSender
from service.jobs import ChainStatus, InvoiceStatus, Job, JobState
from service.store import OutboxEntry, SqliteJobStore

from .anvil import ANVIL_KEY_0, TcpProxy, running_anvil

pytestmark = pytest.mark.chain


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def finished_job(store: SqliteJobStore, number: int) -> OutboxEntry:
    """A job that just succeeded, its record queued in the same transaction."""
    payment_hash = sha(os.urandom(32))
    now = time.time()
    job = Job(
        id=f"job_{number}",
        state=JobState.PROCESSING,
        created_at=now,
        updated_at=now,
        model="realesr-animevideov3",
        scale=2,
        output_format="png",
        input_sha256=sha(b"in%d" % number),
        input_path="/dev/null",
        input_width=10,
        input_height=10,
        request_hash=sha(b"req%d" % number),
        payment_hash=payment_hash,
        preimage=None,
        hold=True,
        payment_request="lnbcrt1...",
        amount_msat=10_000,
        invoice_status=InvoiceStatus.SETTLED,
        invoice_expires_at=now + 600,
        macaroon=None,
        token_valid_until=int(now) + 3600,
        idempotency_key=None,
        held_at=now,
        hold_deadline=now + 180,
        started_at=now,
        finished_at=None,
        progress=0.0,
        output_path=None,
        output_sha256=None,
        output_width=None,
        output_height=None,
        error=None,
        attempts=1,
    )
    store.insert(job)
    fields = RecordFields(
        payment_hash=payment_hash,
        input_cid=f"bafkreiinput{number}",
        output_cid=f"bafkreioutput{number}",
        input_sha256=job.input_sha256,
        output_sha256=sha(b"out%d" % number),
        model=job.model,
        weights_sha256=sha(b"weights"),
        params_hash=sha(b"params"),
    )
    entry = OutboxEntry(payment_hash, job.id, fields.__dict__)
    store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, outbox=entry, chain_status=ChainStatus.PENDING)
    return entry


@pytest.fixture
def anvil() -> Iterator[tuple[Web3, int]]:
    with running_anvil() as node:
        yield node


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    instance = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield instance
    instance.close()


@pytest.fixture
async def proxy(anvil) -> AsyncIterator[TcpProxy]:
    instance = TcpProxy(anvil[1])
    instance.restore()
    yield instance
    instance.cut()


async def until(predicate, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def chain_statuses(store: SqliteJobStore, entries: list[OutboxEntry]) -> list[str]:
    return [store.get(entry.job_id).chain_status.value for entry in entries]


async def test_records_survive_an_rpc_outage_in_the_middle_of_sending(anvil, store, proxy) -> None:
    w3, _ = anvil
    recorder = Account.from_key(ANVIL_KEY_0).address
    sender = ChainSender(store, lambda: ProvenanceChain.connect(proxy.url, ANVIL_KEY_0, chain_id=w3.eth.chain_id))
    task = asyncio.create_task(sender.run())
    try:
        first = [finished_job(store, n) for n in range(3)]
        sender.wake()
        await until(lambda: chain_statuses(store, first).count("confirmed") >= 1)

        proxy.cut()  # the RPC goes away while records are being sent
        second = [finished_job(store, n) for n in range(3, 6)]
        sender.wake()
        await until(lambda: all(store.get(e.job_id).chain_error for e in second))
        for entry in second:
            stuck = store.get(entry.job_id)
            assert stuck.chain_status is ChainStatus.PENDING and "cannot be reached" in stuck.chain_error
        assert sender.available is False

        proxy.restore()
        everything = first + second
        await until(lambda: chain_statuses(store, everything) == ["confirmed"] * 6, timeout=120)
    finally:
        task.cancel()

    registry = w3.eth.contract(address=sender.chain.address, abi=load_artifact("ProvenanceRegistry").abi)
    for entry in everything:
        job = store.get(entry.job_id)
        assert job.chain_tx and job.chain_block and job.chain_error is None
        receipt = w3.eth.get_transaction_receipt(job.chain_tx)  # straight from anvil, not through the proxy
        assert receipt["status"] == 1 and receipt["blockNumber"] == job.chain_block
        assert registry.functions.exists(bytes.fromhex(entry.payment_hash)).call()
        output = bytes.fromhex(entry.payload["output_sha256"])
        assert len(registry.functions.recordsForOutput(output).call()) == 1
    # deploy + grant role + one transaction per record: nothing was sent twice
    assert w3.eth.get_transaction_count(recorder) == 2 + 6


async def test_a_record_already_on_chain_is_adopted_not_sent_again(anvil, store) -> None:
    w3, port = anvil
    chain = ProvenanceChain.connect(f"http://127.0.0.1:{port}", ANVIL_KEY_0)
    sent_before_crash = finished_job(store, 1)  # the process sent it, then died before noting it
    tx = chain.send_record(RecordFields.from_payload(sent_before_crash.payload), chain.next_nonce())
    assert chain.wait_receipt(tx, 30).succeeded
    noted = finished_job(store, 2)  # the process noted the transaction, then died waiting
    noted_tx = chain.send_record(RecordFields.from_payload(noted.payload), chain.next_nonce())
    store.outbox_update(noted.payment_hash, status="sent", tx_hash=noted_tx)
    count = w3.eth.get_transaction_count(chain.account.address)

    sender = ChainSender(store, lambda: chain)
    for entry in (store.outbox_entry(sent_before_crash.payment_hash), store.outbox_entry(noted.payment_hash)):
        await asyncio.to_thread(sender.deliver, entry)

    assert store.get(sent_before_crash.job_id).chain_tx == tx
    assert store.get(noted.job_id).chain_tx == noted_tx
    assert chain_statuses(store, [sent_before_crash, noted]) == ["confirmed", "confirmed"]
    assert w3.eth.get_transaction_count(chain.account.address) == count


async def test_a_wrong_chain_id_is_reported_and_retried(anvil, store) -> None:
    _, port = anvil
    sender = ChainSender(store, lambda: ProvenanceChain.connect(f"http://127.0.0.1:{port}", ANVIL_KEY_0, chain_id=1))
    entry = finished_job(store, 7)
    await asyncio.to_thread(sender.deliver, entry)
    job = store.get(entry.job_id)
    assert job.chain_status is ChainStatus.PENDING and "configuration says 1" in job.chain_error
    assert store.outbox_entry(entry.payment_hash).next_attempt_at > time.time()
