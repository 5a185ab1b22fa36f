"""Latent tiling for the diffusion samplers (SUPIR, CCSR): square windows with Gaussian blending.

A latent too large for one network pass is covered by overlapping `tile_size` x `tile_size`
windows. Every window is denoised on its own each step and the results are averaged, each
window's contribution weighted by a Gaussian bump (`gaussian_weights`), so seams fade out.
Same semantics as SUPIR's `sgm.modules.diffusionmodules.sampling.gaussian_weights` and
`_sliding_windows`, which the tiled samplers use.
"""

from __future__ import annotations

import math

import torch

#: variance of the Gaussian, in units of the squared tile side (the official constant)
_VARIANCE = 0.01


def _gaussian_profile(length: int, midpoint: float) -> list[float]:
    return [
        math.exp(-(i - midpoint) * (i - midpoint) / (length * length) / (2 * _VARIANCE))
        / math.sqrt(2 * math.pi * _VARIANCE)
        for i in range(length)
    ]


def gaussian_weights(tile_width: int, tile_height: int) -> torch.Tensor:
    """Blending weights of one tile: a float64 tensor of shape [tile_height, tile_width].

    The outer product of two 1-D Gaussians with standard deviation 0.1 x the tile side, scaled
    by 1/sqrt(2*pi*0.01) (about 3.99 at the peak; the scale cancels when the weights are
    normalised). The weights never reach zero, so every latent pixel covered by a window gets a
    positive total weight.

    Faithful to the official code, including an asymmetry: horizontally the Gaussian is
    centred on (tile_width - 1) / 2 (the true centre of the indices), vertically on
    tile_height / 2, half a pixel lower. The official sampler multiplies latents by these
    float64 weights; broadcast them over batch and channels ([..., H, W]).
    """
    if tile_width < 1 or tile_height < 1:
        raise ValueError(f"tile sides must be positive, got {tile_width}x{tile_height}")
    x_probs = _gaussian_profile(tile_width, (tile_width - 1) / 2)
    # the official code centres rows on height / 2 (no -1), unlike columns; kept for fidelity
    y_probs = _gaussian_profile(tile_height, tile_height / 2)
    return torch.outer(torch.tensor(y_probs, dtype=torch.float64), torch.tensor(x_probs, dtype=torch.float64))


def _starts(length: int, tile_size: int, tile_stride: int) -> list[int]:
    starts = list(range(0, length - tile_size + 1, tile_stride))
    # when the stride does not land exactly on the border, one more window is placed flush with
    # it, so it overlaps its predecessor by more than tile_size - tile_stride
    if (length - tile_size) % tile_stride != 0:
        starts.append(length - tile_size)
    return starts


def sliding_windows(h: int, w: int, tile_size: int, tile_stride: int) -> list[tuple[int, int, int, int]]:
    """Square windows covering an h x w latent, as (top, bottom, left, right) with exclusive ends.

    Windows start every `tile_stride` along each axis; if the last of those does not end on the
    border, a final window is placed at `length - tile_size`, flush with it. Order: row by
    row, left to right (the order the official tiled samplers accumulate in).

    The official `_sliding_windows` silently yields negative offsets for a latent smaller than
    the tile and leaves gaps for a stride larger than the tile; both are rejected here.
    """
    if tile_size < 1 or tile_stride < 1:
        raise ValueError(f"tile_size and tile_stride must be positive, got {tile_size} and {tile_stride}")
    if tile_stride > tile_size:
        raise ValueError(f"tile_stride ({tile_stride}) larger than tile_size ({tile_size}) would leave gaps")
    if h < tile_size or w < tile_size:
        raise ValueError(
            f"latent {h}x{w} is smaller than the tile ({tile_size}); use a smaller tile or the untiled sampler"
        )
    return [
        (hi, hi + tile_size, wi, wi + tile_size)
        for hi in _starts(h, tile_size, tile_stride)
        for wi in _starts(w, tile_size, tile_stride)
    ]
