"""The latent-diffusion UNet shared by the diffusion engines, on diffusers blocks: its shape as
configuration, the diffusers UNet2DConditionModel built from it, and the pieces the control
encoders (SUPIR's GLVControl, CCSR's ControlNet) reuse."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn


@dataclass(frozen=True)
class UNetShape:
    """A latent-diffusion UNet (SDXL base by default; SD 2.1 for CCSR) and the control encoders
    that copy its encoder half (SUPIR's GLVControl, CCSR's ControlNet)."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    # transformers per attention block, per level; levels without attention ignore it (SDXL's
    # first level has none: attention_resolutions [4, 2] with channel_mult [1, 2, 4])
    transformer_depth: tuple[int, ...] = (1, 2, 10)
    transformer_depth_middle: int = 10
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: int = 2
    head_channels: int = 64  # num_head_channels: heads = channels // 64
    context_dim: int = 2048  # CLIP-L hidden (768) + OpenCLIP bigG hidden (1280)
    adm_in_channels: int = 2816  # pooled bigG (1280) + 3 size pairs x 2 x 256
    in_channels: int = 4
    out_channels: int = 4

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def skip_channels(self) -> list[int]:
        """Channels of every encoder output the decoder consumes (the sgm `hs` list): conv_in,
        each res(+attn) block, each downsampler; the control adds the middle block's output."""
        chans = [self.model_channels]
        for level, ch in enumerate(self.block_out_channels):
            chans += [ch] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                chans.append(ch)
        return chans


def heads(shape: UNetShape) -> list[int]:
    # levels without attention never build a transformer; 1 keeps diffusers' constructor happy
    return [max(1, ch // shape.head_channels) for ch in shape.block_out_channels]


def down_block_types(shape: UNetShape) -> list[str]:
    return ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in shape.attention_levels]


def build_unet(shape: UNetShape) -> UNet2DConditionModel:
    """diffusers' UNet2DConditionModel in `shape`'s configuration (SDXL base, SD 2.1, ...); the
    SDXL vector embedding only when `adm_in_channels` is set; the middle block's own depth."""
    up_types = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(shape.attention_levels)]
    vector: dict = {}
    if shape.adm_in_channels:
        vector = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=shape.adm_in_channels,
        )
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=shape.in_channels,
        out_channels=shape.out_channels,
        down_block_types=tuple(down_block_types(shape)),
        up_block_types=tuple(up_types),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=shape.block_out_channels,
        layers_per_block=shape.num_res_blocks,
        cross_attention_dim=shape.context_dim,
        transformer_layers_per_block=list(shape.transformer_depth),
        attention_head_dim=heads(shape),
        use_linear_projection=True,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        **vector,
    )
    # diffusers takes the middle block's depth from the last level; SUPIR's may differ
    if shape.transformer_depth_middle != shape.transformer_depth[-1]:
        unet.mid_block = build_mid(shape)
    return unet


def build_mid(shape: UNetShape) -> nn.Module:
    return get_mid_block(
        "UNetMidBlock2DCrossAttn",
        temb_channels=shape.time_embed_dim,
        in_channels=shape.block_out_channels[-1],
        resnet_eps=1e-5,
        resnet_act_fn="silu",
        resnet_groups=32,
        transformer_layers_per_block=shape.transformer_depth_middle,
        num_attention_heads=heads(shape)[-1],
        cross_attention_dim=shape.context_dim,
        use_linear_projection=True,
        attention_head_dim=heads(shape)[-1],
    )


def embed(
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_embedding: TimestepEmbedding | None,
    timesteps: torch.Tensor,
    y: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """ldm/sgm: time_embed(timestep_embedding(t)) [+ label_emb(y), y the SDXL vector]."""
    emb = time_embedding(time_proj(timesteps).to(dtype))
    if add_embedding is not None and y is not None:
        emb = emb + add_embedding(y.to(dtype))
    return emb


def build_down_blocks(shape: UNetShape) -> nn.ModuleList:
    """The UNet's encoder levels, as UNet2DConditionModel builds them (control encoders copy them)."""
    per_level_heads = heads(shape)
    blocks = nn.ModuleList()
    in_ch = shape.model_channels
    for level, (kind, out_ch) in enumerate(zip(down_block_types(shape), shape.block_out_channels, strict=True)):
        blocks.append(
            get_down_block(
                kind,
                num_layers=shape.num_res_blocks,
                transformer_layers_per_block=shape.transformer_depth[level],
                in_channels=in_ch,
                out_channels=out_ch,
                temb_channels=shape.time_embed_dim,
                add_downsample=level != len(shape.channel_mult) - 1,
                resnet_eps=1e-5,
                resnet_act_fn="silu",
                resnet_groups=32,
                cross_attention_dim=shape.context_dim,
                num_attention_heads=per_level_heads[level],
                downsample_padding=1,
                use_linear_projection=True,
                attention_head_dim=per_level_heads[level],
            )
        )
        in_ch = out_ch
    return blocks


def run_encoder(
    down_blocks: nn.ModuleList, mid_block: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Encoder levels and middle block: (the middle block's output, every skip output incl. `h`)."""
    hs = [h]
    for block in down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(h, emb, encoder_hidden_states=context)
        else:
            h, res = block(h, emb)
        hs.extend(res)
    return mid_block(h, emb, encoder_hidden_states=context), hs
