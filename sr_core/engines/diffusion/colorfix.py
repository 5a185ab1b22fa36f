"""Colour correction applied after the VAE decode by SUPIR and CCSR.

Diffusion restoration tends to drift in colour; both projects pull the result back to the
colours of a reference (the low-quality input or the stage-1 restoration) with one of two fixes:

* AdaIN: per image and channel, give the output the reference's mean and standard deviation;
* wavelet: keep the output's high frequencies and take the lowest frequency band from the reference.

The maths follows the official implementation (StableSR's colorfix, reused unchanged by SUPIR and
CCSR): variance is the unbiased one plus ``eps = 1e-5`` before the square root, and the wavelet
decomposition blurs repeatedly with a 3x3 binomial kernel, dilated by ``2**i`` at level ``i``, with
replicate padding. Like the official tensor functions (the ones the models call), nothing is clamped:
callers keep whatever value range they work in (e.g. the VAE's [-1, 1]).

All functions take NCHW floating-point tensors on any device. They compute in at least float32
and return the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: added to the (unbiased) variance before the square root, as in the official calc_mean_std
ADAIN_EPS = 1e-5

#: the wavelet blur kernel (a separable [1, 2, 1] / 4 binomial filter); its weights sum to exactly 1
_BLUR_KERNEL = (
    (0.0625, 0.125, 0.0625),
    (0.125, 0.25, 0.125),
    (0.0625, 0.125, 0.0625),
)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision and float32 input, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_image(image: Tensor, name: str) -> None:
    if image.ndim != 4:
        raise ValueError(f"{name} must be an NCHW tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {image.dtype}")


def _check_pair(content: Tensor, style: Tensor) -> None:
    _check_image(content, "content")
    _check_image(style, "style")
    if content.shape[-2:] != style.shape[-2:]:
        raise ValueError(
            f"style is {style.shape[-1]}x{style.shape[-2]} (WxH) but content is "
            f"{content.shape[-1]}x{content.shape[-2]}; resize the style image to the content's size first"
        )
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(
            f"style has batch x channels {tuple(style.shape[:2])} but content has {tuple(content.shape[:2])}"
        )


def _mean_std(image: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel mean and std (sqrt of unbiased variance + eps), shaped (N, C, 1, 1)."""
    flat = image.flatten(2)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2) + ADAIN_EPS).sqrt()
    return mean[..., None, None], std[..., None, None]


def adain_color_fix(content: Tensor, style: Tensor) -> Tensor:
    """Adaptive instance normalisation: give ``content`` the per-image, per-channel mean and std of ``style``.

    ``(content - mean_c) / std_c * std_s + mean_s``, with std = sqrt(unbiased variance + 1e-5).
    Both tensors must have the same shape (N, C, H, W) with H * W >= 2.
    """
    _check_pair(content, style)
    if content.shape[-2] * content.shape[-1] < 2:
        raise ValueError(
            "adain_color_fix needs at least 2 pixels per channel (the unbiased variance of one is undefined)"
        )
    dtype = _compute_dtype(content.dtype)
    c = content.to(dtype)
    s = style.to(device=c.device, dtype=dtype)
    content_mean, content_std = _mean_std(c)
    style_mean, style_std = _mean_std(s)
    out = (c - content_mean) / content_std * style_std + style_mean
    return out.to(content.dtype)


def wavelet_blur(image: Tensor, radius: int) -> Tensor:
    """One level of the wavelet blur: the 3x3 binomial kernel applied per channel with dilation ``radius``
    over a replicate padding of width ``radius``. Same shape and dtype as ``image``."""
    _check_image(image, "image")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    channels = image.shape[1]
    kernel = torch.tensor(_BLUR_KERNEL, dtype=image.dtype, device=image.device)
    kernel = kernel[None, None].expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(image: Tensor, levels: int = 5) -> tuple[list[Tensor], Tensor]:
    """Split ``image`` into ``levels`` high-frequency bands and a low-frequency residual.

    Band ``i`` is ``x_i - blur(x_i, 2**i)`` with ``x_0 = image`` and ``x_{i+1} = blur(x_i, 2**i)``; the
    residual is ``x_levels``. The bands plus the residual add up to ``image``. Computed in at least
    float32; the returned tensors have that compute dtype.
    """
    _check_image(image, "image")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    current = image.to(_compute_dtype(image.dtype))
    bands = []
    for i in range(levels):
        low = wavelet_blur(current, 2**i)
        bands.append(current - low)
        current = low
    return bands, current


def wavelet_color_fix(content: Tensor, style: Tensor, levels: int = 5) -> Tensor:
    """Wavelet reconstruction: the high-frequency bands of ``content`` plus the low-frequency residual of
    ``style`` (both decomposed with ``levels`` levels). Both tensors must have the same shape (N, C, H, W)."""
    _check_pair(content, style)
    content_bands, _ = wavelet_decomposition(content, levels)
    _, style_low = wavelet_decomposition(style.to(content.device), levels)
    high = torch.zeros_like(content_bands[0])
    for band in content_bands:  # accumulated in the official order
        high += band
    return (high + style_low.to(high.dtype)).to(content.dtype)
