"""The registry of engine kinds: how models on disk become engines.

As spandrel's ArchRegistry does for architectures, each kind says whether files are its own
(`detect`, and `folders` for kinds whose model is a folder of parts), how to list them
(`discover`, `describe`) and how to `load` them; it declares its settings once (`settings`). The
model registry, the command line and the service ask the kinds and never name one: a new kind
is one `register` call. Kinds are tried in registration order, most specific first.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .device import Precision
from .engines import Engine, EngineInfo, Faces, Tiling
from .engines.options import Option, parse_values
from .errors import ParameterError, SatscaleError
from .weights import WEIGHT_SUFFIXES, combined_sha256, sha256_file

#: the kinds that ship with Satscale, most specific first (modules with a `KIND`)
DEFAULT_KINDS = (
    "sr_core.engines.ccsr.kind",
    "sr_core.engines.supir.kind",
    "sr_core.faces.kind",  # before the feed-forward kind: it claims the face checkpoints among the files
    "sr_core.engines.esrgan",
    "sr_core.engines.resample",  # claims no files: its one model needs no weights
)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # the id of the engine kind that loads it
    source: str  # "builtin" (embedded default), "file" (a checkpoint) or "folder" (a model in parts)
    description: str
    path: Path | None = None  # user checkpoint or folder; builtins resolve their cached file on load
    files: tuple[Path, ...] = ()  # the checkpoints of a multi-file model
    #: what a known model does to faces (None: what its engine says) and what it is for
    faces: Faces | None = None
    note: str = ""


@dataclass(frozen=True)
class CheckReport:
    """Whether files make a complete model of a kind, and what is missing (`models check`)."""

    title: str
    complete: bool
    summary: str
    #: where under the weights folder the files go to be used as a model
    place: str | None = None


@dataclass(frozen=True)
class Preset:
    """A pipeline users would otherwise build by hand, offered by the kind whose models it needs
    (only when they are there and complete)."""

    id: str
    title: str
    description: str
    scales: tuple[int, ...]  # the total scales it offers
    build: Callable[[int], list[dict[str, Any]]]  # total scale -> the stages, as a request spells them

    def pipeline(self, scale: int | None = None) -> list[dict[str, Any]]:
        chosen = self.scales[-1] if scale is None else scale
        if chosen not in self.scales:
            offered = ", ".join(f"x{s}" for s in self.scales)
            raise ParameterError(f"preset {self.id} offers {offered}, not x{chosen}")
        return self.build(chosen)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "scales": list(self.scales),
            "pipelines": {str(scale): self.build(scale) for scale in self.scales},
        }


#: what presets are chosen from: every model that loads, with its description
Described = Sequence[tuple[ModelEntry, EngineInfo]]


class EngineKind(ABC):
    id: str
    title: str
    #: settings of this kind's engines (SATSCALE_<ID>_<NAME>, the CLI's flags); the per_job ones
    #: are also what one request may set for its own run
    settings: tuple[Option, ...] = ()
    #: True when listing reads file headers only: the registry then caches the description per
    #: file change instead of loading the engine
    describes_without_loading = False

    def folders(self, folder: Path) -> list[Path]:
        """Paths in the weights folder this kind owns (sub-folders, one model each, or single
        files it recognises): other kinds do not list what is inside them."""
        return []

    @abstractmethod
    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        """The models of this kind in the weights folder; files inside `claimed` folders belong
        to other models."""

    @abstractmethod
    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ) -> Engine:
        """The engine for an entry from its weights (`weights()`: path, sha256), with this kind's
        checked settings."""

    def weights(self, entry: ModelEntry, folder: Path) -> tuple[Path, str]:
        """The checkpoint behind an entry and its sha256 (a multi-file model: its folder and one
        digest over all its files)."""
        if entry.files:
            return entry.path or entry.files[0].parent, combined_sha256(list(entry.files))
        if entry.path is None:
            raise ParameterError(f"{entry.name} has no weights file")
        return entry.path, sha256_file(entry.path)

    def describe(self, entry: ModelEntry, digest: str, settings: Mapping[str, Any]) -> EngineInfo:
        """The description without loading the weights: asked only of a kind that sets
        describes_without_loading (FolderKind requires it); the others are described by loading."""
        raise NotImplementedError(f"{self.id} is described by loading its engine")

    def detect(self, paths: Sequence[Path]) -> bool:
        """True when these files (or one folder) are a model of this kind, complete or not."""
        return False

    def check(self, paths: Sequence[Path]) -> CheckReport:
        """Whether the files make a complete model, naming what is missing: asked only of the
        kind whose `detect` recognised them (a kind that detects nothing is never asked)."""
        raise NotImplementedError(f"{self.id} recognises no files to check")

    def parse_settings(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        return parse_values(self.settings, values, f"{self.title} settings")

    def job_options(self, settings: Mapping[str, Any]) -> tuple[Option, ...]:
        """The settings a request may set for its own run, with this server's values as defaults."""
        return tuple(option.with_default(settings.get(option.name, option.default))
                     for option in self.settings if option.per_job)  # fmt: skip

    def presets(self, described: Described) -> list[Preset]:
        """Pipelines this kind offers, given every model that loads (none by default)."""
        return []


class FolderKind(EngineKind):
    """A kind whose model is a folder of parts: weights/<prefix>*/ (any case)."""

    prefix: str
    describes_without_loading = True

    def folders(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower().startswith(self.prefix))

    def order_files(self, files: list[Path]) -> list[Path]:
        """The order the parts load in (later files override earlier ones)."""
        return files

    @abstractmethod
    def describe(self, entry: ModelEntry, digest: str, settings: Mapping[str, Any]) -> EngineInfo:
        """From the files' headers: listing a multi-GB model must not load it."""

    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        entries = []
        for sub in self.folders(folder):
            files = [p for p in sorted(sub.rglob("*")) if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
            files = self.order_files(files)
            if files:
                listed = ", ".join(p.name for p in files)
                entries.append(ModelEntry(sub.name, self.id, "folder", f"{self.title} ({listed})", sub, tuple(files)))
        return entries


def checkpoint_files(paths: Sequence[Path]) -> list[Path]:
    """The checkpoint files among paths (folders searched recursively, in name order)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        elif path.is_file():
            files.append(path)
    return files


_kinds: list[EngineKind] = []
_lock = threading.Lock()


def register(kind: EngineKind, before: str | None = None) -> None:
    """Add a kind (tried before the kind named `before`, else last). A kind with the same id
    is replaced."""
    with _lock:
        _load_defaults()
        _kinds[:] = [k for k in _kinds if k.id != kind.id]
        ids = [k.id for k in _kinds]
        _kinds.insert(ids.index(before) if before in ids else len(_kinds), kind)


def _load_defaults() -> None:
    if not _kinds:
        _kinds.extend(importlib.import_module(module).KIND for module in DEFAULT_KINDS)


def kinds() -> tuple[EngineKind, ...]:
    with _lock:
        _load_defaults()
        return tuple(_kinds)


def kind(kind_id: str) -> EngineKind:
    for candidate in kinds():
        if candidate.id == kind_id:
            return candidate
    raise ParameterError(f"no engine kind {kind_id!r} (known: {', '.join(k.id for k in kinds())})")


def detect(paths: Sequence[Path]) -> EngineKind | None:
    """The first kind that recognises the files (`models check`); a kind that cannot read them
    does not recognise them (a later kind's check says what is wrong with them)."""
    for candidate in kinds():
        try:
            if candidate.detect(paths):
                return candidate
        except (SatscaleError, OSError, ValueError):
            continue
    return None


def parse_settings(values: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Settings per kind id, each checked by its kind (unknown kinds and names refused)."""
    return {kind_id: kind(kind_id).parse_settings(chosen) for kind_id, chosen in (values or {}).items()}


def photo_model(described: Described) -> tuple[ModelEntry, EngineInfo] | None:
    """The model a photo pipeline starts with: one the core tiles that keeps faces, built-in first."""
    fits = [(e, i) for e, i in described if i.tiling is Tiling.EXTERNAL and (e.faces or i.faces) is Faces.KEEPS]
    return min(fits, key=lambda pair: pair[0].source != "builtin", default=None)


def presets(described: Described) -> list[Preset]:
    """Every preset the kinds offer for these models."""
    return [preset for candidate in kinds() for preset in candidate.presets(described)]


def settings_by_name() -> dict[str, list[tuple[EngineKind, Option]]]:
    """Every setting name and the kinds that take it (one CLI flag per name)."""
    names: dict[str, list[tuple[EngineKind, Option]]] = {}
    for candidate in kinds():
        for option in candidate.settings:
            names.setdefault(option.name, []).append((candidate, option))
    return names
