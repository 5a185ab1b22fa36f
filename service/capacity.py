"""How long a job will take here, so the server never sells what it cannot deliver in time.

A paid job must finish within the hold budget, or the payment is returned and the buyer
waited for nothing. The estimate is the engine's plan of the work (`Engine.plan`: for a tiled
engine the input pixels the network sees, every window with its context; for a diffusion
engine latent pixels times denoiser evaluations) times a measured cost per unit of work.

The cost per unit is learnt per engine variant (model, weights, device, precision) from
single engine calls (one batch of tiles, one sampler run), never from whole jobs: a job's duration mixes
decoding, encoding and pinning, and a tiny job (a 1x1 image) is all overhead, so averaging
jobs lets a few cheap jobs talk the estimate down to nothing. A call counts only when it
processed enough pixels for long enough to be measured; the estimate uses an upper quantile
of the recent calls, so one fast outlier cannot lower it and a burst of slow calls raises it.
Before any job ran, the engine's own calibration (`Engine.calibrate`, on synthetic input big
enough to time) counts, with a margin, until real calls replace it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sr_core.engines import Engine, EngineInfo
from sr_core.fidelity import calibrate as calibrate_figure
from sr_core.fidelity import compared_pixels
from sr_core.imageio import ImageInfo
from sr_core.plans import UpscalePlan
from sr_core.upscale import UpscaleOptions

log = logging.getLogger("satscale.capacity")

#: what a consistency figure's measured speed is kept under (beside the engine variants)
FIGURE_KEY = ("consistency figure", "", "")
#: fixed cost per job on top of the engine's work (decode, encode, hashing, pinning)
OVERHEAD_SECONDS = 0.5
#: an engine call counts only when it saw at least this many input pixels ...
MIN_SAMPLE_PIXELS = 64 * 64
#: ... and took at least this long (shorter is timer and scheduler noise)
MIN_SAMPLE_SECONDS = 0.02
#: calls remembered per engine variant, and the quantile the estimate uses
SAMPLES_KEPT = 32
QUANTILE = 0.9
#: calls an engine's own calibration counts as, until real calls replace it
CALIBRATION_CALLS = 3
#: a calibration runs on synthetic input smaller than a job's (small tiles run faster per pixel:
#: measured on the AMX Xeon, x4plus bf16, the calibrated estimate was 0.71-0.93x of the real
#: run), so until real calls are measured it counts this much more (benchmarks/admission_estimates.py)
CALIBRATION_MARGIN = 1.5


@dataclass(frozen=True)
class Estimate:
    seconds: float
    #: the engine's measured cost per million units of its work (EngineInfo.work_unit)
    seconds_per_megapixel: float
    #: units of work the engine will do (a tiled engine: input pixels, windows with their context)
    work_pixels: int
    #: each stage's share of `seconds` (the overhead counted once, outside them)
    stage_seconds: tuple[float, ...] = ()
    #: the consistency figures' share of `seconds`
    figure_seconds: float = 0.0


def variant_key(info: EngineInfo) -> tuple[str, str, str]:
    """What a measured speed belongs to: the weights, where and how precisely they run."""
    return (info.weights_sha256, info.device, info.precision.value)


class SampleStore(Protocol):
    """Where measurements live so that every node estimates from every worker's calls (the job store)."""

    def add_sample(self, variant: str, seconds_per_unit: float, keep: int) -> None: ...
    def samples(self, variant: str, limit: int) -> list[float]: ...


class ThroughputMeter:
    def __init__(self, store: SampleStore | None = None) -> None:
        """With a `store`, real calls are kept there (shared by the nodes of a cluster, kept across
        restarts); without one, in this process. Calibrations always stay in the process."""
        self._store = store
        self._measured: dict[tuple[str, str, str], deque[float]] = {}  # seconds per pixel, real calls
        self._calibrated: dict[tuple[str, str, str], float] = {}  # the engine's own measurement
        self._lock = threading.Lock()
        self._calibrating = threading.Lock()  # one calibration at a time: two would time each other

    # ------------------------------------------------------------ measuring

    def record(self, info: EngineInfo, pixels: int, seconds: float) -> bool:
        """One engine call of a real job. Returns whether it counted (big and long enough)."""
        return self._record(variant_key(info), pixels, seconds)

    def record_figure(self, pixels: int, seconds: float) -> bool:
        """One consistency figure of a real job (its compared pixels and seconds)."""
        return self._record(FIGURE_KEY, pixels, seconds)

    def _record(self, key: tuple[str, str, str], units: int, seconds: float) -> bool:
        if units < MIN_SAMPLE_PIXELS or seconds < MIN_SAMPLE_SECONDS:
            return False
        if self._store is not None:
            try:
                self._store.add_sample("|".join(key), seconds / units, SAMPLES_KEPT)
                return True
            except Exception as exc:  # the store is briefly unreachable: keep it here meanwhile
                log.warning("a measured engine call was kept in this process only: %s", exc)
        with self._lock:
            self._measured.setdefault(key, deque(maxlen=SAMPLES_KEPT)).append(seconds / units)
        return True

    def _real(self, key: tuple[str, str, str]) -> list[float]:
        if self._store is not None:
            try:
                return self._store.samples("|".join(key), SAMPLES_KEPT)
            except Exception as exc:  # the store is briefly unreachable: what this process measured
                log.warning("measured engine speed read from this process only: %s", exc)
        with self._lock:
            return list(self._measured.get(key, ()))

    def samples(self, info: EngineInfo) -> int:
        """Measurements behind the estimate: calibration calls and counted real calls."""
        key = variant_key(info)
        with self._lock:
            calibrated = key in self._calibrated
        return (CALIBRATION_CALLS if calibrated else 0) + len(self._real(key))

    def rate(self, engine: Engine) -> float:
        """Seconds per work unit: the upper quantile of recent real calls, or (until there are
        enough) the engine's own calibration, with its margin. Blocking: call from a worker thread."""
        return self._rate(variant_key(engine.info), engine.calibrate)

    def streaming_rate(self, engine: Engine) -> float:
        """Seconds per pixel an engine streams besides its work (its own calibration, with the
        margin: the copy is plain memory traffic and does not vary like network calls)."""
        key = variant_key(engine.info)
        return self._rate((key[0] + " streaming", key[1], key[2]), engine.calibrate_streaming)

    def stage_seconds(self, engine: Engine, plan: UpscalePlan) -> float:
        """How long one stage's plan takes here: its work and what it streams."""
        seconds = self.rate(engine) * plan.work_pixels
        return seconds + (self.streaming_rate(engine) * plan.streamed_pixels if plan.streamed_pixels else 0.0)

    def figure_rate(self) -> float:
        """Seconds per compared pixel of a consistency figure: real figures, else a calibration."""

        def calibrate() -> float:
            with tempfile.TemporaryDirectory(prefix="satscale-calibration-") as folder:
                return calibrate_figure(Path(folder))

        return self._rate(FIGURE_KEY, calibrate)

    def _rate(self, key: tuple[str, str, str], calibrate: Callable[[], float]) -> float:
        measured = sorted(self._real(key))
        if len(measured) >= CALIBRATION_CALLS:
            return _quantile(measured)
        with self._calibrating:
            if key not in self._calibrated:
                calibrated = calibrate()
                with self._lock:
                    self._calibrated[key] = calibrated
        return self._calibrated[key] * CALIBRATION_MARGIN

    # ------------------------------------------------------------ estimating

    def estimate(self, engine: Engine, image: ImageInfo, options: UpscaleOptions) -> Estimate:
        """How long this job takes here. Blocking (it may calibrate): call from a worker thread."""
        return self.estimate_stages([(engine, image, options)])

    def estimate_stages(self, runs: Sequence[tuple[Engine, ImageInfo, UpscaleOptions]]) -> Estimate:
        """How long a pipeline takes here: each stage on the image the stage before makes, and
        the consistency figures (one per stage, and one overall when there are several)."""
        seconds_each, work, compared = [], [], 0
        total_scale = 1
        for engine, image, options in runs:
            plan = engine.plan(image, options)
            work.append(plan.work_pixels)
            seconds_each.append(self.stage_seconds(engine, plan))
            compared += compared_pixels(image.width, image.height, plan.scale)
            total_scale *= plan.scale
        if len(runs) > 1:
            first = runs[0][1]
            compared += compared_pixels(first.width, first.height, total_scale)
        seconds = tuple(seconds_each)
        figures = self.figure_rate() * compared
        first_rate = self.rate(runs[0][0])
        return Estimate(OVERHEAD_SECONDS + sum(seconds) + figures, first_rate * 1e6, sum(work), seconds, figures)


def nominal_image(width: int, height: int) -> ImageInfo:
    """The image a quote by size alone assumes: 8-bit RGB without alpha."""
    return ImageInfo(
        format="png",
        width=width,
        height=height,
        channels=3,
        has_alpha=False,
        bit_depth=8,
        icc_profile=None,
        orientation=1,
        byte_size=width * height * 3,
    )


def _quantile(values: list[float]) -> float:
    return values[min(len(values) - 1, math.ceil(QUANTILE * len(values)) - 1)]
