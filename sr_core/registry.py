"""Model names: the embedded defaults plus every checkpoint in weights/.

`ModelRegistry.entries()` is cheap (names and files only); `describe()` and
`load_engine()` load the weights. Loaded engines are cached per (model, device,
precision) and invalidated when the file changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .device import Precision
from .engines import Engine, EngineInfo
from .engines.esrgan import SpandrelEngine, load_descriptor
from .errors import SatscaleError, UnknownModelError
from .weights import (
    BUILTIN_SOURCES,
    builtin_weights,
    combined_sha256,
    discover_diffusion_models,
    discover_user_weights,
    sha256_file,
    weights_dir,
)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "builtin", "file" or "supir" (a folder of SDXL + SUPIR checkpoints)
    description: str
    path: Path | None = None  # user checkpoint; builtins resolve their cached file on load
    files: tuple[Path, ...] = ()  # the checkpoints of a multi-file model


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


DIFFUSION_TITLES = {"supir": "SUPIR diffusion restoration", "ccsr": "CCSR content-consistent diffusion upscaling"}


class ModelRegistry:
    def __init__(
        self, folder: Path | None = None, supir: dict[str, Any] | None = None, ccsr: dict[str, Any] | None = None
    ) -> None:
        """`supir`, `ccsr`: how those models run (SupirSetup.from_settings, ccsr_options)."""
        self.folder = folder or weights_dir()
        self.supir = supir
        self.ccsr = ccsr
        self._engines: dict[tuple, Engine] = {}  # (name, weights sha256, device, resolved precision)
        self._resolved: dict[tuple, Precision] = {}  # (name, weights sha256, device, requested) -> resolved
        # diffusion listings build the model tree on the meta device: once per file change
        self._diffusion_rows: dict[tuple, ModelDescription] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        entries = [ModelEntry(s.name, "builtin", s.description) for s in BUILTIN_SOURCES]
        taken = {e.name for e in entries}
        for path in discover_user_weights(self.folder):
            name = _user_name(path, self.folder, taken)
            taken.add(name)
            entries.append(ModelEntry(name, "file", f"user checkpoint {path.name}", path))
        for name, (family, files) in discover_diffusion_models(self.folder).items():
            if name in taken:
                continue
            taken.add(name)
            listed = ", ".join(p.name for p in files)
            description = f"{DIFFUSION_TITLES[family]} ({listed})"
            entries.append(ModelEntry(name, family, description, self.folder / name, tuple(files)))
        return entries

    def get(self, name: str) -> ModelEntry:
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries())
        raise UnknownModelError(f"no model named {name!r}; available: {known}")

    def weights_file(self, entry: ModelEntry) -> tuple[Path, str]:
        """The checkpoint behind an entry and its sha256 (builtins are imported on first use;
        a multi-file model gives its folder and the digest over all its files)."""
        if entry.files:
            return entry.path or entry.files[0].parent, combined_sha256(list(entry.files))
        if entry.path is None:
            cached = builtin_weights(entry.name, self.folder)
            return cached.path, cached.sha256
        return entry.path, sha256_file(entry.path)

    def load_engine(self, name: str, device: str | None = None, precision: Precision | str = Precision.AUTO) -> Engine:
        """The engine for a model, built once per (weights, device, resolved precision): asking
        for `auto` and for the precision it resolves to gives the same engine."""
        entry = self.get(name)
        wanted = Precision.parse(precision)
        path, digest = self.weights_file(entry)
        alias = (name, digest, device, wanted)
        with self._lock:
            resolved = self._resolved.get(alias)
            engine = self._engines.get((name, digest, device, resolved)) if resolved else None
            if engine is None:
                # an engine too large to keep twice (it says so) gives way to its other variant
                if any(k[0] == name and e.info.precision_fixed for k, e in self._engines.items()):
                    self._engines = {k: e for k, e in self._engines.items() if k[0] != name}
                try:
                    engine = self._build(entry, path, digest, device, wanted)
                except SatscaleError as exc:
                    raise type(exc)(self._relative(str(exc))) from None
                self._engines[(name, digest, device, engine.info.precision)] = engine
                self._resolved[alias] = engine.info.precision
            return engine

    def _relative(self, message: str) -> str:
        """Errors name files inside the weights folder by their place in it, not by the server's
        absolute paths (the listing and the API show them to anyone)."""
        return message.replace(f"{self.folder}/", "").replace(str(self.folder), "weights folder")

    def _build(self, entry: ModelEntry, path: Path, digest: str, device: str | None, precision: Precision) -> Engine:
        if entry.source == "ccsr":
            from .engines.ccsr.engine import CcsrEngine

            return CcsrEngine(
                entry.files,
                weights_sha256=digest,
                device=device,
                precision=precision,
                settings=self.ccsr,
                folder=entry.path,
            )
        if entry.source == "supir":
            from .engines.supir.engine import SupirEngine, SupirSetup  # heavy imports, only when used

            setup = SupirSetup.from_settings(self.supir)
            return SupirEngine(
                entry.files,
                weights_sha256=digest,
                device=device,
                precision=precision,
                options=setup.options,
                offload=setup.offload,
                fp8=setup.fp8,
            )
        return SpandrelEngine(load_descriptor(path), weights_sha256=digest, device=device, precision=precision)

    def describe(self, name: str) -> ModelDescription:
        entry = self.get(name)
        if entry.source in DIFFUSION_TITLES:
            stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entry.files)
            key = (entry.name, entry.source, stats)
            if key not in self._diffusion_rows:
                self._diffusion_rows = {k: v for k, v in self._diffusion_rows.items() if k[0] != entry.name}
                self._diffusion_rows[key] = self._describe_diffusion(entry)
            return self._diffusion_rows[key]
        try:
            return ModelDescription(entry, self.load_engine(name).info)
        except SatscaleError as exc:
            return ModelDescription(entry, None, str(exc))

    def _describe_diffusion(self, entry: ModelEntry) -> ModelDescription:
        """Listing a diffusion model reads tensor names and shapes only (loading billions of
        parameters just to list them would take minutes)."""
        from .device import pick_device, resolve_precision
        from .engines.diffusion.engine import diffusion_info

        if entry.source == "ccsr":
            from .engines.ccsr.checkpoint import check_ccsr_files as check_files
            from .engines.ccsr.v2 import check_v2_folder, is_v2_folder

            if entry.path is not None and is_v2_folder(entry.path):
                path = entry.path
                check_files = lambda _files: check_v2_folder(path)  # noqa: E731
        else:
            from .engines.supir.checkpoint import check_files
        try:
            check = check_files(list(entry.files))
            if not check.complete:
                return ModelDescription(entry, None, self._relative(f"incomplete {check.title}: " + check.summary()))
            device = pick_device(None)
            precision = resolve_precision(Precision.AUTO, device, True, True)
            digest = self.weights_file(entry)[1]
            info = diffusion_info(entry.source, check.title.split()[0], precision, device, check.parameters, digest)
            return ModelDescription(entry, info)
        except (SatscaleError, OSError, ValueError, KeyError) as exc:  # a damaged folder is listed, not a 500
            return ModelDescription(entry, None, self._relative(f"{type(exc).__name__}: {exc}"))

    def describe_all(self) -> list[ModelDescription]:
        return [self.describe(entry.name) for entry in self.entries()]
