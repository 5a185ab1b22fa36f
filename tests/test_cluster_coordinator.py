"""The coordinator's sweep on the real PostgreSQL, with the real dev Lightning node, in one
process: a run whose worker stopped beating is handed over with a new ticket, a job nobody runs
is queued again, one job's unexpected invoice stops nothing else, and a stale attempt cannot
fail the attempt that took over."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from payments.backend import InvoiceState
from payments.dev import DevNode
from service.cluster.coordinator import STALLED_SECONDS, Coordinator
from service.cluster.leadership import AdvisoryLock
from service.cluster.queue import ProcrastinateQueue
from service.cluster.roster import Roster
from service.config import Settings
from service.jobs import InvoiceStatus, JobState
from service.postgres_store import PostgresJobStore
from service.worker import JobService

from .test_job_stores import new_job

pytestmark = pytest.mark.postgres

MODEL = "realesr-animevideov3"


@pytest.fixture
async def world(tmp_path: Path, registry, postgres_url: str):
    settings = Settings(
        data_dir=tmp_path / "data", role="api", store_url=postgres_url, chain_rpc_url="http://127.0.0.1:9"
    )  # fmt: skip  (never dialled here)
    store = PostgresJobStore(postgres_url)
    roster = Roster(store)
    backend = DevNode(tmp_path / "dev-node.sqlite3")
    queues: list[ProcrastinateQueue] = []

    def queue(runner):
        queues.append(ProcrastinateQueue(store, roster, runner, postgres_url))
        return queues[0]

    service = JobService(settings, store, backend, registry, queue=queue, sole=False, workers=roster.capacity)
    await service.start()
    roster.advertise("gpu-1", "gpu", [MODEL], 1, time.time())
    coordinator = Coordinator(AdvisoryLock(postgres_url), service, queues[0], {})
    yield SimpleNamespace(store=store, service=service, queue=queues[0], coordinator=coordinator, backend=backend)
    await service.stop()
    store.close()


def tickets(store: PostgresJobStore) -> list[dict]:
    return store.read("SELECT id, status, lock FROM procrastinate_jobs ORDER BY id")


async def test_a_stalled_run_gets_a_new_ticket_and_the_old_one_is_ended(world) -> None:
    store = world.store
    store.insert(new_job(1))
    held = world.queue.hold("job_1", invoice_status=InvoiceStatus.ACCEPTED, held_at=time.time())
    assert held is not None
    # a procrastinate worker took the ticket and ran attempt 1, then stopped beating (SIGKILL)
    with store.transaction() as db:
        worker_id = db.execute("SELECT procrastinate_register_worker_v1() AS id").fetchone()["id"]
        db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = ? WHERE lock = 'job_1'", (worker_id,))
        db.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = NOW() - make_interval(secs => ?) WHERE id = ?",
            (STALLED_SECONDS + 5, worker_id),
        )
    store.transition("job_1", [JobState.PAYMENT_HELD], JobState.PROCESSING, attempts=1, worker="gone/1")
    old = tickets(store)[0]

    await world.coordinator.sweep()
    after = {t["id"]: t for t in tickets(store)}
    assert after[old["id"]]["status"] == "failed"  # a late finish by the slow worker ends only this one
    fresh = [t for t in after.values() if t["id"] != old["id"]]
    assert [t["status"] for t in fresh] == ["todo"] and fresh[0]["lock"] == "job_1"
    job = store.get("job_1")
    assert job.state is JobState.PAYMENT_HELD and job.attempts == 1

    await world.coordinator.sweep()  # nothing stalled now, nothing lost: nothing more
    assert len(tickets(store)) == 2


async def test_a_job_processing_with_no_running_ticket_is_queued_again(world) -> None:
    store = world.store
    store.insert(new_job(2, JobState.PROCESSING, attempts=3, invoice_status=InvoiceStatus.ACCEPTED))
    store.insert(new_job(3, JobState.PAYMENT_HELD, invoice_status=InvoiceStatus.ACCEPTED))
    await world.coordinator.sweep()
    assert store.get("job_2").state is JobState.PAYMENT_HELD and store.get("job_2").attempts == 3
    assert sorted(t["lock"] for t in tickets(store) if t["status"] == "todo") == ["job_2", "job_3"]


async def test_one_job_with_an_invoice_nobody_expected_stops_no_other(world) -> None:
    store, backend = world.store, world.backend
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    await backend.add_hold_invoice(payment_hash, 10_000, "job", 600)
    await backend.cancel(payment_hash)  # the node cancelled it while the job ran (nobody watched)
    long_ago = time.time() - 60
    store.insert(new_job(4, JobState.SUCCEEDED, payment_hash=payment_hash.hex(), preimage=preimage.hex(),
                         invoice_status=InvoiceStatus.ACCEPTED, finished_at=long_ago))  # fmt: skip
    store.insert(new_job(5, JobState.PAYMENT_HELD, invoice_status=InvoiceStatus.ACCEPTED))  # lost its ticket
    await world.coordinator.sweep()
    assert store.get("job_4").invoice_status is InvoiceStatus.CANCELED  # what the node says, recorded
    assert (await backend.lookup(payment_hash)).state is InvoiceState.CANCELED
    assert [t["lock"] for t in tickets(store)] == ["job_5"]  # the rest of the sweep ran


async def test_a_stale_attempt_cannot_fail_the_attempt_that_took_over(world) -> None:
    store, runner = world.store, world.service.runner
    store.insert(new_job(6, JobState.PROCESSING, attempts=2, invoice_status=InvoiceStatus.ACCEPTED))
    stale = await runner.fail("job_6", "upscaling failed: the output vanished", attempt=1)
    assert stale.state is JobState.PROCESSING and stale.invoice_status is InvoiceStatus.ACCEPTED
    own = await runner.fail("job_6", "upscaling failed: out of memory", attempt=2)
    assert own.state is JobState.FAILED and own.error == "upscaling failed: out of memory"
