"""SUPIR's connectors between the GLVControl encoder and the frozen SDXL decoder.

`ZeroSFT` modulates a decoder skip connection with the control features (spatial feature
transform: a 1x1 "zero conv" adds the control, then a normalised scale/shift predicted from the
control); `ZeroCrossAttn` lets the decoder attend to the control features before an upsampler.
Both blend with the unmodulated input by `control_scale`. Parameter names follow the official
checkpoint (`project_modules.N.*`)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """sgm's `normalization(ch)`: 32 groups, statistics computed in float32."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(32, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class ZeroSFT(nn.Module):
    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = GroupNorm32(norm_nc + concat_channels)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.SiLU())
        self.zero_mul = nn.Conv2d(hidden, norm_nc + concat_channels, 3, padding=1)
        self.zero_add = nn.Conv2d(hidden, norm_nc + concat_channels, 3, padding=1)
        self.zero_conv = nn.Conv2d(label_nc, norm_nc, 1)
        self.pre_concat = concat_channels != 0

    def forward(
        self,
        control: torch.Tensor,
        h: torch.Tensor,
        h_ori: torch.Tensor | None = None,
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        """`h` is the skip connection; `h_ori` (when given) the decoder state it is concatenated
        after, as the UNet does: cat([decoder, skip])."""
        concat = h_ori is not None and self.pre_concat
        h_raw = torch.cat([h_ori, h], dim=1) if concat else h
        h = h + self.zero_conv(control)
        if concat:
            h = torch.cat([h_ori, h], dim=1)
        actv = self.mlp_shared(control)
        gamma = self.zero_mul(actv)
        beta = self.zero_add(actv)
        h = self.param_free_norm(h) * (gamma + 1) + beta
        if h_ori is not None and not self.pre_concat:
            h = torch.cat([h_ori, h], dim=1)
        return h * control_scale + h_raw * (1 - control_scale)


class ZeroCrossAttn(nn.Module):
    """Decoder features (queries) attend to control features (keys/values), 64-dim heads."""

    def __init__(self, context_dim: int, query_dim: int, head_dim: int = 64) -> None:
        super().__init__()
        heads = query_dim // head_dim
        if heads < 1:
            raise ValueError(f"ZeroCrossAttn needs query_dim >= {head_dim}, got {query_dim}")
        self.attn = Attention(
            query_dim=query_dim,
            cross_attention_dim=context_dim,
            heads=heads,
            dim_head=head_dim,
            bias=False,
            out_bias=True,
        )
        self.norm1 = GroupNorm32(query_dim)
        self.norm2 = GroupNorm32(context_dim)

    def forward(self, context: torch.Tensor, x: torch.Tensor, control_scale: float = 1.0) -> torch.Tensor:
        x_in = x
        b, c, h, w = x.shape
        x = self.norm1(x).flatten(2).transpose(1, 2)
        context = self.norm2(context).flatten(2).transpose(1, 2)
        x = self.attn(x, encoder_hidden_states=context)
        x = x.transpose(1, 2).reshape(b, c, h, w)
        return x_in + x * control_scale
