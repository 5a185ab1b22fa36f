"""Resampling without a network: nearest-neighbour at an integer scale, for pixel art.

A 24x24 sprite put through a super-resolution network comes back smeared: the network was
trained on photographs and drawings, and invents gradients between pixels that were meant to be
hard edges. Pixel art stays pixel art when every source pixel becomes an exact NxN block, which
is what this engine does (alpha and 16-bit samples included, bit for bit). It streams bands of
rows, so memory stays flat whatever the output size.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Precision
from ..errors import Cancelled
from ..imageio import ImageInfo
from ..kinds import EngineKind, ModelEntry
from ..plans import ProgressCallback, StopCheck, TimingCallback, UpscaleOptions, UpscalePlan
from ..tiling import MIN_TILE, plan_tiles
from . import Engine, EngineInfo, Faces, ReadWindow, Tiling, WriteRows

KIND_ID = "resample"
NEAREST = "nearest"
#: the largest integer scale offered: a 16x16 sprite becomes 1024x1024 at x64
MAX_SCALE = 64
DEFAULT_SCALE = 4
#: output pixels one band holds (the engine's whole working memory, beside the reader's band)
BAND_OUTPUT_PIXELS = 1 << 22
CALIBRATION_SIDE = 512

#: what stands in for a weights digest: the algorithm has no weights, so its provenance record
#: names this fixed description (a change of algorithm changes the digest)
ALGORITHM = b"satscale nearest-neighbour integer upscale v1: out[y, x] = in[y // s, x // s]"
ALGORITHM_SHA256 = hashlib.sha256(ALGORITHM).hexdigest()


def nearest_rows(rows: np.ndarray, scale: int) -> np.ndarray:
    """Every sample repeated `scale` times down and across (H x W x C -> H*s x W*s x C)."""
    return np.repeat(np.repeat(rows, scale, axis=0), scale, axis=1)


class NearestEngine(Engine):
    def __init__(self) -> None:
        self.info = EngineInfo(
            kind=KIND_ID,
            architecture="nearest-neighbour",
            native_scale=DEFAULT_SCALE,
            scales=tuple(range(1, MAX_SCALE + 1)),
            precision=Precision.FP32,
            precisions=(Precision.FP32,),
            device="cpu",
            parameters=0,
            weights_sha256=ALGORITHM_SHA256,
            price_class="light",
            tiling=Tiling.ROWS,
            bytes_per_output_pixel=0,  # a fixed band, not a share per output pixel
            faces=Faces.KEEPS,
            work_unit="output pixels written",
        )

    def plan(self, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
        scale = self.info.resolve_scale(options.scale)
        self.info.check_output_size(image.width, image.height, scale)
        self.info.parse_options(options.engine_options)
        one_tile = plan_tiles(image.width, image.height, max(image.width, image.height, MIN_TILE), 0)
        return UpscalePlan(scale, one_tile, 1, image.width * image.height * scale * scale)

    def _band_rows(self, width: int, scale: int) -> int:
        return max(1, BAND_OUTPUT_PIXELS // (width * scale * scale))

    def process(
        self,
        read: ReadWindow,
        image: ImageInfo,
        write_rows: WriteRows,
        options: UpscaleOptions,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        timings: TimingCallback | None = None,
    ) -> UpscalePlan:
        plan = self.plan(image, options)
        scale, width, height = plan.scale, image.width, image.height
        band = self._band_rows(width, scale)
        for top in range(0, height, band):
            if should_stop and should_stop():
                raise Cancelled("the run was stopped")
            rows = min(band, height - top)
            started = time.perf_counter()
            out = nearest_rows(read(0, top, width, rows), scale)
            if timings:
                timings(out.shape[0] * out.shape[1], time.perf_counter() - started)
            write_rows(out)
            if progress:
                progress(top + rows, height)
        return plan

    def calibrate(self) -> float:
        pixels = np.random.default_rng(0).integers(0, 256, (CALIBRATION_SIDE, CALIBRATION_SIDE, 3), dtype=np.uint8)
        started = time.perf_counter()
        out = nearest_rows(pixels, DEFAULT_SCALE)
        return (time.perf_counter() - started) / (out.shape[0] * out.shape[1])


class ResampleKind(EngineKind):
    """Resampling algorithms that need no weights (always there, nothing to drop in)."""

    id = KIND_ID
    title = "resampling (no network)"

    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        return [
            ModelEntry(
                NEAREST,
                self.id,
                "builtin",
                f"nearest-neighbour at an integer scale (x1 to x{MAX_SCALE}), no network",
                faces=Faces.KEEPS,
                note="Pixel art and sprites: every pixel becomes an exact block, edges stay hard.",
            )
        ]

    def weights(self, entry: ModelEntry, folder: Path) -> tuple[Path, str]:
        return Path(__file__), ALGORITHM_SHA256

    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ) -> NearestEngine:
        return NearestEngine()


KIND = ResampleKind()
