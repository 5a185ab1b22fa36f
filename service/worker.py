"""The paid job flow: invoice, wait for the payment, run the engine, settle or cancel.

    create_job   validate the image, store it by sha256, make the preimage, write the job
                 row, then ask the node for a hold invoice and mint the L402 token
    watcher      invoice ACCEPTED -> payment_held -> queued
    worker       payment_held -> processing -> engine (in a thread) -> succeeded -> settle
                 any failure -> failed -> cancel (the payer keeps the money)
    timers       unpaid past expiry -> expired; held past the hold budget -> failed -> cancel
    reconcile    at start and after every reconnect: compare every unfinished job with the
                 node and finish what a crash or an outage interrupted

Each state is persisted before its side effect (settle, cancel, engine run), and every
side effect is safe to repeat, so a kill -9 anywhere resumes without losing a paid job
or charging twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from payments import l402
from payments.backend import (
    BackendUnavailable,
    Feature,
    Invoice,
    InvoiceNotFound,
    InvoiceState,
    LightningBackend,
    PaymentError,
)
from sr_core.errors import ImageTooLargeError, ParameterError
from sr_core.imageio import FORMAT_EXTENSIONS, ImageInfo, ImageLimits, OutputOptions, validate_image
from sr_core.registry import DIFFUSION_TITLES, ModelRegistry
from sr_core.tiling import MIN_TILE
from sr_core.upscale import UpscaleOptions, upscale_file
from sr_core.weights import sha256_file

from .capacity import Estimate, ThroughputMeter
from .config import Settings
from .jobs import ChainStatus, InvoiceStatus, Job, JobRequest, JobState
from .pricing import Quote, quote
from .provenance import Provenance
from .store import JobStore, RootKeys

log = logging.getLogger("satscale.worker")

RECONNECT_BACKOFF = (1, 2, 4, 8, 15, 30)
TIMER_INTERVAL = 1.0
#: refuse a job whose estimated run takes more than this share of the hold budget
ADMISSION_SHARE = 0.8
MAX_REQUEST_TILE = 2048


class IdempotencyConflict(Exception):
    """The key was used with another payload (422) or its first request is still in flight (409)."""

    def __init__(self, message: str, in_flight: bool) -> None:
        super().__init__(message)
        self.in_flight = in_flight


@dataclass(frozen=True)
class Challenge:
    job: Job
    header: str  # WWW-Authenticate value


def request_hash(input_sha256: str, request: JobRequest) -> str:
    """What an L402 token is bound to: the input bytes and every parameter of the request."""
    canonical = json.dumps(
        {
            "input": input_sha256,
            "model": request.model,
            "scale": request.scale,
            "format": request.output_format,
            "tile": request.tile,
            "precision": request.precision,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: LightningBackend,
        registry: ModelRegistry,
        clock: Callable[[], float] = time.time,
        provenance: Provenance | None = None,
        on_record: Callable[[], None] | None = None,
    ) -> None:
        """`provenance` pins each finished job and queues its chain record; `on_record` is
        told when a record was queued (the chain sender wakes up)."""
        self.provenance = provenance
        self.on_record = on_record
        self.settings = settings
        self.store = store
        self.backend = backend
        self.registry = registry
        self.clock = clock
        self.root_keys = RootKeys(store)
        self.inputs_dir = settings.data_dir / "inputs"
        self.outputs_dir = settings.data_dir / "outputs"
        self.hold = backend.supports(Feature.HOLD_INVOICES)
        self.backend_available = True
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._watchers: dict[str, asyncio.Task] = {}
        self._tasks: list[asyncio.Task] = []
        self._reconnecting: asyncio.Task | None = None
        self._progress: dict[str, float] = {}
        self._invoice_lock = asyncio.Lock()
        self.meter = ThroughputMeter()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self._tasks.append(asyncio.create_task(self._worker_loop(), name="satscale-worker"))
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="satscale-timers"))
        try:
            await self.backend.start()
            await self.reconcile()
        except PaymentError as exc:  # unreachable or misconfigured: serve anyway, answer 503, keep trying
            self._backend_lost(exc)

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._watchers.values()]
        if self._reconnecting:
            tasks.append(self._reconnecting)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        await self.backend.close()

    def progress(self, job_id: str) -> float | None:
        return self._progress.get(job_id)

    # ---------------------------------------------------------------- creation

    def engine_info(self, model: str):
        return self.registry.load_engine(model, device=self.settings.device, precision=self.settings.precision).info

    def limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.settings.max_upload_bytes, max_pixels=int(self.settings.max_input_megapixels * 1e6)
        )

    async def quote(self, model: str, width: int, height: int, scale: int | None) -> Quote:
        info = await asyncio.to_thread(self.engine_info, model)
        return quote(self.settings, model, info, width, height, scale)

    def check_options(self, request: JobRequest) -> None:
        """Refuse (422) a tile size or precision this model cannot run with, before any invoice."""
        if request.tile is not None and not MIN_TILE <= request.tile <= MAX_REQUEST_TILE:
            raise ParameterError(f"tile size must be between {MIN_TILE} and {MAX_REQUEST_TILE} pixels")
        if self.registry.get(request.model).source in DIFFUSION_TITLES:
            # a multi-GB model is loaded once, in the server's precision; never per request
            if request.precision not in ("auto", self.settings.precision):
                server = self.settings.precision
                raise ParameterError(f"{request.model} runs in the server's precision ({server}); leave it at auto")
            return
        self.registry.load_engine(request.model, device=self.settings.device, precision=request.precision)

    async def estimate(self, model: str, width: int, height: int, scale: int | None = None) -> Estimate:
        def measure() -> Estimate:
            engine = self.registry.load_engine(model, device=self.settings.device, precision=self.settings.precision)
            return self.meter.estimate(model, engine, width, height, scale)

        return await asyncio.to_thread(measure)

    async def admit(self, model: str, width: int, height: int, scale: int | None = None) -> Estimate:
        """Refuse (413) a job this machine cannot finish while the payment can be held."""
        estimate = await self.estimate(model, width, height, scale)
        allowed = self.settings.hold_budget_seconds * ADMISSION_SHARE
        if estimate.seconds > allowed:
            raise ImageTooLargeError(
                f"upload: {width}x{height} with {model} would take about {estimate.seconds:.0f} s here, and a "
                f"payment can be held for {self.settings.hold_budget_seconds} s; send a smaller image or use a "
                f"faster model"
            )
        return estimate

    async def inspect(self, data: bytes) -> ImageInfo:
        """The core's validation: the same checks the CLI applies, before any invoice."""
        info = await asyncio.to_thread(validate_image, data, self.limits(), "upload")
        if info.width * info.height > self.settings.max_input_megapixels * 1e6:
            raise ImageTooLargeError(f"upload: larger than {self.settings.max_input_megapixels} megapixels")
        return info

    async def create_job(self, data: bytes, request: JobRequest, idempotency_key: str | None = None) -> Challenge:
        """Validate, price and store the upload, then issue the invoice and the L402 token."""
        image = await self.inspect(data)
        priced = await self.quote(request.model, image.width, image.height, request.scale)
        await asyncio.to_thread(self.check_options, request)
        await self.admit(request.model, image.width, image.height, priced.scale)
        request = JobRequest(request.model, priced.scale, request.output_format, request.tile, request.precision)
        input_sha256 = hashlib.sha256(data).hexdigest()
        binding = request_hash(input_sha256, request)
        if idempotency_key:
            existing = self.store.by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, binding)
        input_path = self.inputs_dir / f"{input_sha256}.{image.format}"
        if not input_path.exists():
            await asyncio.to_thread(_atomic_write, input_path, data)
        now = self.clock()
        job_id = "job_" + secrets.token_urlsafe(12)
        base = dict(
            id=job_id,
            created_at=now,
            updated_at=now,
            model=request.model,
            scale=request.scale,
            output_format=request.output_format,
            input_sha256=input_sha256,
            input_path=str(input_path),
            input_width=image.width,
            input_height=image.height,
            request_hash=binding,
            tile=request.tile,
            precision=request.precision,
            amount_msat=priced.amount_msat,
            token_valid_until=int(now + self.settings.token_validity_seconds),
            idempotency_key=idempotency_key,
            held_at=None,
            hold_deadline=None,
            started_at=None,
            finished_at=None,
            progress=0.0,
            output_path=None,
            output_sha256=None,
            output_width=None,
            output_height=None,
            error=None,
            attempts=0,
            macaroon=None,
        )
        memo = f"Satscale {request.model} x{request.scale} {image.width}x{image.height} ({job_id})"
        expiry = self.settings.invoice_expiry_seconds
        if self.hold:
            # the preimage is ours and stored before the node ever hears of the hash
            preimage = secrets.token_bytes(32)
            payment_hash = hashlib.sha256(preimage).digest()
            job = Job(
                **base,
                state=JobState.AWAITING_PAYMENT,
                payment_hash=payment_hash.hex(),
                preimage=preimage.hex(),
                hold=True,
                payment_request=None,
                invoice_status=InvoiceStatus.NONE,
                invoice_expires_at=None,
            )
            self._insert(job)
            try:
                invoice = await self.backend.add_hold_invoice(payment_hash, priced.amount_msat, memo, expiry)
            except PaymentError as exc:
                self._abandon(job, exc)
                raise
        else:
            invoice = await self.backend.add_invoice(priced.amount_msat, memo, expiry)
            job = Job(
                **base,
                state=JobState.AWAITING_PAYMENT,
                payment_hash=invoice.payment_hash,
                preimage=None,
                hold=False,
                payment_request=None,
                invoice_status=InvoiceStatus.NONE,
                invoice_expires_at=None,
            )
            self._insert(job)
        token = l402.mint(bytes.fromhex(job.payment_hash), binding, job.token_valid_until, self.root_keys)
        job = self.store.update(
            job.id,
            payment_request=invoice.payment_request,
            invoice_status=InvoiceStatus.OPEN,
            invoice_expires_at=float(invoice.expires_at),
            macaroon=token.macaroon,
        )
        self._watch(job)
        return Challenge(job, l402.challenge_header(token.macaroon, invoice.payment_request))

    def _insert(self, job: Job) -> None:
        try:
            self.store.insert(job)
        except Exception as exc:  # a concurrent request with the same Idempotency-Key won the race
            if job.idempotency_key and self.store.by_idempotency_key(job.idempotency_key) is not None:
                raise IdempotencyConflict("a request with this Idempotency-Key is still in flight", True) from exc
            raise

    def _abandon(self, job: Job, exc: Exception) -> None:
        """No invoice could be issued: the job ends before anyone could pay."""
        self.store.transition(job.id, [JobState.AWAITING_PAYMENT], JobState.EXPIRED, error=f"no invoice: {exc}")
        self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED)
        if isinstance(exc, BackendUnavailable):
            self._backend_lost(exc)

    def _replay(self, job: Job, binding: str) -> Challenge:
        if job.request_hash != binding:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request", False)
        if job.invoice_status is InvoiceStatus.NONE or job.macaroon is None or job.payment_request is None:
            raise IdempotencyConflict("a request with this Idempotency-Key is still in flight", True)
        return Challenge(job, l402.challenge_header(job.macaroon, job.payment_request))

    # ---------------------------------------------------------------- invoices

    def _watch(self, job: Job) -> None:
        task = self._watchers.get(job.id)
        if task is None or task.done():
            self._watchers[job.id] = asyncio.create_task(self._watch_loop(job.id), name=f"watch-{job.id}")

    async def _watch_loop(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        try:
            async for invoice in self.backend.watch(bytes.fromhex(job.payment_hash), hold=job.hold):
                await self._on_invoice(job_id, invoice)
                if invoice.state.final:
                    break
        except BackendUnavailable as exc:
            self._backend_lost(exc)
        except PaymentError as exc:
            log.warning("watching %s failed: %s", job_id, exc)
        finally:
            self._watchers.pop(job_id, None)

    async def _on_invoice(self, job_id: str, invoice: Invoice) -> None:
        """Bring the job in line with what the node says about its invoice."""
        async with self._invoice_lock:
            job = self.store.get(job_id)
            if job is None:
                return
            now = self.clock()
            paid = invoice.state is InvoiceState.ACCEPTED or (invoice.state is InvoiceState.SETTLED and not job.hold)
            if paid and job.state is JobState.AWAITING_PAYMENT:
                status = InvoiceStatus.ACCEPTED if job.hold else InvoiceStatus.SETTLED
                held = self.store.transition(
                    job_id,
                    [JobState.AWAITING_PAYMENT],
                    JobState.PAYMENT_HELD,
                    invoice_status=status,
                    held_at=now,
                    hold_deadline=now + self.settings.hold_budget_seconds,
                )
                if held:
                    self._enqueue(job_id)
            elif invoice.state is InvoiceState.CANCELED:
                self.store.update(job_id, invoice_status=InvoiceStatus.CANCELED)
                if job.state is JobState.AWAITING_PAYMENT:
                    self.store.transition(job_id, [job.state], JobState.EXPIRED, error="the invoice expired unpaid")
                elif job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING):
                    self.store.transition(
                        job_id, [job.state], JobState.FAILED, error="the node cancelled the held payment"
                    )
            elif invoice.state is InvoiceState.SETTLED and job.invoice_status is not InvoiceStatus.SETTLED:
                self.store.update(job_id, invoice_status=InvoiceStatus.SETTLED)

    async def _settle(self, job: Job) -> None:
        if job.invoice_status is InvoiceStatus.SETTLED:
            return
        try:
            await self.backend.settle(bytes.fromhex(job.preimage or ""))
        except BackendUnavailable as exc:
            self._backend_lost(exc)  # the reconciler settles once the node is back
            return
        self.store.update(job.id, invoice_status=InvoiceStatus.SETTLED)

    async def _cancel(self, job: Job) -> None:
        if job.invoice_status in (InvoiceStatus.CANCELED, InvoiceStatus.SETTLED, InvoiceStatus.NONE):
            return
        try:
            await self.backend.cancel(bytes.fromhex(job.payment_hash))
        except BackendUnavailable as exc:
            self._backend_lost(exc)
            return
        except InvoiceNotFound:
            pass  # never issued: nothing to give back
        self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED)

    async def fail(self, job_id: str, reason: str) -> Job | None:
        """End a paid or unpaid job as failed and give the payment back."""
        job = self.store.get(job_id)
        if job is None or job.state.final:
            return job
        failed = self.store.transition(job_id, [job.state], JobState.FAILED, error=reason, finished_at=self.clock())
        if failed is None:
            return self.store.get(job_id)
        if failed.hold:
            await self._cancel(failed)
        else:
            # a plain invoice cannot be refunded by the node: say so, loudly
            log.error("job %s failed after a plain-invoice payment; refund by hand: %s", job_id, reason)
        self._progress.pop(job_id, None)
        return self.store.get(job_id)

    # ---------------------------------------------------------------- processing

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    async def _worker_loop(self) -> None:
        while True:
            job_id = await self._queue.get()
            self._queued.discard(job_id)
            try:
                await self._process(job_id)
            except Exception:
                log.exception("processing %s crashed", job_id)
                await self.fail(job_id, "internal error while processing")

    async def _process(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.state is not JobState.PAYMENT_HELD:
            return
        if job.hold_deadline and self.clock() > job.hold_deadline:
            await self.fail(job_id, "the hold budget ran out before the job could start; the payment is returned")
            return
        job = self.store.transition(
            job_id, [JobState.PAYMENT_HELD], JobState.PROCESSING, started_at=self.clock(), attempts=job.attempts + 1
        )
        if job is None:
            return
        self._progress[job_id] = 0.0
        try:
            output = await asyncio.to_thread(self._run_engine, job)
        except Exception as exc:
            log.warning("job %s failed: %s", job_id, exc)
            await self.fail(job_id, f"upscaling failed: {exc}")
            return
        path, digest, width, height, weights_sha256 = output
        self.meter.observe(job.model, job.input_width, job.input_height, self.clock() - (job.started_at or 0))
        provenance: dict = {}
        outbox = None
        if self.provenance is not None:
            try:
                pinned = await asyncio.to_thread(
                    self.provenance.pin_job, job, path, digest, weights_sha256, width, height
                )
            except Exception as exc:
                log.exception("pinning job %s failed", job_id)
                path.unlink(missing_ok=True)
                await self.fail(job_id, f"storing the result failed: {exc}")
                return
            outbox = pinned.outbox_entry()
            provenance = dict(
                input_cid=pinned.facts.input_cid,
                output_cid=pinned.facts.output_cid,
                metadata_cid=pinned.metadata_cid,
                chain_status=ChainStatus.PENDING,
                ipfs_remote_status="pending" if self.provenance.remote else "none",
            )
        # success and its chain record are one transaction: the record cannot be lost
        done = self.store.transition(
            job_id,
            [JobState.PROCESSING],
            JobState.SUCCEEDED,
            outbox=outbox,
            output_path=str(path),
            output_sha256=digest,
            output_width=width,
            output_height=height,
            finished_at=self.clock(),
            progress=1.0,
            **provenance,
        )
        self._progress.pop(job_id, None)
        if done is not None and outbox is not None and self.on_record:
            self.on_record()
        if done is None:  # failed meanwhile (hold budget ran out): the payer keeps the money
            path.unlink(missing_ok=True)
            return
        if done.hold:
            await self._settle(done)

    def output_path(self, job: Job) -> Path:
        return self.outputs_dir / f"{job.id}{FORMAT_EXTENSIONS[job.output_format]}"

    def _run_engine(self, job: Job) -> tuple[Path, str, int, int, str]:
        """Upscale the job's input; returns the output path, its sha256, size and the weights' sha256."""
        precision = job.precision if job.precision != "auto" else self.settings.precision
        engine = self.registry.load_engine(job.model, device=self.settings.device, precision=precision)

        def progress(done: int, total: int) -> None:
            self._progress[job.id] = done / total

        target = self.output_path(job)
        result = upscale_file(
            engine,
            Path(job.input_path),
            target,
            UpscaleOptions(scale=job.scale, tile=job.tile),
            OutputOptions(format=job.output_format),
            self.limits(),
            progress,
        )
        return target, sha256_file(target), result.width, result.height, engine.info.weights_sha256

    # ---------------------------------------------------------------- timers and recovery

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(TIMER_INTERVAL)
            try:
                await self._enforce_deadlines()
            except Exception:
                log.exception("deadline check failed")

    async def _enforce_deadlines(self) -> None:
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
        if not self.backend_available:
            return
        try:
            invoice = await self.backend.lookup(bytes.fromhex(job.payment_hash))
        except BackendUnavailable as exc:
            self._backend_lost(exc)
            return
        except InvoiceNotFound:
            invoice = None
        if invoice is not None and invoice.state is not InvoiceState.OPEN:
            await self._on_invoice(job.id, invoice)
            return
        expired = self.store.transition(job.id, [JobState.AWAITING_PAYMENT], JobState.EXPIRED, error="unpaid")
        if expired is not None and invoice is not None:
            await self._cancel(expired)

    def _backend_lost(self, exc: Exception) -> None:
        if self.backend_available:
            log.warning("lightning backend unavailable: %s", exc)
        self.backend_available = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect(), name="satscale-reconnect")

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)])
            attempt += 1
            try:
                await self.backend.ping()
                await self.reconcile()
                return
            except PaymentError as exc:
                log.info("lightning backend still unavailable: %s", exc)

    async def reconcile(self) -> None:
        """Compare every unfinished job with the node and finish what was interrupted."""
        for job in self.store.unfinished():
            try:
                invoice = await self.backend.lookup(bytes.fromhex(job.payment_hash))
            except InvoiceNotFound:
                invoice = None
            await self._reconcile_job(job, invoice)
        self.backend_available = True

    async def _reconcile_job(self, job: Job, invoice: Invoice | None) -> None:
        if invoice is None:
            # the node never issued it (crash before add_hold_invoice returned): nobody can have paid
            if job.state is JobState.AWAITING_PAYMENT:
                self.store.transition(job.id, [job.state], JobState.EXPIRED, error="the invoice was never issued")
            self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED)
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
        if job.state is JobState.PROCESSING:
            # the engine run died with the process: run it again while the payment is still held
            job = self.store.transition(job.id, [JobState.PROCESSING], JobState.PAYMENT_HELD) or job
        await self._on_invoice(job.id, invoice)
        job = self.store.get(job.id) or job
        if job.state is JobState.PAYMENT_HELD:
            self._enqueue(job.id)
        elif job.state is JobState.AWAITING_PAYMENT:
            self._watch(job)
        elif job.state is JobState.SUCCEEDED and job.hold and invoice.state is InvoiceState.ACCEPTED:
            await self._settle(job)
        elif job.state in (JobState.FAILED, JobState.EXPIRED) and invoice.state in (
            InvoiceState.OPEN,
            InvoiceState.ACCEPTED,
        ):
            await self._cancel(job)
