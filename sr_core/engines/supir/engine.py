"""SUPIR as a Satscale engine: checkpoint files in, whole-image restoration out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...device import Precision, available_precisions, pick_device, resolve_precision
from ...errors import ParameterError
from .. import EngineInfo, WholeImageEngine
from ..diffusion.fp8 import store_fp8
from .checkpoint import load_supir
from .pipeline import RestoreOptions, SupirPipeline, working_size
from .sampling import PRESETS

#: SUPIR's output sizes (the official demo works up to 2048 px on the long side by default)
MAX_OUTPUT_PIXELS = 2048 * 2048
SCALES = (2, 3, 4)
# SDXL UNet + control, per latent pixel and evaluation (official widths): measured by the
# calibration below; this is only the size of the calibration latent
_CALIBRATION_LATENT = 16


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
        values = dict(values or {})
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


class SupirEngine(WholeImageEngine):
    def __init__(
        self,
        files: Sequence[Path],
        *,
        weights_sha256: str,
        device: str | None = None,
        precision: Precision | str = Precision.AUTO,
        options: RestoreOptions | None = None,
        offload: bool = False,
        fp8: bool = False,
    ) -> None:
        self.device = pick_device(device)
        resolved = resolve_precision(precision, self.device, supports_half=True, supports_bf16=True)
        self.options = options or RestoreOptions()
        model = load_supir(files, dtype=resolved.dtype)
        if resolved is Precision.FP16:
            # the official code refuses fp16 for the autoencoder (NaNs); it runs in bf16 then
            model.first_stage.to(torch.bfloat16)
        if fp8:
            store_fp8(model.unet)
            store_fp8(model.control)
        self.model = model
        self.pipeline = SupirPipeline(model, self.device, offload=offload)
        self._seconds_per_eval_pixel: float | None = None
        self._lock = threading.Lock()
        self.info = EngineInfo(
            family="supir",
            architecture="SUPIR",
            native_scale=SCALES[0],
            scales=SCALES,
            precision=resolved,
            precisions=available_precisions(self.device, True, True),
            device=str(self.device),
            parameters=sum(t.numel() for t in model.state_dict().values()),
            context=0,
            multiple_of=1,
            bytes_per_pixel=0,  # not tiled by the pipeline: the engine plans its own memory
            macs_per_pixel=0,
            weights_sha256=weights_sha256,
            max_output_pixels=MAX_OUTPUT_PIXELS,
        )

    def _check(self, width: int, height: int, scale: int) -> None:
        if scale not in SCALES:
            raise ParameterError(f"SUPIR offers x2, x3, x4, not x{scale}")
        if width * scale * height * scale > MAX_OUTPUT_PIXELS:
            raise ParameterError(
                f"SUPIR output {width * scale}x{height * scale} is over {MAX_OUTPUT_PIXELS / 1e6:.1f} MP"
            )

    def upscale(
        self,
        image: torch.Tensor,
        scale: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        height, width = image.shape[-2:]
        self._check(width, height, scale)
        steps = self.options.settings().num_steps
        total = 3 + steps + 1
        offsets = {"encode": 0, "sample": 3, "decode": 3 + steps}

        def stage_progress(stage: str, done: int, _total: int) -> None:
            if progress:
                progress(offsets[stage] + done, total)

        return self.pipeline.restore(image, scale, self.options, stage_progress)

    def _calibrate(self) -> float:
        """Seconds per latent pixel for one guided denoiser evaluation (cond + uncond)."""
        side = _CALIBRATION_LATENT
        model = self.model
        with torch.no_grad():
            cond = model.conditioner(["calibration"])
            cond = {k: v.to(self.device).repeat(2, *[1] * (v.ndim - 1)) for k, v in cond.items()}
            cond["control"] = torch.zeros(2, 4, side, side, device=self.device)
            x = torch.zeros(2, 4, side, side, device=self.device)
            sigma = torch.full((2,), 5.0, device=self.device)
            model.denoise(x, sigma, cond, 1.0)  # warm-up
            started = time.perf_counter()
            model.denoise(x, sigma, cond, 1.0)
            return (time.perf_counter() - started) / side**2

    def estimate_seconds(self, width: int, height: int, scale: int) -> float:
        self._check(width, height, scale)
        with self._lock:
            if self._seconds_per_eval_pixel is None:
                self._seconds_per_eval_pixel = self._calibrate()
            rate = self._seconds_per_eval_pixel
        o = self.options
        work_w, work_h = working_size(width, height, scale, o.min_side, o.unit)
        latent = (work_w // 8) * (work_h // 8)
        tiles = 1
        if max(work_w, work_h) // 8 > o.sample_tile:
            # overlapping tiles evaluate some latent pixels more than once
            tiles_w = max(1, -(-(work_w // 8 - o.sample_tile) // o.sample_stride) + 1)
            tiles_h = max(1, -(-(work_h // 8 - o.sample_tile) // o.sample_stride) + 1)
            latent = tiles_w * tiles_h * o.sample_tile**2
            tiles = tiles_w * tiles_h
        evaluations = o.settings().num_steps
        # the VAE passes (denoise encode, stage-1 decode, encode, final decode) cost about as much
        # as a few denoiser evaluations at this size; counted as four
        return rate * latent * (evaluations + 4) + 0.1 * tiles

    def with_options(self, options: RestoreOptions) -> SupirEngine:
        """The same loaded model with other sampling options (shares the weights)."""
        clone = object.__new__(SupirEngine)
        clone.__dict__.update(self.__dict__)
        clone.options = options
        clone.info = replace(self.info)
        return clone
