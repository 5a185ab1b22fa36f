"""The runner of engines that take the whole image (Tiling.INTERNAL and WHOLE_IMAGE): one
pass, alpha (which a restoration model cannot restore) resized bicubically, rows still handed
out in bands."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled
from .imageio import ImageInfo
from .plans import ProgressCallback, StopCheck, TimingCallback, UpscalePlan
from .tiled import to_tensor

if TYPE_CHECKING:
    from .engines import WholeImageEngine

BAND_ROWS = 256


def stopping(progress: ProgressCallback | None, should_stop: StopCheck | None) -> ProgressCallback | None:
    """A progress callback that also stops the run when asked: engines that tile internally (the
    samplers) report every step, so this is where they can be stopped."""
    if should_stop is None:
        return progress

    def report(done: int, total: int) -> None:
        if should_stop():
            raise Cancelled("the run was stopped")
        if progress:
            progress(done, total)

    return report


def run_whole_image(
    engine: WholeImageEngine,
    plan: UpscalePlan,
    options: Mapping[str, Any],
    read: Callable[[int, int, int, int], np.ndarray],
    image: ImageInfo,
    write_rows: Callable[[np.ndarray], None],
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    timings: TimingCallback | None = None,
) -> None:
    scale = plan.scale
    if should_stop and should_stop():
        raise Cancelled("the run was stopped")
    peak = image.peak
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    pixels = read(0, 0, image.width, image.height)
    colour = to_tensor([pixels[..., : image.colour_channels]], peak)
    started = time.perf_counter()
    rgb = engine.upscale(colour, scale, stopping(progress, should_stop), options)[0].clamp(0.0, 1.0)
    if timings:
        timings(plan.work_pixels, time.perf_counter() - started)
    planes = [rgb.mean(0, keepdim=True)] if image.colour_channels == 1 else [rgb]
    if image.has_alpha:
        alpha = to_tensor([pixels[..., -1:]], peak)[:, :1]
        size = (image.height * scale, image.width * scale)
        planes.append(F.interpolate(alpha, size=size, mode="bicubic", align_corners=False)[0].clamp(0.0, 1.0))
    out = torch.cat(planes).permute(1, 2, 0)
    for top in range(0, out.shape[0], BAND_ROWS):
        band = out[top : top + BAND_ROWS]
        write_rows(band.mul(peak).round_().numpy().astype(dtype))
