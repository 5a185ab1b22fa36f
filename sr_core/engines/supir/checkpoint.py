"""Reading SUPIR checkpoints: the SDXL base (single-file, sgm layout) plus the SUPIR deltas
(SUPIR-v0Q / v0F), as .ckpt or .safetensors, full or fp16-pruned.

`check_files` tells whether a set of files makes a complete SUPIR and names every missing and
unexpected tensor; `load_supir` builds the model (transformer depths read off the files) and
loads it strictly. Nothing is downloaded: text-encoder weights come from the SDXL file, the
tokenizer vocabulary from the open_clip wheel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import WeightsError
from ..diffusion.checkpoints import (
    LayoutCheck,
    assign_official,
    compare_layout,
    gather_keys,
    layout_part,
)
from .config import SupirConfig
from .model import SupirModel, official_shape

#: official prefixes of each part, in the order a user assembles them
PARTS: dict[str, tuple[str, ...]] = {
    "sdxl-unet": ("model.diffusion_model.",),
    "sdxl-vae": ("first_stage_model.",),
    "clip-l": ("conditioner.embedders.0.",),
    "openclip-bigg": ("conditioner.embedders.1.",),
    "supir-control": ("model.control_model.",),
    "supir-connectors": ("model.diffusion_model.project_modules.",),
    "supir-denoise-encoder": ("first_stage_model.denoise_encoder.",),
}
SUPIR_ONLY = ("supir-control", "supir-connectors", "supir-denoise-encoder")

# tensors some exporters add that carry no weights: ignored, reported as such
_IGNORABLE = (
    re.compile(r".*\.position_ids$"),  # CLIP's position index buffer (older transformers)
    re.compile(r"^denoiser\.sigmas$"),  # recomputed from the schedule; compared when present
    re.compile(r"^(model_ema\.|decoder_loss\.|loss\.|lpips\.)"),  # training-only state
)


def part_of(key: str) -> str | None:
    """The SUPIR part an official key belongs to."""
    return layout_part(key, PARTS)


@dataclass
class SupirCheck(LayoutCheck):
    config: SupirConfig | None = None

    @property
    def is_supir(self) -> bool:
        """Files that contain at least one SUPIR-specific part (not a plain SDXL)."""
        return any(self.present.get(p) for p in SUPIR_ONLY)


def expected_layout(config: SupirConfig) -> dict[str, tuple[int, ...]]:
    """Official name -> shape for every tensor of a model with `config` (built on meta)."""
    with torch.device("meta"):
        model = SupirModel(config)
    names = model.official_names()
    return {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}


def _ignorable(key: str) -> bool:
    return any(p.match(key) for p in _IGNORABLE)


def check_files(paths: Sequence[Path], base: SupirConfig | None = None) -> SupirCheck:
    found, duplicated = gather_keys(paths)
    config = SupirConfig.from_state_dict(found, base)
    check = SupirCheck(files=[Path(p) for p in paths], parts=PARTS, title="SUPIR", duplicated=duplicated, config=config)
    depth = config.unet.transformer_depth, config.control.transformer_depth
    check.notes.append(f"transformer depth: unet {list(depth[0])}, control {list(depth[1])}")
    compare_layout(check, found, expected_layout(config), _ignorable)
    return check


def load_supir(
    paths: Sequence[Path],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    base: SupirConfig | None = None,
) -> SupirModel:
    """Build SUPIR from the files (strict: any missing or unexpected tensor is an error naming
    them) in `dtype` on `device`. Later files override earlier ones."""
    check = check_files(paths, base)
    if not check.complete:
        raise WeightsError(
            "these files do not make a complete SUPIR: " + ", ".join(str(p) for p in paths) + "\n" + check.summary()
        )
    with torch.device("meta"):
        model = SupirModel(check.config)
    assign_official(
        model,
        model.official_names(),
        paths,
        device=device,
        dtype=dtype,
        # the sigma table is computed on construction (not meta); a file's copy is used if present
        keep_own=lambda official, state: official == "denoiser.sigmas" and official not in state,
        # it stays float32: it decides timesteps by nearest match
        float32=lambda key: key == "denoiser.sigmas",
    )
    rebuild_buffers(model, device)
    return model.eval().requires_grad_(False)


def rebuild_buffers(model: SupirModel, device: torch.device | str) -> None:
    """Non-persistent buffers are not in any checkpoint: recompute them after a meta build."""
    clip_l = model.conditioner.embedders[0].transformer
    positions = clip_l.config.max_position_embeddings
    clip_l.embeddings.register_buffer(
        "position_ids", torch.arange(positions, device=device).expand((1, -1)), persistent=False
    )
    model.conditioner.embedders[1].model.rebuild_attn_mask(device)
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type == "meta":
            raise WeightsError(f"internal: buffer {name} was not materialised")
