"""The one intake both doors use: an upload is decoded and validated once, its options checked
once, and the result is an `Admission` that the job is created from (or a refusal, before
any invoice exists).

    inspect   decode and validate the bytes (format, size limits, a full streaming decode),
              once per content
    admit     + the options: model, scale, output format, tile, precision, publication;
              the price (what a stage counts in the image counted once per upload), the
              engine's description, the time estimate, the token binding; and refuse what
              this server cannot finish while a payment can be held (413) or cannot start in
              time because of the work queued ahead (503, retry later)
    binding   what a repeated request's token must be bound to (nothing counted again)
    price     the same checks for an image known only by its size (a quote); price_upload
              for this very upload
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sr_core.engines import Engine, EngineInfo, ReadWindow, Survey
from sr_core.errors import ImageTooLargeError, ParameterError
from sr_core.imageio import (
    ImageInfo,
    ImageLimits,
    ImageReader,
    OutputSpec,
    check_dimensions,
    check_output,
    normalise_format,
    validate_image,
)
from sr_core.pipeline import check_face_stages, stage_image
from sr_core.tiling import MIN_TILE
from sr_core.upscale import UpscaleOptions

from .capacity import Estimate, ThroughputMeter, nominal_image
from .config import Settings
from .engines import DEFAULT_MODEL, Engines
from .jobs import JobRequest
from .pricing import Quote, quote, stage_quote
from .stages import StageOptions, StageRequest, check_stage_model, parse_pipeline, pipeline_name, trivial

#: refuse a job whose estimated run takes more than this share of the hold budget
ADMISSION_SHARE = 0.8
MAX_REQUEST_TILE = 2048
#: uploads whose validation, and stage surveys (faces counted), are remembered by content hash
INSPECTIONS_KEPT = 16
SURVEYS_KEPT = 64


class ServerBusy(Exception):
    """The work queued ahead would not leave this job enough of the hold budget (503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobOptions:
    """What a caller asks for, as sent (either door); checked by the intake."""

    model: str = DEFAULT_MODEL
    scale: int | None = None  # None: the model's own
    output_format: str | None = None  # None: as the input
    tile: int | None = None  # None: sized from the memory budget
    precision: str = "auto"
    publish: bool = False
    #: instead of model/scale/tile/precision: the stages as sent (service.stages.parse_pipeline)
    pipeline: Any = None


@dataclass(frozen=True)
class Priced:
    quote: Quote
    estimate: Estimate
    engine: EngineInfo  # the first stage's
    #: the stages the job runs: options bound to what the price counted (a face stage's max_faces)
    stages: tuple[StageRequest, ...] = ()
    #: the same stages with the options as sent: what a token is bound to, so repeating the
    #: request never depends on counting the same faces again
    sent: tuple[StageRequest, ...] = ()


@dataclass(frozen=True)
class _Upload:
    data: bytes
    sha256: str

    def reader(self, limits: ImageLimits) -> ReadWindow:
        return ImageReader(self.data, limits, source="upload", sequential=True).read


@dataclass(frozen=True)
class _Step:
    """One stage checked, before anything is counted in the image."""

    sent: StageOptions
    engine: Engine
    scale: int
    chosen: dict[str, Any]  # its engine options as sent, parsed
    run: UpscaleOptions
    image: ImageInfo  # the image the stage gets
    magnified: int  # what the stages before it multiply the input's size by

    def resolved(self, options: dict[str, Any]) -> StageRequest:
        return StageRequest(self.sent.model, self.scale, self.sent.tile, self.sent.precision,
                            tuple(sorted(options.items())))  # fmt: skip


@dataclass(frozen=True)
class Admission:
    """An accepted upload: what the job is created from."""

    data: bytes
    image: ImageInfo
    input_sha256: str
    request: JobRequest
    #: what the L402 token is bound to (request_hash)
    binding: str
    quote: Quote
    estimate: Estimate


def upload_limits(settings: Settings) -> ImageLimits:
    """What an upload may be (bytes, pixels, side): one rule for uploads, quotes and the runner."""
    return ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=int(settings.max_input_megapixels * 1e6))


def request_hash(input_sha256: str, request: JobRequest) -> str:
    """What an L402 token is bound to: the input bytes and every parameter of the request."""
    fields = {
        "input": input_sha256,
        "model": request.model,
        "scale": request.scale,
        "format": request.output_format,
        "tile": request.tile,
        "precision": request.precision,
    }
    if request.publish:  # absent when false: tokens minted before publication was a choice still match
        fields["publish"] = True
    if request.stages and not trivial(request.stages):  # likewise: a one-model job hashes as before
        fields["pipeline"] = [stage.to_dict() for stage in request.stages]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _work_factor(engine: Engine, image: ImageInfo, run: UpscaleOptions) -> float:
    """How much more (or less) work the request's own engine options make than the server's."""
    if not run.engine_options:
        return 1.0
    default = engine.plan(image, UpscaleOptions(scale=run.scale, tile=run.tile)).work_pixels
    return engine.plan(image, run).work_pixels / default if default else 1.0


class Intake:
    def __init__(
        self,
        settings: Settings,
        engines: Engines,
        meter: ThroughputMeter,
        backlog: Callable[[], float] = lambda: 0.0,
        workers: Callable[[set[str]], int] = lambda models: 1,
    ) -> None:
        """`backlog`: seconds of engine work already paid for and not yet done. `workers(models)`:
        how many jobs needing these models can run at once (a cluster's live workers that have
        them; one on a single box)."""
        self.settings = settings
        self.engines = engines
        self.meter = meter
        self.backlog = backlog
        self.workers = workers
        self._lock = threading.Lock()
        self._inspected: OrderedDict[str, ImageInfo] = OrderedDict()
        self._surveys: OrderedDict[tuple, tuple[Engine, Survey | None]] = OrderedDict()

    def limits(self) -> ImageLimits:
        return upload_limits(self.settings)

    async def inspect(self, data: bytes) -> ImageInfo:
        """The core's validation, the same checks the CLI applies (a full decode), once per
        content: the same bytes again (a quote asked again, the job made from it) are known."""
        return (await asyncio.to_thread(self._inspect, data))[1]

    def _inspect(self, data: bytes) -> tuple[_Upload, ImageInfo]:
        upload = _Upload(data, hashlib.sha256(data).hexdigest())
        with self._lock:
            known = self._inspected.get(upload.sha256)
        if known is None:
            known = validate_image(data, self.limits(), "upload")  # refusals are not remembered
            with self._lock:
                self._inspected[upload.sha256] = known
                while len(self._inspected) > INSPECTIONS_KEPT:
                    self._inspected.popitem(last=False)
        return upload, known

    async def price(self, options: JobOptions, width: int, height: int) -> Priced:
        """Price and time of an upscale of an image of this size (the upload limits apply)."""
        check_dimensions(width, height, self.limits())
        return await asyncio.to_thread(self._price, options, nominal_image(width, height))

    async def price_upload(self, data: bytes, options: JobOptions) -> Priced:
        """Price and time of an upscale of this upload (a face stage's faces counted in it)."""

        def price() -> Priced:
            upload, image = self._inspect(data)
            return self._price(options, image, upload)

        return await asyncio.to_thread(price)

    async def admit(self, data: bytes, options: JobOptions) -> Admission:
        """Validate the upload and the options, price the job, and refuse a job that cannot
        finish while its payment can be held."""
        admission = await asyncio.to_thread(self._admission, data, options, True, True)
        models = {stage.model for stage in self._stage_options(options)}
        running = await asyncio.to_thread(self.workers, models)
        if running < 1:
            raise ServerBusy(
                f"no worker that runs {', '.join(sorted(models))} is up; nothing was charged, try again shortly",
                retry_after=30,
            )
        self.check_time(admission.estimate, admission.image, admission.request.model, running)
        return admission

    async def admit_token(self, data: bytes, options: JobOptions) -> Admission:
        """A collection token whose batch is paid: validated and priced as any upload, without
        the queue's time check (its batch was sized to the hold budget when it was planned)."""
        return await asyncio.to_thread(self._admission, data, options, True)

    async def binding(self, data: bytes, options: JobOptions) -> str:
        """What a token for this request is bound to: the upload validated and the options
        checked, nothing counted in the image (a token's repeat needs no second detection)."""
        return await asyncio.to_thread(lambda: self._admission(data, options, count=False).binding)

    def check_time(self, estimate: Estimate, image: ImageInfo, model: str, workers: int = 1) -> None:
        """Refuse a job that cannot finish within the hold budget, alone or behind the paid work
        ahead of it (shared by `workers` running at once)."""
        budget = self.settings.hold_budget_seconds
        allowed = budget * ADMISSION_SHARE
        if estimate.seconds > allowed:
            raise ImageTooLargeError(
                f"upload: {image.width}x{image.height} with {model} would take about {estimate.seconds:.0f} s "
                f"here, and a payment can be held for {budget} s; send a smaller image or use a faster model"
            )
        ahead = self.backlog() / max(1, workers)
        if ahead + estimate.seconds > allowed:
            raise ServerBusy(
                f"the server has about {ahead:.0f} s of paid work queued; this job would not finish within the "
                f"{budget} s a payment can be held. Nothing was charged; try again shortly",
                retry_after=max(1, math.ceil(ahead + estimate.seconds - allowed)),
            )

    # ------------------------------------------------------------ blocking parts (worker threads)

    def _stage_options(self, options: JobOptions) -> tuple[StageOptions, ...]:
        if options.pipeline is None:
            return (StageOptions(options.model, options.scale, options.tile, options.precision),)
        single = (options.model, options.scale, options.tile, options.precision)
        if single != (DEFAULT_MODEL, None, None, "auto"):
            raise ParameterError("send either a pipeline or model/scale/tile/precision, not both")
        return parse_pipeline(options.pipeline)

    def _engine(self, stage: StageOptions) -> Engine:
        if not isinstance(stage.model, str) or not stage.model:
            raise ParameterError("model must be a model name (GET /v1/models lists them)")
        if stage.tile is not None and not (
            isinstance(stage.tile, int)
            and not isinstance(stage.tile, bool)
            and MIN_TILE <= stage.tile <= MAX_REQUEST_TILE
        ):
            raise ParameterError(f"tile size must be between {MIN_TILE} and {MAX_REQUEST_TILE} pixels")
        if not isinstance(stage.precision, str):
            raise ParameterError("precision must be a name (auto, fp32, bf16, fp16)")
        return self.engines.get(stage.model, stage.precision)

    def _price(self, options: JobOptions, image: ImageInfo, upload: _Upload | None = None) -> Priced:
        """Every stage checked on the image the stage before makes (scale, size, the engine's own
        options), priced and timed; the whole pipeline's output within the server's limit.
        `upload`: the image itself, where a stage priced per thing it finds counts them (a face
        stage its faces; without it, a quote counts the most the stage may do). Everything that
        can refuse without looking at the pixels is checked before they are looked at."""
        return self._price_steps(self._plan(options, image), image, upload)

    def _price_steps(self, planned: list[_Step], image: ImageInfo, upload: _Upload | None) -> Priced:
        several = len(planned) > 1
        stages, sent, quotes, runs = [], [], [], []
        for index, step in enumerate(planned, start=1):
            try:
                survey = self._survey(index, step, image, upload)
            except ParameterError as exc:
                raise ParameterError(f"stage {index} ({step.sent.model}): {exc}") if several else exc from None
            chosen, count = step.chosen, None
            if survey is not None:
                chosen, count = dict(survey.options), survey.units
            run = replace(step.run, engine_options=chosen)
            stages.append(step.resolved(chosen))
            sent.append(step.resolved(step.chosen))
            info = step.engine.info
            factor = _work_factor(step.engine, step.image, run)
            quotes.append(stage_quote(self.settings, step.sent.model, info, step.image.width, step.image.height,
                                      step.scale, factor, count))  # fmt: skip
            runs.append((step.engine, step.image, run))
        priced = quote(self.settings, pipeline_name(stages), image.width, image.height, quotes)
        estimate = self.meter.estimate_stages(runs)
        return Priced(priced, estimate, runs[0][0].info, tuple(stages), tuple(sent))

    def _plan(self, options: JobOptions, image: ImageInfo) -> list[_Step]:
        """The stages checked without the pixels: names, scales, sizes, options, their order
        (one face stage, never after a model that repaints faces) and the output's size."""
        sent = self._stage_options(options)
        several = len(sent) > 1
        steps, current = [], image
        for index, stage in enumerate(sent, start=1):
            try:
                engine = self._engine(stage)
                info = engine.info
                check_stage_model(stage, info)
                scale = info.resolve_scale(stage.scale)
                info.check_output_size(current.width, current.height, scale)
                chosen = info.parse_options(stage.options)
            except ParameterError as exc:
                raise ParameterError(f"stage {index} ({stage.model}): {exc}") if several else exc from None
            run = UpscaleOptions(scale=scale, tile=stage.tile, engine_options=chosen)
            steps.append(_Step(stage, engine, scale, chosen, run, current, current.width // image.width))
            current = stage_image(current, scale)
        check_face_stages([step.engine.info for step in steps])
        limit = self.settings.output_megapixels_limit
        if current.width * current.height > limit * 1e6:
            raise ImageTooLargeError(
                f"the output would be {current.width}x{current.height}, more than this server's "
                f"{limit:g} MP limit: choose smaller scales or a smaller input"
            )
        return steps

    def _survey(self, index: int, step: _Step, image: ImageInfo, upload: _Upload | None) -> Survey | None:
        """What a stage priced per thing it finds counts in the upload (without it: the most it
        may do); None for a stage priced by size. Remembered per upload, stage and options, so a
        quote asked again (a slider moved back, a token's repeat) does not look again."""
        if not step.engine.info.counts_in_image:
            return None
        if upload is None:
            return step.engine.survey(None, image, step.run, step.magnified)
        key = (upload.sha256, index, tuple(sorted(step.chosen.items())), step.scale, step.magnified)
        with self._lock:
            seen = self._surveys.get(key)
            if seen is not None and seen[0] is step.engine:
                self._surveys.move_to_end(key)
                return seen[1]
        survey = step.engine.survey(upload.reader(self.limits()), image, step.run, step.magnified)
        with self._lock:
            self._surveys[key] = (step.engine, survey)
            while len(self._surveys) > SURVEYS_KEPT:
                self._surveys.popitem(last=False)
        return survey

    def _admission(self, data: bytes, options: JobOptions, count: bool, admitting: bool = False) -> Admission:
        """`count`: look in the image for what stages priced per thing they find count (else
        the most they may do). `admitting`: what could not run in time even if they found
        nothing is refused before anything is looked for."""
        upload, image = self._inspect(data)
        output_format = image.format if options.output_format in (None, "") else normalise_format(options.output_format)
        steps = self._plan(options, image)
        scale = math.prod(step.scale for step in steps)
        spec = OutputSpec(image.width * scale, image.height * scale, image.channels, image.bit_depth)
        check_output(spec, output_format, Path("output"))  # a format that cannot hold the output: before any invoice
        by_size = [(step.engine, step.image, step.run) for step in steps if not step.engine.info.counts_in_image]
        if admitting and by_size and len(by_size) < len(steps):
            name = pipeline_name([step.resolved(step.chosen) for step in steps])
            self.check_time(self.meter.estimate_stages(by_size), image, name)
        priced = self._price_steps(steps, image, upload if count else None)
        single = priced.stages[0] if len(priced.stages) == 1 else None
        request = JobRequest(
            model=pipeline_name(priced.stages),
            scale=scale,
            output_format=output_format,
            tile=single.tile if single else None,
            precision=single.precision if single else "auto",
            publish=bool(options.publish),
            stages=priced.stages,
        )
        return Admission(
            data=data,
            image=image,
            input_sha256=upload.sha256,
            request=request,
            binding=request_hash(upload.sha256, replace(request, stages=priced.sent)),
            quote=priced.quote,
            estimate=priced.estimate,
        )
