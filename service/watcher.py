"""What the Lightning node says about each job's invoice, and the clocks around it.

watch       invoice ACCEPTED (or a plain invoice SETTLED) -> payment_held -> queued
timers      unpaid past expiry -> expired; held past the hold budget -> failed (refunded)
reconcile   at start and after every reconnect: compare every unfinished job with the
            node and finish what a crash or an outage interrupted
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from payments import l402
from payments.backend import BackendUnavailable, Invoice, InvoiceNotFound, InvoiceState, LightningBackend, PaymentError

from .config import Settings
from .inputs import Inputs
from .jobs import InvoiceStatus, Job, JobState
from .queue import JobQueue
from .settlement import Settlement
from .store import JobStore, RootKeys

log = logging.getLogger("satscale.watcher")

TIMER_INTERVAL = 1.0


class PaymentWatcher:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: LightningBackend,
        settlement: Settlement,
        inputs: Inputs,
        queue: JobQueue,
        fail: Callable[[str, str], Awaitable[object]],
        clock: Callable[[], float],
    ) -> None:
        """`queue`: where a job goes once its payment is held. `fail(job_id, reason)`: end it
        and give the payment back."""
        self.settings = settings
        self.store = store
        self.backend = backend
        self.settlement = settlement
        self.inputs = inputs
        self.queue = queue
        self.fail = fail
        self.clock = clock
        self.root_keys = RootKeys(store)
        self._watchers: dict[str, asyncio.Task] = {}
        self._timer: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._timer = asyncio.create_task(self.keep_time(), name="satscale-timers")

    async def stop(self) -> None:
        tasks = [*self._watchers.values(), *([self._timer] if self._timer else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()

    # ------------------------------------------------------------ invoices

    def watch(self, job: Job) -> None:
        task = self._watchers.get(job.id)
        if task is None or task.done():
            self._watchers[job.id] = asyncio.create_task(self._watch_loop(job.id), name=f"watch-{job.id}")

    async def _watch_loop(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        try:
            async for invoice in self.backend.watch(bytes.fromhex(job.payment_hash), hold=job.hold):
                await self.on_invoice(job_id, invoice)
                if invoice.state.final:
                    break
        except BackendUnavailable as exc:
            self.settlement.lost(exc)
        except PaymentError as exc:
            log.warning("watching %s failed: %s", job_id, exc)
        finally:
            self._watchers.pop(job_id, None)

    async def on_invoice(self, job_id: str, invoice: Invoice) -> None:
        """Bring the job in line with what the node says about its invoice."""
        async with self._lock:
            job = self.store.get(job_id)
            if job is None:
                return
            now = self.clock()
            paid = invoice.state is InvoiceState.ACCEPTED or (invoice.state is InvoiceState.SETTLED and not job.hold)
            if paid and job.state is JobState.AWAITING_PAYMENT:
                status = InvoiceStatus.ACCEPTED if job.hold else InvoiceStatus.SETTLED
                self.queue.hold(
                    job_id,
                    invoice_status=status,
                    held_at=now,
                    hold_deadline=now + self.settings.hold_budget_seconds,
                )
            elif invoice.state is InvoiceState.CANCELED:
                self.store.update(job_id, invoice_status=InvoiceStatus.CANCELED)
                if job.state is JobState.AWAITING_PAYMENT:
                    expired = self.store.transition(
                        job_id, [job.state], JobState.EXPIRED, error="the invoice expired unpaid"
                    )
                    if expired is not None:
                        await self.inputs.release(expired)
                elif job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING):
                    await self.fail(job_id, "the node cancelled the held payment")
            elif invoice.state is InvoiceState.SETTLED and job.invoice_status is not InvoiceStatus.SETTLED:
                self.store.update(job_id, invoice_status=InvoiceStatus.SETTLED)

    # ------------------------------------------------------------ timers

    async def keep_time(self) -> None:
        """Expire unpaid invoices and fail jobs past their hold budget, every second, forever."""
        while True:
            await asyncio.sleep(TIMER_INTERVAL)
            try:
                await self.enforce_deadlines()
            except Exception:
                log.exception("deadline check failed")

    async def enforce_deadlines(self) -> None:
        now = self.clock()
        for job in self.store.unfinished():
            if (
                job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING)
                and job.hold_deadline
                and now > job.hold_deadline
            ):
                await self.fail(job.id, "the hold budget ran out before the job finished; the payment is returned")
            elif job.state is JobState.AWAITING_PAYMENT and job.invoice_expires_at and now > job.invoice_expires_at:
                await self._expire(job)

    async def _expire(self, job: Job) -> None:
        if not self.settlement.available:
            return
        try:
            invoice = await self.backend.lookup(bytes.fromhex(job.payment_hash))
        except BackendUnavailable as exc:
            self.settlement.lost(exc)
            return
        except InvoiceNotFound:
            invoice = None
        if invoice is not None and invoice.state is not InvoiceState.OPEN:
            await self.on_invoice(job.id, invoice)
            return
        expired = self.store.transition(job.id, [JobState.AWAITING_PAYMENT], JobState.EXPIRED, error="unpaid")
        if expired is not None:
            await self.inputs.release(expired)
            if invoice is not None:
                await self.settlement.cancel(expired)

    # ------------------------------------------------------------ recovery

    async def reconcile(self, skip_unissued_younger_than: float = 0.0) -> None:
        """Compare every unfinished job with the node and finish what was interrupted.
        `skip_unissued_younger_than`: in a cluster, a job this young without an invoice may be
        another node's checkout still asking the node for it, not one a crash interrupted."""
        now = self.clock()
        for job in self.store.unfinished():
            if job.invoice_status is InvoiceStatus.BATCH:
                continue  # a collection token: its run reconciles its batch's invoice
            if job.invoice_status is InvoiceStatus.NONE and now - job.created_at < skip_unissued_younger_than:
                continue
            await self.reconcile_job(job)

    async def reconcile_job(self, job: Job) -> None:
        """Bring one job in line with what the node knows of its invoice."""
        try:
            invoice = await self.backend.lookup(bytes.fromhex(job.payment_hash))
        except InvoiceNotFound:
            invoice = None
        await self._reconcile_job(job, invoice)

    async def _reconcile_job(self, job: Job, invoice: Invoice | None) -> None:
        if invoice is None:
            # the node never issued it (crash before add_hold_invoice returned): nobody can have paid
            if job.state is JobState.AWAITING_PAYMENT:
                self.store.transition(job.id, [job.state], JobState.EXPIRED, error="the invoice was never issued")
            await self.inputs.release(self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED))
            return
        if job.invoice_status is InvoiceStatus.NONE:
            job = self.store.update(
                job.id,
                invoice_status=InvoiceStatus.OPEN,
                payment_request=invoice.payment_request,
                invoice_expires_at=float(invoice.expires_at),
            )
            if job.macaroon is None:
                token = l402.mint(
                    bytes.fromhex(job.payment_hash), job.request_hash, job.token_valid_until, self.root_keys
                )
                job = self.store.update(job.id, macaroon=token.macaroon)
        if job.state is JobState.PROCESSING and self.queue.orphaned(job):
            # the engine run died with its process: run it again while the payment is still held
            job = (
                self.store.transition(job.id, [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=job.attempts) or job
            )
        await self.on_invoice(job.id, invoice)
        job = self.store.get(job.id) or job
        if job.state is JobState.PAYMENT_HELD:
            self.queue.enqueue(job.id)
        elif job.state is JobState.AWAITING_PAYMENT:
            self.watch(job)
        elif job.state is JobState.SUCCEEDED and job.hold and invoice.state is InvoiceState.ACCEPTED:
            await self.settlement.settle(job)
        elif job.state in (JobState.FAILED, JobState.EXPIRED) and invoice.state in (
            InvoiceState.OPEN,
            InvoiceState.ACCEPTED,
        ):
            await self.settlement.cancel(job)
