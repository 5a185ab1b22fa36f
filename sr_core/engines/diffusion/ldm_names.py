"""diffusers/transformers names -> the ldm/sgm names of the official latent-diffusion checkpoints
(SDXL/SUPIR, SD 2.1/CCSR). Ours are down_blocks/resnets/attentions; theirs input_blocks/in_layers.
The VAE's mid-block attention projections are 1x1 convs there and linear layers here."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .unet import UNetShape

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def unet_key(key: str, shape: UNetShape, extra: Mapping[str, str] | None = None) -> str:
    """diffusers UNet2DConditionModel (or a control encoder built from its blocks) name -> the
    ldm/sgm UNetModel name. `extra` maps further prefixes (a control model's own inputs)."""
    per_level = shape.num_res_blocks + 1
    fixed = dict(extra or {}) | {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for ours, official in fixed.items():
        if key.startswith(ours):
            return official + key[len(ours) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * per_level + j
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet(rest, _RESNET)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        up, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = up * per_level + j
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_resnet(rest, _RESNET)}"
        return f"output_blocks.{index}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        up = int(m[1])
        level = len(shape.channel_mult) - 1 - up
        slot = 2 if shape.attention_levels[level] else 1
        return f"output_blocks.{up * per_level + shape.num_res_blocks}.{slot}.conv.{m[2]}"
    raise KeyError(f"no official name for UNet parameter {key!r}")


def vae_coder_key(key: str, levels: int) -> str:
    """diffusers Encoder/Decoder name -> ldm Encoder/Decoder name."""
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"down.{m[1]}.block.{m[2]}.{_resnet(m[3], _VAE_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{_resnet(m[3], _VAE_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"mid.block_{int(m[1]) + 1}.{_resnet(m[2], _VAE_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)$", key):
        return f"mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    if key.startswith("conv_norm_out."):
        return "norm_out." + key[len("conv_norm_out.") :]
    if key.startswith(("conv_in.", "conv_out.")):
        return key
    raise KeyError(f"no official name for VAE parameter {key!r}")
