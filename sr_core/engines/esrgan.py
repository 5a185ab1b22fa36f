"""ESRGAN-family engine: any super-resolution architecture spandrel recognises.

Loading is strict (spandrel's load_state_dict) and every failure names the file.
At load time one tiny probe pass measures, with forward hooks, what the tiler needs:
the convolutional receptive field (-> tile context), the peak activation size per
pixel (-> tile size) and the multiply-accumulates per pixel (-> price class).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
from torch import nn

from ..device import Precision, available_precisions, pick_device, resolve_precision
from ..errors import WeightsError
from ..weights import WEIGHT_SUFFIXES
from . import EngineInfo, TiledEngine

#: context cap: 32 px gave 54 dB tiled-vs-whole for x4plus (16 px: 47 dB)
MAX_CONTEXT = 32
PROBE_SIZE = 16
#: float32 copies of a tile's upscaled output the pipeline holds at once (network output, resize, quantise)
OUTPUT_COPIES = 4

# Leaf modules whose spatial reach the receptive-field count understands.
_LOCAL_MODULES = (
    nn.Conv2d,
    nn.PReLU,
    nn.LeakyReLU,
    nn.ReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Identity,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Upsample,
    nn.BatchNorm2d,
    nn.Dropout,
)


def load_descriptor(path: Path) -> ImageModelDescriptor:
    """Load a checkpoint with spandrel; errors name the file and say what is wrong."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path}: unsupported extension {path.suffix!r} (use {', '.join(WEIGHT_SUFFIXES)})")
    loader = ModelLoader(device="cpu")
    try:
        state_dict = loader.load_state_dict_from_file(path)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        SafetensorError,
    ) as exc:
        raise WeightsError(
            f"{path}: cannot read the file, it is truncated or not a checkpoint ({_short(exc)})"
        ) from None
    return descriptor_from_state_dict(state_dict, str(path))


def descriptor_from_state_dict(state_dict: dict, origin: str) -> ImageModelDescriptor:
    if not isinstance(state_dict, dict) or not state_dict:
        raise WeightsError(f"{origin}: holds no state dict")
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        sample = ", ".join(list(state_dict)[:4])
        raise WeightsError(
            f"{origin}: not a super-resolution architecture spandrel recognises (keys start: {sample})"
        ) from None
    except (RuntimeError, KeyError, ValueError, AssertionError, IndexError) as exc:
        # strict load_state_dict: missing, unexpected or mis-shaped tensors
        raise WeightsError(f"{origin}: the tensors do not fit the detected architecture: {_short(exc)}") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in ("SR", "FaceSR"):
        raise WeightsError(
            f"{origin}: is a {descriptor.architecture.name} {descriptor.purpose} model, not super-resolution"
        )
    if descriptor.scale < 2 or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise WeightsError(
            f"{origin}: needs an RGB model that upscales (found scale x{descriptor.scale}, "
            f"{descriptor.input_channels}->{descriptor.output_channels} channels)"
        )
    return descriptor


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ModelProbe:
    receptive_radius: int | None  # None: the model mixes pixels non-locally (attention...)
    activation_floats_per_pixel: int
    macs_per_pixel: int


def probe_model(model: nn.Module, multiple_of: int) -> ModelProbe:
    """One tiny fp32 pass with hooks on every leaf module."""
    size = max(PROBE_SIZE, multiple_of * math.ceil(PROBE_SIZE / multiple_of))
    pixels = size * size
    radius = 0.0
    peak = 0
    macs = 0
    local = True

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal radius, peak, macs, local
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if not isinstance(output, torch.Tensor) or first is None:
            return
        peak = max(peak, first.numel() + output.numel())
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
            # reach of this conv, in input pixels of the probe image
            relative = size / first.shape[-1]
            radius += (kernel_w - 1) // 2 * module.dilation[1] * relative
        elif not isinstance(module, _LOCAL_MODULES) and any(True for _ in module.parameters(recurse=False)):
            local = False

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return ModelProbe(math.ceil(radius) if local else None, math.ceil(peak / pixels), math.ceil(macs / pixels))


class SpandrelEngine(TiledEngine):
    def __init__(
        self,
        descriptor: ImageModelDescriptor,
        *,
        weights_sha256: str,
        device: torch.device | str | None = None,
        precision: Precision | str = Precision.AUTO,
    ) -> None:
        self.device = pick_device(device if isinstance(device, str) or device is None else str(device))
        self.multiple_of = descriptor.size_requirements.multiple_of
        self.minimum = descriptor.size_requirements.minimum
        model = descriptor.model.eval().float().cpu()
        probe = probe_model(model, self.multiple_of)
        resolved = resolve_precision(precision, self.device, descriptor.supports_half, descriptor.supports_bfloat16)
        self.dtype = resolved.dtype
        # channels_last lets oneDNN/cuDNN pick their fastest bf16/fp16 convolution kernels
        self.channels_last = resolved is not Precision.FP32 or self.device.type == "cuda"
        model = model.to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        context = MAX_CONTEXT if probe.receptive_radius is None else min(MAX_CONTEXT, probe.receptive_radius)
        scale = descriptor.scale
        element = torch.finfo(self.dtype).bits // 8
        self.info = EngineInfo(
            family="esrgan",
            architecture=descriptor.architecture.id,
            native_scale=scale,
            scales=tuple(range(2, scale + 1)),
            precision=resolved,
            precisions=available_precisions(self.device, descriptor.supports_half, descriptor.supports_bfloat16),
            device=str(self.device),
            parameters=sum(p.numel() for p in model.parameters()),
            context=context,
            multiple_of=self.multiple_of,
            bytes_per_pixel=probe.activation_floats_per_pixel * element + OUTPUT_COPIES * 3 * scale * scale * 4,
            macs_per_pixel=probe.macs_per_pixel,
            weights_sha256=weights_sha256,
        )

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        _, _, height, width = batch.shape
        multiple = self.multiple_of
        pad_h = max(self.minimum, math.ceil(height / multiple) * multiple) - height
        pad_w = max(self.minimum, math.ceil(width / multiple) * multiple) - width
        x = batch.to(self.device, self.dtype)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self.model(x)
        scale = self.info.native_scale
        return y[:, :, : height * scale, : width * scale].float().cpu().contiguous()
