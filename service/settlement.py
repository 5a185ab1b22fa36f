"""A job's money on the Lightning backend: settle the held payment when the job succeeded,
cancel it when the job failed, and keep track of whether the node can be reached.

Both calls are safe to repeat (the node treats a second settle or cancel as done), and
each records the invoice's new status only after the node confirmed it. While the node is
unreachable nothing is lost: the job's state is already written, and the reconciler that
runs on reconnect settles or cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from payments.backend import BackendUnavailable, InvoiceNotFound, LightningBackend, PaymentError

from .jobs import InvoiceStatus, Job
from .store import JobStore

log = logging.getLogger("satscale.settlement")

RECONNECT_BACKOFF = (1, 2, 4, 8, 15, 30)


class Settlement:
    def __init__(self, store: JobStore, backend: LightningBackend) -> None:
        self.store = store
        self.backend = backend
        self.available = True
        #: run once the node answers again (the reconciler); set by whoever composes the service
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self._reconnecting: asyncio.Task | None = None

    async def settle(self, job: Job) -> None:
        if job.invoice_status in (InvoiceStatus.SETTLED, InvoiceStatus.BATCH):
            return  # BATCH: the collection run settles the batch's invoice as a whole
        try:
            await self.backend.settle(bytes.fromhex(job.preimage or ""))
        except BackendUnavailable as exc:
            self.lost(exc)  # the reconciler settles once the node is back
            return
        self.store.update(job.id, invoice_status=InvoiceStatus.SETTLED)

    async def cancel(self, job: Job) -> None:
        if job.invoice_status in (
            InvoiceStatus.CANCELED,
            InvoiceStatus.SETTLED,
            InvoiceStatus.NONE,
            InvoiceStatus.BATCH,
        ):
            return
        try:
            await self.backend.cancel(bytes.fromhex(job.payment_hash))
        except BackendUnavailable as exc:
            self.lost(exc)
            return
        except InvoiceNotFound:
            pass  # never issued: nothing to give back
        self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED)

    def lost(self, exc: Exception) -> None:
        """The node stopped answering: answer 503 meanwhile and keep trying in the background."""
        if self.available:
            log.warning("lightning backend unavailable: %s", exc)
        self.available = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect(), name="satscale-reconnect")

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)])
            attempt += 1
            try:
                await self.backend.ping()
                if self.on_reconnect is not None:
                    await self.on_reconnect()
                self.available = True
                return
            except PaymentError as exc:
                log.info("lightning backend still unavailable: %s", exc)

    async def stop(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnecting
