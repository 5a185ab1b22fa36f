"""Model names: the embedded defaults plus every checkpoint in weights/.

`ModelRegistry.entries()` is cheap (names and files only); `describe()` and
`load_engine()` load the weights. Loaded engines are cached per (model, device,
precision) and invalidated when the file changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .device import Precision
from .engines import EngineInfo
from .engines.esrgan import SpandrelEngine, load_descriptor
from .errors import ParameterError, SatscaleError, UnknownModelError
from .weights import BUILTIN_SOURCES, builtin_weights, discover_user_weights, sha256_file, weights_dir


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "builtin" or "file"
    description: str
    path: Path | None = None  # user checkpoint; builtins resolve their cached file on load


@dataclass(frozen=True)
class ModelDescription:
    entry: ModelEntry
    info: EngineInfo | None
    error: str | None = None  # a broken file is listed with its error, not hidden

    def to_dict(self) -> dict:
        """JSON-ready listing row (CLI `models --json` and `GET /v1/models`)."""
        entry, info = self.entry, self.info
        row: dict = {"name": entry.name, "source": entry.source, "description": entry.description}
        if entry.path is not None:
            row["path"] = entry.path.name
        if info is None:
            row["error"] = self.error
            return row
        return row | {
            "architecture": info.architecture,
            "native_scale": info.native_scale,
            "scales": list(info.scales),
            "precision": info.precision.value,
            "precisions": [p.value for p in info.precisions],
            "parameters": info.parameters,
            "price_class": info.price_class,
            "weights_sha256": info.weights_sha256,
        }


def _user_name(path: Path, folder: Path, taken: set[str]) -> str:
    relative = path.relative_to(folder)
    name = relative.with_suffix("").as_posix()
    return name if name not in taken else relative.as_posix()


class ModelRegistry:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or weights_dir()
        self._engines: dict[tuple, SpandrelEngine] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        entries = [ModelEntry(s.name, "builtin", s.description) for s in BUILTIN_SOURCES]
        taken = {e.name for e in entries}
        for path in discover_user_weights(self.folder):
            name = _user_name(path, self.folder, taken)
            taken.add(name)
            entries.append(ModelEntry(name, "file", f"user checkpoint {path.name}", path))
        return entries

    def get(self, name: str) -> ModelEntry:
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries())
        raise UnknownModelError(f"no model named {name!r}; available: {known}")

    def weights_file(self, entry: ModelEntry) -> tuple[Path, str]:
        """The checkpoint behind an entry and its sha256 (builtins are imported on first use)."""
        if entry.path is None:
            cached = builtin_weights(entry.name, self.folder)
            return cached.path, cached.sha256
        return entry.path, sha256_file(entry.path)

    def load_engine(
        self, name: str, device: str | None = None, precision: Precision | str = Precision.AUTO
    ) -> SpandrelEngine:
        entry = self.get(name)
        try:
            wanted = Precision(precision)
        except ValueError:
            choices = ", ".join(p.value for p in Precision)
            raise ParameterError(f"precision {precision!r} is not one of {choices}") from None
        path, digest = self.weights_file(entry)
        key = (name, digest, device, wanted)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = SpandrelEngine(
                    load_descriptor(path), weights_sha256=digest, device=device, precision=precision
                )
                self._engines = {k: v for k, v in self._engines.items() if k[0] != name}
                self._engines[key] = engine
            return engine

    def describe(self, name: str) -> ModelDescription:
        entry = self.get(name)
        try:
            return ModelDescription(entry, self.load_engine(name).info)
        except SatscaleError as exc:
            return ModelDescription(entry, None, str(exc))

    def describe_all(self) -> list[ModelDescription]:
        return [self.describe(entry.name) for entry in self.entries()]
