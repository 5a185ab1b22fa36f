"""Upscaling engines. An engine describes itself with `EngineInfo`; callers read that
description (scales, precision, tiling, memory, cost, faces, options) and call the same three
methods on every engine (`plan`, `process`, `calibrate`): they never branch on what kind of
engine it is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from ..device import Precision
from ..errors import ParameterError
from ..imageio import ImageInfo
from ..plans import ProgressCallback, StopCheck, TimingCallback, UpscaleOptions, UpscalePlan
from ..tiled import calibrate_tiled, plan_tiled, run_tiled
from ..tiling import MIN_TILE, plan_tiles
from ..whole_image import run_whole_image
from .options import Option, parse_values

# Price classes of feed-forward networks by multiply-accumulates per input pixel
LIGHT_MACS_PER_PIXEL = 5_000_000
HEAVY_MACS_PER_PIXEL = 100_000_000

ReadWindow = Callable[[int, int, int, int], np.ndarray]
WriteRows = Callable[[np.ndarray], None]


def spell_scales(scales: tuple[int, ...] | list[int], separator: str = ", ") -> str:
    """Scales as people read them: runs of three or more as a range ("x1-x64"), others listed."""
    runs: list[list[int]] = []
    for scale in sorted(scales):
        if runs and scale == runs[-1][-1] + 1:
            runs[-1].append(scale)
        else:
            runs.append([scale])
    parts = [f"x{run[0]}-x{run[-1]}" if len(run) > 2 else separator.join(f"x{s}" for s in run) for run in runs]
    return separator.join(parts)


def price_class_for(macs_per_pixel: int) -> str:
    """The price class of a feed-forward network, by its work per input pixel."""
    if macs_per_pixel < LIGHT_MACS_PER_PIXEL:
        return "light"
    return "standard" if macs_per_pixel < HEAVY_MACS_PER_PIXEL else "heavy"


class Tiling(StrEnum):
    #: the core cuts the image into tiles with context; any tile may run anywhere, in any order
    EXTERNAL = "external"
    #: the engine takes the whole image and tiles inside (its tiles share noise and guidance)
    INTERNAL = "internal"
    #: the engine takes the whole image at once and does not tile (memory grows with the image)
    WHOLE_IMAGE = "whole-image"
    #: the engine reads only the regions it works on (faces) and streams the rest through
    REGIONS = "regions"
    #: the engine streams bands of rows through (no network: memory is one band)
    ROWS = "rows"


class Faces(StrEnum):
    """What an engine does to people's faces."""

    KEEPS = "keeps"  # keeps them as they are: safe for photographs of people
    REPAINTS = "repaints"  # repaints them in its own style (illustration models): not for photos
    MAY_INVENT = "may-invent"  # rebuilds missing detail and can invent it, faces included
    UNKNOWN = "unknown"  # a checkpoint nobody described
    RESTORES = "restores"  # a face model: finds faces and restores them (the face stage)


FACE_NOTES = {
    Faces.KEEPS: "Keeps faces as they are: the safe choice for pictures of people.",
    Faces.REPAINTS: "Repaints faces in drawing style: not for photos of people.",
    Faces.MAY_INVENT: "Rebuilds detail the input lacks and can invent it, faces included: check people's faces.",
    Faces.UNKNOWN: "Not described: try it on a picture of a person before relying on it for faces.",
    Faces.RESTORES: "Restores the faces it finds (a face stage, after the upscale); the rest of the image is kept.",
}


@dataclass(frozen=True)
class Survey:
    """What an engine priced per thing it finds (EngineInfo.price_unit) found in an image."""

    units: int  # how many (faces): the job is priced for this many
    #: the job's options bound to that count, so the run does no more than was paid for
    options: Mapping[str, Any]


@dataclass(frozen=True)
class EngineInfo:
    kind: str  # the engine kind that loaded it (sr_core.kinds)
    architecture: str  # detected architecture, e.g. "ESRGAN", "Compact"
    native_scale: int  # the network's own upscaling factor
    scales: tuple[int, ...]  # output scales offered (1: restoration at the input size)
    precision: Precision  # the precision this engine instance runs in
    precisions: tuple[Precision, ...]  # precisions the model supports on this device
    device: str
    parameters: int
    weights_sha256: str
    price_class: str  # light, standard, heavy (feed-forward by work per pixel) or diffusion
    tiling: Tiling
    #: peak bytes a run holds per output pixel beyond the weights (tiled: one batch's share)
    bytes_per_output_pixel: int
    faces: Faces = Faces.UNKNOWN
    #: options a request may set for its own run (preset, steps, seed, prompt...), with the
    #: server's defaults
    job_options: tuple[Option, ...] = ()
    context: int = 0  # input pixels of context a tile needs on each side for seamless output
    multiple_of: int = 1  # tile sides are padded up to a multiple of this
    bytes_per_pixel: int = 0  # peak activation bytes per input pixel of a tile, in this precision
    macs_per_pixel: int = 0  # multiply-accumulates per input pixel at the native scale
    #: largest output (pixels) the engine accepts; None: bounded only by the image limits
    max_output_pixels: int | None = None
    #: True when the engine is too large to load a second time in another precision per request
    #: (a multi-GB diffusion model): it runs in the precision it was loaded in
    precision_fixed: bool = False
    #: what `work_pixels` of a plan counts, for people reading an estimate
    work_unit: str = "input pixels through the network"
    #: what the price counts: output megapixels, or things the engine finds (its `survey`)
    price_unit: str = "megapixel"
    #: a notice users must see before using the model (its weights' licence)
    licence_note: str | None = None

    @property
    def counts_in_image(self) -> bool:
        """Priced per thing it finds (its `survey` counts them), not by output size."""
        return self.price_unit != "megapixel"

    def resolve_scale(self, scale: int | None) -> int:
        """The scale a request gets: None means the model's own; anything the model does not offer
        (0 and negatives included) is refused. The one scale rule: pricing, admission, the
        pipeline and the CLI all call it."""
        if scale is None:
            return self.native_scale
        if isinstance(scale, bool) or not isinstance(scale, int) or scale not in self.scales:
            offered = spell_scales(self.scales)
            named = f"x{scale}" if isinstance(scale, int) else repr(scale)
            raise ParameterError(f"scale {named} is not offered by this model (it offers {offered})")
        return scale

    def check_output_size(self, width: int, height: int, scale: int) -> None:
        """Refuse an output larger than the engine takes (before any work or invoice)."""
        if self.max_output_pixels is not None and width * scale * height * scale > self.max_output_pixels:
            raise ParameterError(
                f"output {width * scale}x{height * scale} is larger than this model's "
                f"{self.max_output_pixels / 1e6:.1f} MP limit: choose a smaller scale or input"
            )

    def parse_options(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """A request's values for this engine's own options, checked (unknown names refused)."""
        return parse_values(self.job_options, values, "this model")

    @property
    def takes_prompt(self) -> bool:
        return any(option.name == "prompt" for option in self.job_options)

    def describe(self) -> dict:
        """JSON-ready description (the model listing, the API, the CLI)."""
        return {
            "kind": self.kind,
            "architecture": self.architecture,
            "native_scale": self.native_scale,
            "scales": list(self.scales),
            "precision": self.precision.value,
            "precisions": [p.value for p in self.precisions],
            "parameters": self.parameters,
            "price_class": self.price_class,
            "tiling": self.tiling.value,
            "bytes_per_output_pixel": self.bytes_per_output_pixel,
            "max_output_pixels": self.max_output_pixels,
            "faces": self.faces.value,
            "takes_prompt": self.takes_prompt,
            "options": [option.describe() for option in self.job_options],
            "weights_sha256": self.weights_sha256,
            "price_unit": self.price_unit,
        } | ({"licence": self.licence_note} if self.licence_note else {})


class Engine(ABC):
    """What every engine offers, whatever its kind."""

    info: EngineInfo

    @abstractmethod
    def plan(self, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
        """How a run on this image goes (scale, size and options checked first): what the
        runner does and what a time estimate counts."""

    @abstractmethod
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
        """Upscale the image read through `read(x, y, w, h)`, handing finished output rows, top to
        bottom, to `write_rows`. `should_stop` is asked between pieces of work: a stopped run
        raises `Cancelled`. `timings` is told (work units, seconds) of each measured piece."""

    @abstractmethod
    def calibrate(self) -> float:
        """Seconds per work unit here, measured now on synthetic input (before any real run)."""

    def calibrate_streaming(self) -> float:
        """Seconds per streamed pixel (UpscalePlan.streamed_pixels) here, measured now; asked
        only of an engine whose plans stream pixels besides their work."""
        return 0.0

    def survey(
        self, read: ReadWindow | None, image: ImageInfo, options: UpscaleOptions, magnified: int = 1
    ) -> Survey | None:
        """An engine priced per thing it finds (EngineInfo.price_unit) counts them in the image:
        at intake, on the job's input, `magnified` being what the stages before it multiply its
        size by; `read` None (a quote without the image): the most it may find. None: the
        engine is priced by output size and counts nothing."""
        return None


class TiledEngine(Engine):
    """A feed-forward image-to-image network that can run on tiles independently."""

    @abstractmethod
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Upscale a batch: NCHW float32 RGB in [0, 1] on the CPU -> NCHW float32 at
        the native scale on the CPU, not clamped (callers clamp after any resize)."""

    def plan(self, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
        self.info.parse_options(options.engine_options)
        return plan_tiled(self.info, image, options)

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
        return run_tiled(self, self.plan(image, options), read, image, write_rows, progress, should_stop, timings)

    def calibrate(self) -> float:
        return calibrate_tiled(self)


class WholeImageEngine(Engine):
    """An engine that restores the whole image at once (and may tile internally: the diffusion
    engines' tiles share noise, statistics and guidance, so they cannot be cut apart)."""

    @abstractmethod
    def upscale(
        self,
        image: torch.Tensor,
        scale: int,
        progress: ProgressCallback | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """1x3xHxW float32 RGB in [0, 1] on the CPU -> 1x3x(H*scale)x(W*scale), same terms;
        `options`: per-job values of `info.job_options`."""

    @abstractmethod
    def work(self, width: int, height: int, scale: int, options: Mapping[str, Any]) -> int:
        """Work units `upscale` costs for an input of this size (what `calibrate` times one of)."""

    def plan(self, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
        scale = self.info.resolve_scale(options.scale)
        self.info.check_output_size(image.width, image.height, scale)
        chosen = self.info.parse_options(options.engine_options)
        one_tile = plan_tiles(image.width, image.height, max(image.width, image.height, MIN_TILE), 0)
        return UpscalePlan(scale, one_tile, 1, self.work(image.width, image.height, scale, chosen))

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
        chosen = self.info.parse_options(options.engine_options)
        run_whole_image(self, plan, chosen, read, image, write_rows, progress, should_stop, timings)
        return plan
