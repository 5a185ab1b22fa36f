"""The job store's rules hold on both databases: the embedded SQLite file and the cluster's
PostgreSQL (a fresh database per test). Several store objects on one database stand for
several nodes: each has its own connection."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.collections.journal import BatchRow, CollectionJournal, RunRow, TokenRow
from service.jobs import InvoiceStatus, Job, JobState
from service.postgres_store import PostgresJobStore, postgres_ddl
from service.store import SCHEMA, OutboxEntry, SqliteJobStore, SqlJobStore

Opener = Callable[[], SqlJobStore]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store (another node's connection) on one database of the parameter's kind."""
    opened: list[SqlJobStore] = []
    if request.param == "sqlite":
        url = None
    else:
        from .postgres import fresh_database

        database = fresh_database()
        url = database.__enter__()

    def opener() -> SqlJobStore:
        store = PostgresJobStore(url) if url else SqliteJobStore(tmp_path / "satscale.sqlite3")
        opened.append(store)
        return store

    try:
        yield opener
    finally:
        for store in opened:
            store.close()
        if url:
            database.__exit__(None, None, None)


def new_job(number: int, state: JobState = JobState.AWAITING_PAYMENT, **changes: object) -> Job:
    now = time.time()
    fields: dict = dict(
        id=f"job_{number}",
        state=state,
        created_at=now + number * 1e-3,
        updated_at=now,
        model="realesr-animevideov3",
        scale=4,
        output_format="png",
        input_sha256=hashlib.sha256(b"in%d" % number).hexdigest(),
        input_path=f"/inputs/{number}.png",
        input_width=10,
        input_height=10,
        request_hash="r",
        payment_hash=hashlib.sha256(os.urandom(32)).hexdigest(),
        preimage=None,
        hold=True,
        payment_request="lnbc1...",
        amount_msat=3_000_000_000,  # wider than 32 bits: a big job's price in msat
        invoice_status=InvoiceStatus.OPEN,
        invoice_expires_at=now + 600,
        macaroon=None,
        token_valid_until=2**40,
    )
    fields.update(changes)
    return Job(**fields)


def test_a_job_round_trips_with_every_field(open_store: Opener) -> None:
    store = open_store()
    job = new_job(1, publish=True, collection_run="run_1", worker=None)
    store.insert(job)
    again = open_store().get(job.id)
    assert again == job
    assert store.by_payment_hash(job.payment_hash) == job
    assert [j.id for j in store.by_input(job.input_sha256)] == [job.id]
    assert store.count() == 1


def test_of_two_nodes_moving_one_job_at_once_exactly_one_wins(open_store: Opener) -> None:
    first = open_store()
    for number in range(5):
        first.insert(new_job(number))
    nodes = [open_store() for _ in range(4)]

    def move(node: SqlJobStore, job_id: str, start: threading.Barrier, winners: list[Job]) -> None:
        start.wait()
        moved = node.transition(job_id, [JobState.AWAITING_PAYMENT], JobState.PAYMENT_HELD)
        if moved is not None:
            winners.append(moved)

    for number in range(5):
        winners: list[Job] = []
        start = threading.Barrier(len(nodes))
        threads = [threading.Thread(target=move, args=(node, f"job_{number}", start, winners)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and winners[0].state is JobState.PAYMENT_HELD
    assert [e[1] for e in first.events("job_0")] == ["created", "payment_held"]


def test_what_a_transition_writes_besides_is_all_or_nothing(open_store: Opener) -> None:
    store = open_store()
    job = new_job(1, JobState.PROCESSING, attempts=1)
    store.insert(job)
    entry = OutboxEntry(job.payment_hash, job.id, {"payment_hash": job.payment_hash})

    def refuse(db: object, moved: Job) -> None:
        assert moved.state is JobState.SUCCEEDED  # it sees the job as it now is, inside the transaction
        raise RuntimeError("the queue refused")

    with pytest.raises(RuntimeError):
        store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, outbox=entry, also=refuse)
    assert store.get(job.id).state is JobState.PROCESSING
    assert store.outbox_entry(job.payment_hash) is None

    # another attempt began meanwhile: the old attempt's success is fenced off
    assert store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, attempt=0) is None
    done = store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, outbox=entry, attempt=1)
    assert done is not None and done.state is JobState.SUCCEEDED
    assert store.outbox_entry(job.payment_hash).status == "pending"


def test_progress_is_shared_and_tells_a_stale_attempt_to_stop(open_store: Opener) -> None:
    worker, api = open_store(), open_store()
    worker.insert(new_job(1, JobState.PROCESSING, attempts=2))
    assert worker.progress("job_1", 2, 0.4) is True
    assert api.get("job_1").progress == pytest.approx(0.4)
    assert worker.progress("job_1", 1, 0.5) is False  # an older attempt, taken over
    api.transition("job_1", [JobState.PROCESSING], JobState.FAILED, error="the hold budget ran out")
    assert worker.progress("job_1", 2, 0.6) is False  # failed elsewhere: stop
    assert api.get("job_1").progress == pytest.approx(0.4)


def test_outbox_chain_status_keys_and_meta(open_store: Opener) -> None:
    store = open_store()
    job = new_job(1, JobState.PROCESSING)
    store.insert(job)
    entry = OutboxEntry(job.payment_hash, job.id, {"a": 1})
    store.transition(job.id, [JobState.PROCESSING], JobState.SUCCEEDED, outbox=entry)
    assert [e.payment_hash for e in store.outbox_due(time.time())] == [job.payment_hash]
    store.outbox_update(job.payment_hash, status="confirmed", tx_hash="0xab", block=7)
    assert store.get(job.id).chain_status.value == "confirmed" and store.get(job.id).chain_block == 7
    assert store.outbox_due(time.time()) == []

    key_id, root_key = os.urandom(66), os.urandom(32)
    store.put_root_key(key_id, root_key)
    assert open_store().get_root_key(key_id) == root_key
    store.set_meta("k", "1")
    store.set_meta("k", "2")
    assert open_store().get_meta("k") == "2"


def test_measured_speed_is_shared_and_only_the_newest_kept(open_store: Opener) -> None:
    worker, api = open_store(), open_store()
    for index in range(40):
        worker.add_sample("variant", float(index), keep=32)
    assert api.samples("variant", 100) == [float(i) for i in range(39, 7, -1)]
    assert api.samples("other", 10) == []


def test_the_collection_journal_works_on_either_database(open_store: Opener) -> None:
    store = open_store()
    journal = CollectionJournal(store)
    CollectionJournal(open_store())  # a second node opens the same tables
    now = time.time()
    run = RunRow("run_1", now, now, "running", "0x" + "ab" * 20, 31337, None, "{}", "{}", "/runs/1", "h",
                 kept_bytes=5_000_000_000)  # fmt: skip
    token_id = 2**200  # an ERC-721 id wider than any SQL integer
    token = TokenRow("run_1", token_id, "waiting")
    batch = BatchRow("ph1", "run_1", 0, "work", f"[{token_id}]", 10_000, "pre", "open", now)
    journal.create(run, [token], [batch])
    assert journal.unpaid() == (1, 5_000_000_000)
    job = new_job(9, JobState.PAYMENT_HELD, invoice_status=InvoiceStatus.BATCH, collection_run="run_1")
    assert journal.hold_batch(batch, [(token_id, job)], held_at=now) is True
    assert journal.hold_batch(batch, [(token_id, job)], held_at=now) is False  # held once
    assert journal.tokens("run_1")[0].token_id == token_id and journal.tokens("run_1")[0].status == "queued"
    assert store.get(job.id).state is JobState.PAYMENT_HELD
    assert journal.unpaid() == (0, 0)


def test_the_postgres_schema_is_the_sqlite_one_widened() -> None:
    statements = postgres_ddl(SCHEMA)
    jobs = next(s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS jobs"))
    assert "rowid BIGINT GENERATED ALWAYS AS IDENTITY" in jobs
    assert "amount_msat BIGINT NOT NULL" in jobs and "created_at DOUBLE PRECISION NOT NULL" in jobs
    keys = next(s for s in statements if "l402_root_keys" in s)
    assert "key_id BYTEA PRIMARY KEY" in keys
