"""Sequential offloading for the diffusion engines: every part lives on the CPU and only the stage
that runs (encoder, text encoder, denoiser, decoder) is moved to the device, then back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def stage_on_device(device: torch.device, enabled: bool, *modules: nn.Module) -> Iterator[None]:
    """With `enabled`, `modules` are on `device` inside the block and on the CPU after it."""
    if enabled:
        for module in modules:
            module.to(device)
    try:
        yield
    finally:
        if enabled:
            for module in modules:
                module.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
