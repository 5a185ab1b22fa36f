"""CCSR v1 restoration end to end (inference_ccsr.py): resize the input to the target size (short
side at least 512, sides floored to multiples of 64), encode it with the condition encoder, run
the truncated sampler (tiled when the image is larger than one tile), decode, correct colours
toward the input (AdaIN by default, as the official script), resize to the exact target size."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..diffusion.colorfix import adain_color_fix, wavelet_color_fix
from ..diffusion.offload import stage_on_device
from ..diffusion.tiled_vae import tiled_decode, tiled_encode
from .model import CcsrModel
from .sampling import CcsrV1Settings, ccsr_v1_sample, ccsr_v1_sample_tiled

StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CcsrOptions:
    sampler: CcsrV1Settings = field(default_factory=CcsrV1Settings)
    prompt: str = ""  # the official script conditions on the empty prompt
    negative: str = ""
    strength: float = 1.0  # control scale for all 13 ControlNet outputs
    color_fix: Literal["adain", "wavelet", "none"] = "adain"
    seed: int = 0
    min_side: int = 512
    unit: int = 64
    tile: int = 512  # image pixels per sampler tile (official --tile_size)
    tile_stride: int = 256
    vae_encoder_tile: int = 512
    vae_decoder_tile: int = 64


def working_size(width: int, height: int, scale: float, min_side: int, unit: int) -> tuple[int, int]:
    """Official arithmetic: ceil(side * scale); short side up to `min_side` (ceil); floor to `unit`."""
    w, h = math.ceil(width * scale), math.ceil(height * scale)
    if min(w, h) < min_side:
        r = min_side / min(w, h)
        w, h = math.ceil(w * r), math.ceil(h * r)
    return max(unit, w // unit * unit), max(unit, h // unit * unit)


class CcsrPipeline:
    def __init__(self, model: CcsrModel, device: torch.device | str = "cpu", offload: bool = False) -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.offload = offload
        if not offload:
            self.model.to(self.device)
        self._contexts: dict[str, torch.Tensor] = {}

    def _context(self, prompt: str) -> torch.Tensor:
        """Text context, computed once per prompt (the default empty prompt: once per model)."""
        if prompt not in self._contexts:
            with stage_on_device(self.device, self.offload, self.model.text):
                self._contexts[prompt] = self.model.text([prompt]).to("cpu")
        return self._contexts[prompt].to(self.device)

    @torch.no_grad()
    def restore(
        self,
        image: torch.Tensor,
        scale: float,
        options: CcsrOptions | None = None,
        progress: StageProgress | None = None,
    ) -> torch.Tensor:
        """image: 1x3xHxW RGB in [0, 1] -> 1x3x(H*scale)x(W*scale) in [0, 1] (float32, CPU)."""
        options = options or CcsrOptions()
        model = self.model
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected a 1x3xHxW image, got {list(image.shape)}")
        height, width = image.shape[-2:]
        out_w, out_h = round(width * scale), round(height * scale)
        work_w, work_h = working_size(width, height, scale, options.min_side, options.unit)
        report = progress or (lambda stage, done, total: None)
        generator = torch.Generator(device="cpu").manual_seed(options.seed)
        dtype = model.dtype

        control = F.interpolate(image.float(), size=(work_h, work_w), mode="bicubic", antialias=True).clamp(0, 1)
        report("encode", 0, 1)
        encoder = model.cond_encoder
        with stage_on_device(self.device, self.offload, encoder):
            pixels_in = (control * 2 - 1).to(self.device, dtype)
            moments = tiled_encode(encoder.encoder, pixels_in, tile_size=options.vae_encoder_tile, offload=None)
            mean, _ = encoder.quant_conv(moments).float().chunk(2, dim=1)
        c_latent = mean * model.config.vae.scaling_factor  # the posterior's mode, as apply_condition_encoder
        report("encode", 1, 1)

        settings = options.sampler
        cond = {"c_crossattn": self._context(options.prompt), "c_latent": c_latent, "control_scale": options.strength}
        uncond = None
        if settings.cfg_scale != 1.0:
            uncond = cond | {"c_crossattn": self._context(options.negative)}
        x_t = torch.randn(c_latent.shape, generator=generator).to(self.device)
        tile = options.tile // 8

        def sampler_progress(done: int, total: int) -> None:
            report("sample", done, total)

        common = dict(generator=generator, progress=sampler_progress, device=self.device)
        with stage_on_device(self.device, self.offload, model.unet, model.control):
            tile = min(tile, *c_latent.shape[-2:])  # a thin image: tiles as wide as it
            if max(c_latent.shape[-2:]) > tile:
                stride = min(options.tile_stride // 8, tile)
                latent = ccsr_v1_sample_tiled(
                    model.eps, x_t, cond, uncond, settings, tile_size=tile, tile_stride=stride, **common
                )
            else:
                latent = ccsr_v1_sample(model.eps, x_t, cond, uncond, settings, **common)

        report("decode", 0, 1)
        vae = model.vae
        with stage_on_device(self.device, self.offload, vae):
            vae_dtype = vae.post_quant_conv.weight.dtype  # bf16/fp32 when the UNet runs in fp16
            z = vae.post_quant_conv((latent / model.config.vae.scaling_factor).to(self.device, vae_dtype))
            pixels = tiled_decode(vae.decoder, z, tile_size=options.vae_decoder_tile, offload=None).float()
        pixels = (pixels.cpu() + 1) / 2
        if options.color_fix == "adain":
            pixels = adain_color_fix(pixels, control)
        elif options.color_fix == "wavelet":
            pixels = wavelet_color_fix(pixels, control)
        out = F.interpolate(pixels, size=(out_h, out_w), mode="bicubic", antialias=True)
        report("decode", 1, 1)
        return out.clamp(0, 1)
