"""The SDXL UNet with SUPIR's decoder path, and the GLVControl encoder, on diffusers blocks.

SUPIR keeps the SDXL UNet frozen and changes only how its decoder consumes the encoder's skip
connections: every skip passes through a `ZeroSFT` fed by the matching GLVControl feature, and
before each upsampler that follows an attention block a `ZeroCrossAttn` attends to the control.
GLVControl is a trainable copy of the UNet's encoder and middle block whose first block also
receives the low-quality latent through a zero-initialised conv (`input_hint_block`). Module order
and indexing follow the official LightGLVUNet/GLVControl (SUPIR/modules/SUPIR_v0.py).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..diffusion.unet import UNetShape, build_down_blocks, build_mid, build_unet, embed, run_encoder
from .connectors import ZeroCrossAttn, ZeroSFT


class GLVControl(nn.Module):
    """A copy of the UNet's encoder and middle block; returns every feature the decoder uses."""

    def __init__(self, shape: UNetShape) -> None:
        super().__init__()
        self.shape = shape
        c = shape.model_channels
        self.time_proj = Timesteps(c, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c, shape.time_embed_dim)
        self.add_embedding = TimestepEmbedding(shape.adm_in_channels, shape.time_embed_dim)
        self.conv_in = nn.Conv2d(shape.in_channels, c, 3, padding=1)
        self.input_hint_block = nn.Conv2d(shape.in_channels, c, 3, padding=1)
        self.down_blocks = build_down_blocks(shape)
        self.mid_block = build_mid(shape)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        xt: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
    ) -> list[torch.Tensor]:
        """`x` the low-quality latent (the hint), `xt` the noisy latent being denoised."""
        dtype = x.dtype
        xt, context = xt.to(dtype), context.to(dtype)
        emb = embed(self.time_proj, self.time_embedding, self.add_embedding, timesteps, y, dtype)
        h, hs = run_encoder(self.down_blocks, self.mid_block, self.conv_in(xt) + self.input_hint_block(x), emb, context)
        return [*hs, h]


class SupirUNet(nn.Module):
    """SDXL UNet (`base`) plus SUPIR's `project_modules`, with the SUPIR decoder path."""

    def __init__(
        self, shape: UNetShape, control: UNetShape, project_channel_scale: float = 2.0, sft_hidden: int = 128
    ) -> None:
        super().__init__()
        self.base = build_unet(shape)
        cond = [*control.skip_channels(), control.block_out_channels[-1]]  # + middle block
        project = [int(ch // 2 * project_channel_scale) for ch in cond]
        concat = [*_decoder_channels_before_skips(shape), 0]
        modules: list[nn.Module] = [
            ZeroSFT(project[i], cond[i], concat_channels=concat[i], hidden=sft_hidden) for i in range(len(cond))
        ]
        # a cross-attention before every upsampler that follows an attention block; inserted from
        # the highest index down, as the official list is built (XL-base: [6, 3])
        for i in sorted(_cross_attn_skip_indices(shape), reverse=True):
            modules.insert(i, ZeroCrossAttn(cond[i], concat[i], head_dim=shape.head_channels))
        self.project_modules = nn.ModuleList(modules)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        control: list[torch.Tensor],
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        base = self.base
        dtype = control[0].dtype
        x, context = x.to(dtype), context.to(dtype)
        emb = embed(base.time_proj, base.time_embedding, base.add_embedding, timesteps, y, dtype)
        h, hs = run_encoder(base.down_blocks, base.mid_block, base.conv_in(x), emb, context)

        adapter = len(self.project_modules) - 1
        ci = len(control) - 1
        h = self.project_modules[adapter](control[ci], h, control_scale=control_scale)
        adapter -= 1
        ci -= 1
        for block in base.up_blocks:
            attentions = getattr(block, "attentions", None)
            upsamplers = block.upsamplers
            for j, resnet in enumerate(block.resnets):
                skip = hs.pop()
                h = self.project_modules[adapter](control[ci], skip, h, control_scale=control_scale)
                adapter -= 1
                h = resnet(h, emb)
                if attentions is not None:
                    h = attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
                last = j == len(block.resnets) - 1
                if last and upsamplers is not None:
                    if attentions is not None:
                        h = self.project_modules[adapter](control[ci], h, control_scale=control_scale)
                        adapter -= 1
                    h = upsamplers[0](h)
                ci -= 1
        h = base.conv_out(base.conv_act(base.conv_norm_out(h)))
        return h.to(x.dtype)


def _decoder_channels_before_skips(shape: UNetShape) -> list[int]:
    """For skip i (encoder output i), the channels of the decoder state it is concatenated to."""
    out = list(shape.block_out_channels)
    levels = len(out)
    per_block: list[int] = []  # in decoder order
    prev = out[-1]
    for up in range(levels):
        ch = out[levels - 1 - up]
        for j in range(shape.num_res_blocks + 1):
            per_block.append(prev if j == 0 else ch)
        prev = ch
    return list(reversed(per_block))


def _cross_attn_skip_indices(shape: UNetShape) -> list[int]:
    """Skip indices of the decoder blocks that end in attention + upsampler."""
    levels = len(shape.channel_mult)
    n = shape.num_res_blocks + 1
    total = levels * n
    indices = []
    for up in range(levels - 1):  # the last decoder level has no upsampler
        level = levels - 1 - up
        if shape.attention_levels[level]:
            block = up * n + n - 1
            indices.append(total - 1 - block)
    return indices
