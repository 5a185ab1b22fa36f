"""How long a job will take here, so the server never sells what it cannot deliver in time.

A paid job must finish within the hold budget, or the payment is returned and the buyer
waited for nothing. The estimate for a tiled engine is the tile plan's work (input pixels
the network sees: every window with its context) times a measured cost per pixel.

The cost per pixel is learnt per engine variant (model, weights, device, precision) from
single engine calls (one batch of tiles), never from whole jobs: a job's duration mixes
decoding, encoding and pinning, and a tiny job (a 1x1 image) is all overhead, so averaging
jobs lets a few cheap jobs talk the estimate down to nothing. A call counts only when it
processed enough pixels for long enough to be measured; the estimate uses an upper quantile
of the recent calls, so one fast outlier cannot lower it and a burst of slow calls raises it.
Before any job ran, a calibration measures a few calls on tiles big enough to time, and counts
with a margin until real calls replace it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from sr_core.engines import Engine, EngineInfo, TiledEngine, WholeImageEngine
from sr_core.imageio import ImageInfo
from sr_core.upscale import UpscaleOptions, plan_upscale

#: fixed cost per job on top of the engine's work (decode, encode, hashing, pinning)
OVERHEAD_SECONDS = 0.5
#: an engine call counts only when it saw at least this many input pixels ...
MIN_SAMPLE_PIXELS = 64 * 64
#: ... and took at least this long (shorter is timer and scheduler noise)
MIN_SAMPLE_SECONDS = 0.02
#: calls remembered per engine variant, and the quantile the estimate uses
SAMPLES_KEPT = 32
QUANTILE = 0.9
#: calibration: tiles of this side, grown until one call is measurable
CALIBRATION_SIDE = 64
CALIBRATION_MAX_SIDE = 256
CALIBRATION_CALLS = 3
#: small calibration tiles run faster per pixel than a job's real tiles (measured on the AMX
#: Xeon, x4plus bf16: the calibrated estimate was 0.71-0.93x of the real run), so until real
#: calls are measured the calibration counts this much more (benchmarks/admission_estimates.py)
CALIBRATION_MARGIN = 1.5


@dataclass(frozen=True)
class Estimate:
    seconds: float
    #: the engine's measured cost per million input pixels it processes (0 for whole-image engines)
    seconds_per_megapixel: float
    #: input pixels the engine will process (windows with their context)
    work_pixels: int


def variant_key(info: EngineInfo) -> tuple[str, str, str]:
    """What a measured speed belongs to: the weights, where and how precisely they run."""
    return (info.weights_sha256, info.device, info.precision.value)


class ThroughputMeter:
    def __init__(self) -> None:
        self._measured: dict[tuple[str, str, str], deque[float]] = {}  # seconds per pixel, real calls
        self._calibrated: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()
        self._calibrating = threading.Lock()  # one calibration at a time: two would time each other

    # ------------------------------------------------------------ measuring

    def record(self, info: EngineInfo, pixels: int, seconds: float) -> bool:
        """One engine call of a real job. Returns whether it counted (big and long enough)."""
        if pixels < MIN_SAMPLE_PIXELS or seconds < MIN_SAMPLE_SECONDS:
            return False
        with self._lock:
            self._measured.setdefault(variant_key(info), deque(maxlen=SAMPLES_KEPT)).append(seconds / pixels)
        return True

    def samples(self, info: EngineInfo) -> int:
        """Measurements behind the estimate: calibration calls and counted real calls."""
        key = variant_key(info)
        with self._lock:
            return len(self._calibrated.get(key, ())) + len(self._measured.get(key, ()))

    def _calibrate(self, engine: TiledEngine) -> list[float]:
        """Time a few engine calls on random tiles, on the smallest side where a call lasts long
        enough to be measured (a fast model on a GPU may never: then the largest side counts)."""
        generator = torch.Generator().manual_seed(0)
        side = CALIBRATION_SIDE
        while True:
            batch = torch.rand(1, 3, side, side, generator=generator)
            engine.run(batch)  # warm-up: the first call at a size allocates
            timings = []
            for _ in range(CALIBRATION_CALLS):
                started = time.perf_counter()
                engine.run(batch)
                timings.append(time.perf_counter() - started)
            if min(timings) >= MIN_SAMPLE_SECONDS or side >= CALIBRATION_MAX_SIDE:
                return [seconds / (side * side) for seconds in timings]
            side *= 2

    def rate(self, engine: TiledEngine) -> float:
        """Seconds per input pixel: the upper quantile of recent real calls, or (until there are
        enough) of the calibration, with its margin. Blocking: call from a worker thread."""
        key = variant_key(engine.info)
        with self._lock:
            measured = sorted(self._measured.get(key, ()))
        if len(measured) >= CALIBRATION_CALLS:
            return _quantile(measured)
        with self._calibrating:
            if key not in self._calibrated:
                calibrated = self._calibrate(engine)
                with self._lock:
                    self._calibrated[key] = calibrated
        return _quantile(sorted(self._calibrated[key])) * CALIBRATION_MARGIN

    # ------------------------------------------------------------ estimating

    def estimate(self, engine: Engine, image: ImageInfo, options: UpscaleOptions) -> Estimate:
        """How long this job takes here. Blocking (it may calibrate): call from a worker thread."""
        scale = engine.info.resolve_scale(options.scale)
        if isinstance(engine, WholeImageEngine):
            # diffusion cost depends on the output size and the sampler: the engine measures it
            seconds = engine.estimate_seconds(image.width, image.height, scale)
            return Estimate(OVERHEAD_SECONDS + seconds, 0.0, image.width * image.height)
        plan = plan_upscale(engine.info, image, options)
        rate = self.rate(engine)
        return Estimate(OVERHEAD_SECONDS + rate * plan.work_pixels, rate * 1e6, plan.work_pixels)


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
