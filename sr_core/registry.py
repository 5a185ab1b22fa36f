"""Model names: every model the engine kinds find (the embedded defaults and the weights folder).

`ModelRegistry.entries()` is cheap (names and files only); `describe()` and `load_engine()` read
or load the weights. Loaded engines are cached per (model, device, precision) and invalidated
when the file changes. Which kind a model is and how it loads is the kind's business
(sr_core.kinds): nothing here names one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import kinds
from .device import Precision
from .engines import FACE_NOTES, Engine, EngineInfo
from .errors import SatscaleError, UnknownModelError
from .kinds import EngineKind, ModelEntry
from .weights import weights_dir

__all__ = ["ModelDescription", "ModelEntry", "ModelRegistry"]

_SOURCE_ORDER = {"builtin": 0, "file": 1, "folder": 2}


@dataclass(frozen=True)
class ModelDescription:
    entry: ModelEntry
    info: EngineInfo | None
    error: str | None = None  # a broken file is listed with its error, not hidden

    @property
    def faces(self) -> str:
        """What the model does to faces: the entry's knowledge wins over the engine's default."""
        if self.entry.faces is not None:
            return self.entry.faces.value
        return self.info.faces.value if self.info else "unknown"

    @property
    def note(self) -> str:
        """What the model is for and what it does to faces, in a sentence or two."""
        faces = self.entry.faces or (self.info.faces if self.info else None)
        parts = [self.entry.note] if self.entry.note else []
        if faces is not None:
            parts.append(FACE_NOTES[faces])
        return " ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready listing row (CLI `models --json` and `GET /v1/models`)."""
        entry, info = self.entry, self.info
        row: dict = {"name": entry.name, "source": entry.source, "kind": entry.kind, "description": entry.description}
        if entry.path is not None:
            row["path"] = entry.path.name
        if info is None:
            row["error"] = self.error
            return row
        return row | info.describe() | {"faces": self.faces, "note": self.note}


class ModelRegistry:
    def __init__(self, folder: Path | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """`settings`: per engine kind id, how its models run (checked by the kind, so a wrong
        name or value is refused here, at start)."""
        self.folder = folder or weights_dir()
        self.settings = kinds.parse_settings(settings)
        self._engines: dict[tuple, Engine] = {}  # (name, weights sha256, device, resolved precision)
        self._resolved: dict[tuple, Precision] = {}  # (name, weights sha256, device, requested) -> resolved
        # listings of kinds that describe from file headers: once per file change
        self._rows: dict[tuple, ModelDescription] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        every = kinds.kinds()
        claimed = [sub for kind in every for sub in kind.folders(self.folder)]
        found: list[ModelEntry] = []
        taken: set[str] = set()
        for kind in every:
            for entry in kind.discover(self.folder, claimed):
                if entry.name not in taken:
                    taken.add(entry.name)
                    found.append(entry)
        return sorted(found, key=lambda e: _SOURCE_ORDER.get(e.source, len(_SOURCE_ORDER)))

    def get(self, name: str) -> ModelEntry:
        entries = self.entries()
        for entry in entries:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in entries)
        raise UnknownModelError(f"no model named {name!r}; available: {known}")

    def kind_of(self, entry: ModelEntry) -> EngineKind:
        return kinds.kind(entry.kind)

    def settings_for(self, entry: ModelEntry) -> dict[str, Any]:
        return self.settings.get(entry.kind, {})

    def weights_file(self, entry: ModelEntry) -> tuple[Path, str]:
        """The checkpoint behind an entry and its sha256 (builtins are imported on first use;
        a multi-file model gives its folder and the digest over all its files)."""
        return self.kind_of(entry).weights(entry, self.folder)

    def load_engine(self, name: str, device: str | None = None, precision: Precision | str = Precision.AUTO) -> Engine:
        """The engine for a model, built once per (weights, device, resolved precision): asking
        for `auto` and for the precision it resolves to gives the same engine."""
        entry = self.get(name)
        wanted = Precision.parse(precision)
        weights = self.weights_file(entry)
        alias = (name, weights[1], device, wanted)
        with self._lock:
            resolved = self._resolved.get(alias)
            engine = self._engines.get((name, weights[1], device, resolved)) if resolved else None
            if engine is None:
                # an engine too large to keep twice (it says so) gives way to its other variant
                if any(k[0] == name and e.info.precision_fixed for k, e in self._engines.items()):
                    self._engines = {k: e for k, e in self._engines.items() if k[0] != name}
                try:
                    engine = self.kind_of(entry).load(entry, weights, device, wanted, self.settings_for(entry))
                except SatscaleError as exc:
                    raise type(exc)(self._relative(str(exc))) from None
                self._engines[(name, weights[1], device, engine.info.precision)] = engine
                self._resolved[alias] = engine.info.precision
            return engine

    def _relative(self, message: str) -> str:
        """Errors name files inside the weights folder by their place in it, not by the server's
        absolute paths (the listing and the API show them to anyone)."""
        return message.replace(f"{self.folder}/", "").replace(str(self.folder), "weights folder")

    def describe(self, name: str) -> ModelDescription:
        entry = self.get(name)
        kind = self.kind_of(entry)
        if not kind.describes_without_loading:
            try:
                return ModelDescription(entry, self.load_engine(name).info)
            except SatscaleError as exc:
                return ModelDescription(entry, None, str(exc))
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entry.files)
        key = (entry.name, entry.kind, stats)
        if key not in self._rows:
            self._rows = {k: v for k, v in self._rows.items() if k[0] != entry.name}
            self._rows[key] = self._describe_from_headers(kind, entry)
        return self._rows[key]

    def _describe_from_headers(self, kind: EngineKind, entry: ModelEntry) -> ModelDescription:
        try:
            digest = self.weights_file(entry)[1]
            return ModelDescription(entry, kind.describe(entry, digest, self.settings_for(entry)))
        except (SatscaleError, OSError, ValueError, KeyError) as exc:  # a damaged folder is listed, not a 500
            text = str(exc) if isinstance(exc, SatscaleError) else f"{type(exc).__name__}: {exc}"
            return ModelDescription(entry, None, self._relative(text))

    def describe_all(self) -> list[ModelDescription]:
        return [self.describe(entry.name) for entry in self.entries()]

    def presets(self) -> list[kinds.Preset]:
        """The presets the kinds offer for the models that load here (a broken one offers none)."""
        described = [(d.entry, d.info) for d in self.describe_all() if d.info is not None]
        return kinds.presets(described)
