"""Reading SUPIR checkpoints: the SDXL base (single-file, sgm layout) plus the SUPIR deltas
(SUPIR-v0Q / v0F), as .ckpt or .safetensors, full or fp16-pruned.

`check_files` tells whether a set of files makes a complete SUPIR and names every missing and
unexpected tensor; `load_supir` builds the model (transformer depths read off the files) and
loads it strictly. Nothing is downloaded: text-encoder weights come from the SDXL file, the
tokenizer vocabulary from the open_clip wheel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ...errors import WeightsError
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
    """The part an official key belongs to (the most specific prefix wins)."""
    best: tuple[int, str] | None = None
    for part, prefixes in PARTS.items():
        for prefix in prefixes:
            if key.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), part)
    return best[1] if best else None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return obj


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors / .ckpt / .pth / .pt file (memory-mapped where possible)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if suffix in (".ckpt", ".pth", ".pt"):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return _unwrap(obj, path)
    except WeightsError:
        raise
    except Exception as exc:  # corrupt, truncated, or a pickle with Python objects in it
        raise WeightsError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    raise WeightsError(f"{path}: unknown checkpoint type {suffix!r} (.safetensors, .ckpt, .pth, .pt)")


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, without reading the data where the format allows."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
        except Exception as exc:
            raise WeightsError(f"{path}: cannot be read as safetensors ({exc})") from exc
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}


@dataclass
class SupirCheck:
    """What a set of files provides, measured against the layout they imply."""

    files: list[Path]
    config: SupirConfig
    present: dict[str, int] = field(default_factory=dict)  # part -> tensors found
    expected: dict[str, int] = field(default_factory=dict)  # part -> tensors needed
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # the same tensor in two files
    parameters: int = 0

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def is_supir(self) -> bool:
        """Files that contain at least one SUPIR-specific part (not a plain SDXL)."""
        return any(self.present.get(p) for p in SUPIR_ONLY)

    def summary(self) -> str:
        lines = []
        for part in PARTS:
            needed = self.expected.get(part, 0)
            found = self.present.get(part, 0)
            state = "ok" if found == needed else ("MISSING" if found == 0 else "INCOMPLETE")
            lines.append(f"  {part:<22} {found:>5}/{needed:<5} {state}")
        depth = self.config.unet.transformer_depth, self.config.control.transformer_depth
        lines.append(f"  transformer depth: unet {list(depth[0])}, control {list(depth[1])}")
        # a part that is entirely absent is one line above; name the tensors of the others
        absent = {part for part in PARTS if self.expected.get(part) and not self.present.get(part)}
        missing = [k for k in self.missing if part_of(k) not in absent]
        for title, names in (
            ("missing", missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
            ("in two files (the later file wins)", self.duplicated),
        ):
            if names:
                lines.append(f"  {title} ({len(names)}):\n" + "\n".join(f"    {n}" for n in names))
        verdict = "a complete SUPIR" if self.complete else "NOT a complete SUPIR"
        return f"{verdict} ({self.parameters / 1e9:.2f} B parameters found)\n" + "\n".join(lines)


def expected_layout(config: SupirConfig) -> dict[str, tuple[int, ...]]:
    """Official name -> shape for every tensor of a model with `config` (built on meta)."""
    with torch.device("meta"):
        model = SupirModel(config)
    names = model.official_names()
    return {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}


def _ignorable(key: str) -> bool:
    return any(p.match(key) for p in _IGNORABLE)


def check_files(paths: Sequence[Path], base: SupirConfig | None = None) -> SupirCheck:
    found: dict[str, tuple[int, ...]] = {}
    seen_in: dict[str, Path] = {}
    duplicated = []
    for path in paths:
        for key, shape in read_keys(Path(path)).items():
            if key in seen_in:
                duplicated.append(key)
            found[key] = shape
            seen_in[key] = Path(path)
    config = SupirConfig.from_state_dict(found, base)
    layout = expected_layout(config)
    check = SupirCheck(files=[Path(p) for p in paths], config=config, duplicated=duplicated)
    for key, shape in layout.items():
        part = part_of(key)
        if part is None:  # denoiser.sigmas: computed
            continue
        check.expected[part] = check.expected.get(part, 0) + 1
        if key not in found:
            check.missing.append(key)
            continue
        check.present[part] = check.present.get(part, 0) + 1
        if found[key] != shape:
            check.wrong_shape.append(f"{key}: file {list(found[key])}, expected {list(shape)}")
        else:
            check.parameters += _numel(shape)
    for key in found:
        if key in layout:
            continue
        (check.ignored if _ignorable(key) else check.unexpected).append(key)
    return check


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


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
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(read_checkpoint(Path(path)))
    with torch.device("meta"):
        model = SupirModel(check.config)
    names = model.official_names()
    ours: dict[str, torch.Tensor] = {}
    for key, param in model.state_dict().items():
        official = names[key]
        if official == "denoiser.sigmas" and official not in state:
            ours[key] = param  # computed on construction, not meta
            continue
        ours[key] = state.pop(official).reshape(param.shape).to(device=device, dtype=_dtype_for(key, dtype))
    model.load_state_dict(ours, strict=True, assign=True)
    rebuild_buffers(model, device)
    return model.eval().requires_grad_(False)


def _dtype_for(key: str, dtype: torch.dtype) -> torch.dtype:
    # the sigma table stays float32: it decides timesteps by nearest match
    return torch.float32 if key == "denoiser.sigmas" else dtype


def rebuild_buffers(model: SupirModel, device: torch.device | str) -> None:
    """Non-persistent buffers are not in any checkpoint: recompute them after a meta build."""
    clip_l = model.conditioner.embedders[0].transformer
    positions = clip_l.config.max_position_embeddings
    clip_l.embeddings.register_buffer(
        "position_ids", torch.arange(positions, device=device).expand((1, -1)), persistent=False
    )
    tower = model.conditioner.embedders[1].model
    n = tower.positional_embedding.shape[0]
    mask = torch.full((n, n), float("-inf"), device=device).triu_(1)
    tower.register_buffer("attn_mask", mask, persistent=False)
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type == "meta":
            raise WeightsError(f"internal: buffer {name} was not materialised")
