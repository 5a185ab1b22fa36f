"""What the diffusion engines share as Satscale engines: offered scales, the output
limit, progress over stages, and a measured time estimate."""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ...device import Precision, available_precisions
from .. import EngineInfo, Faces, Tiling, WholeImageEngine
from ..options import Option

#: output sizes the diffusion engines accept (the official demos work up to 2048 px)
MAX_OUTPUT_PIXELS = 2048 * 2048
SCALES = (2, 3, 4)


def autoencoder_dtype(device: torch.device) -> torch.dtype:
    """The autoencoder's dtype when the denoiser runs in fp16: the official code reports NaNs in
    an fp16 VAE, so bf16 where the GPU has it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timing measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(device: torch.device, call: Callable[[], object]) -> float:
    """Time one call after a warm-up call, with queued GPU work included."""
    call()
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - started


#: float32 image copies a run holds per output pixel (the upsampled input, the decoded output,
#: the colour fix's two working copies), three channels each: the sampler and the VAE tile
BYTES_PER_OUTPUT_PIXEL = 4 * 3 * 4
#: what a unit of a diffusion engine's work is (what `_calibrate` times)
WORK_UNIT = "latent pixels through the denoiser, per evaluation"


def diffusion_info(
    kind: str,
    architecture: str,
    precision: Precision,
    device: torch.device,
    parameters: int,
    weights_sha256: str,
    job_options: tuple[Option, ...],
    scales: tuple[int, ...] = SCALES,
) -> EngineInfo:
    return EngineInfo(
        kind=kind,
        architecture=architecture,
        native_scale=2 if 2 in scales else scales[0],
        scales=scales,
        precision=precision,
        precisions=available_precisions(device, True, True),
        device=str(device),
        parameters=parameters,
        weights_sha256=weights_sha256,
        price_class="diffusion",
        tiling=Tiling.INTERNAL,
        bytes_per_output_pixel=BYTES_PER_OUTPUT_PIXEL,
        faces=Faces.MAY_INVENT,
        job_options=job_options,
        max_output_pixels=MAX_OUTPUT_PIXELS,
        precision_fixed=True,
        work_unit=WORK_UNIT,
    )


class DiffusionEngine(WholeImageEngine):
    """Subclasses set `info` and implement `_restore`, `_stages`, `_calibrate`, `_evaluations`;
    each takes the run's options (`_run_options`: the server's settings with the request's
    per-job values over them)."""

    info: EngineInfo

    def __init__(self) -> None:
        self._seconds_per_eval_pixel: float | None = None
        self._lock = threading.Lock()

    @abstractmethod
    def _run_options(self, chosen: Mapping[str, Any]) -> Any:
        """The sampler options of one run from the request's checked per-job values."""

    @abstractmethod
    def _stages(self, run: Any) -> dict[str, tuple[int, int]]:
        """stage -> (offset, length) in the overall progress count."""

    @abstractmethod
    def _restore(
        self, image: torch.Tensor, scale: int, run: Any, progress: Callable[[str, int, int], None]
    ) -> torch.Tensor: ...

    @abstractmethod
    def _calibrate(self) -> float:
        """Seconds per latent pixel of one denoiser evaluation (as sampling runs it)."""

    @abstractmethod
    def _evaluations(self, width: int, height: int, scale: int, run: Any) -> tuple[int, int]:
        """(latent pixels evaluated per step, summed over tiles; denoiser evaluations)."""

    def upscale(
        self,
        image: torch.Tensor,
        scale: int,
        progress: Callable[[int, int], None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        height, width = image.shape[-2:]
        self.info.check_output_size(width, height, self.info.resolve_scale(scale))
        run = self._run_options(self.info.parse_options(options))
        stages = self._stages(run)
        total = sum(length for _, length in stages.values())

        def stage_progress(stage: str, done: int, _total: int) -> None:
            if progress:
                progress(stages[stage][0] + done, total)

        return self._restore(image, scale, run, stage_progress)

    def work(self, width: int, height: int, scale: int, options: Mapping[str, Any]) -> int:
        latent, evaluations = self._evaluations(width, height, scale, self._run_options(options))
        # the VAE passes cost about as much as a few denoiser evaluations: counted as four
        return latent * (evaluations + 4)

    def calibrate(self) -> float:
        with self._lock:
            if self._seconds_per_eval_pixel is None:
                self._seconds_per_eval_pixel = self._calibrate()
            return self._seconds_per_eval_pixel

    def estimate_seconds(self, width: int, height: int, scale: int, options: Mapping[str, Any] | None = None) -> float:
        """How long `upscale` takes here by the calibration alone (the service's meter also
        learns from real runs)."""
        self.info.check_output_size(width, height, self.info.resolve_scale(scale))
        return self.calibrate() * self.work(width, height, scale, self.info.parse_options(options))


def tiled_latent_pixels(latent_w: int, latent_h: int, tile: int, stride: int) -> int:
    """Latent pixels a tiled sampler evaluates per step (overlaps counted again)."""
    if max(latent_w, latent_h) <= tile:
        return latent_w * latent_h
    tiles_w = max(1, -(-(latent_w - tile) // stride) + 1)
    tiles_h = max(1, -(-(latent_h - tile) // stride) + 1)
    return tiles_w * tiles_h * min(tile, latent_w) * min(tile, latent_h)
