"""SUPIR restoration, end to end (SUPIRModel.batchify_sample with the demo's pre/post-processing):

1. resize the input to the target size (at least `min_side` on the short side, sides rounded
   to multiples of 64, as the official demo prepares it), scale to [-1, 1];
2. encode with the degradation-robust denoise encoder (posterior mode) -> the control latent;
3. decode it (the stage-1 restoration) and encode that again with the VAE encoder (a posterior
   sample) -> the latent the restoration guidance pulls toward;
4. sample from noise with the restore sampler (tiled for large latents), guided by the prompt
   and the negative prompt;
5. decode, correct colours toward the stage-1 image (wavelet or AdaIN), resize to the exact
   requested size.

The VAE runs tiled (seamless: shared GroupNorm statistics) once the image exceeds one tile.
`offload` keeps every part on the CPU and moves only the stage that runs to the device.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.colorfix import adain_color_fix, wavelet_color_fix
from ..diffusion.offload import stage_on_device
from ..diffusion.tiled_vae import tiled_decode, tiled_encode
from .model import SupirModel
from .sampling import PRESETS, SamplerSettings, restore_sample, tiled_restore_sample

# the official positive/negative prompt additions (options/SUPIR_v0.yaml: p_p, n_p)
DEFAULT_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed "
    "photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous "
    "detailing, skin pore detailing, hyper sharpness, perfect without deformations."
)
DEFAULT_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, "
    "3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, "
    "watermark, signature, jpeg artifacts, deformed, lowres, over-smooth"
)

ColorFix = Literal["wavelet", "adain", "none"]
#: progress(stage, done, total); stages: "encode", "sample", "decode"
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RestoreOptions:
    preset: str = "quality"
    sampler: SamplerSettings | None = None  # overrides the preset
    prompt: str = ""  # what the image shows (the official demo fills it with a LLaVA caption)
    positive: str = DEFAULT_POSITIVE  # appended to the prompt
    negative: str = DEFAULT_NEGATIVE
    seed: int = 0
    color_fix: ColorFix = "wavelet"
    min_side: int = 1024  # SDXL's working resolution; smaller outputs are made at this size
    unit: int = 64  # sides rounded to a multiple of this (official: 64)
    sample_tile: int = 128  # latent pixels per sampler tile (official tiled default 128)
    sample_stride: int = 64
    vae_encoder_tile: int = 512  # image pixels (official default)
    vae_decoder_tile: int = 64  # latent pixels (official default)

    def settings(self) -> SamplerSettings:
        if self.sampler is not None:
            return self.sampler
        try:
            return PRESETS[self.preset]
        except KeyError:
            names = ", ".join(PRESETS)
            raise ValueError(f"unknown SUPIR preset {self.preset!r}; one of {names}") from None


def working_size(width: int, height: int, scale: float, min_side: int, unit: int) -> tuple[int, int]:
    """The size SUPIR samples at (official PIL2Tensor/upscale_image arithmetic)."""
    w, h = width * scale, height * scale
    if min(w, h) < min_side:
        grow = min_side / min(w, h)
        w, h = w * grow, h * grow
    return max(unit, round(w / unit) * unit), max(unit, round(h / unit) * unit)


class SupirPipeline:
    def __init__(self, model: SupirModel, device: torch.device | str = "cpu", offload: bool = False) -> None:
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.offload = offload
        if not offload:
            self.model.to(self.device)

    def _on_device(self, *modules: nn.Module) -> AbstractContextManager[None]:
        """Sequential offloading: the stage's modules live on the device only while it runs."""
        return stage_on_device(self.device, self.offload, *modules)

    def _encode(self, encoder: nn.Module, x: torch.Tensor, options: RestoreOptions) -> torch.Tensor:
        return tiled_encode(encoder, x, tile_size=options.vae_encoder_tile, offload=None)

    def _decode(self, z: torch.Tensor, options: RestoreOptions) -> torch.Tensor:
        first = self.model.first_stage
        with self._on_device(first.vae.post_quant_conv, first.vae.decoder):
            h = first.latent_to_decoder_input(z.to(self.device, first.dtype))
            return tiled_decode(first.vae.decoder, h, tile_size=options.vae_decoder_tile, offload=None).float()

    @torch.no_grad()
    def restore(
        self,
        image: torch.Tensor,
        scale: float,
        options: RestoreOptions | None = None,
        progress: StageProgress | None = None,
    ) -> torch.Tensor:
        """image: 1x3xHxW RGB in [0, 1] -> 1x3x(H*scale)x(W*scale) in [0, 1] (float32, CPU)."""
        options = options or RestoreOptions()
        settings = options.settings()
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected a 1x3xHxW image, got {list(image.shape)}")
        model, first = self.model, self.model.first_stage
        height, width = image.shape[-2:]
        out_w, out_h = round(width * scale), round(height * scale)
        work_w, work_h = working_size(width, height, scale, options.min_side, options.unit)
        generator = torch.Generator(device="cpu").manual_seed(options.seed)
        report = progress or (lambda stage, done, total: None)

        x = F.interpolate(image.float(), size=(work_h, work_w), mode="bicubic", antialias=True)
        x = (x.clamp(0, 1) * 2 - 1).to(self.device, first.dtype)
        report("encode", 0, 3)
        with self._on_device(first.denoise_encoder, first.vae.quant_conv):
            moments = self._encode(first.denoise_encoder, x, options)
            z_control = first.moments_to_latent(moments, sample=False).float()
        report("encode", 1, 3)
        x_stage1 = self._decode(z_control, options)
        report("encode", 2, 3)
        with self._on_device(first.vae.encoder, first.vae.quant_conv):
            moments = self._encode(first.vae.encoder, x_stage1.to(first.dtype), options)
            # sgm's AutoencoderKLInferenceWrapper samples the posterior here
            z_center = first.moments_to_latent(moments, sample=True, generator=generator)
        report("encode", 3, 3)

        with self._on_device(model.conditioner):
            cond = model.conditioner([options.prompt + options.positive])
            uncond = model.conditioner([options.negative])
        cond = {k: v.to(self.device) for k, v in cond.items()} | {"control": z_control.to(self.device)}
        uncond = {k: v.to(self.device) for k, v in uncond.items()} | {"control": z_control.to(self.device)}
        noise = torch.randn(z_control.shape, generator=generator).to(self.device)
        latent_h, latent_w = z_control.shape[-2:]

        def sampler_progress(done: int, total: int) -> None:
            report("sample", done, total)

        with self._on_device(model.unet, model.control, model.denoiser):
            args = (model.denoise, noise, cond, uncond, z_center.to(self.device), settings)
            common = dict(generator=generator, progress=sampler_progress)
            tile = min(options.sample_tile, latent_h, latent_w)  # a thin image: tiles as wide as it
            if max(latent_h, latent_w) > tile:
                tiles = dict(tile_size=tile, tile_stride=min(options.sample_stride, tile))
                sample = tiled_restore_sample(*args, **common, **tiles)
            else:
                sample = restore_sample(*args, **common)
        report("decode", 0, 1)
        out = self._decode(sample, options)
        if options.color_fix == "wavelet":
            out = wavelet_color_fix(out, x_stage1)
        elif options.color_fix == "adain":
            out = adain_color_fix(out, x_stage1)
        out = F.interpolate(out.float().cpu(), size=(out_h, out_w), mode="bicubic", antialias=True)
        report("decode", 1, 1)
        return ((out + 1) / 2).clamp(0, 1)
