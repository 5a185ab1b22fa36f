"""SUPIR as a Satscale engine: checkpoint files in, whole-image restoration out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...device import Precision, pick_device, resolve_precision
from ...errors import ParameterError
from ..diffusion.engine import DiffusionEngine, autoencoder_dtype, diffusion_info, seconds_per_call, tiled_latent_pixels
from ..diffusion.fp8 import store_fp8
from ..options import Option
from .checkpoint import load_supir
from .pipeline import RestoreOptions, SupirPipeline, working_size
from .sampling import PRESETS

# SDXL UNet + control, per latent pixel and evaluation (official widths): measured by the
# calibration below; this is only the size of the calibration latent
_CALIBRATION_LATENT = 32


@dataclass(frozen=True)
class SupirSetup:
    """How SUPIR models are run here (from the service settings or the CLI)."""

    options: RestoreOptions = field(default_factory=RestoreOptions)
    offload: bool = False  # sequential offloading: only the running stage on the device
    fp8: bool = False  # UNet and control weights stored as fp8

    @classmethod
    def from_settings(cls, values: Mapping[str, Any] | None) -> SupirSetup:
        """From plain values (the service's SATSCALE_SUPIR_* settings, the CLI's flags): preset,
        steps, seed, prompt, color_fix, min_side, offload, fp8. Unknown names are refused."""
        values = {k: v for k, v in dict(values or {}).items() if v is not None}
        offload = bool(values.pop("offload", False))
        fp8 = bool(values.pop("fp8", False))
        preset = values.pop("preset", "quality")
        steps = values.pop("steps", None)
        known = {"seed", "prompt", "color_fix", "min_side"}
        unknown = set(values) - known
        if unknown:
            raise ParameterError(f"unknown SUPIR settings: {', '.join(sorted(unknown))}")
        if preset not in PRESETS:
            raise ParameterError(f"unknown SUPIR preset {preset!r}; one of {', '.join(PRESETS)}")
        sampler = PRESETS[preset] if steps is None else replace(PRESETS[preset], num_steps=int(steps))
        options = RestoreOptions(preset=preset, sampler=sampler, **values)
        return cls(options=options, offload=offload, fp8=fp8)


#: SUPIR restores at 1x too (a pure restorer) and upscales up to 4x
SCALES = (1, 2, 3, 4)
#: what one request may choose for its own run (the rest are server settings)
JOB_OPTIONS = ("preset", "steps", "seed", "prompt", "color_fix")


class SupirEngine(DiffusionEngine):
    def __init__(
        self,
        files: Sequence[Path],
        *,
        weights_sha256: str,
        device: str | None = None,
        precision: Precision | str = Precision.AUTO,
        settings: Mapping[str, Any] | None = None,
        job_options: tuple[Option, ...] = (),
    ) -> None:
        """`settings`: the kind's checked settings (preset, steps, seed, prompt, color_fix,
        min_side, offload, fp8); `job_options`: what a request may set, with those defaults."""
        super().__init__()
        self.device = pick_device(device)
        resolved = resolve_precision(precision, self.device, supports_half=True, supports_bf16=True)
        self.settings = dict(settings or {})
        setup = SupirSetup.from_settings(self.settings)  # refuses a bad preset before loading
        self.options = setup.options
        model = load_supir(files, dtype=resolved.dtype)
        if resolved is Precision.FP16:
            # the official code refuses fp16 for the autoencoder (NaNs)
            model.first_stage.to(autoencoder_dtype(self.device))
        if setup.fp8:
            store_fp8(model.unet)
            store_fp8(model.control)
        self.model = model
        self.pipeline = SupirPipeline(model, self.device, offload=setup.offload)
        parameters = sum(t.numel() for t in model.state_dict().values())
        self.info = diffusion_info(
            "supir", "SUPIR", resolved, self.device, parameters, weights_sha256, job_options, SCALES
        )

    def _run_options(self, chosen: Mapping[str, Any]) -> RestoreOptions:
        if not chosen:
            return self.options
        values = self.settings | dict(chosen)
        if "preset" in chosen and "steps" not in chosen:
            values.pop("steps", None)  # a preset chosen for this job comes with its own steps
        return SupirSetup.from_settings(values).options

    def _stages(self, run: RestoreOptions) -> dict[str, tuple[int, int]]:
        steps = run.settings().num_steps
        return {"encode": (0, 3), "sample": (3, steps), "decode": (3 + steps, 1)}

    def _restore(
        self, image: torch.Tensor, scale: int, run: RestoreOptions, progress: Callable[[str, int, int], None]
    ) -> torch.Tensor:
        return self.pipeline.restore(image, scale, run, progress)

    def _calibrate(self) -> float:
        """Seconds per latent pixel for one guided denoiser evaluation (cond + uncond)."""
        side = _CALIBRATION_LATENT
        model, on_device = self.model, self.pipeline._on_device
        with torch.no_grad():
            with on_device(model.conditioner):
                cond = model.conditioner(["calibration"])
            cond = {k: v.to(self.device).repeat(2, *[1] * (v.ndim - 1)) for k, v in cond.items()}
            cond["control"] = torch.zeros(2, 4, side, side, device=self.device)
            x = torch.zeros(2, 4, side, side, device=self.device)
            sigma = torch.full((2,), 5.0, device=self.device)
            with on_device(model.unet, model.control, model.denoiser):
                return seconds_per_call(self.device, lambda: model.denoise(x, sigma, cond, 1.0)) / side**2

    def _evaluations(self, width: int, height: int, scale: int, run: RestoreOptions) -> tuple[int, int]:
        work_w, work_h = working_size(width, height, scale, run.min_side, run.unit)
        latent = tiled_latent_pixels(work_w // 8, work_h // 8, run.sample_tile, run.sample_stride)
        return latent, run.settings().num_steps
