"""One-to-one naming between our module tree and the official SUPIR checkpoint layout.

Ours is diffusers/transformers naming (down_blocks/resnets/attentions); the official one is
sgm/ldm naming (input_blocks/in_layers/...). `our_to_official` renames one of our state-dict keys;
the mapping is a bijection over the whole tree (tested against the 3,549 official names).
The only shape difference: the VAE's mid-block attention projections are 1x1 convs in the
official checkpoint and linear layers in diffusers.
"""

from __future__ import annotations

import re

from ..diffusion.ldm_names import unet_key, vae_coder_key
from .config import SupirConfig

# GLVControl's extra input: the low-quality latent's zero conv
SUPIR_CONTROL = {"input_hint_block.": "input_hint_block.0."}


def our_to_official(key: str, config: SupirConfig) -> str:
    """Our state-dict key -> the official checkpoint key."""
    levels = len(config.vae.block_out_channels)
    if key.startswith("unet.base."):
        return "model.diffusion_model." + unet_key(key[len("unet.base.") :], config.unet)
    if key.startswith("unet.project_modules."):
        return "model.diffusion_model." + key[len("unet.") :]
    if key.startswith("control."):
        return "model.control_model." + unet_key(key[len("control.") :], config.control, SUPIR_CONTROL)
    if key.startswith("first_stage.denoise_encoder."):
        rest = key[len("first_stage.denoise_encoder.") :]
        return "first_stage_model.denoise_encoder." + vae_coder_key(rest, levels)
    if key.startswith("first_stage.vae."):
        rest = key[len("first_stage.vae.") :]
        part, _, inner = rest.partition(".")
        if part in ("encoder", "decoder"):
            return f"first_stage_model.{part}.{vae_coder_key(inner, levels)}"
        return "first_stage_model." + rest  # quant_conv, post_quant_conv
    if key.startswith("conditioner.embedders.0.transformer."):
        rest = key[len("conditioner.embedders.0.transformer.") :]
        # transformers 5 dropped `text_model.` from CLIPTextModel's module names
        return "conditioner.embedders.0.transformer.text_model." + rest
    if key.startswith(("conditioner.embedders.1.model.", "denoiser.")):
        return key
    raise KeyError(f"no official name for {key!r}")


def is_vae_attention_projection(official_key: str) -> bool:
    """Official 1x1-conv attention weights that are linear layers on our side."""
    return bool(re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", official_key))
