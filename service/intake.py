"""The one intake both doors use: an upload is decoded and validated once, its options checked
once, and the result is an `Admission` that the job is created from (or a refusal, before
any invoice exists).

    inspect   decode and validate the bytes (format, size limits, a full streaming decode)
    resolve   + the options: model, scale, output format, tile, precision, publication;
              the price, the engine's description, the time estimate, the token binding
    admit     + refuse what this server cannot finish while a payment can be held (413) or
              cannot start in time because of the work queued ahead (503, retry later)
    price     the same checks for an image known only by its size (a quote)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sr_core.engines import Engine, EngineInfo, ReadWindow
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
    stages: tuple[StageRequest, ...] = ()


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
    ) -> None:
        """`backlog`: seconds of engine work already paid for and not yet done."""
        self.settings = settings
        self.engines = engines
        self.meter = meter
        self.backlog = backlog

    def limits(self) -> ImageLimits:
        return upload_limits(self.settings)

    async def inspect(self, data: bytes) -> ImageInfo:
        """The core's validation, the same checks the CLI applies."""
        return await asyncio.to_thread(validate_image, data, self.limits(), "upload")

    async def price(self, options: JobOptions, width: int, height: int) -> Priced:
        """Price and time of an upscale of an image of this size (the upload limits apply)."""
        check_dimensions(width, height, self.limits())
        return await asyncio.to_thread(self._price, options, nominal_image(width, height))

    async def price_upload(self, data: bytes, options: JobOptions) -> Priced:
        """Price and time of an upscale of this upload (a face stage's faces counted in it)."""
        image = await self.inspect(data)
        return await asyncio.to_thread(self._price, options, image, self._pixels(data))

    def _pixels(self, data: bytes) -> Callable[[], ReadWindow]:
        def pixels() -> ReadWindow:  # opened only for a stage that looks at them, read in order
            return ImageReader(data, self.limits(), source="upload", sequential=True).read

        return pixels

    async def resolve(self, data: bytes, options: JobOptions) -> Admission:
        """Validate the upload and the options; price the job. Nothing is refused for time."""
        image = await self.inspect(data)
        return await asyncio.to_thread(self._resolve, data, image, options)

    async def admit(self, data: bytes, options: JobOptions) -> Admission:
        """`resolve`, then refuse a job that cannot finish while its payment can be held."""
        admission = await self.resolve(data, options)
        self.check_time(admission.estimate, admission.image, admission.request.model)
        return admission

    def check_time(self, estimate: Estimate, image: ImageInfo, model: str) -> None:
        budget = self.settings.hold_budget_seconds
        allowed = budget * ADMISSION_SHARE
        if estimate.seconds > allowed:
            raise ImageTooLargeError(
                f"upload: {image.width}x{image.height} with {model} would take about {estimate.seconds:.0f} s "
                f"here, and a payment can be held for {budget} s; send a smaller image or use a faster model"
            )
        ahead = self.backlog()
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

    def _price(self, options: JobOptions, image: ImageInfo, pixels: Callable[[], ReadWindow] | None = None) -> Priced:
        """Every stage checked on the image the stage before makes (scale, size, the engine's own
        options), priced and timed; the whole pipeline's output within the server's limit.
        `pixels`: opens the upload's pixels, where a stage priced per thing it finds counts them
        (a face stage its faces; without pixels, a quote counts the most the stage may do)."""
        sent = self._stage_options(options)
        several = len(sent) > 1
        stages, quotes, runs = [], [], []
        current = image
        for index, stage in enumerate(sent, start=1):
            try:
                engine = self._engine(stage)
                info = engine.info
                check_stage_model(stage, info)
                scale = info.resolve_scale(stage.scale)
                info.check_output_size(current.width, current.height, scale)
                chosen = info.parse_options(stage.options)
                run = UpscaleOptions(scale=scale, tile=stage.tile, engine_options=chosen)
                units = self._units(engine, run, image, pixels, current.width // image.width)
            except ParameterError as exc:
                raise ParameterError(f"stage {index} ({stage.model}): {exc}") if several else exc from None
            if units is not None:
                chosen = units[1]
                run = UpscaleOptions(scale=scale, tile=stage.tile, engine_options=chosen)
            resolved = StageRequest(stage.model, scale, stage.tile, stage.precision, tuple(sorted(chosen.items())))
            stages.append(resolved)
            factor = _work_factor(engine, current, run)
            count = units[0] if units else None
            quotes.append(
                stage_quote(self.settings, stage.model, info, current.width, current.height, scale, factor, count)
            )
            runs.append((engine, current, run))
            current = stage_image(current, scale)
        check_face_stages([engine.info for engine, _, _ in runs])
        limit = self.settings.output_megapixels_limit
        if current.width * current.height > limit * 1e6:
            raise ImageTooLargeError(
                f"the output would be {current.width}x{current.height}, more than this server's "
                f"{limit:g} MP limit: choose smaller scales or a smaller input"
            )
        priced = quote(self.settings, pipeline_name(stages), image.width, image.height, quotes)
        estimate = self.meter.estimate_stages(runs)
        return Priced(priced, estimate, runs[0][0].info, tuple(stages))

    @staticmethod
    def _units(
        engine: Engine,
        run: UpscaleOptions,
        image: ImageInfo,
        pixels: Callable[[], ReadWindow] | None,
        magnified: int,
    ) -> tuple[int, dict] | None:
        """What a stage priced per unit pays for and its options bound to that count, counted in
        the upload (without it: the most the stage may do); None for a stage priced by size."""
        survey = engine.survey(pixels() if pixels else None, image, run, magnified)
        return None if survey is None else (survey.units, dict(survey.options))

    def _resolve(self, data: bytes, image: ImageInfo, options: JobOptions) -> Admission:
        output_format = image.format if options.output_format in (None, "") else normalise_format(options.output_format)

        priced = self._price(options, image, self._pixels(data))
        scale = priced.quote.scale
        spec = OutputSpec(image.width * scale, image.height * scale, image.channels, image.bit_depth)
        check_output(spec, output_format, Path("output"))  # a format that cannot hold the output: before any invoice
        stages = priced.stages
        single = stages[0] if len(stages) == 1 else None
        request = JobRequest(
            model=pipeline_name(stages),
            scale=scale,
            output_format=output_format,
            tile=single.tile if single else None,
            precision=single.precision if single else "auto",
            publish=bool(options.publish),
            stages=stages,
        )
        input_sha256 = hashlib.sha256(data).hexdigest()
        return Admission(
            data=data,
            image=image,
            input_sha256=input_sha256,
            request=request,
            binding=request_hash(input_sha256, request),
            quote=priced.quote,
            estimate=priced.estimate,
        )
