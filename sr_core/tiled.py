"""The runner of engines the core tiles (Tiling.EXTERNAL): reader -> tiles -> engine -> rows.

Memory is bounded by one band of output rows plus one batch of tiles, whatever
the image size. Scales below the network's own are made the way the official
ncnn x2/x3 models do it: the native output is downscaled bicubically with
antialiasing off (per window, on a pixel grid aligned with the whole image).
Alpha is upscaled by the network too (as grey), as the official x4plus code does; a window
whose alpha is constant skips that pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled, ParameterError
from .imageio import ImageInfo
from .plans import ProgressCallback, StopCheck, TimingCallback, UpscaleOptions, UpscalePlan
from .tiling import (
    MAX_TILE_CPU,
    MAX_TILE_CUDA,
    Tile,
    auto_tile_size,
    batch_size,
    default_memory_budget,
    iter_batches,
    plan_tiles,
)

if TYPE_CHECKING:
    from .engines import EngineInfo, TiledEngine

#: calibration: random tiles of this side, grown until one call is long enough to time
CALIBRATION_SIDE = 64
CALIBRATION_MAX_SIDE = 256
CALIBRATION_CALLS = 3
#: a call shorter than this is timer and scheduler noise
MEASURABLE_SECONDS = 0.02


def plan_tiled(info: EngineInfo, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
    """The tile plan of a tiled engine for this image (scale and size checked first)."""
    scale = info.resolve_scale(options.scale)
    info.check_output_size(image.width, image.height, scale)
    context = info.context if options.context is None else options.context
    budget = options.memory_budget or default_memory_budget(info.device)
    on_cuda = info.device.startswith("cuda")
    # a band of output rows is held until written: keep it to a quarter of the budget
    band_row_bytes = scale * scale * image.width * image.channels * (image.bit_depth // 8)
    cap = min(MAX_TILE_CUDA if on_cuda else MAX_TILE_CPU, budget // 4 // band_row_bytes)
    tile = options.tile or auto_tile_size(
        info.bytes_per_pixel, context, budget=budget, cap=cap, multiple_of=info.multiple_of
    )
    plan = plan_tiles(image.width, image.height, tile, context)
    # an image with alpha sends up to two windows per tile through the network
    passes = 2 if image.has_alpha else 1
    batch = options.batch or max(1, batch_size(info.bytes_per_pixel, plan.window_size, budget) // passes)
    if batch < 1:
        raise ParameterError("batch size must be at least 1")
    window_w, window_h = plan.window_size
    return UpscalePlan(scale, plan, batch, plan.count * window_w * window_h * passes)


def resize_to_scale(output: torch.Tensor, native: int, scale: int) -> torch.Tensor:
    """Native-scale network output (NCHW) -> `scale`, as ncnn's x2/x3 models do it:
    bicubic, antialiasing off. Unclamped; callers clamp after."""
    if scale == native:
        return output
    height, width = output.shape[-2] // native * scale, output.shape[-1] // native * scale
    return F.interpolate(output, size=(height, width), mode="bicubic", align_corners=False, antialias=False)


def to_tensor(windows: list[np.ndarray], peak: float) -> torch.Tensor:
    """(H, W, C) integer windows -> NCHW float32 in [0, 1], grey replicated to RGB."""
    rgb = [w if w.shape[2] == 3 else np.repeat(w, 3, axis=2) for w in windows]
    return torch.from_numpy(np.stack(rgb).astype(np.float32)).div_(peak).permute(0, 3, 1, 2)


class _BatchRunner:
    def __init__(
        self, engine: TiledEngine, plan: UpscalePlan, image: ImageInfo, timings: TimingCallback | None = None
    ) -> None:
        self.engine = engine
        self.timings = timings
        self.plan = plan
        self.image = image
        self.peak = image.peak
        self.dtype = np.uint16 if image.bit_depth == 16 else np.uint8

    def _quantise(self, values: torch.Tensor) -> np.ndarray:
        return values.mul(self.peak).round_().numpy().astype(self.dtype)

    def run_batch(self, tiles: tuple[Tile, ...], windows: list[np.ndarray]) -> list[np.ndarray]:
        """Upscale windows and return each tile's core, (H, W, C) integers."""
        info = self.image
        colour = [w[..., : info.colour_channels] for w in windows]
        alpha_needed = [info.has_alpha and w[..., -1].min() != w[..., -1].max() for w in windows]
        inputs = colour + [w[..., -1:] for w, needed in zip(windows, alpha_needed, strict=True) if needed]
        batch = to_tensor(inputs, self.peak)
        started = time.perf_counter()
        native = self.engine.run(batch)
        if self.timings:
            self.timings(batch.shape[0] * batch.shape[2] * batch.shape[3], time.perf_counter() - started)
        outputs = resize_to_scale(native, self.engine.info.native_scale, self.plan.scale).clamp_(0.0, 1.0)
        scale = self.plan.scale
        cores = []
        alpha_index = len(windows)
        for index, (tile, window) in enumerate(zip(tiles, windows, strict=True)):
            top = (tile.y.start - tile.y.window_start) * scale
            left = (tile.x.start - tile.x.window_start) * scale
            height = (tile.y.stop - tile.y.start) * scale
            width = (tile.x.stop - tile.x.start) * scale
            rgb = outputs[index, :, top : top + height, left : left + width]
            planes = [rgb.mean(0, keepdim=True)] if info.colour_channels == 1 else [rgb]
            if info.has_alpha:
                if alpha_needed[index]:
                    planes.append(
                        outputs[alpha_index, :, top : top + height, left : left + width].mean(0, keepdim=True)
                    )
                    alpha_index += 1
                else:
                    planes.append(torch.full((1, height, width), float(window[0, 0, -1]) / self.peak))
            cores.append(self._quantise(torch.cat(planes).permute(1, 2, 0)))
        return cores


def run_tiled(
    engine: TiledEngine,
    plan: UpscalePlan,
    read: Callable[[int, int, int, int], np.ndarray],
    image: ImageInfo,
    write_rows: Callable[[np.ndarray], None],
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: TimingCallback | None = None,
) -> UpscalePlan:
    """Drive the engine over the image tile by tile, handing finished rows to `write_rows`.
    `should_stop` is asked before every batch: a stopped run raises `Cancelled` within one batch."""
    runner = _BatchRunner(engine, plan, image, timings)
    scale = plan.scale
    done = 0
    total = plan.tiles.count
    out_width = image.width * scale
    for row in plan.tiles.rows:
        band = np.empty(((row.y.stop - row.y.start) * scale, out_width, image.channels), dtype=runner.dtype)
        for tiles in iter_batches(row, plan.batch):
            if should_stop and should_stop():
                raise Cancelled(f"the run was stopped after {done} of {total} tiles")
            windows = [
                read(
                    t.x.window_start,
                    t.y.window_start,
                    t.x.window_stop - t.x.window_start,
                    t.y.window_stop - t.y.window_start,
                )
                for t in tiles
            ]
            for tile, core in zip(tiles, runner.run_batch(tiles, windows), strict=True):
                band[:, tile.x.start * scale : tile.x.stop * scale] = core
            done += len(tiles)
            if progress:
                progress(done, total)
        write_rows(band)
    return plan


def calibrate_tiled(engine: TiledEngine) -> float:
    """Seconds per input pixel: a few engine calls on random tiles, on the smallest side where a
    call lasts long enough to be measured (a fast model on a GPU may never: the largest counts)."""
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
        if min(timings) >= MEASURABLE_SECONDS or side >= CALIBRATION_MAX_SIDE:
            return sorted(timings)[-1] / (side * side)
        side *= 2
