"""How long a job will take here, so the server never sells what it cannot deliver in time.

A paid job must finish within the hold budget, or the payment is returned and the
buyer waited for nothing. Each model's speed on this machine is measured once with a
small calibration run, then refined from every finished job (exponential average).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from sr_core.engines import Engine, TiledEngine, WholeImageEngine
from sr_core.upscale import UpscaleOptions, upscale_array

CALIBRATION_SIDE = 64
SMOOTHING = 0.3
#: fixed cost per job on top of the pixels (decode, encode, hashing)
OVERHEAD_SECONDS = 0.5


@dataclass(frozen=True)
class Estimate:
    seconds: float
    seconds_per_megapixel: float  # of input


class ThroughputMeter:
    def __init__(self) -> None:
        self._seconds_per_pixel: dict[str, float] = {}
        self._lock = threading.Lock()

    def _calibrate(self, engine: TiledEngine) -> float:
        pixels = np.random.default_rng(0).integers(0, 256, (CALIBRATION_SIDE, CALIBRATION_SIDE, 3), dtype=np.uint8)
        upscale_array(engine, pixels, UpscaleOptions(tile=CALIBRATION_SIDE))  # warm-up: first call allocates
        started = time.perf_counter()
        upscale_array(engine, pixels, UpscaleOptions(tile=CALIBRATION_SIDE))
        return (time.perf_counter() - started) / CALIBRATION_SIDE**2

    def estimate(self, model: str, engine: Engine, width: int, height: int, scale: int | None = None) -> Estimate:
        """Blocking (it may calibrate): call from a worker thread."""
        if isinstance(engine, WholeImageEngine):
            # diffusion cost depends on the output size and the sampler: the engine measures it
            seconds = engine.estimate_seconds(width, height, scale or engine.info.native_scale)
            return Estimate(OVERHEAD_SECONDS + seconds, seconds / max(1, width * height) * 1e6)
        with self._lock:
            rate = self._seconds_per_pixel.get(model)
        if rate is None:
            rate = self._calibrate(engine)
            with self._lock:
                self._seconds_per_pixel.setdefault(model, rate)
        return Estimate(OVERHEAD_SECONDS + rate * width * height, rate * 1e6)

    def observe(self, model: str, width: int, height: int, seconds: float) -> None:
        """Fold a finished job's real duration into the model's rate."""
        measured = max(0.0, seconds - OVERHEAD_SECONDS) / max(1, width * height)
        with self._lock:
            previous = self._seconds_per_pixel.get(model)
            self._seconds_per_pixel[model] = (
                measured if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * measured
            )
