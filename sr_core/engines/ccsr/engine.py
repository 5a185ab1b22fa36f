"""CCSR v1 as a Satscale engine: the official checkpoint in, whole-image restoration out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...device import Precision, pick_device, resolve_precision
from ...errors import ParameterError
from ..diffusion.engine import DiffusionEngine, autoencoder_dtype, diffusion_info, seconds_per_call, tiled_latent_pixels
from ..diffusion.offload import stage_on_device
from ..options import Option
from .checkpoint import load_ccsr
from .model import CcsrModel
from .pipeline import CcsrOptions, CcsrPipeline, working_size
from .sampling import CcsrV1Settings, CcsrV2Settings
from .v2 import CcsrV2Model, CcsrV2Options, is_v2_folder, load_ccsr_v2, restore_v2, v2_working_size

_CALIBRATION_LATENT = 32


V2_PRESETS = {"multi_step": CcsrV2Settings.MULTI_STEP, "one_step": CcsrV2Settings.ONE_STEP}


def ccsr_v2_options(values: Mapping[str, Any] | None) -> CcsrV2Options:
    """v2 from plain values: preset (multi_step, one_step), seed, prompt, negative, color_fix,
    strength, process_size; v1-only values (steps, t_max, t_min, cfg_scale, min_side) are not used."""
    values = {k: v for k, v in dict(values or {}).items() if v is not None}
    preset = values.pop("preset", "multi_step")
    if preset not in V2_PRESETS:
        raise ParameterError(f"unknown CCSR v2 preset {preset!r}; one of {', '.join(V2_PRESETS)}")
    for v1_only in ("steps", "t_max", "t_min", "cfg_scale", "min_side"):
        values.pop(v1_only, None)
    known = {"seed", "prompt", "negative", "color_fix", "strength", "tile", "tile_stride", "process_size"}
    unknown = set(values) - known
    if unknown:
        raise ParameterError(f"unknown CCSR settings: {', '.join(sorted(unknown))}")
    return CcsrV2Options(sampler=V2_PRESETS[preset], **values)


def ccsr_options(values: Mapping[str, Any] | None) -> CcsrOptions:
    """From plain values (SATSCALE_CCSR_* settings, CLI flags): steps, t_max, t_min, cfg_scale,
    seed, prompt, color_fix, min_side, strength. Unknown names are refused."""
    values = dict(values or {})
    values.pop("preset", None)  # v2's
    values.pop("process_size", None)
    sampler = {k: values.pop(k) for k in ("steps", "t_max", "t_min", "cfg_scale") if values.get(k) is not None}
    values = {k: v for k, v in values.items() if v is not None}
    known = {"seed", "prompt", "negative", "color_fix", "min_side", "strength", "tile", "tile_stride"}
    unknown = set(values) - known
    if unknown:
        raise ParameterError(f"unknown CCSR settings: {', '.join(sorted(unknown))}")
    try:
        return CcsrOptions(sampler=replace(CcsrV1Settings(), **sampler), **values)
    except ValueError as exc:
        raise ParameterError(f"CCSR settings: {exc}") from None


#: what one request may choose for its own run, per version (the rest are server settings)
JOB_OPTIONS = {1: ("steps", "seed", "prompt", "color_fix"), 2: ("preset", "seed", "prompt", "color_fix")}


class CcsrEngine(DiffusionEngine):
    """v1 from its checkpoint file, or v2 from a folder of diffusers parts (`folder`)."""

    def __init__(
        self,
        files: Sequence[Path],
        *,
        weights_sha256: str,
        device: str | None = None,
        precision: Precision | str = Precision.AUTO,
        settings: Mapping[str, Any] | None = None,
        folder: Path | None = None,
        job_options: Sequence[Option] = (),
    ) -> None:
        """`job_options`: the kind's per-job options with the server's defaults; this version's
        are offered."""
        settings = {k: v for k, v in dict(settings or {}).items() if v is not None}
        offload = bool(settings.pop("offload", False))
        for setting, field in (("sampler_tile", "tile"), ("sampler_stride", "tile_stride")):
            if setting in settings:
                settings[field] = settings.pop(setting)
        super().__init__()
        self.device = pick_device(device)
        resolved = resolve_precision(precision, self.device, supports_half=True, supports_bf16=True)
        self.version = 2 if folder is not None and is_v2_folder(folder) else 1
        self.offload = offload
        self.settings = settings
        self.options = self._run_options({})  # refuses bad settings before loading
        if self.version == 2:
            model: CcsrModel | CcsrV2Model = load_ccsr_v2(folder, dtype=resolved.dtype)
            if not offload:
                model.to(self.device)
        else:
            model = load_ccsr(files, dtype=resolved.dtype)
            self.pipeline = CcsrPipeline(model, self.device, offload=offload)
        if resolved is Precision.FP16:  # as for SUPIR: no fp16 autoencoder
            model.vae.to(autoencoder_dtype(self.device))
            if isinstance(model, CcsrModel):
                model.cond_encoder.to(autoencoder_dtype(self.device))
        self.model = model
        parameters = sum(t.numel() for t in model.parameters())
        name = "CCSR" if self.version == 1 else "CCSR-v2"
        offered = tuple(o for o in job_options if o.name in JOB_OPTIONS[self.version])
        self.info = diffusion_info("ccsr", name, resolved, self.device, parameters, weights_sha256, offered)

    def _run_options(self, chosen: Mapping[str, Any]) -> CcsrOptions | CcsrV2Options:
        values = self.settings | dict(chosen)
        return ccsr_v2_options(values) if self.version == 2 else ccsr_options(values)

    def _calls(self, run: CcsrOptions | CcsrV2Options) -> int:
        if isinstance(run, CcsrV2Options):
            plan = run.sampler.plan
            return 1 if plan.one_step else 1 + len(plan.loop_timesteps)
        return len(run.sampler.plan.loop_indices) + 1

    def _stages(self, run: CcsrOptions | CcsrV2Options) -> dict[str, tuple[int, int]]:
        calls = self._calls(run)
        return {"encode": (0, 1), "sample": (1, calls), "decode": (1 + calls, 1)}

    def _restore(
        self,
        image: torch.Tensor,
        scale: int,
        run: CcsrOptions | CcsrV2Options,
        progress: Callable[[str, int, int], None],
    ) -> torch.Tensor:
        if isinstance(run, CcsrV2Options):
            return restore_v2(
                self.model,  # type: ignore[arg-type]
                image,
                scale,
                run,
                progress,
                device=self.device,
                offload=self.offload,
            )
        return self.pipeline.restore(image, scale, run, progress)

    def _calibrate(self) -> float:
        side = _CALIBRATION_LATENT
        model = self.model
        with torch.no_grad():
            with stage_on_device(self.device, self.offload, model.text):
                context = model.text([""]).to(self.device)
            cond = {"c_crossattn": context, "c_latent": torch.zeros(1, 4, side, side, device=self.device)}
            x = torch.zeros(1, 4, side, side, device=self.device)
            t = torch.tensor([500], device=self.device)
            with stage_on_device(self.device, self.offload, model.unet, model.control):
                return seconds_per_call(self.device, lambda: model.eps(x, t, cond)) / side**2

    def _evaluations(self, width: int, height: int, scale: int, run: CcsrOptions | CcsrV2Options) -> tuple[int, int]:
        if isinstance(run, CcsrV2Options):
            work_w, work_h = v2_working_size(width, height, scale, run.process_size)
            latent = tiled_latent_pixels(work_w // 8, work_h // 8, run.tile // 8, run.tile_stride // 8)
            return latent, self._calls(run) * (2 if run.sampler.guided else 1)
        work_w, work_h = working_size(width, height, scale, run.min_side, run.unit)
        latent = tiled_latent_pixels(work_w // 8, work_h // 8, run.tile // 8, run.tile_stride // 8)
        return latent, self._calls(run) * (2 if run.sampler.cfg_scale != 1.0 else 1)
