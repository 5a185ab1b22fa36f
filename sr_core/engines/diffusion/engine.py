"""What the diffusion engines (SUPIR, CCSR) share as Satscale engines: offered scales, the output
limit, progress over stages, and a measured time estimate."""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable

import torch

from ...device import Precision, available_precisions
from .. import EngineInfo, WholeImageEngine

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


def diffusion_info(
    family: str,
    architecture: str,
    precision: Precision,
    device: torch.device,
    parameters: int,
    weights_sha256: str,
) -> EngineInfo:
    return EngineInfo(
        family=family,
        architecture=architecture,
        native_scale=SCALES[0],
        scales=SCALES,
        precision=precision,
        precisions=available_precisions(device, True, True),
        device=str(device),
        parameters=parameters,
        context=0,
        multiple_of=1,
        bytes_per_pixel=0,  # not tiled by the pipeline: the engine plans its own memory
        macs_per_pixel=0,
        weights_sha256=weights_sha256,
        max_output_pixels=MAX_OUTPUT_PIXELS,
        precision_fixed=True,
    )


class DiffusionEngine(WholeImageEngine):
    """Subclasses set `info` and implement `_restore`, `_stages`, `_calibrate`, `_evaluations`."""

    info: EngineInfo

    def __init__(self) -> None:
        self._seconds_per_eval_pixel: float | None = None
        self._lock = threading.Lock()

    def check(self, width: int, height: int, scale: int) -> None:
        self.info.check_output_size(width, height, self.info.resolve_scale(scale))

    @abstractmethod
    def _stages(self) -> dict[str, tuple[int, int]]:
        """stage -> (offset, length) in the overall progress count."""

    @abstractmethod
    def _restore(self, image: torch.Tensor, scale: int, progress: Callable[[str, int, int], None]) -> torch.Tensor: ...

    @abstractmethod
    def _calibrate(self) -> float:
        """Seconds per latent pixel of one denoiser evaluation (as sampling runs it)."""

    @abstractmethod
    def _evaluations(self, width: int, height: int, scale: int) -> tuple[int, int]:
        """(latent pixels evaluated per step, summed over tiles; denoiser evaluations)."""

    def upscale(
        self,
        image: torch.Tensor,
        scale: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        height, width = image.shape[-2:]
        self.check(width, height, scale)
        stages = self._stages()
        total = sum(length for _, length in stages.values())

        def stage_progress(stage: str, done: int, _total: int) -> None:
            if progress:
                progress(stages[stage][0] + done, total)

        return self._restore(image, scale, stage_progress)

    def estimate_seconds(self, width: int, height: int, scale: int) -> float:
        self.check(width, height, scale)
        with self._lock:
            if self._seconds_per_eval_pixel is None:
                self._seconds_per_eval_pixel = self._calibrate()
            rate = self._seconds_per_eval_pixel
        latent, evaluations = self._evaluations(width, height, scale)
        # the VAE passes cost about as much as a few denoiser evaluations: counted as four
        return rate * latent * (evaluations + 4)


def tiled_latent_pixels(latent_w: int, latent_h: int, tile: int, stride: int) -> int:
    """Latent pixels a tiled sampler evaluates per step (overlaps counted again)."""
    if max(latent_w, latent_h) <= tile:
        return latent_w * latent_h
    tiles_w = max(1, -(-(latent_w - tile) // stride) + 1)
    tiles_h = max(1, -(-(latent_h - tile) // stride) + 1)
    return tiles_w * tiles_h * min(tile, latent_w) * min(tile, latent_h)
