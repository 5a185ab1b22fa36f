"""CCSR's networks on diffusers blocks, and their one-to-one naming onto the official checkpoints.

v1 (`real-world_ccsr.ckpt`, `bicubic_ccsr.ckpt`, ldm layout): the SD 2.1-base UNet, a ControlNet
whose first conv takes the noisy latent concatenated with the low-quality latent (8 channels)
and returns 13 zero-conv outputs, the condition encoder (a frozen copy of the VAE encoder + its
quant conv), the VAE with the fine-tuned decoder, the OpenCLIP ViT-H text tower (penultimate
layer + final norm), and the DDPM schedule buffers. `decoder_loss.*` is training-only.

v2 (diffusers folders): the same UNet and VAE; its ControlNet (diffusers naming) takes the
VAE-encoded image through `condition_conv_in` (4 -> 320) added after `conv_in`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..diffusion.ldm_names import unet_key, vae_coder_key
from ..diffusion.unet import UNetShape, build_down_blocks, build_mid, build_unet, embed, run_encoder
from ..supir.config import ClipGShape, VaeShape
from ..supir.text import OpenClipTextTower, tokenize
from ..supir.vae import build_autoencoder, build_encoder
from .schedule import CcsrV1Schedule

#: SD 2.1-base: attention_resolutions [4, 2, 1] over channel_mult [1, 2, 4, 4], depth 1
SD21_UNET = UNetShape(
    model_channels=320,
    channel_mult=(1, 2, 4, 4),
    transformer_depth=(1, 1, 1, 1),
    transformer_depth_middle=1,
    attention_levels=(True, True, True, False),
    context_dim=1024,
    adm_in_channels=0,
)
#: OpenCLIP ViT-H/14's text tower
VIT_H_TEXT = ClipGShape(width=1024, layers=24, heads=16, output_dim=1024)


@dataclass(frozen=True)
class CcsrConfig:
    version: Literal[1, 2] = 1
    unet: UNetShape = field(default_factory=lambda: SD21_UNET)
    text: ClipGShape = field(default_factory=lambda: VIT_H_TEXT)
    vae: VaeShape = field(default_factory=lambda: VaeShape(scaling_factor=0.18215))
    vocab_size: int = 49408
    context_length: int = 77

    @property
    def control_in_channels(self) -> int:
        # v1 concatenates the noisy latent and the low-quality latent; v2 adds the condition
        return 2 * self.unet.in_channels if self.version == 1 else self.unet.in_channels

    @classmethod
    def tiny(cls, version: Literal[1, 2] = 1) -> CcsrConfig:
        """Every module of the official model, channels scaled down (CPU tests)."""
        text = ClipGShape(width=64, layers=2, heads=1, output_dim=64)
        unet = replace(SD21_UNET, model_channels=32, context_dim=text.width)
        vae = VaeShape(block_out_channels=(32, 32, 64, 64), layers_per_block=1, scaling_factor=0.18215)
        return cls(version, unet, text, vae)


class CcsrControlNet(nn.Module):
    """The SD 2.1 UNet's encoder half, its outputs through zero convs (diffusers ControlNetModel
    naming: `controlnet_down_blocks`, `controlnet_mid_block`)."""

    def __init__(self, shape: UNetShape, in_channels: int, condition_conv: bool) -> None:
        super().__init__()
        c = shape.model_channels
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        if condition_conv:
            self.condition_conv_in = nn.Conv2d(shape.in_channels, c, 3, padding=1)
        self.time_proj = Timesteps(c, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c, shape.time_embed_dim)
        self.down_blocks = build_down_blocks(shape)
        self.mid_block = build_mid(shape)
        self.controlnet_down_blocks = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch in shape.skip_channels())
        self.controlnet_mid_block = nn.Conv2d(shape.block_out_channels[-1], shape.block_out_channels[-1], 1)

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        scale: float = 1.0,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet's skips (one per encoder output) and for its middle block."""
        emb = embed(self.time_proj, self.time_embedding, None, timesteps, None, x.dtype)
        if hasattr(self, "condition_conv_in"):  # v2
            h = self.conv_in(x) + self.condition_conv_in(hint)
        else:  # v1
            h = self.conv_in(torch.cat([x, hint], dim=1))
        h, hs = run_encoder(self.down_blocks, self.mid_block, h, emb, context)
        down = [conv(s) * scale for conv, s in zip(self.controlnet_down_blocks, hs, strict=True)]
        return down, self.controlnet_mid_block(h) * scale


class ConditionEncoder(nn.Module):
    """v1's `cond_encoder`: a copy of the VAE encoder and quant conv (its mode is the hint)."""

    def __init__(self, vae: VaeShape) -> None:
        super().__init__()
        self.encoder = build_encoder(vae)
        self.quant_conv = nn.Conv2d(2 * vae.latent_channels, 2 * vae.latent_channels, 1)


class ViTHText(nn.Module):
    """ldm's FrozenOpenCLIPEmbedder (layer "penultimate"): all blocks but the last, then ln_final."""

    def __init__(self, shape: ClipGShape, vocab_size: int, context_length: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.model = OpenClipTextTower(shape, vocab_size, context_length)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        m = self.model
        tokens = tokenize(prompts, self.context_length).to(m.positional_embedding.device)
        x = m.token_embedding(tokens) + m.positional_embedding
        mask = m.attn_mask.to(x.device) if m.attn_mask is not None else None
        for block in m.transformer.resblocks[:-1]:
            x = block(x, attn_mask=mask)
        return m.ln_final(x)


class CcsrModel(nn.Module):
    def __init__(self, config: CcsrConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = build_unet(config.unet)
        self.control = CcsrControlNet(config.unet, config.control_in_channels, condition_conv=config.version == 2)
        self.vae = build_autoencoder(config.vae)
        self.text = ViTHText(config.text, config.vocab_size, config.context_length)
        if config.version == 1:
            self.cond_encoder = ConditionEncoder(config.vae)
            with torch.device("cpu"):  # computed, not learned: real even under a meta device
                self.schedule = CcsrV1Schedule()

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.bias.dtype

    def eps(self, x: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return controlled_eps(self.unet, self.control, x, timesteps, cond)

    def official_names(self) -> dict[str, str]:
        return {k: ccsr_official_name(k, self.config) for k in self.state_dict()}


def controlled_eps(
    unet: nn.Module, control: CcsrControlNet, x: torch.Tensor, timesteps: torch.Tensor, cond: dict
) -> torch.Tensor:
    """The noise prediction with control (ControlLDM.apply_model; v2's pipeline step):
    cond["c_crossattn"] the text context, cond["c_latent"] the low-quality latent,
    cond["control_scale"] the strength; inputs cast to the UNet's dtype, float32 out."""
    dtype = unet.conv_in.bias.dtype
    x, context, hint = x.to(dtype), cond["c_crossattn"].to(dtype), cond["c_latent"].to(dtype)
    down, mid = control(x, hint, timesteps, context, float(cond.get("control_scale", 1.0)))
    out = unet(
        x,
        timesteps,
        encoder_hidden_states=context,
        down_block_additional_residuals=tuple(down),
        mid_block_additional_residual=mid,
    ).sample
    return out.float()


# the v1 ControlNet's zero convs are `zero_convs.N.0` / `middle_block_out.0` in ldm naming
_V1_CONTROL = {"controlnet_mid_block.": "middle_block_out.0."}


def ccsr_official_name(key: str, config: CcsrConfig) -> str:
    """Our key -> the official name: the v1 checkpoint's for v1; for v2, the diffusers folders'
    (`unet/`, `controlnet/`, `vae/`, `text_encoder/` are prefixed by their folder)."""
    levels = len(config.vae.block_out_channels)
    if config.version == 2:
        part, _, rest = key.partition(".")
        folder = {"unet": "unet", "control": "controlnet", "vae": "vae", "text": "text_encoder"}[part]
        return f"{folder}.{rest}"
    if key.startswith("unet."):
        return "model.diffusion_model." + unet_key(key[len("unet.") :], config.unet)
    if key.startswith("control."):
        rest = key[len("control.") :]
        if rest.startswith("controlnet_down_blocks."):
            index, _, tail = rest[len("controlnet_down_blocks.") :].partition(".")
            return f"control_model.zero_convs.{index}.0.{tail}"
        return "control_model." + unet_key(rest, config.unet, _V1_CONTROL)
    if key.startswith("vae."):
        rest = key[len("vae.") :]
        part, _, inner = rest.partition(".")
        if part in ("encoder", "decoder"):
            return f"first_stage_model.{part}.{vae_coder_key(inner, levels)}"
        return "first_stage_model." + rest
    if key.startswith("cond_encoder.encoder."):
        return "cond_encoder.encoder." + vae_coder_key(key[len("cond_encoder.encoder.") :], levels)
    if key.startswith("cond_encoder.quant_conv."):
        return key
    if key.startswith("text.model."):
        return "cond_stage_model.model." + key[len("text.model.") :]
    if key.startswith("schedule."):
        return key[len("schedule.") :]
    raise KeyError(f"no official name for {key!r}")
