"""The face kind: face-restoration checkpoints (GFPGAN, RestoreFormer, RestoreFormer++, CodeFormer)
dropped into the weights folder, run as a face stage with the MTCNN detector.

A face checkpoint is a single file like a feed-forward network's, so this kind claims the files
whose tensors are a face architecture's (the feed-forward kind then does not list them); the
check reads the file's tensors once per file change, and listing never builds the network.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..device import Precision, pick_device
from ..engines import EngineInfo, Faces, Tiling
from ..engines.options import Option
from ..errors import ParameterError, WeightsError
from ..kinds import CheckReport, Described, EngineKind, ModelEntry, Preset, kinds, photo_model
from ..weights import discover_user_weights
from .engine import FaceRestoreEngine
from .face_models import FaceArch, detect_face_arch, load_face_model, read_state_dict
from .mtcnn import face_detector
from .search import SearchRules

KIND_ID = "face"
#: the largest file read to see whether it is a face model (the released ones are 290-380 MB)
MAX_FACE_FILE_BYTES = 1 << 30
#: bytes a band of the streamed image costs per pixel beyond the faces (uint16 RGBA in and out,
#: float32 blend of the pixels a face reaches)
BYTES_PER_OUTPUT_PIXEL = 32

_RULES = SearchRules()
SETTINGS = (
    Option("weight", float, 0.5, "how much of each face as it was to keep: 0 the restored face, 1 unchanged",
           minimum=0.0, maximum=1.0, per_job=True),
    Option("only_center_face", bool, _RULES.only_center_face, "restore only the face nearest the image's centre",
           per_job=True),
    Option("max_faces", int, _RULES.max_faces,
           "restore at most this many faces, the largest first (the price counts them)",
           minimum=0, maximum=50, per_job=True),
    Option("fidelity", float, 0.5, "CodeFormer's own balance: 0 for quality, 1 for fidelity to the input",
           minimum=0.0, maximum=1.0, per_job=True),
    Option("min_score", float, _RULES.min_score, "the detector's confidence a face needs to be restored",
           minimum=0.5, maximum=1.0),
    Option("min_eye_distance", float, _RULES.min_eye_distance,
           "the smallest face restored: its eyes' distance in pixels", minimum=4.0, maximum=2000.0),
)  # fmt: skip


def face_info(
    arch: FaceArch, parameters: int, digest: str, device: str, precision: Precision, job_options: tuple[Option, ...]
) -> EngineInfo:
    """A face model's description (the same whether listed from its tensors or loaded);
    `job_options`: the kind's, of which CodeFormer's fidelity only for a model that takes it."""
    job_options = tuple(o for o in job_options if o.name != "fidelity" or arch.takes_fidelity)
    return EngineInfo(
        kind=KIND_ID,
        architecture=arch.id,
        native_scale=1,
        scales=(1,),
        precision=precision,
        precisions=(Precision.FP32,),
        device=device,
        parameters=parameters,
        weights_sha256=digest,
        price_class="face",
        tiling=Tiling.REGIONS,
        bytes_per_output_pixel=BYTES_PER_OUTPUT_PIXEL,
        faces=Faces.RESTORES,
        job_options=job_options,
        precision_fixed=True,
        work_unit="pixels of the 512x512 face crops restored",
        price_unit="face",
        licence_note=arch.licence_note,
    )


def _detector(device: Any) -> Any:
    """The MTCNN detector, or a WeightsError saying how to get its weights (the mtcnn wheel)."""
    try:
        return face_detector(device)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"the face detector's weights cannot be read: {exc}") from None


class FaceKind(EngineKind):
    id = KIND_ID
    title = "face restoration (spandrel)"
    settings = SETTINGS
    describes_without_loading = True

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int], FaceArch | None]] = {}
        self._lock = threading.Lock()

    def arch_of(self, path: Path) -> FaceArch | None:
        """The face architecture of a checkpoint file, None for any other file (read once per change)."""
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            seen = self._seen.get(path)
        if seen is not None and seen[0] == key:
            return seen[1]
        if key[0] > MAX_FACE_FILE_BYTES:
            arch = None  # face models are a few hundred MB; a bigger file is someone else's (SDXL...)
        else:
            try:
                state_dict = read_state_dict(path)
                arch = detect_face_arch(state_dict) if isinstance(state_dict, dict) else None
            except Exception:
                arch = None
        with self._lock:
            self._seen[path] = (key, arch)
        return arch

    def folders(self, folder: Path) -> list[Path]:
        """The face checkpoints among the weights folder's files (claimed: no other kind lists
        them); files inside other kinds' model folders are theirs and are not read."""
        others = [sub for other in kinds() if other is not self for sub in other.folders(folder)]
        return [path for path in discover_user_weights(folder, others) if self.arch_of(path) is not None]

    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        """The face checkpoints `folders` claimed (the registry passes every kind's claims: no
        second walk of the folder)."""
        entries = []
        for path in sorted(p for p in claimed if p.is_file() and p.is_relative_to(folder)):
            arch = self.arch_of(path)
            if arch is None:
                continue
            name = path.relative_to(folder).with_suffix("").as_posix()
            description = f"{arch.title} face restoration ({path.name})"
            entries.append(ModelEntry(name, self.id, "file", description, path, faces=Faces.RESTORES,
                                      note=arch.licence_note or ""))  # fmt: skip
        return entries

    def describe(self, entry: ModelEntry, digest: str, settings: Mapping[str, Any]) -> EngineInfo:
        assert entry.path is not None
        state_dict = read_state_dict(entry.path)
        arch = detect_face_arch(state_dict)
        if arch is None:
            raise WeightsError(f"{entry.path}: is no longer a face restoration model")
        parameters = sum(t.numel() for t in state_dict.values() if hasattr(t, "numel"))
        return face_info(arch, parameters, digest, str(pick_device(None)), Precision.FP32, self.job_options(settings))

    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ) -> FaceRestoreEngine:
        path, digest = weights
        chosen = pick_device(device)
        if precision not in (Precision.AUTO, Precision.FP32):
            raise ParameterError(f"{entry.name}: face models run in fp32 (asked for {precision.value})")
        restorer = load_face_model(path, chosen)
        parameters = sum(p.numel() for p in restorer.model.parameters())
        info = face_info(restorer.arch, parameters, digest, str(chosen), Precision.FP32, self.job_options(settings))
        rules = replace(
            _RULES,
            min_score=float(settings.get("min_score", _RULES.min_score)),
            min_eye_distance=float(settings.get("min_eye_distance", _RULES.min_eye_distance)),
        )
        return FaceRestoreEngine(restorer, _detector(chosen).detect, info, rules)

    def detect(self, paths: Sequence[Path]) -> bool:
        return len(paths) == 1 and paths[0].is_file() and self.arch_of(paths[0]) is not None

    def check(self, paths: Sequence[Path]) -> CheckReport:
        restorer = load_face_model(paths[0], pick_device("cpu"))
        _detector(pick_device("cpu"))  # the stage needs the detector too
        summary = "loads strictly with spandrel; used as a face stage after an upscale"
        if restorer.arch.licence_note:
            summary += f". {restorer.arch.licence_note}"
        return CheckReport(f"{restorer.arch.title} face restoration model", True, summary,
                           place="any file directly in the weights folder")  # fmt: skip

    def presets(self, described: Described) -> list[Preset]:
        """The photo model, then faces restored with the first face model that is not
        non-commercial (a preset should be safe to sell)."""
        photo = photo_model(described)
        faces = [e for e, info in described if info.kind == self.id and not info.licence_note]
        if photo is None or not faces:
            return []
        upscaler, face = photo[0].name, faces[0].name
        scales = tuple(s for s in photo[1].scales if s > 1)
        return [
            Preset(
                "upscale-then-faces",
                f"Upscale, then restore faces ({face})",
                f"{upscaler} to the target size, then the faces it finds restored with {face}",
                scales,
                lambda scale: [{"model": upscaler, "scale": scale}, {"face": face}],
            )
        ]


KIND = FaceKind()
