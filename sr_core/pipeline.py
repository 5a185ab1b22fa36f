"""A job as a short pipeline of stages: each stage one engine with its own options, each reading
what the stage before wrote.

Between stages the image goes through an uncompressed TIFF beside the output (16-bit and alpha
kept), which the next stage reads window by window straight from the file: a pipeline of tiled stages stays
within the same memory bound as one stage. The final stage writes the requested format; a
stage that fails or is stopped leaves no output, and `keep` decides whether the intermediate
files stay (for download) or go.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .engines import Engine, EngineInfo, Faces
from .errors import ParameterError
from .fidelity import Fidelity, compared_pixels, consistency
from .imageio import ImageInfo, ImageLimits, ImageReader, OutputOptions, RawTiffReader, StreamingWriter
from .metadata import MetadataRule
from .plans import StopCheck, UpscaleOptions, UpscalePlan
from .upscale import output_spec

#: more stages than this is a mistake, not a workflow
MAX_STAGES = 4
#: intermediates: uncompressed TIFF (lossless, 16-bit, alpha), kept as the rows were written and
#: read window by window straight from the file (imageio.RawTiffReader)
INTERMEDIATE = OutputOptions(format="tiff")

#: told the whole pipeline's progress as a fraction in [0, 1]
FractionCallback = Callable[[float], None]
#: told (stage index, work units, seconds) of each measured piece of engine work
StageTimings = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Stage:
    engine: Engine
    options: UpscaleOptions


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    input: ImageInfo  # the image this stage reads
    plan: UpscalePlan


@dataclass(frozen=True)
class StageResult:
    index: int
    engine: EngineInfo
    scale: int
    width: int
    height: int
    path: Path  # the intermediate this stage wrote (the last stage: the output)
    seconds: float
    #: this stage's output area-averaged back to its input, against its input
    fidelity: Fidelity | None
    #: what the engine found (a face stage: the faces restored and left alone), for the record
    outcome: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    input: ImageInfo
    stages: tuple[StageResult, ...]
    output_path: Path
    width: int
    height: int
    scale: int  # the product of the stages' scales
    seconds: float
    #: the final output area-averaged back to the input, against the input
    fidelity: Fidelity | None


def stage_image(previous: ImageInfo, scale: int) -> ImageInfo:
    """What the next stage reads: the previous image `scale` times larger, same channels and depth."""
    width, height = previous.width * scale, previous.height * scale
    return replace(
        previous,
        format="tiff",
        width=width,
        height=height,
        orientation=1,
        byte_size=width * height * previous.channels * previous.bit_depth // 8,
    )


def check_face_stages(infos: Sequence[EngineInfo]) -> None:
    """A face stage restores photographic faces: after a stage that repaints faces in drawing
    style (an illustration model) it would paste photo faces into a drawing (a known complaint),
    so that order is refused; and one face stage a job (a second would restore, and charge for,
    the same faces again). The one rule; the pipeline, the CLI and the front door's intake call it."""
    faces = [index for index, info in enumerate(infos, start=1) if info.faces is Faces.RESTORES]
    if len(faces) > 1:
        raise ParameterError(f"stages {' and '.join(map(str, faces))} both restore faces: a job has one face stage")
    for index, info in enumerate(infos, start=1):
        if info.faces is not Faces.RESTORES:
            continue
        drawn = [n for n, before in enumerate(infos[: index - 1], start=1) if before.faces is Faces.REPAINTS]
        if drawn:
            raise ParameterError(
                f"stage {index} restores faces as photographs, but stage {drawn[0]} repaints faces in drawing "
                "style (an illustration model): restoring them would paste photographic faces into a drawing. "
                "Use a photo model before a face stage, or leave the face stage out"
            )


def plan_pipeline(stages: Sequence[Stage], image: ImageInfo) -> list[PlannedStage]:
    """Every stage's plan, each on the image the stage before makes: scales, sizes and options
    are checked for all stages before any work."""
    if not 1 <= len(stages) <= MAX_STAGES:
        raise ParameterError(f"a pipeline has 1 to {MAX_STAGES} stages, not {len(stages)}")
    check_face_stages([stage.engine.info for stage in stages])
    planned = []
    current = image
    for index, stage in enumerate(stages, start=1):
        try:
            plan = stage.engine.plan(current, stage.options)
        except ParameterError as exc:
            raise ParameterError(f"stage {index}: {exc}") if len(stages) > 1 else exc from None
        planned.append(PlannedStage(stage, current, plan))
        current = stage_image(current, plan.scale)
    return planned


def intermediate_path(output: Path, index: int) -> Path:
    return output.with_name(f"{output.stem}.stage{index}.tif")


def run_pipeline(
    stages: Sequence[Stage],
    source: Path | bytes,
    output: Path,
    output_options: OutputOptions | None = None,
    limits: ImageLimits | None = None,
    progress: FractionCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: StageTimings | None = None,
    weigh: Callable[[PlannedStage], float] | None = None,
    keep: bool = False,
    fidelity: bool = True,
    figure_timings: Callable[[int, float], None] | None = None,
    metadata: MetadataRule | None = None,
) -> PipelineResult:
    """Run the stages in order; the last one writes `output`. `weigh`: a stage's share of the
    progress (e.g. its estimated seconds; default: its work units). `keep`: leave the
    intermediates (intermediate_path) beside the output. `fidelity`: measure each stage's and
    the whole pipeline's consistency with its input (`figure_timings` is told the compared
    pixels and seconds of each figure). `metadata`: what the output keeps of the input's EXIF and
    which XMP it carries (default: EXIF kept, no XMP)."""

    def figure(reference: Path | bytes, made: Path, width: int, height: int, scale: int) -> Fidelity:
        started = time.perf_counter()
        measured = consistency(reference, made, should_stop)
        if figure_timings:
            figure_timings(compared_pixels(width, height, scale), time.perf_counter() - started)
        return measured

    started = time.perf_counter()
    reader = ImageReader(source, limits, source=str(source) if isinstance(source, Path) else "image")
    carried = (metadata or MetadataRule()).apply(reader.exif)
    planned = plan_pipeline(stages, reader.info)
    shares = [weigh(p) if weigh else float(p.plan.work_pixels) for p in planned]
    total = sum(shares) or 1.0
    results: list[StageResult] = []
    written: list[Path] = []
    done_share = 0.0
    try:
        current_source: Path | bytes = source
        current_reader = reader
        for index, step in enumerate(planned, start=1):
            last = index == len(planned)
            target = output if last else intermediate_path(output, index)
            stage_started = time.perf_counter()
            spec = output_spec(
                current_reader.info,
                step.plan.scale,
                carried.exif if last else None,
                reader.resolution,
                carried.xmp if last else None,
            )

            def report(done: int, count: int, share: float = shares[index - 1], before: float = done_share) -> None:
                if progress:
                    progress(min(1.0, (before + share * done / max(count, 1)) / total))

            def timed(units: int, seconds: float, stage: int = index) -> None:
                if timings:
                    timings(stage, units, seconds)

            with StreamingWriter(target, spec, output_options if last else INTERMEDIATE) as writer:
                ran = step.stage.engine.process(
                    current_reader.read, current_reader.info, writer.write_rows, step.stage.options,
                    report, should_stop, timed,
                )  # fmt: skip
                if last:
                    writer.close()
                else:
                    writer.keep_raw()  # no encoding: the next stage reads its windows from the file
            written.append(target)
            info = current_reader.info
            measured = figure(current_source, target, info.width, info.height, step.plan.scale) if fidelity else None
            results.append(
                StageResult(
                    index,
                    step.stage.engine.info,
                    step.plan.scale,
                    spec.width,
                    spec.height,
                    target,
                    time.perf_counter() - stage_started,
                    measured,
                    dict(ran.outcome),
                )
            )
            done_share += shares[index - 1]
            if not last:
                current_source = target
                current_reader = RawTiffReader(target, current_reader.info, source=f"stage {index} output")
        scale = math.prod(result.scale for result in results)
        if len(results) == 1 or not fidelity:
            overall = results[-1].fidelity
        else:
            overall = figure(source, output, reader.info.width, reader.info.height, scale)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if not keep:
        for path in written[:-1]:
            path.unlink(missing_ok=True)
    last_result = results[-1]
    return PipelineResult(
        input=reader.info,
        stages=tuple(results),
        output_path=output,
        width=last_result.width,
        height=last_result.height,
        scale=scale,
        seconds=time.perf_counter() - started,
        fidelity=overall,
    )


def remove_intermediates(output: Path) -> None:
    """What a pipeline run kept (or a killed run left) beside an output."""
    for path in output.parent.glob(f"{output.stem}.stage*.tif"):
        path.unlink(missing_ok=True)
