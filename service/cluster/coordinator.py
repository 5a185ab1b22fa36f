"""What exactly one node of a cluster does at a time, while it holds the coordinator lock:

    reconcile    once on taking over: every unfinished job against the Lightning node
    clocks       unpaid invoices expire, held jobs past their budget fail (refunded)
    sweep        every second: watch every unpaid invoice (whichever node issued it: a node
                 killed between invoice and payment loses nothing), run again what a dead
                 worker was running, queue a held job that lost its ticket, move a waiting
                 ticket to a pool that is alive, settle or cancel what a dead worker left
    duties       the chain sender (one sender, so one nonce sequence), remote pins, collection runs

Every step is fenced by the job's state (conditional updates) and every payment call is safe to
repeat, so a coordinator that dies in the middle, or two for a moment while a broken connection
is noticed, can do no harm twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from procrastinate import exceptions as procrastinate_errors
from procrastinate.jobs import Status

from ..jobs import InvoiceStatus, Job, JobState
from ..worker import JobService
from .leadership import AdvisoryLock
from .queue import TASK, ProcrastinateQueue
from .roster import UNROUTABLE

log = logging.getLogger("satscale.cluster")

#: how often a node tries to take the lock (or checks it still holds it), and how often the holder sweeps
LEADER_POLL_SECONDS = 1.0
SWEEP_SECONDS = 1.0
#: a ticket's worker counts as dead after this long without a heartbeat (procrastinate's own)
STALLED_SECONDS = 6.0
#: a finished job's payment the worker did not settle or cancel within this long is the coordinator's
SETTLE_GRACE_SECONDS = 5.0

Duty = Callable[[], Awaitable[None]]


class Coordinator:
    def __init__(
        self, lock: AdvisoryLock, service: JobService, queue: ProcrastinateQueue, duties: dict[str, Duty]
    ) -> None:
        """`duties`: name -> a coroutine function that runs until cancelled (the chain sender...)."""
        self.lock = lock
        self.service = service
        self.queue = queue
        self.duties = {"reconcile": self._reconcile_and_sweep, "clocks": service.watcher.keep_time, **duties}
        self._tasks: list[asyncio.Task] = []

    @property
    def leading(self) -> bool:
        return bool(self._tasks)

    async def run(self) -> None:
        try:
            while True:
                held = await self.lock.hold()
                if held and not self._tasks:
                    log.info("this node is the coordinator now")
                    self._tasks = [
                        asyncio.create_task(duty(), name=f"satscale-{name}") for name, duty in self.duties.items()
                    ]
                elif not held and self._tasks:
                    log.warning("this node is no longer the coordinator")
                    await self._end()
                await asyncio.sleep(LEADER_POLL_SECONDS)
        finally:
            await self._end()
            await self.lock.release()

    async def _end(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------ the sweep

    async def _reconcile_and_sweep(self) -> None:
        try:
            await self.service.watcher.reconcile()
        except Exception:
            log.exception("reconciling on taking over failed (the sweep goes on)")
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("the coordinator's sweep failed")
            await asyncio.sleep(SWEEP_SECONDS)

    async def sweep(self) -> None:
        store = self.service.store
        settlement = self.service.settlement
        now = time.time()
        for job in store.unfinished():
            if job.invoice_status is InvoiceStatus.BATCH:
                continue  # a collection token: its run (a duty here too) looks after its batch
            if job.state is JobState.AWAITING_PAYMENT:
                self.service.watcher.watch(job)
                continue
            left = now - (job.finished_at or job.updated_at) > SETTLE_GRACE_SECONDS  # by a worker that died
            if not left or not job.hold:
                continue
            if job.state is JobState.SUCCEEDED and job.invoice_status is InvoiceStatus.ACCEPTED:
                await settlement.settle(job)
            elif job.state in (JobState.FAILED, JobState.EXPIRED) and job.invoice_status in (
                InvoiceStatus.OPEN,
                InvoiceStatus.ACCEPTED,
            ):
                await settlement.cancel(job)
        await self._take_over_stalled()
        await asyncio.to_thread(self._queue_lost_tickets)
        await asyncio.to_thread(self._move_waiting_tickets)

    async def _take_over_stalled(self) -> None:
        """A ticket whose worker stopped beating (killed mid-job): its job goes back to held, in
        a fenced update (only that attempt), and the ticket to a live pool's queue."""
        store = self.service.store
        manager = self.queue.app.job_manager
        for ticket in await manager.get_stalled_jobs(task_name=TASK, seconds_since_heartbeat=STALLED_SECONDS):
            job = store.get(str(ticket.task_kwargs.get("job_id")))
            if job is None or job.state.final:  # nothing left to run: the ticket is done with
                await manager.finish_job_by_id_async(ticket.id, status=Status.FAILED, delete_job=False)
                continue
            if job.state is JobState.PROCESSING:
                log.warning("job %s: its worker stopped answering; another one runs it", job.id)
                store.transition(job.id, [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=job.attempts)
            try:
                await manager.retry_job(ticket, queue=self._route(job))
            except procrastinate_errors.ConnectorException:
                # another ticket for the job waits already (its queueing lock): that one runs it
                await manager.finish_job_by_id_async(ticket.id, status=Status.FAILED, delete_job=False)

    def _route(self, job: Job) -> str:
        with self.service.store.transaction() as db:
            return self.queue.roster.route(db, job)

    def _queue_lost_tickets(self) -> None:
        """A held job with no ticket waiting or running (its batch was held by a node that died
        before queueing it, say) is queued again."""
        rows = self.service.store.read(
            "SELECT id FROM jobs WHERE state = 'payment_held' AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs p "
            "WHERE p.lock = jobs.id AND p.status IN ('todo', 'doing'))"
        )
        for row in rows:
            self.queue.enqueue(row["id"])

    def _move_waiting_tickets(self) -> None:
        """A ticket waiting in a queue no live worker listens on goes to one that can run it."""
        store = self.service.store
        now = time.time()
        live = {w.queue for w in self.queue.roster.workers() if w.alive(now)}
        rows = store.read(
            "SELECT id, queue_name, args FROM procrastinate_jobs WHERE status = 'todo' AND task_name = ?", TASK
        )
        for row in rows:
            if row["queue_name"] in live:
                continue
            job = store.get(str(row["args"].get("job_id")))
            if job is None:
                continue
            queue = self._route(job)
            if queue != row["queue_name"] and (queue in live or row["queue_name"] == UNROUTABLE):
                with store.transaction() as db:
                    db.execute(
                        "UPDATE procrastinate_jobs SET queue_name = ? WHERE id = ? AND status = 'todo'",
                        (queue, row["id"]),
                    )
