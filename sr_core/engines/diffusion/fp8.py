"""fp8 weight storage: keep Linear/Conv2d weights as float8 (e4m3, one scale per output channel) and upcast
each one to the compute dtype just for its own call. Halves the weight memory of a bf16 model
(quarters fp32); the arithmetic still runs in the compute dtype. Works on any device: the cast
is an ordinary tensor op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8).max


def _weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    # dequantised in float32 (a tiny scale would be subnormal in fp16), then cast
    return (module.weight_fp8.float() * module.weight_scale).to(dtype)


def _linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, _weight(module, x.dtype), module.bias)


def _conv_forward(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return module._conv_forward(x, _weight(module, x.dtype), module.bias)


def store_fp8(root: nn.Module) -> int:
    """Convert every Linear and Conv2d weight under `root` to fp8 storage; returns how many.
    Inputs keep their dtype (the compute dtype); biases stay in the weights' previous dtype."""
    count = 0
    for module in root.modules():
        if type(module) is nn.Linear:
            forward = _linear_forward
        elif type(module) is nn.Conv2d:
            forward = _conv_forward
        else:
            continue
        weight = module.weight.detach()
        dims = tuple(range(1, weight.ndim))
        scale = weight.abs().float().amax(dim=dims, keepdim=True).clamp(min=1e-12) / _FP8_MAX
        module.register_buffer("weight_fp8", (weight.float() / scale).to(FP8))
        module.register_buffer("weight_scale", scale)  # float32
        del module.weight
        module.forward = forward.__get__(module)  # type: ignore[method-assign]
        count += 1
    return count


def weight_bytes(root: nn.Module) -> int:
    """Bytes held by parameters and buffers (what weight storage costs)."""
    tensors = list(root.parameters()) + list(root.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
