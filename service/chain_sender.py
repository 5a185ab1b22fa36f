"""Drains the provenance outbox onto the chain.

Entries are written in the same transaction as the job's success, so a record can never be
lost. The sender submits them one at a time, each with the nonce the chain gives for the
account's next (pending) transaction, never a count kept in the process: in a cluster another
node may have sent from the same account since (one node at a time sends, service.cluster),
remembers each transaction hash before waiting for it (status `sent`), retries with
backoff while the RPC is down, and never records twice: before submitting, and after
any doubt (a dropped or reverted transaction), it asks the registry whether the
payment hash is already recorded and, if so, adopts that transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

from provenance.chain import ChainRejected, ChainUnavailable, ProvenanceChain, RecordFields

from .store import JobStore, OutboxEntry

log = logging.getLogger("satscale.chain")

RECEIPT_TIMEOUT = 60.0
BACKOFF = (1, 2, 4, 8, 15, 30, 60)
IDLE_POLL = 1.0
#: what nodes answer when a transaction's nonce was taken by another one from the same account
NONCE_CONFLICT = re.compile(r"nonce too (low|high)|replacement transaction underpriced|already known", re.IGNORECASE)


class ChainSender:
    """`connect` makes the chain client; it is called lazily and again after a failure to connect,
    so the server starts (and keeps accepting jobs) while the RPC is down."""

    def __init__(
        self, store: JobStore, connect: Callable[[], ProvenanceChain], clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.connect = connect
        self.clock = clock
        self.available = True
        self._chain: ProvenanceChain | None = None
        self._connect_lock = threading.Lock()
        #: held while a record is submitted, and by another writer from the same account
        self._submit_lock = threading.Lock()
        self._wake = asyncio.Event()

    @property
    def chain(self) -> ProvenanceChain:
        """The connected client (blocking: connects on first use). Raises ChainUnavailable."""
        with self._connect_lock:
            if self._chain is None:
                self._chain = self.connect()
            return self._chain

    def describe(self) -> dict[str, object] | None:
        """Where records go, once connected: for job documents and verifiers."""
        chain = self._chain
        if chain is None:
            return None
        description: dict[str, object] = {
            "registry": chain.address,
            "chain_id": chain.chain_id,
            "embedded": chain.embedded,
        }
        if chain.collection_address:
            description["collection"] = chain.collection_address
        return description

    def wake(self) -> None:
        """New work is in the outbox (called from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        await self._connect_with_backoff()
        while True:
            entries = self.store.outbox_due(self.clock())
            for entry in entries:
                await asyncio.to_thread(self.deliver, entry)
            if not entries:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)

    async def _connect_with_backoff(self) -> None:
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(lambda: self.chain)
                self.available = True
                return
            except (ChainUnavailable, ChainRejected) as exc:
                self.available = False
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                log.warning("cannot connect to the chain (retrying in %s s): %s", delay, exc)
                attempt += 1
                await asyncio.sleep(delay)

    def deliver(self, entry: OutboxEntry) -> None:
        """One attempt at getting `entry` confirmed on chain (blocking)."""
        try:
            self._deliver(entry)
            self.available = True
        except (ChainUnavailable, ChainRejected) as exc:
            # unreachable, or a refusal outside a submission (e.g. connecting to the wrong chain id):
            # keep the entry, say why on the job, try again later. The nonce is re-read then: a
            # submission may or may not have reached the node (a duplicate reverts on chain anyway).
            self.available = False
            self._retry_later(entry, exc)

    def _retry_later(self, entry: OutboxEntry, exc: Exception) -> None:
        delay = BACKOFF[min(entry.attempts, len(BACKOFF) - 1)]
        log.warning("chain unavailable, retrying %s in %s s: %s", entry.payment_hash[:12], delay, exc)
        self.store.outbox_update(
            entry.payment_hash,
            attempts=entry.attempts + 1,
            next_attempt_at=self.clock() + delay,
            last_error=str(exc),
        )

    def _deliver(self, entry: OutboxEntry) -> None:
        payment_hash = entry.payment_hash
        if entry.status == "sent" and entry.tx_hash:
            mined = self.chain.wait_receipt(entry.tx_hash, RECEIPT_TIMEOUT)
            if mined is not None and mined.succeeded:
                self._confirm(payment_hash, entry.tx_hash, mined.block)
                return
        if self._adopt_existing(payment_hash):
            return
        fields = RecordFields.from_payload(entry.payload)
        with self._submit_lock:
            try:
                tx_hash = self.chain.send_record(fields, self.chain.next_nonce())
            except ChainRejected as exc:
                rejected: ChainRejected | None = exc
            else:
                rejected = None
        if rejected is not None:
            if self._adopt_existing(payment_hash):
                return
            if NONCE_CONFLICT.search(str(rejected)):
                # another transaction from this account took the nonce (a coordinator that was
                # taking over sent one just now): not a refusal of the record, try again
                self._retry_later(entry, rejected)
                return
            self._fail(payment_hash, entry, rejected)
            return
        self.store.outbox_update(payment_hash, status="sent", tx_hash=tx_hash, attempts=entry.attempts + 1)
        mined = self.chain.wait_receipt(tx_hash, RECEIPT_TIMEOUT)
        if mined is None:
            # not mined yet (or dropped): the next attempt waits again, then re-checks the registry
            self.store.outbox_update(payment_hash, next_attempt_at=self.clock() + BACKOFF[0])
        elif mined.succeeded:
            self._confirm(payment_hash, tx_hash, mined.block)
        elif not self._adopt_existing(payment_hash):
            self._fail(payment_hash, entry, ChainRejected(f"transaction {tx_hash} reverted"))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """For another writer sending from this account (a collection's update): no record is
        submitted meanwhile."""
        with self._submit_lock:
            yield

    def _adopt_existing(self, payment_hash: str) -> bool:
        """If the registry already holds this payment hash, that record is ours: confirm it."""
        if not self.chain.exists(payment_hash):
            return False
        found = self.chain.find_record_tx(payment_hash)
        tx_hash, block = found if found else (None, None)
        self._confirm(payment_hash, tx_hash, block)
        return True

    def _confirm(self, payment_hash: str, tx_hash: str | None, block: int | None) -> None:
        self.store.outbox_update(payment_hash, status="confirmed", tx_hash=tx_hash, block=block, last_error=None)

    def _fail(self, payment_hash: str, entry: OutboxEntry, exc: Exception) -> None:
        log.error("the chain refused the provenance record of %s: %s", entry.job_id, exc)
        self.store.outbox_update(payment_hash, status="failed", last_error=str(exc), attempts=entry.attempts + 1)
