"""Upscaling engines. An engine describes itself with `EngineInfo`; callers read that
description (scales, precision, memory, cost) and never branch on architecture names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..device import Precision
from ..errors import ParameterError

# Price classes by multiply-accumulates per input pixel (see EngineInfo.price_class).
LIGHT_MACS_PER_PIXEL = 5_000_000
HEAVY_MACS_PER_PIXEL = 100_000_000
#: engine families that sample a diffusion model: priced in their own (higher) class
DIFFUSION_FAMILIES = frozenset({"supir", "ccsr"})


@dataclass(frozen=True)
class EngineInfo:
    family: str  # engine family, e.g. "esrgan" (feed-forward models via spandrel)
    architecture: str  # detected architecture, e.g. "ESRGAN", "Compact"
    native_scale: int  # the network's own upscaling factor
    scales: tuple[int, ...]  # output scales offered (smaller ones resize the native output)
    precision: Precision  # the precision this engine instance runs in
    precisions: tuple[Precision, ...]  # precisions the model supports on this device
    device: str
    parameters: int
    context: int  # input pixels of context a tile needs on each side for seamless output
    multiple_of: int  # tile sides are padded up to a multiple of this
    bytes_per_pixel: int  # peak activation bytes per input pixel, in this precision
    macs_per_pixel: int  # multiply-accumulates per input pixel at the native scale
    weights_sha256: str
    #: largest output (pixels) the engine accepts; None: bounded only by the image limits
    max_output_pixels: int | None = None
    #: True when the engine is too large to load a second time in another precision per request
    #: (a multi-GB diffusion model): it runs in the precision it was loaded in
    precision_fixed: bool = False

    def resolve_scale(self, scale: int | None) -> int:
        """The scale a request gets: None means the model's own; anything the model does not offer
        (0 and negatives included) is refused. The one scale rule: pricing, admission, the
        pipeline and the CLI all call it."""
        if scale is None:
            return self.native_scale
        if isinstance(scale, bool) or not isinstance(scale, int) or scale not in self.scales:
            offered = ", ".join(f"x{s}" for s in self.scales)
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

    @property
    def whole_image(self) -> bool:
        """True for engines that take the whole image and tile internally (diffusion)."""
        return self.family in DIFFUSION_FAMILIES

    @property
    def price_class(self) -> str:
        if self.family in DIFFUSION_FAMILIES:
            return "diffusion"
        if self.macs_per_pixel < LIGHT_MACS_PER_PIXEL:
            return "light"
        return "standard" if self.macs_per_pixel < HEAVY_MACS_PER_PIXEL else "heavy"


class TiledEngine(ABC):
    """A feed-forward image-to-image network that can run on tiles independently."""

    info: EngineInfo

    @abstractmethod
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Upscale a batch: NCHW float32 RGB in [0, 1] on the CPU -> NCHW float32 at
        the native scale on the CPU, not clamped (callers clamp after any resize)."""


class WholeImageEngine(ABC):
    """An engine that restores the whole image at once and tiles internally (the diffusion
    engines: their tiles share noise, statistics and guidance, so they cannot be cut apart)."""

    info: EngineInfo

    @abstractmethod
    def upscale(
        self,
        image: torch.Tensor,
        scale: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """1x3xHxW float32 RGB in [0, 1] on the CPU -> 1x3x(H*scale)x(W*scale), same terms."""

    @abstractmethod
    def estimate_seconds(self, width: int, height: int, scale: int) -> float:
        """How long `upscale` takes here for an input of this size (measured, not guessed)."""


Engine = TiledEngine | WholeImageEngine
