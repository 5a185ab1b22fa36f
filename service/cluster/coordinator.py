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

from payments.backend import PaymentError

from ..jobs import InvoiceStatus, Job, JobState
from ..worker import JobService
from .leadership import AdvisoryLock
from .queue import TASK, ProcrastinateQueue
from .roster import UNROUTABLE

log = logging.getLogger("satscale.cluster")

#: how often a node tries to take the lock (or checks it still holds it), and how often the holder sweeps
LEADER_POLL_SECONDS = 1.0
SWEEP_SECONDS = 1.0
#: a ticket's worker counts as dead after this long without a heartbeat (procrastinate's own; the
#: workers beat every second)
STALLED_SECONDS = 10.0
#: an unpaid job younger than this with no invoice yet may be another node's checkout in progress
ISSUING_GRACE_SECONDS = 60.0
#: finished tickets are deleted after a day, checked every ten minutes
TICKETS_KEPT_HOURS = 24
PRUNE_EVERY_SECONDS = 600.0
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
            # an invoice another node is issuing right now is not "never issued": skip young ones
            await self.service.watcher.reconcile(skip_unissued_younger_than=ISSUING_GRACE_SECONDS)
        except Exception:
            log.exception("reconciling on taking over failed (the sweep goes on)")
        pruned_at = 0.0
        while True:
            try:
                await self.sweep()
                if time.monotonic() - pruned_at > PRUNE_EVERY_SECONDS:
                    await self.queue.app.job_manager.delete_old_jobs(
                        nb_hours=TICKETS_KEPT_HOURS, include_failed=True, include_cancelled=True, include_aborted=True
                    )
                    pruned_at = time.monotonic()
            except Exception:
                log.exception("the coordinator's sweep failed")
            await asyncio.sleep(SWEEP_SECONDS)

    async def sweep(self) -> None:
        now = time.time()
        for job in self.service.store.unfinished():
            try:
                await self._look_after(job, now)
            except Exception:  # one job's trouble (its invoice in a state nobody expected) stops no other
                log.exception("the coordinator could not look after job %s", job.id)
        await self._take_over_stalled()
        await asyncio.to_thread(self._queue_lost_tickets)
        await asyncio.to_thread(self._move_waiting_tickets)

    async def _look_after(self, job: Job, now: float) -> None:
        if job.invoice_status is InvoiceStatus.BATCH:
            return  # a collection token: its run (a duty here too) looks after its batch
        if job.state in (JobState.AWAITING_PAYMENT, JobState.PAYMENT_HELD, JobState.PROCESSING):
            # whichever node issued the invoice (it may have died): a payment, or the node
            # cancelling a held one, reaches the job
            if job.invoice_status in (InvoiceStatus.OPEN, InvoiceStatus.ACCEPTED):
                self.service.watcher.watch(job)
            elif now - job.created_at > ISSUING_GRACE_SECONDS:  # its checkout died before the invoice was noted
                await self.service.watcher.reconcile_job(job)
            return
        left = now - (job.finished_at or job.updated_at) > SETTLE_GRACE_SECONDS  # by a worker that died
        if not left or not job.hold:
            return
        settlement = self.service.settlement
        try:
            if job.state is JobState.SUCCEEDED and job.invoice_status is InvoiceStatus.ACCEPTED:
                await settlement.settle(job)
            elif job.state in (JobState.FAILED, JobState.EXPIRED) and job.invoice_status in (
                InvoiceStatus.OPEN,
                InvoiceStatus.ACCEPTED,
            ):
                await settlement.cancel(job)
        except PaymentError:
            # the node says the invoice is elsewhere (settled or cancelled already): record what it says
            invoice = await self.service.backend.lookup(bytes.fromhex(job.payment_hash))
            await self.service.watcher.on_invoice(job.id, invoice)

    async def _take_over_stalled(self) -> None:
        """A ticket whose worker stopped beating (killed mid-job): the ticket is ended, its job goes
        back to held (a fenced update: only that attempt) and gets a new ticket, to a live pool. A
        new ticket, not the old one again: a worker that was only slow and finishes late can then
        only end its own dead ticket, never the one that runs the job now."""
        store = self.service.store
        manager = self.queue.app.job_manager
        for ticket in await manager.get_stalled_jobs(task_name=TASK, seconds_since_heartbeat=STALLED_SECONDS):
            with contextlib.suppress(procrastinate_errors.ConnectorException):  # ended meanwhile
                await manager.finish_job_by_id_async(ticket.id, status=Status.FAILED, delete_job=False)
            job = store.get(str(ticket.task_kwargs.get("job_id")))
            if job is None or job.state.final:
                continue
            if job.state is JobState.PROCESSING:
                log.warning("job %s: its worker stopped answering; another one runs it", job.id)
                store.transition(job.id, [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=job.attempts)
            await asyncio.to_thread(self.queue.enqueue, job.id)

    def _route(self, job: Job) -> str:
        with self.service.store.transaction() as db:
            return self.queue.roster.route(db, job)

    def _queue_lost_tickets(self) -> None:
        """A job nobody runs and no ticket will: held with no ticket waiting or running (its batch
        was held by a node that died before queueing it), or processing with no ticket running
        (its run was cancelled while pinning, or its ticket ended by a worker that was taken over).
        It goes back to held (fenced by its attempt) and is queued again."""
        store = self.service.store
        rows = store.read(
            "SELECT id, state, attempts FROM jobs WHERE state IN ('payment_held', 'processing') AND NOT EXISTS "
            "(SELECT 1 FROM procrastinate_jobs p WHERE p.lock = jobs.id AND (p.status = 'doing' OR "
            "(p.status = 'todo' AND jobs.state = 'payment_held')))"
        )
        for row in rows:
            if row["state"] == JobState.PROCESSING.value:
                log.warning("job %s: processing, but no worker runs it; it is queued again", row["id"])
                store.transition(row["id"], [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=row["attempts"])
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
