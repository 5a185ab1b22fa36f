"""The engine runs of paid jobs; a queue (service.queue) says which job runs when, and where.

    run      payment_held -> processing -> engine (in a thread) -> pinned -> succeeded -> settle
             any failure -> failed -> cancel (the payer keeps the money)

A job that fails while its engine runs (the hold budget ran out, the node cancelled the payment,
an operator failed it, on this node or another) stops that engine between two tiles or sampler
steps: the run writes its progress to the store, and that write is fenced by the attempt, so
the first write after the job moved on tells the run to stop. The same fence keeps a run that
another worker took over from succeeding. Each state is persisted before its side effect, so a
kill -9 anywhere resumes: the job is queued again, and the run first removes what the killed
attempt left half-written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sr_core.errors import Cancelled, SatscaleError
from sr_core.imageio import FORMAT_EXTENSIONS, ImageLimits, OutputOptions
from sr_core.metadata import MetadataPolicy, StageParameters
from sr_core.pipeline import PlannedStage, Stage, remove_intermediates, run_pipeline
from sr_core.upscale import UpscaleOptions
from sr_core.weights import sha256_file

from .capacity import ThroughputMeter
from .credentials import OutputCredentials, metadata_rule
from .engines import Engines
from .inputs import Inputs
from .jobs import ChainStatus, InvoiceStatus, Job, JobState
from .provenance import Provenance
from .settlement import Settlement
from .store import JobStore, store_unavailable

log = logging.getLogger("satscale.runner")

#: a failure's text is shown to the job's viewers: long engine errors are cut here
REASON_LIMIT = 300
#: what a killed attempt leaves beside the output it was writing (sr_core.imageio.StreamingWriter)
LEFTOVER_PATTERNS = (".*.partial", ".*.staging.tif")
#: a run writes its progress (readable by every node) at most this often, seconds
PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True)
class EngineRun:
    path: Path
    sha256: str
    width: int
    height: int
    #: each stage's weights sha256
    weights: tuple[str, ...]
    #: consistency figures: {"overall": {psnr_db, ssim}, "stages": [{stage, model, psnr_db, ssim}]},
    #: each stage's with what it found (a face stage: faces_restored, faces_left_alone)
    fidelity: dict
    #: a multi-stage job's intermediate images: [{stage, model, path, sha256, width, height}]
    intermediates: list[dict]
    #: each stage's engine options in force: the request's over the server's defaults
    settings: list[dict]
    #: the Content Credentials signed into the output, as read back from it (None: not signed)
    credentials: dict | None = None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        for kept in self.intermediates:
            Path(kept["path"]).unlink(missing_ok=True)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engines: Engines,
        meter: ThroughputMeter,
        settlement: Settlement,
        inputs: Inputs,
        limits: ImageLimits,
        outputs_dir: Path,
        clock: Callable[[], float],
        provenance: Provenance | None = None,
        on_record: Callable[[], None] | None = None,
        credentials: OutputCredentials | None = None,
        metadata_policy: MetadataPolicy = MetadataPolicy.AUTO,
    ) -> None:
        """`on_record` is told when a chain record was queued (the chain sender wakes up);
        `on_final` (set by whoever composes the service) of every job that ended, as it ended.
        `credentials` signs Content Credentials into every output; `metadata_policy`: what an
        output keeps of its input's metadata (sr_core.metadata)."""
        self.store = store
        self.engines = engines
        self.meter = meter
        self.settlement = settlement
        self.inputs = inputs
        self.limits = limits
        self.outputs_dir = outputs_dir
        self.clock = clock
        self.provenance = provenance
        self.on_record = on_record
        self.credentials = credentials
        self.metadata_policy = metadata_policy
        self.on_final: Callable[[Job], None] | None = None
        self._stops: dict[str, threading.Event] = {}
        self._sole = True

    # ------------------------------------------------------------ lifecycle

    def start(self, sole: bool = True) -> None:
        """`sole`: no other process writes to the outputs folder, so whatever is half-written
        there now is a killed attempt's (workers sharing a folder each clean their own job's)."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self._sole = sole
        if sole:
            for pattern in LEFTOVER_PATTERNS:
                for leftover in self.outputs_dir.glob(pattern):
                    leftover.unlink(missing_ok=True)

    async def stop(self) -> None:
        for stop in self._stops.values():
            stop.set()  # the engine thread ends at its next tile; the job resumes at the next start

    # ------------------------------------------------------------ what others ask

    def running(self, job_id: str) -> bool:
        """Whether this process is running the job's engine now."""
        return job_id in self._stops

    def backlog(self) -> float:
        """Seconds of engine work paid for and not done yet (queued, or the rest of the running job)."""
        now = self.clock()
        total = 0.0
        for job in self.store.unfinished():
            if job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING):
                elapsed = now - job.started_at if job.state is JobState.PROCESSING and job.started_at else 0.0
                total += max(0.0, (job.estimated_seconds or 0.0) - elapsed)
        return total

    async def fail(self, job_id: str, reason: str, attempt: int | None = None) -> Job | None:
        """End a paid or unpaid job as failed, stop its engine, and give the payment back.
        `attempt`: a run failing its own attempt, which fails nothing if another one took over."""
        job = self.store.get(job_id)
        if job is None or job.state.final:
            return job
        source = [JobState.PROCESSING] if attempt is not None else [job.state]
        failed = self.store.transition(
            job_id, source, JobState.FAILED, attempt=attempt, error=reason, finished_at=self.clock()
        )
        if failed is None:
            return self.store.get(job_id)
        stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()
        if failed.hold:
            await self.settlement.cancel(failed)
        else:
            # a plain invoice cannot be refunded by the node: say so, loudly
            log.error("job %s failed after a plain-invoice payment; refund by hand: %s", job_id, reason)
        self._remove_earlier_attempts(failed, None)  # what its stopped or killed runs kept
        ended = self.store.get(job_id)
        if ended is not None:
            await self.inputs.release(ended)
            self._ended(ended)
        return ended

    def _recoverable(self, exc: Exception) -> bool:
        """A store outage in a cluster: the coordinator's sweep picks the job up again. On a single
        box nobody would until a restart, so there the job fails and the payment goes back."""
        return not self._sole and store_unavailable(exc)

    def _ended(self, job: Job) -> None:
        if self.on_final is not None:
            self.on_final(job)

    # ------------------------------------------------------------ processing

    async def run(self, job_id: str, worker: str | None = None) -> None:
        """Run a held job (a no-op for a job that is not held any more: a stale queue entry).
        `worker` names who runs it, for the job's record and a takeover's fence."""
        try:
            await self._process(job_id, worker)
        except Exception as exc:
            if self._recoverable(exc):
                # the outcome of the last write is unknown: leave the job as the store has it (the
                # cluster's coordinator runs it again, or settles it)
                log.warning("job %s: the job store is unreachable (%s); left for recovery", job_id, exc)
                return
            log.exception("processing %s crashed", job_id)
            await self.fail(job_id, "internal error while processing; the payment is returned")

    async def _process(self, job_id: str, worker: str | None) -> None:
        job = self.store.get(job_id)
        if job is None or job.state is not JobState.PAYMENT_HELD:
            return
        if job.hold_deadline and self.clock() > job.hold_deadline:
            await self.fail(job_id, "the hold budget ran out before the job could start; the payment is returned")
            return
        job = self.store.transition(
            job_id,
            [JobState.PAYMENT_HELD],
            JobState.PROCESSING,
            started_at=self.clock(),
            attempts=job.attempts + 1,
            progress=0.0,
            worker=worker,
        )
        if job is None:
            return
        stop = self._stops[job_id] = threading.Event()
        try:
            await self._attempt(job, stop)
        except Exception as exc:
            if self._recoverable(exc):
                raise
            log.exception("processing %s crashed", job_id)
            await self.fail(job_id, "internal error while processing; the payment is returned", job.attempts)

    async def _attempt(self, job: Job, stop: threading.Event) -> None:
        """One attempt at a job this run moved to processing (`job.attempts` is this attempt's)."""
        job_id = job.id
        try:
            run = await asyncio.to_thread(self._run_engine, job, stop)
        except asyncio.CancelledError:
            # this process is stopping: the engine ends at its next tile, and the job goes back to
            # held at once, for the next start or another worker (fenced: only this attempt's)
            stop.set()
            self.store.transition(job_id, [JobState.PROCESSING], JobState.PAYMENT_HELD, attempt=job.attempts)
            raise
        except Cancelled:
            return  # failed meanwhile (its payment is returned already), or the server is stopping
        except Exception as exc:
            if self._recoverable(exc):
                raise
            log.warning("job %s failed: %s", job_id, exc)
            await self.fail(job_id, f"upscaling failed: {self._reason(exc, job)}", job.attempts)
            return
        finally:
            self._stops.pop(job_id, None)
        if stop.is_set():  # failed just as the engine finished: nobody receives this output
            run.remove()
            return
        await self._succeed(job, run)

    async def _succeed(self, job: Job, run: EngineRun) -> None:
        provenance: dict = {}
        outbox = None
        if self.provenance is not None:
            try:
                pinned = await asyncio.to_thread(
                    self.provenance.pin_job,
                    job,
                    run.path,
                    run.sha256,
                    run.weights,
                    run.width,
                    run.height,
                    run.fidelity,
                    run.settings,
                )
            except Exception as exc:
                log.exception("pinning job %s failed", job.id)
                run.remove()
                await self.fail(job.id, f"storing the result failed: {exc}", job.attempts)
                return
            outbox = pinned.outbox_entry()
            batch = job.invoice_status is InvoiceStatus.BATCH
            if batch:  # a collection token's record waits for its batch's payment (service.collections)
                outbox = replace(outbox, status="held")
            provenance = dict(
                input_cid=pinned.facts.input_cid,
                output_cid=pinned.facts.output_cid,
                metadata_cid=pinned.metadata_cid,
                chain_status=ChainStatus.NONE if batch else ChainStatus.PENDING,
                ipfs_remote_status="pending" if self.provenance.remote and job.publish else "none",
            )
        # success and its chain record are one transaction: the record cannot be lost
        done = self.store.transition(
            job.id,
            [JobState.PROCESSING],
            JobState.SUCCEEDED,
            outbox=outbox,
            attempt=job.attempts,
            output_path=str(run.path),
            output_sha256=run.sha256,
            output_width=run.width,
            output_height=run.height,
            fidelity=json.dumps(run.fidelity, sort_keys=True),
            intermediates=json.dumps(run.intermediates) if run.intermediates else None,
            credentials=json.dumps(run.credentials, sort_keys=True) if run.credentials else None,
            finished_at=self.clock(),
            progress=1.0,
            **provenance,
        )
        if done is None:  # failed meanwhile (hold budget ran out), or taken over: the payer keeps the money
            run.remove()
            return
        if outbox is not None and outbox.status == "pending" and self.on_record:
            self.on_record()
        if done.hold:
            await self.settlement.settle(done)
        self._ended(done)
        self._remove_earlier_attempts(done, run.path)

    def output_path(self, job: Job) -> Path:
        """Where this attempt writes: each attempt its own files (a taken-over attempt still
        writing cannot touch the next one's), the first under the job's plain name."""
        name = job.id if job.attempts <= 1 else f"{job.id}-{job.attempts}"
        return self.outputs_dir / f"{name}{FORMAT_EXTENSIONS[job.output_format]}"

    def _remove_earlier_attempts(self, job: Job, kept: Path | None) -> None:
        """Once an attempt succeeded (`kept`: its output), what earlier (killed or taken-over)
        attempts left is garbage; once the job failed (`kept` None), all of its files are."""
        attempt_file = re.compile(rf"^\.?{re.escape(job.id)}(-\d+)?\.")
        mine = (f"{kept.stem}.", f".{kept.stem}.") if kept is not None else ()
        try:
            for path in self.outputs_dir.glob(f"*{job.id}*"):
                if attempt_file.match(path.name) and not (mine and path.name.startswith(mine)):
                    path.unlink(missing_ok=True)
        except OSError as exc:  # a shared folder's hiccup: garbage stays, nothing else is affected
            log.warning("job %s: could not remove what earlier attempts left: %s", job.id, exc)

    def _run_engine(self, job: Job, stop: threading.Event) -> EngineRun:
        """Run the job's stages on its input (blocking; in a worker thread)."""
        stages = job.stages
        engines = [self.engines.get(stage.model, stage.precision) for stage in stages]
        target = self.output_path(job)
        for leftover in self.outputs_dir.glob(f".{target.name}.*"):  # a killed earlier attempt's
            leftover.unlink(missing_ok=True)
        remove_intermediates(target)

        last_written = [0.0]

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - last_written[0] < PROGRESS_INTERVAL and fraction < 1.0:
                return
            last_written[0] = now
            try:
                current = self.store.progress(job.id, job.attempts, fraction)
            except Exception as exc:  # the store is briefly unreachable: the run goes on
                log.warning("job %s: progress not written: %s", job.id, exc)
                return
            if not current:
                stop.set()  # failed meanwhile, here or on another node, or taken over by another worker

        def timed(stage: int, units: int, seconds: float) -> None:
            self.meter.record(engines[stage - 1].info, units, seconds)

        def weigh(planned: PlannedStage) -> float:  # progress in proportion to each stage's time
            return self.meter.stage_seconds(planned.stage.engine, planned.plan)

        runs = [
            Stage(engine, UpscaleOptions(scale=stage.scale, tile=stage.tile, engine_options=stage.engine_options))
            for engine, stage in zip(engines, stages, strict=True)
        ]
        settings = [
            {o.name: stage.engine_options.get(o.name, o.default) for o in engine.info.job_options}
            for engine, stage in zip(engines, stages, strict=True)
        ]
        described = [
            StageParameters(stage.model, stage.scale, engine.info.weights_sha256, used)
            for engine, stage, used in zip(engines, stages, settings, strict=True)
        ]
        rule = metadata_rule(self.metadata_policy, job, described)
        result = run_pipeline(
            runs,
            Path(job.input_path),
            target,
            OutputOptions(format=job.output_format),
            self.limits,
            progress,
            should_stop=stop.is_set,
            timings=timed,
            weigh=weigh,
            keep=len(stages) > 1,
            figure_timings=self.meter.record_figure,
            metadata=rule,
        )
        credentials = None
        if self.credentials is not None:  # before hashing: the sha256, CID and record are of the signed file
            try:
                signed = self.credentials.sign(job, target, job.output_format, described, rule)
            except BaseException:
                target.unlink(missing_ok=True)
                remove_intermediates(target)
                raise
            credentials = signed.to_dict()
        figures = [
            {"stage": r.index, "model": s.model} | (r.fidelity.to_dict() if r.fidelity else {}) | dict(r.outcome)
            for r, s in zip(result.stages, stages, strict=True)
        ]
        intermediates = [
            {"stage": r.index, "model": s.model, "path": str(r.path), "sha256": sha256_file(r.path),
             "width": r.width, "height": r.height}
            for r, s in zip(result.stages[:-1], stages, strict=False)
        ]  # fmt: skip
        return EngineRun(
            target,
            sha256_file(target),
            result.width,
            result.height,
            tuple(engine.info.weights_sha256 for engine in engines),
            {"overall": result.fidelity.to_dict() if result.fidelity else None, "stages": figures},
            intermediates,
            settings,
            credentials,
        )

    def _reason(self, exc: Exception, job: Job) -> str:
        """A failure as the job's viewers may read it: no server paths, not endless."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text.replace(job.input_path, "the input").replace(str(self.output_path(job)), "the output")
        text = text.replace(str(self.outputs_dir), "outputs")
        if not isinstance(exc, SatscaleError | RuntimeError | MemoryError):
            text = f"{type(exc).__name__}: {text}"
        return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."
