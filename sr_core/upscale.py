"""Upscaling a file or an array with any engine: the image is read, the engine's own runner
(`Engine.process`: tiled, or whole-image) produces rows, and rows stream to the output file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engines import Engine, EngineInfo
from .errors import ParameterError
from .imageio import ImageInfo, ImageLimits, ImageReader, OutputOptions, OutputSpec, StreamingWriter
from .plans import ProgressCallback, StopCheck, TimingCallback, UpscaleOptions, UpscalePlan
from .tiled import resize_to_scale

__all__ = ["UpscaleOptions", "UpscalePlan", "UpscaleResult", "resize_to_scale", "upscale_array", "upscale_file"]


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


def output_spec(
    image: ImageInfo,
    scale: int,
    exif: bytes | None = None,
    resolution: tuple[float, float] | None = None,
    xmp: bytes | None = None,
) -> OutputSpec:
    return OutputSpec(
        width=image.width * scale,
        height=image.height * scale,
        channels=image.channels,
        bit_depth=image.bit_depth,
        icc_profile=image.icc_profile,
        exif=exif,
        resolution=resolution,
        xmp=xmp,
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
    scale = engine.plan(info, options).scale  # scale, size and options refused before any output exists
    spec = output_spec(info, scale, reader.exif, reader.resolution)
    with StreamingWriter(output, spec, output_options) as writer:
        plan = engine.process(reader.read, info, writer.write_rows, options, progress, should_stop, timings)
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
    engine.process(
        lambda x, y, w, h: pixels[y : y + h, x : x + w],
        info,
        rows.append,
        options or UpscaleOptions(),
        progress,
        should_stop,
        timings,
    )
    return np.concatenate(rows, axis=0)
