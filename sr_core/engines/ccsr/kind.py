"""CCSR as an engine kind: a folder weights/ccsr*/ holding the v1 checkpoint, or the v2 release's
diffusers folders. Light to import: the model code loads only when an engine is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...device import Precision, pick_device, resolve_precision
from ...errors import WeightsError
from ...kinds import CheckReport, FolderKind, ModelEntry, checkpoint_files
from ..options import Option

COLOR_FIXES = ("adain", "wavelet", "none")
SETTINGS = (
    Option("preset", str, "multi_step", "v2 sampler preset", choices=("multi_step", "one_step"), per_job=True),
    Option("steps", int, None, "v1 spaced steps of the full chain (default 45)", minimum=3, maximum=1000, per_job=True),
    Option(
        "seed",
        int,
        0,
        "random seed: the same input and seed give the same image",
        minimum=0,
        maximum=2**32 - 1,
        per_job=True,
    ),
    Option("prompt", str, "", "what the image shows (the official script uses none)", per_job=True),
    Option("color_fix", str, "adain", "colour correction towards the input", choices=COLOR_FIXES, per_job=True),
    Option("negative", str, "", "what the image should not show"),
    Option("strength", float, 1.0, "control strength", minimum=0.0, maximum=2.0),
    Option("min_side", int, 512, "v1: short side the model works at", minimum=64, maximum=2048),
    Option("process_size", int, 512, "v2: short side the model works at", minimum=64, maximum=2048),
    Option("sampler_tile", int, 512, "sampler tile in image pixels", minimum=16, maximum=2048),
    Option("sampler_stride", int, 256, "sampler tile stride in image pixels", minimum=8, maximum=2048),
    Option("t_max", float, None, "v1: re-noise point as a fraction of the steps", minimum=0.0, maximum=1.0),
    Option("t_min", float, None, "v1: loop end as a fraction of the steps", minimum=0.0, maximum=1.0),
    Option("cfg_scale", float, None, "v1: classifier-free guidance (1: none)", minimum=0.0, maximum=30.0),
    Option("offload", bool, False, "keep only the running stage on the GPU"),
)


def _is_v2(entry_or_folder: Path | None) -> bool:
    from .v2 import is_v2_folder

    return entry_or_folder is not None and entry_or_folder.is_dir() and is_v2_folder(entry_or_folder)


class CcsrKind(FolderKind):
    id = "ccsr"
    title = "CCSR content-consistent diffusion upscaling"
    prefix = "ccsr"
    settings = SETTINGS

    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ):
        from .engine import CcsrEngine  # heavy imports, only when used

        return CcsrEngine(
            entry.files,
            weights_sha256=weights[1],
            device=device,
            precision=precision,
            settings=settings,
            folder=entry.path,
            job_options=self.job_options(settings),
        )

    def _layout(self, paths: Sequence[Path]):
        if len(paths) == 1 and _is_v2(paths[0]):
            from .v2 import check_v2_folder

            return check_v2_folder(paths[0])
        from .checkpoint import check_ccsr_files

        return check_ccsr_files(checkpoint_files(paths))

    def describe(self, entry: ModelEntry, digest: str, settings: Mapping[str, Any]):
        """From tensor names and shapes only."""
        from ..diffusion.engine import diffusion_info
        from .engine import JOB_OPTIONS

        v2 = _is_v2(entry.path)
        check = self._layout([entry.path] if v2 and entry.path else list(entry.files))
        if not check.complete:
            raise WeightsError(f"incomplete {check.title}: " + check.summary())
        device = pick_device(None)
        precision = resolve_precision(Precision.AUTO, device, True, True)
        offered = tuple(o for o in self.job_options(settings) if o.name in JOB_OPTIONS[2 if v2 else 1])
        return diffusion_info(self.id, "CCSR", precision, device, check.parameters, digest, offered)

    def detect(self, paths: Sequence[Path]) -> bool:
        if len(paths) == 1 and _is_v2(paths[0]):
            return True
        from ..diffusion.checkpoints import gather_keys

        files = checkpoint_files(paths)
        if not files:
            return False
        keys, _ = gather_keys(files)
        # CCSR v1 keeps its ControlNet and condition encoder at the top level (SDXL: under model.*)
        return any(k.startswith(("control_model.", "cond_encoder.")) for k in keys)

    def check(self, paths: Sequence[Path]) -> CheckReport:
        check = self._layout(paths)
        return CheckReport(check.title, check.complete, check.summary(), place=f"{self.prefix}*/")


KIND = CcsrKind()
