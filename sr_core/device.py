"""Device and precision selection.

bf16 is where CPU speed comes from, but only on CPUs with bf16 instructions
(AMX or AVX-512-BF16); elsewhere PyTorch emulates it and it is several times
slower than fp32, so `auto` picks fp32 there.
"""

from __future__ import annotations

import functools
import os
from enum import StrEnum

import torch

from .errors import ParameterError


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @classmethod
    def parse(cls, value: Precision | str) -> Precision:
        """A precision by name; anything else is refused, naming the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ParameterError(f"precision {value!r} is not one of {choices}") from None

    @property
    def dtype(self) -> torch.dtype:
        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self]


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX-512-BF16)."""
    override = os.environ.get("SATSCALE_CPU_BF16")
    if override is not None:
        return override == "1"
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def pick_device(requested: str | None = None) -> torch.device:
    """`None`/"auto": CUDA when available, else CPU; otherwise the named device."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ParameterError(f"device {requested!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {requested!r} requested but CUDA is not available on this machine")
    return device


def available_precisions(device: torch.device, supports_half: bool, supports_bf16: bool) -> tuple[Precision, ...]:
    """Precisions a model can run in on a device (fp32 always)."""
    options = [Precision.FP32]
    if supports_bf16 and (device.type != "cuda" or torch.cuda.is_bf16_supported()):
        options.append(Precision.BF16)
    if supports_half:
        options.append(Precision.FP16)
    return tuple(options)


def resolve_precision(
    requested: Precision | str, device: torch.device, supports_half: bool, supports_bf16: bool
) -> Precision:
    """Turn `auto` into a concrete precision; refuse one the model cannot run in."""
    precision = Precision.parse(requested)
    allowed = available_precisions(device, supports_half, supports_bf16)
    if precision is Precision.AUTO:
        if device.type == "cuda":
            preference = (Precision.FP16, Precision.BF16, Precision.FP32)
        elif cpu_has_fast_bf16():
            preference = (Precision.BF16, Precision.FP32)
        else:
            preference = (Precision.FP32,)
        return next(p for p in preference if p in allowed)
    if precision not in allowed:
        names = ", ".join(p.value for p in allowed)
        raise ParameterError(f"precision {precision.value} is not supported by this model on {device}: use {names}")
    return precision
