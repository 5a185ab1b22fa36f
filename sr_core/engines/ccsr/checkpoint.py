"""Reading CCSR v1 checkpoints (`real-world_ccsr.ckpt`, `bicubic_ccsr.ckpt`; .ckpt or
.safetensors): check the layout by name and shape, read the configuration off the shapes,
and load strictly. `decoder_loss.*` (the training discriminator) is ignored."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...errors import WeightsError
from ..diffusion.checkpoints import LayoutCheck, assign_official, compare_layout, gather_keys
from ..supir.config import clip_g_from, unet_from, vae_from
from ..supir.model import official_shape
from .model import CcsrConfig, CcsrModel
from .schedule import BUFFER_NAMES

PARTS_V1: dict[str, tuple[str, ...]] = {
    "sd21-unet": ("model.diffusion_model.",),
    "ccsr-controlnet": ("control_model.",),
    "condition-encoder": ("cond_encoder.",),
    "vae": ("first_stage_model.",),
    "openclip-h-text": ("cond_stage_model.",),
}
_IGNORABLE = re.compile(r"^(decoder_loss\.|model_ema\.|lvlb_weights$)|.*\.position_ids$")


@dataclass
class CcsrCheck(LayoutCheck):
    config: CcsrConfig | None = None


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> CcsrConfig:
    """The v1 configuration the tensors imply (widths, levels, text tower, VAE)."""
    keys = {k: tuple(v) for k, v in shapes.items()}
    base = CcsrConfig(version=1)
    unet = unet_from(keys, "model.diffusion_model.", base.unet)
    # ldm's transformers take the depth from the first block of a level; SD 2.1 keeps all at 1
    text = clip_g_from(keys, base.text, prefix="cond_stage_model.model.")
    return replace(base, unet=replace(unet, adm_in_channels=0), text=text, vae=vae_from(keys, base.vae))


def expected_layout(config: CcsrConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = CcsrModel(config)
    names = model.official_names()
    return {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}


def check_ccsr_files(paths: Sequence[Path]) -> CcsrCheck:
    found, duplicated = gather_keys(paths)
    config = config_from_shapes(found)
    check = CcsrCheck(files=[Path(p) for p in paths], parts=PARTS_V1, title="CCSR v1", duplicated=duplicated)
    check.config = config
    unet = config.unet
    widths = f"UNet {unet.model_channels} channels x {list(unet.channel_mult)}, text width {config.text.width}"
    check.notes.append(widths)
    compare_layout(check, found, expected_layout(config), lambda k: bool(_IGNORABLE.match(k)))
    return check


def load_ccsr(
    paths: Sequence[Path], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> CcsrModel:
    """Build CCSR v1 from its checkpoint (strict: any missing or unexpected tensor is an error
    naming them), weights in `dtype` on `device`; the schedule buffers stay float32."""
    check = check_ccsr_files(paths)
    if not check.complete or check.config is None:
        raise WeightsError("not a complete CCSR v1: " + ", ".join(str(p) for p in paths) + "\n" + check.summary())
    with torch.device("meta"):
        model = CcsrModel(check.config)
    assign_official(
        model,
        model.official_names(),
        paths,
        device=device,
        dtype=dtype,
        # the schedule is computed; a checkpoint's copy is only checked for its shape
        keep_own=lambda official, state: official in BUFFER_NAMES,
    )
    model.schedule.to(device)
    model.text.model.rebuild_attn_mask(device)
    return model.eval().requires_grad_(False)
