"""CCSR v2 from its diffusers folders (`unet/`, `controlnet/`, `vae/`, `text_encoder/`, optional
`tokenizer/`), loaded from local paths only, and its restoration pipeline (test_ccsr_tile.py):
the LQ image is sized to the target (short side at least `process_size`, sides floored to
multiples of 8), VAE-encoded (a posterior sample, as the official pipeline) into the latent
that both starts the sampler and conditions the ControlNet, sampled with the one-step or
multi-step preset, decoded and colour-corrected (AdaIN by default)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel

from ...errors import WeightsError
from ..diffusion.checkpoints import LayoutCheck, compare_layout, read_checkpoint, read_keys
from ..diffusion.colorfix import adain_color_fix, wavelet_color_fix
from ..diffusion.offload import stage_on_device
from ..diffusion.tiled_vae import tiled_decode, tiled_encode
from ..diffusion.unet import UNetShape
from ..supir.text import tokenize
from .model import SD21_UNET, CcsrControlNet, controlled_eps
from .sampling import CcsrV2Settings, ccsr_v2_sample

V2_PARTS = ("unet", "controlnet", "vae", "text_encoder")


def is_v2_folder(folder: Path) -> bool:
    return all((folder / part).is_dir() for part in V2_PARTS)


def _weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{folder}: no weights file (diffusion_pytorch_model.safetensors)")


def unet_shape(unet_config: dict) -> UNetShape:
    """Our UNet shape from a diffusers UNet config (SD 2.1-base for the released v2)."""
    channels = tuple(unet_config["block_out_channels"])
    depth = unet_config.get("transformer_layers_per_block", 1)
    depth = tuple(depth) if isinstance(depth, list) else (depth,) * len(channels)
    return replace(
        SD21_UNET,
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        attention_levels=tuple(t.startswith("CrossAttn") for t in unet_config["down_block_types"]),
        transformer_depth=depth,
        transformer_depth_middle=depth[-1],
        context_dim=unet_config["cross_attention_dim"],
        num_res_blocks=unet_config.get("layers_per_block", 2),
    )


class HfText(nn.Module):
    """The SD 2.1 text encoder as diffusers pipelines run it: last hidden state (its final layer
    norm included; the released encoder already ends at OpenCLIP's penultimate layer)."""

    def __init__(self, encoder: CLIPTextModel, tokenizer: object | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = self.encoder.device
        if self.tokenizer is not None:
            tokens = self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            ids = tokens.input_ids
        else:  # the same BPE vocabulary, padded with 0 as SD 2.1's tokenizer pads ("!")
            ids = tokenize(prompts)
        return self.encoder(input_ids=ids.to(device)).last_hidden_state


class CcsrV2Model(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, control: CcsrControlNet, vae: AutoencoderKL, text: HfText) -> None:
        super().__init__()
        self.unet, self.control, self.vae, self.text = unet, control, vae, text

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.bias.dtype

    def eps(self, x: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
        return controlled_eps(self.unet, self.control, x, timesteps, cond)


def load_ccsr_v2(folder: Path, dtype: torch.dtype = torch.float32) -> CcsrV2Model:
    """Local folders only (nothing is fetched); the ControlNet is loaded strictly and any
    missing or unexpected tensor is named."""
    folder = Path(folder)
    absent = [part for part in V2_PARTS if not (folder / part).is_dir()]
    if absent:
        raise WeightsError(f"{folder}: not a CCSR v2 folder, missing {', '.join(absent)}/")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=dtype)
        encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder}: {exc}") from exc
    tokenizer = None
    if (folder / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    shape = unet_shape(json.loads((folder / "unet" / "config.json").read_text()))
    control = CcsrControlNet(shape, shape.in_channels, condition_conv=True)
    state = read_checkpoint(_weights_file(folder / "controlnet"))
    expected = control.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{folder / 'controlnet'}: not a CCSR v2 ControlNet; missing {missing[:20]}, "
            f"unexpected {unexpected[:20]}, wrong shape {wrong[:20]}"
        )
    control.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model = CcsrV2Model(unet, control.to(dtype), vae, HfText(encoder, tokenizer))
    return model.eval().requires_grad_(False)


def check_v2_folder(folder: Path) -> LayoutCheck:
    """Which parts a v2 folder has, and whether its ControlNet matches the UNet it sits beside
    (names and shapes, read from the files' headers)."""
    folder = Path(folder)
    parts = {part: (f"{part}.",) for part in V2_PARTS}
    check = LayoutCheck(files=[folder], parts=parts, title="CCSR v2")
    found: dict[str, tuple[int, ...]] = {}
    for part in V2_PARTS:
        try:
            found |= {f"{part}.{k}": v for k, v in read_keys(_weights_file(folder / part)).items()}
        except WeightsError:
            check.missing.append(f"{part}/ (no weights file)")
    layout = {k: v for k, v in found.items() if not k.startswith("controlnet.")}
    config = folder / "unet" / "config.json"
    if config.is_file():
        shape = unet_shape(json.loads(config.read_text()))
        with torch.device("meta"):
            control = CcsrControlNet(shape, shape.in_channels, condition_conv=True)
        layout |= {f"controlnet.{k}": tuple(v.shape) for k, v in control.state_dict().items()}
    compare_layout(check, found, layout, lambda key: False)
    return check


@dataclass(frozen=True)
class CcsrV2Options:
    sampler: CcsrV2Settings = field(default_factory=lambda: CcsrV2Settings.MULTI_STEP)
    prompt: str = ""
    negative: str = ""
    strength: float = 1.0
    color_fix: Literal["adain", "wavelet", "none"] = "adain"
    seed: int = 0
    process_size: int = 512
    tile: int = 512  # image pixels per sampler tile (official latent 64)
    tile_stride: int = 256
    vae_encoder_tile: int = 512
    vae_decoder_tile: int = 64


def v2_working_size(width: int, height: int, scale: int, process_size: int) -> tuple[int, int]:
    """test_ccsr_tile.py: a short side below process_size / scale is first scaled up to it
    (rounded), then x scale, then floored to multiples of 8."""
    w, h = width, height
    if min(w, h) < process_size // scale:
        r = (process_size // scale) / min(w, h)
        w, h = round(r * w), round(r * h)
    w, h = w * scale, h * scale
    return max(8, w // 8 * 8), max(8, h // 8 * 8)


@torch.no_grad()
def restore_v2(
    model: CcsrV2Model,
    image: torch.Tensor,
    scale: int,
    options: CcsrV2Options | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    device: torch.device | str | None = None,
    offload: bool = False,
) -> torch.Tensor:
    """image: 1x3xHxW RGB in [0, 1] -> 1x3x(H*scale)x(W*scale) in [0, 1] (float32, CPU).
    With `offload`, the model stays on the CPU and each stage visits `device` in turn."""
    options = options or CcsrV2Options()
    report = progress or (lambda stage, done, total: None)
    height, width = image.shape[-2:]
    work_w, work_h = v2_working_size(width, height, scale, options.process_size)
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    device = torch.device(device) if device is not None else model.unet.device
    dtype = model.dtype
    lq = F.interpolate(image.float(), size=(work_h, work_w), mode="bicubic", antialias=True).clamp(0, 1)
    report("encode", 0, 1)
    vae = model.vae
    with stage_on_device(device, offload, vae):
        pixels_in = (lq * 2 - 1).to(device, dtype)
        moments = tiled_encode(vae.encoder, pixels_in, tile_size=options.vae_encoder_tile, offload=None)
        mean, logvar = vae.quant_conv(moments).float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    sample = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)
    lq_latent = sample * vae.config.scaling_factor
    report("encode", 1, 1)
    settings = options.sampler
    with stage_on_device(device, offload, model.text):
        context = model.text([options.prompt]).to(device)
        negative = model.text([options.negative]).to(device) if settings.guided else None
    cond = {"c_crossattn": context, "c_latent": lq_latent, "control_scale": options.strength}
    uncond = cond | {"c_crossattn": negative} if negative is not None else None
    tile = min(options.tile // 8, *lq_latent.shape[-2:])  # a thin image: tiles as wide as it
    tiles = {}
    if max(lq_latent.shape[-2:]) > tile:
        tiles = {"tile_size": tile, "tile_stride": min(options.tile_stride // 8, tile)}

    def sampler_progress(done: int, total: int) -> None:
        report("sample", done, total)

    with stage_on_device(device, offload, model.unet, model.control):
        latent = ccsr_v2_sample(
            model.eps, lq_latent, cond, uncond, settings, generator=generator, progress=sampler_progress, **tiles
        )
    report("decode", 0, 1)
    with stage_on_device(device, offload, vae):
        vae_dtype = vae.post_quant_conv.weight.dtype  # bf16/fp32 when the UNet runs in fp16
        z = vae.post_quant_conv((latent / vae.config.scaling_factor).to(device, vae_dtype))
        decoded = tiled_decode(vae.decoder, z, tile_size=options.vae_decoder_tile, offload=None)
    pixels = ((decoded.float().cpu() + 1) / 2).clamp(0, 1)
    if options.color_fix == "adain":
        pixels = adain_color_fix(pixels, lq)
    elif options.color_fix == "wavelet":
        pixels = wavelet_color_fix(pixels, lq)
    out = F.interpolate(pixels, size=(round(height * scale), round(width * scale)), mode="bicubic", antialias=True)
    report("decode", 1, 1)
    return out.clamp(0, 1)
