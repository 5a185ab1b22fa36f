"""The cluster's queue, roster and coordinator lock on the real PostgreSQL, in one process:
a held job's ticket is written in the transaction that holds it (or neither is), a job goes
only to a pool that has its models, and one node at a time holds the coordinator lock."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import psycopg
import pytest

from service.cluster.coordinator import Coordinator
from service.cluster.leadership import AdvisoryLock
from service.cluster.queue import TASK, ProcrastinateQueue
from service.cluster.roster import ALIVE_SECONDS, UNROUTABLE, Roster, capability_queue
from service.cluster.worker import ClusterWorker
from service.jobs import InvoiceStatus, JobState
from service.postgres_store import PostgresJobStore

from .test_job_stores import new_job

pytestmark = pytest.mark.postgres

LIGHT, HEAVY = "realesr-animevideov3", "realesrgan-x4plus"


class Runner:
    """What the queue asks of the runner when it only writes tickets (an API node)."""

    def start(self, sole: bool) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture
def world(postgres_url: str):
    store = PostgresJobStore(postgres_url)
    roster = Roster(store)
    queue = ProcrastinateQueue(store, roster, Runner(), postgres_url)  # type: ignore[arg-type]
    yield SimpleNamespace(store=store, roster=roster, queue=queue, url=postgres_url)
    store.close()


def tickets(world) -> list[dict]:
    return world.store.read("SELECT queue_name, status, lock, queueing_lock, args FROM procrastinate_jobs ORDER BY id")


def held(world, job_id: str):
    return world.queue.hold(job_id, invoice_status=InvoiceStatus.ACCEPTED, held_at=time.time())


def test_holding_a_job_writes_its_ticket_in_the_same_transaction(world) -> None:
    light_queue = world.roster.advertise("w1", "gpu", [LIGHT], 1, time.time())
    world.store.insert(new_job(1))
    assert held(world, "job_1").state is JobState.PAYMENT_HELD
    assert tickets(world) == [
        {"queue_name": light_queue, "status": "todo", "lock": "job_1", "queueing_lock": "job_1",
         "args": {"job_id": "job_1"}}
    ]  # fmt: skip
    assert held(world, "job_1") is None  # held once: a second watcher's hold writes nothing
    world.queue.enqueue("job_1")  # a recovery's enqueue while one waits: still one ticket
    assert len(tickets(world)) == 1


def test_a_ticket_that_cannot_be_written_leaves_the_job_unheld(world, monkeypatch: pytest.MonkeyPatch) -> None:
    world.store.insert(new_job(1))

    def broken(db, job):
        raise psycopg.OperationalError("the connection dropped")

    monkeypatch.setattr(world.roster, "route", broken)
    with pytest.raises(psycopg.OperationalError):
        held(world, "job_1")
    assert world.store.get("job_1").state is JobState.AWAITING_PAYMENT
    assert tickets(world) == []


def test_a_job_goes_only_to_a_pool_that_has_its_models(world) -> None:
    now = time.time()
    light_only = world.roster.advertise("cpu-box", "cpu", [LIGHT], 1, now)
    both = world.roster.advertise("gpu-box", "gpu", [LIGHT, HEAVY], 1, now)
    assert both == capability_queue("gpu", [HEAVY, LIGHT])
    world.store.insert(new_job(1, model=HEAVY))
    world.store.insert(new_job(2, model="a-model-nobody-has"))
    held(world, "job_1")
    held(world, "job_2")
    queues = {t["lock"]: t["queue_name"] for t in tickets(world)}
    assert queues == {"job_1": both, "job_2": UNROUTABLE}
    assert world.roster.capacity({HEAVY}) == 1 and world.roster.capacity({LIGHT}) == 2
    assert world.roster.capacity({"a-model-nobody-has"}) == 0
    # light jobs spread over both pools by what waits in each
    for number in range(3, 7):
        world.store.insert(new_job(number, model=LIGHT))
        held(world, f"job_{number}")
    spread = [t["queue_name"] for t in tickets(world) if t["lock"] in {f"job_{n}" for n in range(3, 7)}]
    assert spread.count(light_only) == 3 and spread.count(both) == 1  # job_1 waits in `both` already


def test_a_dead_pool_is_not_chosen_while_a_live_one_can_run_the_job(world) -> None:
    world.roster.advertise("old", "gpu", [LIGHT], 1, time.time())
    with world.store.transaction() as db:
        db.execute("UPDATE cluster_workers SET seen_at = ? WHERE name = 'old'", (time.time() - ALIVE_SECONDS - 5,))
    live = world.roster.advertise("new", "spare", [LIGHT, HEAVY], 1, time.time())
    world.store.insert(new_job(1))
    held(world, "job_1")
    assert tickets(world)[0]["queue_name"] == live
    assert world.roster.capacity({LIGHT}) == 1


async def test_tickets_waiting_for_nobody_move_and_lost_ones_come_back(world) -> None:
    world.store.insert(new_job(1))
    held(world, "job_1")  # no worker at all yet: it waits as unroutable
    assert tickets(world)[0]["queue_name"] == UNROUTABLE
    # a held job whose ticket was never written (a node died between holding a batch and queueing it)
    world.store.insert(new_job(2, JobState.PAYMENT_HELD))
    service = SimpleNamespace(store=world.store, watcher=SimpleNamespace(keep_time=None))
    coordinator = Coordinator(AdvisoryLock(world.url), service, world.queue, {})  # type: ignore[arg-type]
    queue = world.roster.advertise("w1", "gpu", [LIGHT], 1, time.time())
    await asyncio.to_thread(coordinator._queue_lost_tickets)
    await asyncio.to_thread(coordinator._move_waiting_tickets)
    assert {t["lock"]: t["queue_name"] for t in tickets(world)} == {"job_1": queue, "job_2": queue}
    assert all(t["status"] == "todo" for t in tickets(world))
    await asyncio.to_thread(coordinator._queue_lost_tickets)  # nothing lost now: nothing added
    assert len(tickets(world)) == 2
    assert {t["args"]["job_id"] for t in tickets(world)} == {"job_1", "job_2"}
    assert world.store.read("SELECT COUNT(*) AS n FROM procrastinate_jobs WHERE task_name = ?", TASK)[0]["n"] == 2


async def test_one_node_holds_the_coordinator_lock_and_another_takes_it_when_it_dies(postgres_url: str) -> None:
    first, second = AdvisoryLock(postgres_url, name="node-a"), AdvisoryLock(postgres_url, name="node-b")
    try:
        assert await first.hold() is True
        assert await second.hold() is False
        assert await first.hold() is True  # still held, checked on its connection
        # the holder's connection is cut (its process died, or the network): PostgreSQL lets go
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'node-a'")
        assert await first.hold() is False  # it notices on its next check, and stops its duties
        assert await second.hold() is True
        assert await first.hold() is False
    finally:
        await first.release()
        await second.release()


async def test_a_worker_pruned_for_a_late_heartbeat_starts_again_and_runs_jobs(world) -> None:
    ran: list[str] = []

    class Recording(Runner):
        async def run(self, job_id: str, worker: str | None = None) -> None:
            ran.append(job_id)

    queue = ProcrastinateQueue(world.store, world.roster, Recording(), world.url)  # type: ignore[arg-type]
    await queue.app.open_async()
    worker = ClusterWorker(queue, world.roster, [LIGHT], "gpu", 1)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 30
        while not world.store.read("SELECT id FROM procrastinate_workers"):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.1)
        # another worker starting while this one's heartbeat was late prunes its row: its next
        # fetch fails on the missing row, and the worker must start again rather than serve nothing
        with world.store.transaction() as db:
            db.execute("DELETE FROM procrastinate_workers")
        world.store.insert(new_job(1))
        held(world, "job_1")
        while ran != ["job_1"]:
            assert time.monotonic() < deadline, f"the job never ran; worker done: {task.done()}"
            await asyncio.sleep(0.1)
        assert not task.done()
        assert [w.name for w in world.roster.workers()] == [worker.name]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.app.close_async()
