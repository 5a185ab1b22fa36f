"""A collection run's money: one hold invoice per batch, and a token that fails never paid for.

    open      the batch's hold invoice is out; nothing runs
    held      the payer's funds are locked: each token becomes a job in the server's own queue
              (the same engines, limits, pinning and hold-budget timer as any paid job)
    settled   every token succeeded: the invoice is settled and the results released
    canceled  a token failed (or the node gave the funds back): the invoice is cancelled, so the
              payer gets everything back, and a "release" invoice asks for the tokens that
              succeeded only; their results (IPFS content, chain records) are released when it
              is paid, and never if it expires
    expired   nobody paid in time: the batch's tokens are not run, nor any later batch

Only one batch is open or held at a time. Every step is decided from the journal, the jobs
and what the node says, and each backend call is safe to repeat, so `advance` may run again
after a crash at any point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from payments import l402
from payments.backend import InvoiceNotFound, InvoiceState, LightningBackend

from ..config import Settings
from ..intake import ADMISSION_SHARE, Intake, JobOptions
from ..jobs import InvoiceStatus, Job, JobState
from ..provenance import Provenance
from ..queue import JobQueue
from ..runner import JobRunner
from ..store import RootKeys, SqlJobStore
from .journal import BatchRow, CollectionJournal, RunRow, TokenRow

log = logging.getLogger("satscale.collections")


def record_key(run_id: str, chain_id: int, contract: str, token_id: int) -> str:
    """The chain record of one token's upgrade: unique per run and token, and the same however
    often the run resumes (the invoice that pays for it may change; the record does not)."""
    text = f"satscale-collection-token:{run_id}:{chain_id}:{contract.lower()}:{token_id}"
    return hashlib.sha256(text.encode()).hexdigest()


def new_batch(run_id: str, seq: int, kind: str, tokens: list[int], amount_msat: int, now: float) -> BatchRow:
    """A batch with our own preimage, written before the node hears of its hash."""
    preimage = secrets.token_bytes(32)
    return BatchRow(
        payment_hash=hashlib.sha256(preimage).hexdigest(),
        run_id=run_id,
        seq=seq,
        kind=kind,
        tokens=json.dumps(tokens),
        amount_msat=amount_msat,
        preimage=preimage.hex(),
        status="waiting",
        created_at=now,
    )


class BatchPayments:
    def __init__(
        self,
        settings: Settings,
        store: SqlJobStore,
        journal: CollectionJournal,
        backend: LightningBackend,
        intake: Intake,
        runner: JobRunner,
        queue: JobQueue,
        provenance: Provenance,
        clock: Callable[[], float],
        on_released: Callable[[], None],
    ) -> None:
        """`on_released` is told when records were released to the chain (the sender wakes)."""
        self.settings = settings
        self.store = store
        self.journal = journal
        self.backend = backend
        self.intake = intake
        self.runner = runner
        self.queue = queue
        self.provenance = provenance
        self.clock = clock
        self.on_released = on_released
        self.root_keys = RootKeys(store)

    # ------------------------------------------------------------ one step of a run's payments

    def recover(self, run: RunRow) -> None:
        """At start, before anything runs: a token job the last process was running goes back
        to the queue while its batch's payment is still held."""
        for token in self.journal.tokens(run.id):
            job = self.store.get(token.job_id) if token.job_id else None
            if job is not None and self.queue.orphaned(job):
                self.store.transition(job.id, [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=job.attempts)

    async def advance(self, run: RunRow) -> bool:
        """Take the run's current batch one step on; True when every batch is done."""
        current = next((b for b in self.journal.batches(run.id) if not b.done), None)
        if current is None:
            return True
        if current.status == "waiting":
            if current.kind == "release" or self._room_for(run, current):
                await self.invoice(run, current)
        elif current.status == "open":
            await self._open(run, current)
        elif current.status == "held":
            await self._held(run, current)
        return False

    async def invoice(self, run: RunRow, batch: BatchRow) -> BatchRow:
        """Issue the batch's hold invoice (or find the one a crash left issued) and its token."""
        payment_hash = bytes.fromhex(batch.payment_hash)
        try:
            invoice = await self.backend.lookup(payment_hash)
        except InvoiceNotFound:
            memo = f"Satscale collection {run.contract[:10]}… batch {batch.seq + 1}: {len(batch.token_ids)} tokens"
            if batch.kind == "release":
                memo = f"Satscale collection {run.contract[:10]}… results of batch {batch.seq + 1}"
            invoice = await self.backend.add_hold_invoice(
                payment_hash, batch.amount_msat, memo, self.settings.invoice_expiry_seconds
            )
        valid_until = int(self.clock() + self.settings.token_validity_seconds)
        token = l402.mint(payment_hash, run.request_hash, valid_until, self.root_keys)
        self.journal.update_batch(
            batch.payment_hash,
            ["waiting"],
            status="open",
            payment_request=invoice.payment_request,
            expires_at=float(invoice.expires_at),
            macaroon=token.macaroon,
        )
        return next(b for b in self.journal.batches(run.id) if b.payment_hash == batch.payment_hash)

    def _room_for(self, run: RunRow, batch: BatchRow) -> bool:
        """Whether the batch's work, after the paid work queued ahead of it, ends inside the hold
        budget (a batch is sized to the budget alone; the queue it joins is not empty)."""
        ids = set(batch.token_ids)
        work = sum(t.seconds for t in self.journal.tokens(run.id) if t.token_id in ids)
        return self.runner.backlog() + work <= self.settings.hold_budget_seconds * ADMISSION_SHARE

    async def _open(self, run: RunRow, batch: BatchRow) -> None:
        try:
            invoice = await self.backend.lookup(bytes.fromhex(batch.payment_hash))
        except InvoiceNotFound:  # the node lost it (a fresh node): nobody can have paid it, issue it again
            self.journal.update_batch(batch.payment_hash, ["open"], status="waiting")
            return
        if invoice.state is InvoiceState.ACCEPTED:
            if batch.kind == "release":  # nothing left to run: the payment is taken at once
                await self._settle(run, batch, ["open"])
            elif not self._room_for(run, batch):
                await self._busy(run, batch)
            else:
                await self._hold(run, batch)
        elif invoice.state is InvoiceState.SETTLED:  # settled before a crash let us write it
            await self._settle(run, batch, ["open"])
        elif invoice.state is InvoiceState.CANCELED or self.clock() > (batch.expires_at or 0):
            await self.backend.cancel(bytes.fromhex(batch.payment_hash))
            self._expire(run, batch)

    def _expire(self, run: RunRow, batch: BatchRow) -> None:
        """Unpaid: a work batch's tokens are not run, and no later work batch is invoiced (the
        payer stopped); a release batch's results are not released."""
        self.journal.expire_batch(run.id, batch)

    async def _busy(self, run: RunRow, batch: BatchRow) -> None:
        """Paid while the queue filled up with other paid work: holding the payment now would
        outlast the hold budget, so it goes back and the batch is invoiced again once there is room."""
        await self.backend.cancel(bytes.fromhex(batch.payment_hash))
        again = new_batch(run.id, batch.seq, "work", batch.token_ids, batch.amount_msat, self.clock())
        if self.journal.replace_batch(batch, "open", again):
            note = (f"batch {batch.seq + 1} was paid while the server's queue was full: that payment was "
                    "returned, and a new invoice for it follows when there is room")  # fmt: skip
            self.journal.update_run(run.id, error=note)

    async def _hold(self, run: RunRow, batch: BatchRow) -> None:
        """The funds are locked: every token of the batch becomes a job, queued at once."""
        now = self.clock()
        tokens = {t.token_id: t for t in self.journal.tokens(run.id)}
        jobs: list[tuple[int, Job]] = []
        refused: dict[int, str] = {}
        for token_id in batch.token_ids:
            try:
                jobs.append((token_id, await self._job(run, tokens[token_id], now)))
            except Exception as exc:  # the image changed under us, or the server's models did
                refused[token_id] = f"cannot run: {exc}"
        for token_id, reason in refused.items():
            self.journal.update_tokens(run.id, [token_id], status="failed", error=reason)
        if self.journal.hold_batch(batch, jobs, now):
            for _, job in jobs:
                self.queue.enqueue(job.id)

    async def _job(self, run: RunRow, token: TokenRow, now: float) -> Job:
        data = await asyncio.to_thread(Path(token.image_path or "").read_bytes)
        options = JobOptions(output_format=run.asked.get("output_format"), pipeline=json.loads(token.pipeline or "[]"))
        admission = await self.intake.admit_token(data, options)
        request = admission.request
        return Job(
            id="job_" + secrets.token_urlsafe(12),
            state=JobState.PAYMENT_HELD,
            created_at=now,
            updated_at=now,
            model=request.model,
            scale=request.scale,
            output_format=request.output_format,
            input_sha256=admission.input_sha256,
            input_path=str(token.image_path),
            input_width=admission.image.width,
            input_height=admission.image.height,
            request_hash=admission.binding,
            payment_hash=record_key(run.id, run.chain_id, run.contract, token.token_id),
            preimage=None,
            hold=True,
            amount_msat=token.amount_msat,
            invoice_status=InvoiceStatus.BATCH,
            token_valid_until=int(now),
            held_at=now,
            hold_deadline=now + self.settings.hold_budget_seconds,
            tile=request.tile,
            precision=request.precision,
            pipeline=json.dumps([stage.to_dict() for stage in request.stages]),
            estimated_seconds=admission.estimate.seconds,
            collection_run=run.id,
        )

    async def _held(self, run: RunRow, batch: BatchRow) -> None:
        tokens = [t for t in self.journal.tokens(run.id) if t.token_id in set(batch.token_ids)]
        jobs = {t.token_id: self.store.get(t.job_id) if t.job_id else None for t in tokens}
        try:
            state = (await self.backend.lookup(bytes.fromhex(batch.payment_hash))).state
        except InvoiceNotFound:  # a node that lost it cannot settle it: as good as cancelled
            state = InvoiceState.CANCELED
        if state is InvoiceState.CANCELED:  # the node gave the funds back: nothing more runs
            for job in jobs.values():
                if job is not None and not job.state.final:
                    await self.runner.fail(job.id, "the node cancelled the batch's held payment")
            jobs = {i: self.store.get(j.id) if j else None for i, j in jobs.items()}
        if any(job is not None and not job.state.final for job in jobs.values()):
            for job in jobs.values():  # queued again after a restart (the queue drops repeats)
                if job is not None and job.state is JobState.PAYMENT_HELD:
                    self.queue.enqueue(job.id)
            return
        succeeded = [i for i, job in jobs.items() if job is not None and job.state is JobState.SUCCEEDED]
        if len(succeeded) == len(batch.token_ids) and state is not InvoiceState.CANCELED:
            await self._settle(run, batch, ["held"])
            return
        await self.backend.cancel(bytes.fromhex(batch.payment_hash))
        failed = [t for t in tokens if t.token_id not in succeeded and t.status != "failed"]
        for token in failed:
            job = jobs.get(token.token_id)
            reason = job.error if job is not None else "it did not run"
            self.journal.update_tokens(run.id, [token.token_id], status="failed", error=reason)
        release = None
        if succeeded:
            amount = sum(t.amount_msat for t in tokens if t.token_id in succeeded)
            release = new_batch(run.id, batch.seq, "release", succeeded, amount, self.clock())
        self.journal.cancel_batch(batch, release)

    async def _settle(self, run: RunRow, batch: BatchRow, source: list[str]) -> None:
        await self.backend.settle(bytes.fromhex(batch.preimage))
        await self.release(run, batch.token_ids)
        self.journal.update_batch(batch.payment_hash, source, status="settled")

    async def release(self, run: RunRow, token_ids: list[int]) -> None:
        """Paid for: the tokens' input, output and job document go to the public store and their
        chain records may be sent. Safe to repeat (the same content, the same CIDs)."""
        rows = [t for t in self.journal.tokens(run.id) if t.token_id in set(token_ids) and t.job_id]
        hashes = []
        for token in rows:
            job = self.store.get(token.job_id or "")
            if job is None or job.state is not JobState.SUCCEEDED:
                continue
            await asyncio.to_thread(self._publish_job, job)
            hashes.append(job.payment_hash)
        self.store.outbox_release(hashes)
        self.journal.update_tokens(run.id, [t.token_id for t in rows], status="paid", error=None)
        if hashes:
            self.on_released()

    def _publish_job(self, job: Job) -> None:
        public, private = self.provenance.ipfs, self.provenance.private
        version = self.provenance.cid_version
        public.add_file(Path(job.input_path), cid_version=version, pin=True)
        public.add_file(Path(job.output_path or ""), cid_version=version, pin=True)
        if job.metadata_cid:
            public.add_bytes(b"".join(private.cat(job.metadata_cid)), cid_version=version, pin=True)
        remote = "pending" if self.provenance.remote else "none"
        self.store.update(job.id, publish=True, ipfs_remote_status=remote)
