"""The tiled upscaling pipeline: reader -> tiles -> engine -> rows -> writer.

Memory is bounded by one band of output rows plus one batch of tiles, whatever
the image size. Scales below the network's own are made the way the official
ncnn x2/x3 models do it: the native output is downscaled bicubically with
antialiasing off (per window, on a pixel grid aligned with the whole image).
Alpha is upscaled by the network too (as grey), as Real-ESRGAN does; a window
whose alpha is constant skips that pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .engines import Engine, EngineInfo, TiledEngine, WholeImageEngine
from .errors import Cancelled, ParameterError
from .imageio import ImageInfo, ImageLimits, ImageReader, OutputOptions, OutputSpec, StreamingWriter
from .tiling import (
    MAX_TILE_CPU,
    MAX_TILE_CUDA,
    MIN_TILE,
    Tile,
    TilePlan,
    auto_tile_size,
    batch_size,
    default_memory_budget,
    iter_batches,
    plan_tiles,
)

#: called after every batch with (tiles done, tiles total)
ProgressCallback = Callable[[int, int], None]
#: asked before every batch of tiles (and every sampler step): True stops the run with `Cancelled`
StopCheck = Callable[[], bool]
#: told after every engine call of a tiled engine: (input pixels in the batch, seconds it took)
TimingCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class UpscaleOptions:
    scale: int | None = None  # None: the network's native scale
    tile: int | None = None  # core tile side in input pixels; None: from the memory budget
    context: int | None = None  # None: what the engine says it needs
    batch: int | None = None  # tiles per forward pass; None: from the memory budget
    memory_budget: int | None = None  # bytes for one batch of tiles; None: per device default


@dataclass(frozen=True)
class UpscaleResult:
    input: ImageInfo
    output_path: Path | None
    width: int
    height: int
    scale: int
    tiles: int
    tile: int
    batch: int
    seconds: float
    engine: EngineInfo


@dataclass(frozen=True)
class UpscalePlan:
    """How an image will be cut for a tiled engine: what the pipeline runs and what a time
    estimate counts."""

    scale: int
    tiles: TilePlan
    batch: int
    #: input pixels the engine will process: every window (core + context), twice where an alpha
    #: plane needs its own pass
    work_pixels: int


def plan_upscale(info: EngineInfo, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
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


def _to_tensor(windows: list[np.ndarray], peak: float) -> torch.Tensor:
    """(H, W, C) integer windows -> NCHW float32 in [0, 1], grey replicated to RGB."""
    rgb = [w if w.shape[2] == 3 else np.repeat(w, 3, axis=2) for w in windows]
    return torch.from_numpy(np.stack(rgb).astype(np.float32)).div_(peak).permute(0, 3, 1, 2)


class _Runner:
    def __init__(
        self, engine: TiledEngine, plan: UpscalePlan, image: ImageInfo, timings: TimingCallback | None = None
    ) -> None:
        self.engine = engine
        self.timings = timings
        self.plan = plan
        self.image = image
        self.peak = 65535.0 if image.bit_depth == 16 else 255.0
        self.dtype = np.uint16 if image.bit_depth == 16 else np.uint8

    def _quantise(self, values: torch.Tensor) -> np.ndarray:
        return values.mul(self.peak).round_().numpy().astype(self.dtype)

    def run_batch(self, tiles: tuple[Tile, ...], windows: list[np.ndarray]) -> list[np.ndarray]:
        """Upscale windows and return each tile's core, (H, W, C) integers."""
        info = self.image
        colour = [w[..., : info.colour_channels] for w in windows]
        alpha_needed = [info.has_alpha and w[..., -1].min() != w[..., -1].max() for w in windows]
        inputs = colour + [w[..., -1:] for w, needed in zip(windows, alpha_needed, strict=True) if needed]
        batch = _to_tensor(inputs, self.peak)
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


WHOLE_IMAGE_BAND_ROWS = 256


def _stopping(progress: ProgressCallback | None, should_stop: StopCheck | None) -> ProgressCallback | None:
    """A progress callback that also stops the run when asked: engines that tile internally (the
    diffusion samplers) report every step, so this is where they can be stopped."""
    if should_stop is None:
        return progress

    def report(done: int, total: int) -> None:
        if should_stop():
            raise Cancelled("the run was stopped")
        if progress:
            progress(done, total)

    return report


def _run_whole_image(
    engine: WholeImageEngine,
    read: Callable[[int, int, int, int], np.ndarray],
    image: ImageInfo,
    write_rows: Callable[[np.ndarray], None],
    options: UpscaleOptions,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> UpscalePlan:
    """One pass over the whole image (the engine tiles internally); alpha, which a diffusion
    model cannot restore, is resized bicubically. Rows are still handed out in bands."""
    info = engine.info
    scale = info.resolve_scale(options.scale)
    info.check_output_size(image.width, image.height, scale)
    if should_stop and should_stop():
        raise Cancelled("the run was stopped")
    peak = 65535.0 if image.bit_depth == 16 else 255.0
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    pixels = read(0, 0, image.width, image.height)
    colour = _to_tensor([pixels[..., : image.colour_channels]], peak)
    rgb = engine.upscale(colour, scale, _stopping(progress, should_stop))[0].clamp(0.0, 1.0)
    planes = [rgb.mean(0, keepdim=True)] if image.colour_channels == 1 else [rgb]
    if image.has_alpha:
        alpha = _to_tensor([pixels[..., -1:]], peak)[:, :1]
        size = (image.height * scale, image.width * scale)
        planes.append(F.interpolate(alpha, size=size, mode="bicubic", align_corners=False)[0].clamp(0.0, 1.0))
    out = torch.cat(planes).permute(1, 2, 0)
    for top in range(0, out.shape[0], WHOLE_IMAGE_BAND_ROWS):
        band = out[top : top + WHOLE_IMAGE_BAND_ROWS]
        write_rows(band.mul(peak).round_().numpy().astype(dtype))
    one_tile = plan_tiles(image.width, image.height, max(image.width, image.height, MIN_TILE), 0)
    return UpscalePlan(scale, one_tile, 1, image.width * image.height)


def run_tiles(
    engine: Engine,
    read: Callable[[int, int, int, int], np.ndarray],
    image: ImageInfo,
    write_rows: Callable[[np.ndarray], None],
    options: UpscaleOptions,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: TimingCallback | None = None,
) -> UpscalePlan:
    """Drive the engine over the image tile by tile, handing finished rows to `write_rows`.
    `should_stop` is asked before every batch: a stopped run raises `Cancelled` within one batch."""
    if isinstance(engine, WholeImageEngine):
        return _run_whole_image(engine, read, image, write_rows, options, progress, should_stop)
    plan = plan_upscale(engine.info, image, options)
    runner = _Runner(engine, plan, image, timings)
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


def output_spec(
    image: ImageInfo, scale: int, exif: bytes | None = None, resolution: tuple[float, float] | None = None
) -> OutputSpec:
    return OutputSpec(
        width=image.width * scale,
        height=image.height * scale,
        channels=image.channels,
        bit_depth=image.bit_depth,
        icc_profile=image.icc_profile,
        exif=exif,
        resolution=resolution,
    )


def upscale_file(
    engine: Engine,
    source: Path | bytes,
    output: Path,
    options: UpscaleOptions | None = None,
    output_options: OutputOptions | None = None,
    limits: ImageLimits | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: TimingCallback | None = None,
) -> UpscaleResult:
    """Upscale an image file (or encoded bytes) into `output`, streaming rows to disk. A run that
    fails or is stopped (`should_stop`, asked between tiles) leaves no output and no staging file."""
    options = options or UpscaleOptions()
    started = time.perf_counter()
    reader = ImageReader(source, limits, source=str(source) if isinstance(source, Path) else "image")
    info = reader.info
    scale = engine.info.resolve_scale(options.scale)
    spec = output_spec(info, scale, reader.exif, reader.resolution)
    with StreamingWriter(output, spec, output_options) as writer:
        plan = run_tiles(engine, reader.read, info, writer.write_rows, options, progress, should_stop, timings)
        writer.close()
    return UpscaleResult(
        input=info,
        output_path=output,
        width=spec.width,
        height=spec.height,
        scale=plan.scale,
        tiles=plan.tiles.count,
        tile=plan.tiles.tile,
        batch=plan.batch,
        seconds=time.perf_counter() - started,
        engine=engine.info,
    )


def upscale_array(
    engine: Engine,
    pixels: np.ndarray,
    options: UpscaleOptions | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: TimingCallback | None = None,
) -> np.ndarray:
    """In-memory variant: (H, W, C) uint8/uint16 array in, upscaled array out."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.shape[2] not in (1, 2, 3, 4):
        raise ParameterError("pixels must be an (H, W, C) uint8 or uint16 array with 1 to 4 channels")
    height, width, channels = pixels.shape
    info = ImageInfo(
        format="array",
        width=width,
        height=height,
        channels=channels,
        has_alpha=channels in (2, 4),
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        icc_profile=None,
        orientation=1,
        byte_size=pixels.nbytes,
    )
    rows: list[np.ndarray] = []
    run_tiles(
        engine,
        lambda x, y, w, h: pixels[y : y + h, x : x + w],
        info,
        rows.append,
        options or UpscaleOptions(),
        progress,
        should_stop,
        timings,
    )
    return np.concatenate(rows, axis=0)
