"""CCSR v1 as a Satscale engine: the official checkpoint in, whole-image restoration out."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...device import Precision, pick_device, resolve_precision
from ...errors import ParameterError
from ..diffusion.engine import DiffusionEngine, diffusion_info, tiled_latent_pixels
from .checkpoint import load_ccsr
from .pipeline import CcsrOptions, CcsrPipeline, working_size
from .sampling import CcsrV1Settings

_CALIBRATION_LATENT = 16


def ccsr_options(values: Mapping[str, Any] | None) -> CcsrOptions:
    """From plain values (SATSCALE_CCSR_* settings, CLI flags): steps, t_max, t_min, cfg_scale,
    seed, prompt, color_fix, min_side, strength. Unknown names are refused."""
    values = dict(values or {})
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


class CcsrEngine(DiffusionEngine):
    def __init__(
        self,
        files: Sequence[Path],
        *,
        weights_sha256: str,
        device: str | None = None,
        precision: Precision | str = Precision.AUTO,
        options: CcsrOptions | None = None,
    ) -> None:
        super().__init__()
        self.device = pick_device(device)
        resolved = resolve_precision(precision, self.device, supports_half=True, supports_bf16=True)
        self.options = options or CcsrOptions()
        model = load_ccsr(files, dtype=resolved.dtype)
        if resolved is Precision.FP16:
            model.vae.to(torch.bfloat16)  # as for SUPIR: no fp16 autoencoder
            model.cond_encoder.to(torch.bfloat16)
        self.model = model
        self.pipeline = CcsrPipeline(model, self.device)
        parameters = sum(t.numel() for t in model.parameters())
        self.info = diffusion_info("ccsr", "CCSR", resolved, self.device, parameters, weights_sha256)

    def _stages(self) -> dict[str, tuple[int, int]]:
        calls = len(self.options.sampler.plan.loop_indices) + 1
        return {"encode": (0, 1), "sample": (1, calls), "decode": (1 + calls, 1)}

    def _restore(self, image: torch.Tensor, scale: int, progress: Callable[[str, int, int], None]) -> torch.Tensor:
        return self.pipeline.restore(image, scale, self.options, progress)

    def _calibrate(self) -> float:
        side = _CALIBRATION_LATENT
        model = self.model
        with torch.no_grad():
            context = model.text([""]).to(self.device)
            cond = {"c_crossattn": context, "c_latent": torch.zeros(1, 4, side, side, device=self.device)}
            x = torch.zeros(1, 4, side, side, device=self.device)
            t = torch.tensor([500], device=self.device)
            model.eps(x, t, cond)  # warm-up
            started = time.perf_counter()
            model.eps(x, t, cond)
            return (time.perf_counter() - started) / side**2

    def _evaluations(self, width: int, height: int, scale: int) -> tuple[int, int]:
        o = self.options
        work_w, work_h = working_size(width, height, scale, o.min_side, o.unit)
        latent = tiled_latent_pixels(work_w // 8, work_h // 8, o.tile // 8, o.tile_stride // 8)
        calls = len(o.sampler.plan.loop_indices) + 1
        return latent, calls * (2 if o.sampler.cfg_scale != 1.0 else 1)
