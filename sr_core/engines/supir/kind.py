"""SUPIR as an engine kind: a folder weights/supir*/ holding the SDXL base and the SUPIR
checkpoint. Light to import: the model code loads only when an engine is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...device import Precision, pick_device, resolve_precision
from ...errors import WeightsError
from ...kinds import CheckReport, Described, FolderKind, ModelEntry, Preset, checkpoint_files, photo_model
from ..options import Option
from .sampling import PRESETS

COLOR_FIXES = ("wavelet", "adain", "none")
SETTINGS = (
    Option("preset", str, "quality", "sampler preset", choices=tuple(PRESETS), per_job=True),
    Option("steps", int, None, "sampler steps (default: the preset's)", minimum=1, maximum=200, per_job=True),
    Option(
        "seed",
        int,
        0,
        "random seed: the same input and seed give the same image",
        minimum=0,
        maximum=2**32 - 1,
        per_job=True,
    ),
    Option("prompt", str, "", "what the image shows, e.g. 'a portrait photo of a woman'", per_job=True),
    Option("color_fix", str, "wavelet", "colour correction towards the input", choices=COLOR_FIXES, per_job=True),
    Option("min_side", int, 1024, "short side SDXL works at", minimum=64, maximum=2048),
    Option("offload", bool, False, "keep only the running stage on the GPU"),
    Option("fp8", bool, False, "store UNet and control weights as fp8"),
)


class SupirKind(FolderKind):
    id = "supir"
    title = "SUPIR diffusion restoration"
    prefix = "supir"
    settings = SETTINGS

    def order_files(self, files: list[Path]) -> list[Path]:
        # SDXL first, the SUPIR file(s) last: later files override earlier ones, as the official
        # loader does
        return sorted(files, key=lambda p: "supir" in p.name.lower())

    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ):
        from .engine import SupirEngine  # heavy imports, only when used

        return SupirEngine(
            entry.files,
            weights_sha256=weights[1],
            device=device,
            precision=precision,
            settings=settings,
            job_options=self.job_options(settings),
        )

    def describe(self, entry: ModelEntry, digest: str, settings: Mapping[str, Any]):
        """From tensor names and shapes only (loading billions of parameters to list them would
        take minutes)."""
        from ..diffusion.engine import diffusion_info
        from .engine import SCALES

        check = self._check(entry.files)
        if not check.complete:
            raise WeightsError(f"incomplete {check.title}: " + check.summary())
        device = pick_device(None)
        precision = resolve_precision(Precision.AUTO, device, True, True)
        options = self.job_options(settings)
        return diffusion_info(self.id, "SUPIR", precision, device, check.parameters, digest, options, SCALES)

    def _check(self, files: Sequence[Path]):
        from .checkpoint import check_files

        return check_files(self.order_files(list(files)))

    def presets(self, described: Described) -> list[Preset]:
        """esrgan-then-supir: a photo model to the target size (fast and sharp), then a SUPIR 1x
        pass that restores texture, as ComfyUI workflows chain them."""
        photo = photo_model(described)
        supir = next(((e, i) for e, i in described if e.kind == self.id and 1 in i.scales), None)
        if photo is None or supir is None:
            return []
        gan, restorer = photo[0].name, supir[0].name
        scales = tuple(s for s in photo[1].scales if s >= 2)
        return [
            Preset(
                "esrgan-then-supir",
                f"{gan}, then {restorer} at 1x",
                f"{gan} to the target size, then {restorer} refines it at 1x (slow; outputs up to "
                f"{supir[1].max_output_pixels / 1e6:.1f} MP)",
                scales,
                lambda scale: [{"model": gan, "scale": scale}, {"model": restorer, "scale": 1}],
            )
        ]

    def detect(self, paths: Sequence[Path]) -> bool:
        # everything diffusion-shaped that is not another kind's: the SDXL/SUPIR layout
        from ..diffusion.checkpoints import gather_keys

        files = checkpoint_files(paths)
        if not files:
            return False
        keys, _ = gather_keys(files)
        return any(k.startswith(("model.diffusion_model.", "conditioner.", "first_stage_model.")) for k in keys)

    def check(self, paths: Sequence[Path]) -> CheckReport:
        check = self._check(checkpoint_files(paths))
        return CheckReport(check.title, check.complete, check.summary(), place=f"{self.prefix}*/")


KIND = SupirKind()
