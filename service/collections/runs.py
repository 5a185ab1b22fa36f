"""Paid collection runs: a request is planned (the images kept), journaled with its batches, and
driven to its end by one loop: the batches' invoices (service.collections.batches), then, once
every paid token's chain record is mined, the new metadata and the collection's update
(service.collections.finish).

The loop reads everything it decides from the journal, so a server killed at any point picks
each run up where the journal says when it starts again: tokens already done are not run
again, a paid batch is not charged again, and nothing is written on chain twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from payments import l402
from payments.backend import Feature, LightningBackend, PaymentError
from provenance.chain import ChainRejected
from provenance.collection.layout import BaseUriLayout
from provenance.collection.writer import Setter

from ..inputs import atomic_write
from ..intake import ServerBusy
from ..jobs import Job, JobState
from ..runner import JobRunner
from ..store import RootKeys, SqlJobStore
from .batches import BatchPayments, new_batch
from .desk import CollectionDesk
from .errors import CollectionRefused, RunBusy
from .finish import ChainUpdateDelayed, RunFinisher, report_rows
from .journal import BatchRow, CollectionJournal, RunRow, TokenRow
from .planner import CollectionPlan, CollectionRequest

log = logging.getLogger("satscale.collections")

TICK = 0.5
#: a run's documents kept for republishing, at most (real token documents are a few KB each)
DOCUMENTS_MAX = 64 << 20
#: runs not paid for yet at once: each holds an invoice and its kept files until it expires
UNPAID_RUNS_MAX = 16
#: how long a run whose chain could not be written waits before trying again
FINISH_RETRY = 5.0


@dataclass(frozen=True)
class RunRequest:
    collection: CollectionRequest
    #: another collection's setter to call with the new URIs (`setBaseURI(string)`,
    #: `setTokenURI(uint256,string)`); None: a Satscale collection, or the manifest only
    setter: str | None = None

    def canonical(self) -> dict[str, Any]:
        c = self.collection
        return {
            "contract": c.contract.lower(),
            "rpc_url": c.rpc_url,
            "tokens": list(c.tokens) if c.tokens is not None else None,
            "options": asdict(c.options),
            "output_format": c.options.output_format,
            "pixel_art": c.pixel_art,
            "pixel_scale": c.pixel_scale,
            "setter": self.setter,
        }

    def binding(self) -> str:
        """What the run's L402 tokens are bound to: every parameter of the request."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    run: RunRow
    #: the first batch's WWW-Authenticate value while it can be paid (None once paid)
    challenge: str | None


class RunKeeper:
    """Keeps a run's documents and images in its folder as the plan reads them, within a budget:
    what unpaid work may hold on this server's disk (a plan costs nothing to ask for)."""

    def __init__(self, folder: Path, budget: int) -> None:
        self.folder = folder
        self.budget = budget
        self.documents = 0
        self.kept = 0
        self._lock = threading.Lock()
        self._closed = False

    def _keep(self, path: Path, data: bytes, document: bool) -> None:
        """Count and write under one lock: once the keeper is closed (a refused plan whose reads
        still finish on other threads) nothing more is written."""
        with self._lock:
            if self._closed or (not document and path.exists()):
                return
            self._count(len(data), document)
            atomic_write(path, data)

    def discard(self) -> None:
        """The plan was refused: everything kept goes, and nothing is kept after."""
        with self._lock:
            self._closed = True
            shutil.rmtree(self.folder, ignore_errors=True)

    def _count(self, size: int, document: bool) -> None:
        """(Under the lock.) Refuse what would pass a budget."""
        if document and self.documents + size > DOCUMENTS_MAX:
            raise CollectionRefused(
                f"the collection's documents come to more than {DOCUMENTS_MAX >> 20} MiB, more than this "
                "server republishes for one run: upgrade a range of tokens"
            )
        if self.kept + size > self.budget:
            raise CollectionRefused(
                f"the collection's images and documents come to more than the {self.budget >> 20} MiB this "
                "server can hold for unpaid work now: upgrade a smaller range of tokens, or try later"
            )
        self.kept += size
        self.documents += size if document else 0

    def metadata_path(self, token_id: int) -> Path:
        return self.folder / "metadata" / f"{token_id}.json"

    def image_path(self, sha256: str, image_format: str) -> Path:
        return self.folder / "images" / f"{sha256}.{image_format}"

    def metadata(self, token_id: int, data: bytes) -> None:
        self._keep(self.metadata_path(token_id), data, document=True)

    def image(self, sha256: str, image_format: str, data: bytes) -> None:
        self._keep(self.image_path(sha256, image_format), data, document=False)

    def remove_kept(self) -> None:
        """What only the run needed (its documents and images as read), once it has ended."""
        for part in ("metadata", "images"):
            shutil.rmtree(self.folder / part, ignore_errors=True)


class CollectionRuns:
    def __init__(
        self,
        folder: Path,
        store: SqlJobStore,
        journal: CollectionJournal,
        desk: CollectionDesk,
        backend: LightningBackend,
        payments: BatchPayments,
        finisher: RunFinisher,
        runner: JobRunner,
        max_pending_bytes: int,
        pending_uploads: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`folder`: where runs keep their files (one folder per run); `max_pending_bytes`: what
        unpaid work may keep on disk, uploads (`pending_uploads()` bytes) and runs together."""
        self.folder = folder
        self.store = store
        self.journal = journal
        self.desk = desk
        self.backend = backend
        self.payments = payments
        self.finisher = finisher
        self.runner = runner
        self.max_pending_bytes = max_pending_bytes
        self.pending_uploads = pending_uploads
        self.clock = clock
        self._lock = asyncio.Lock()  # one step of one run at a time (the loop, a new run's invoice)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._retry_at: dict[str, float] = {}
        self._creating: set[str] = set()
        #: runs being finished: in tasks of their own, so the chain never holds up payments
        self._finishing: dict[str, asyncio.Task] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self, sole: bool = True) -> None:
        """`sole`: no other node plans runs into this folder, so an unjournaled one is a killed plan's
        (in a cluster another node may be planning one right now: it is left alone)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        known = {run.id for run in self.journal.active()}
        for run in self.journal.active():
            self.payments.recover(run)
        for leftover in self.folder.iterdir() if sole else ():
            if leftover.is_dir() and leftover.name not in known and self.journal.run(leftover.name) is None:
                shutil.rmtree(leftover, ignore_errors=True)
        self._task = asyncio.create_task(self._loop(), name="satscale-collections")

    async def stop(self) -> None:
        for task in [*self._finishing.values(), *([self._task] if self._task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self, job: Job | None = None) -> None:
        """Something changed (a token's job ended): look again now rather than at the next tick."""
        if job is None or job.collection_run:
            self._wake.set()

    # ------------------------------------------------------------ a new run

    async def create(self, request: RunRequest, idempotency_key: str | None = None) -> Started:
        """Plan the request (keeping what it read), journal the run and issue the first batch's
        hold invoice. Refusals (CollectionRefused, ChainUnreachable, PlannerBusy) leave nothing."""
        binding = request.binding()
        if idempotency_key:
            existing = self.journal.by_idempotency_key(idempotency_key)
            if existing is not None:
                if existing.request_hash != binding:
                    raise RunBusy("this Idempotency-Key was used with a different request", True)
                return Started(existing, self.challenge(existing.id))
            if idempotency_key in self._creating:
                raise RunBusy("a request with this Idempotency-Key is still being planned", False)
        if not self.backend.supports(Feature.HOLD_INVOICES):
            raise CollectionRefused("collection runs are paid with hold invoices, which this Lightning backend lacks")
        setter = self._setter(request.setter)
        keeper = await self._keeper()
        if idempotency_key:
            self._creating.add(idempotency_key)
        try:
            plan = await self.desk.plan(request.collection, keeper)
            self._check(plan, setter)
            run = self._journal(request, plan, keeper, idempotency_key, binding)
            run_id = run.id
        except BaseException:
            await asyncio.to_thread(keeper.discard)
            raise
        finally:
            if idempotency_key:
                self._creating.discard(idempotency_key)
        async with self._lock:
            first = next((b for b in self.journal.batches(run_id) if b.status == "waiting"), None)
            try:
                if first is not None:
                    await self.payments.invoice(run, first)
            except PaymentError as exc:  # the loop issues it once the node answers
                log.warning("the first invoice of %s is not issued yet: %s", run_id, exc)
        self._wake.set()
        return Started(self.journal.run(run_id) or run, self.challenge(run_id))

    async def _keeper(self) -> RunKeeper:
        """A new run's folder, with what unpaid work may still keep on disk as its budget."""
        runs, kept = self.journal.unpaid()
        if runs >= UNPAID_RUNS_MAX:
            raise ServerBusy(
                f"{runs} collection runs wait for their first payment, the most this server holds at once; "
                "nothing was started or charged: try again when some are paid or expired",
                retry_after=60,
            )
        budget = self.max_pending_bytes - kept - await asyncio.to_thread(self.pending_uploads)
        if budget <= 0:
            raise ServerBusy("this server holds as much unpaid work as it can; try again later", retry_after=60)
        return RunKeeper(self.folder / ("col_" + secrets.token_urlsafe(12)), budget)

    def resume(self, authorization: str, request: RunRequest) -> Started:
        """The same request again with the L402 credential of one of its batches (what an L402
        client sends after paying): that run, never a new one. The next batch's challenge comes
        with it while one is open, so the client pays batch after batch the same way."""
        credential = l402.parse_authorization(authorization)
        verified = l402.verify(credential, RootKeys(self.store), now=int(self.clock()),
                               request_binding=request.binding())  # fmt: skip
        batch = self.journal.batch(verified.payment_hash.hex())
        run = self.journal.run(batch.run_id) if batch is not None else None
        if run is None:
            raise l402.InvalidToken("this token pays for no collection run here")
        return Started(run, self.challenge(run.id))

    @staticmethod
    def _setter(text: str | None) -> Setter | None:
        if text is None or not text.strip():
            return None
        try:
            return Setter.parse(text)
        except ChainRejected as exc:
            raise CollectionRefused(str(exc)) from None

    @staticmethod
    def _check(plan: CollectionPlan, setter: Setter | None) -> None:
        if not plan.ready:
            reasons = sorted({t.error or "" for t in plan.tokens})[:5]
            raise CollectionRefused("no token of this selection can be upgraded: " + "; ".join(reasons))
        if setter is not None and not setter.per_token and not isinstance(plan.layout, BaseUriLayout):
            raise CollectionRefused(
                f"{setter.name}(string) sets a base URI, and this collection has a URI per token: "
                "name a per-token setter such as setTokenURI(uint256,string)"
            )

    def _journal(
        self,
        request: RunRequest,
        plan: CollectionPlan,
        keeper: RunKeeper,
        idempotency_key: str | None,
        binding: str,
    ) -> RunRow:
        now = self.clock()
        run_id = keeper.folder.name
        summary = plan.to_dict()
        planned = {
            "facts": asdict(plan.facts),
            "layout": summary["layout"],
            "whole_collection": plan.whole_collection,
            "amount_sat": plan.amount_sat,
            "seconds": summary["seconds"],
            "name": plan.facts.name,
        }
        run = RunRow(
            id=run_id,
            created_at=now,
            updated_at=now,
            state="running",
            contract=plan.facts.address,
            chain_id=plan.facts.chain_id,
            rpc_url=request.collection.rpc_url,
            request=json.dumps(request.canonical(), sort_keys=True),
            plan=json.dumps(planned, sort_keys=True),
            folder=str(keeper.folder),
            request_hash=binding,
            idempotency_key=idempotency_key,
            kept_bytes=keeper.kept,
        )
        seq_of = {token_id: seq for seq, batch in enumerate(plan.batches) for token_id in batch}
        tokens = []
        for t in plan.tokens:
            read = keeper.metadata_path(t.token_id)
            image = keeper.image_path(t.image_sha256, t.image_format) if t.ready and t.image_format else None
            tokens.append(
                TokenRow(
                    run_id=run_id,
                    token_id=t.token_id,
                    status="waiting" if t.ready else "skipped",
                    error=t.error,
                    old_uri=t.to_dict()["old_uri"],  # as the plan shows it: a data: URI can be megabytes
                    name=t.name,
                    image_uri=t.image_uri,
                    image_sha256=t.image_sha256,
                    image_path=str(image) if image else None,
                    metadata_path=str(read) if read.exists() else None,
                    pipeline=json.dumps(list(t.pipeline)) if t.ready else None,
                    amount_msat=t.amount_sat * 1000,
                    seconds=t.seconds,
                    pixel_art=json.dumps({"chosen": t.pixel_art.pixel_art, "reason": t.pixel_art.reason})
                    if t.pixel_art
                    else None,
                    batch=seq_of.get(t.token_id),
                )
            )
        amounts = {t.token_id: t.amount_sat * 1000 for t in plan.tokens}
        batches = [
            new_batch(run_id, seq, "work", list(ids), sum(amounts[i] for i in ids), now)
            for seq, ids in enumerate(plan.batches)
        ]
        self.journal.create(run, tokens, batches)
        return run

    def challenge(self, run_id: str) -> str | None:
        """The open batch's challenge (macaroon and invoice), while the run waits for a payment."""
        current = next((b for b in self.journal.batches(run_id) if not b.done), None)
        if current is None or current.status != "open" or not current.macaroon or not current.payment_request:
            return None
        return l402.challenge_header(current.macaroon, current.payment_request)

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            for run in self.journal.active():
                try:
                    async with self._lock:
                        await self._advance(run)
                except PaymentError as exc:
                    log.warning("collection run %s waits for the Lightning node: %s", run.id, exc)
                except Exception:
                    log.exception("collection run %s: a step failed; trying again", run.id)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)

    async def _advance(self, run: RunRow) -> None:
        current = self.journal.run(run.id) or run
        if current.state == "running":
            if await self.payments.advance(current):
                self.journal.update_run(current.id, state="finishing")
        elif current.state == "finishing":
            running = self._finishing.get(current.id)
            if running is not None and not running.done():
                return
            if self.clock() < self._retry_at.get(current.id, 0.0) or not self.finisher.records_ready(current):
                return
            self._finishing[current.id] = asyncio.create_task(self._finish(current), name=f"finish-{current.id}")

    async def _finish(self, run: RunRow) -> None:
        """Publish and update the chain (blocking, in a thread); on any failure, again later."""
        try:
            result = await asyncio.to_thread(self.finisher.finish, run)
        except ChainUpdateDelayed as exc:
            self._retry_at[run.id] = self.clock() + FINISH_RETRY
            self.journal.update_run(run.id, error=f"updating the collection on chain: {exc} (retrying)")
            return
        except Exception:
            log.exception("finishing collection run %s failed; trying again", run.id)
            self._retry_at[run.id] = self.clock() + FINISH_RETRY
            return
        self.journal.update_run(run.id, state="done", result=json.dumps(result, sort_keys=True), error=None)
        await asyncio.to_thread(RunKeeper(Path(run.folder), 0).remove_kept)
        self._wake.set()

    # ------------------------------------------------------------ what callers see

    def view(self, run_id: str) -> dict[str, Any] | None:
        run = self.journal.run(run_id)
        if run is None:
            return None
        tokens = self.journal.tokens(run_id)
        batches = self.journal.batches(run_id)
        rows = report_rows(tokens, self.store)
        by_id = {t.token_id: t for t in tokens}
        for row in rows:
            token = by_id[row["token_id"]]
            job = self.store.get(token.job_id) if token.job_id else None
            if token.status == "queued" and job is not None:
                row["status"] = _job_status(job)
                if job.state is JobState.PROCESSING:
                    row["progress"] = round(job.progress or 0.0, 3)
            if token.status not in RELEASED:  # a result not paid for is not shown, nor where it is
                row |= {"input_cid": None, "output_cid": None}
            if token.pixel_art:
                row["pixel_art"] = json.loads(token.pixel_art)
            row["amount_sat"] = token.amount_msat // 1000
        ready = [t for t in tokens if t.status != "skipped"]
        finished = [r for r in rows if r["status"] in FINISHED_STATUSES]
        current = next((b for b in batches if not b.done), None)
        invoice = None
        if current is not None and current.status == "open":
            invoice = {
                "payment_request": current.payment_request,
                "amount_sat": current.amount_msat // 1000,
                "batch": current.seq + 1,
                "kind": current.kind,
                "expires_at": current.expires_at,
            }
        planned = run.planned
        return {
            "id": run.id,
            "state": run.state,
            "contract": run.contract,
            "chain_id": run.chain_id,
            "name": planned.get("name"),
            "layout": planned["layout"],
            "created_at": run.created_at,
            "amount_sat": planned["amount_sat"],
            "paid_sat": sum(b.amount_msat for b in batches if b.status == "settled") // 1000,
            "invoice": invoice,
            "batches": [_batch_view(b) for b in batches],
            "progress": {
                "tokens": len(ready),
                "finished": len([r for r in finished if r["status"] != "skipped"]),
                "fraction": round(len([r for r in finished if r["status"] != "skipped"]) / max(1, len(ready)), 3),
            },
            "result": run.outcome or None,
            "error": run.error,
            "tokens": rows,
        }


#: a token in one of these was paid for: its result is released
RELEASED = ("paid", "published", "upgraded")
#: a token in one of these is finished for the run's progress
FINISHED_STATUSES = ("skipped", "failed", "unpaid", "published", "upgraded")


def _batch_view(batch: BatchRow) -> dict[str, Any]:
    return {
        "batch": batch.seq + 1,
        "kind": batch.kind,
        "tokens": batch.token_ids,
        "amount_sat": batch.amount_msat // 1000,
        "status": batch.status,
        "payment_hash": batch.payment_hash,
    }


def _job_status(job: Job) -> str:
    """A queued token as its job stands."""
    return {
        JobState.PAYMENT_HELD: "queued",
        JobState.PROCESSING: "upscaling",
        JobState.SUCCEEDED: "upscaled",
        JobState.FAILED: "failed",
    }.get(job.state, job.state.value)
