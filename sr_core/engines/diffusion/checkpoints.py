"""Reading latent-diffusion checkpoints (.safetensors, .ckpt/.pth/.pt, Lightning `state_dict`
wrappers, fp16-pruned) and checking a set of files against the layout a model needs, naming
every missing, unexpected and misshapen tensor. Shared by the SUPIR and CCSR engines."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ...errors import WeightsError


def layout_part(key: str, parts: dict[str, tuple[str, ...]]) -> str | None:
    """The part an official key belongs to (the most specific prefix wins)."""
    best: tuple[int, str] | None = None
    for part, prefixes in parts.items():
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
class LayoutCheck:
    """What a set of checkpoint files provides, measured against the layout they imply."""

    files: list[Path]
    parts: dict[str, tuple[str, ...]]  # part name -> official prefixes
    title: str  # "SUPIR", "CCSR v1"
    present: dict[str, int] = field(default_factory=dict)  # part -> tensors found
    expected: dict[str, int] = field(default_factory=dict)  # part -> tensors needed
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # the same tensor in two files
    parameters: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. the configuration read off the files

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def summary(self) -> str:
        lines = []
        for part in self.parts:
            needed = self.expected.get(part, 0)
            found = self.present.get(part, 0)
            state = "ok" if found == needed else ("MISSING" if found == 0 else "INCOMPLETE")
            lines.append(f"  {part:<22} {found:>5}/{needed:<5} {state}")
        lines += [f"  {note}" for note in self.notes]
        # a part that is entirely absent is one line above; name the tensors of the others
        absent = {part for part in self.parts if self.expected.get(part) and not self.present.get(part)}
        missing = [k for k in self.missing if layout_part(k, self.parts) not in absent]
        for title, names in (
            ("missing", missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
            ("in two files (the later file wins)", self.duplicated),
        ):
            if names:
                lines.append(f"  {title} ({len(names)}):\n" + "\n".join(f"    {n}" for n in names))
        verdict = f"a complete {self.title}" if self.complete else f"NOT a complete {self.title}"
        return f"{verdict} ({self.parameters / 1e9:.2f} B parameters found)\n" + "\n".join(lines)


def gather_keys(paths: Sequence[Path]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Names and shapes over several files (a later file overrides), and the names seen twice."""
    found: dict[str, tuple[int, ...]] = {}
    duplicated = []
    for path in paths:
        for key, shape in read_keys(Path(path)).items():
            if key in found:
                duplicated.append(key)
            found[key] = shape
    return found, duplicated


def compare_layout(
    check: LayoutCheck,
    found: dict[str, tuple[int, ...]],
    layout: dict[str, tuple[int, ...]],
    ignorable: Callable[[str], bool],
) -> None:
    """Fill `check` with what `found` provides of `layout` (keys outside every part are
    computed, not loaded: they are neither expected nor missing)."""
    for key, shape in layout.items():
        part = layout_part(key, check.parts)
        if part is None:
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
        (check.ignored if ignorable(key) else check.unexpected).append(key)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def assign_official(
    model: nn.Module,
    names: Mapping[str, str],
    paths: Sequence[Path],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    keep_own: Callable[[str, Mapping[str, torch.Tensor]], bool],
    float32: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load the files (a later one overrides) into a meta-built `model`, every tensor from its
    official name (`names`: ours -> official), reshaped and cast to `dtype` on `device`
    (`float32(ours)` keeps a table in float32). `keep_own(official, file_state)` keeps the
    model's own computed value (schedule tables). Strict: the layout was checked before."""
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(read_checkpoint(Path(path)))
    ours: dict[str, torch.Tensor] = {}
    for key, param in model.state_dict().items():
        official = names[key]
        if keep_own(official, state):
            ours[key] = param
            continue
        wanted = torch.float32 if float32(key) else dtype
        ours[key] = state.pop(official).reshape(param.shape).to(device=device, dtype=wanted)
    model.load_state_dict(ours, strict=True, assign=True)
