"""Colour fixes of the diffusion engines, checked against the formulas of the official SUPIR/CCSR colorfix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sr_core.engines.diffusion.colorfix import (
    adain_color_fix,
    wavelet_color_fix,
    wavelet_decomposition,
)

WEIGHTS = np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _np_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Replicate-padded, dilated 3x3 blur of an (N, C, H, W) array: 9 weighted shifted slices."""
    h, w = image.shape[-2:]
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    return sum(
        WEIGHTS[dy, dx] * padded[..., dy * radius : dy * radius + h, dx * radius : dx * radius + w]
        for dy in range(3)
        for dx in range(3)
    )


def _np_split(image: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the high-frequency bands, low-frequency residual) of the official wavelet decomposition."""
    low = image
    for i in range(levels):
        low = _np_blur(low, 2**i)
    return image - low, low


def _checkerboard(n: int, c: int, h: int, w: int, amplitude: float = 0.2) -> np.ndarray:
    yy, xx = np.indices((h, w))
    board = np.where((yy + xx) % 2 == 0, amplitude, -amplitude)
    return np.broadcast_to(board, (n, c, h, w)).copy()


# ---------------------------------------------------------------- AdaIN


def test_adain_matches_style_statistics() -> None:
    content = _rand(2, 3, 12, 10, seed=1) * 4 - 1  # wide spread, so eps barely matters
    style = _rand(2, 3, 12, 10, seed=2) * 0.5 + torch.tensor([0.1, 0.4, 0.7])[:, None, None]
    out = adain_color_fix(content, style)
    flat_out, flat_style = out.flatten(2), style.flatten(2)
    torch.testing.assert_close(flat_out.mean(2), flat_style.mean(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat_out.std(2, unbiased=True), flat_style.std(2, unbiased=True), atol=1e-4, rtol=0)


def test_adain_formula_with_official_eps() -> None:
    content = _rand(1, 3, 5, 7, seed=3, dtype=torch.float64) * 0.01  # small variance: eps matters
    style = _rand(1, 3, 5, 7, seed=4, dtype=torch.float64)
    c, s = content.numpy().reshape(1, 3, -1), style.numpy().reshape(1, 3, -1)
    c_std = np.sqrt(c.var(axis=2, ddof=1, keepdims=True) + 1e-5)
    s_std = np.sqrt(s.var(axis=2, ddof=1, keepdims=True) + 1e-5)
    expected = (c - c.mean(axis=2, keepdims=True)) / c_std * s_std + s.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(adain_color_fix(content, style).numpy(), expected.reshape(1, 3, 5, 7), atol=1e-12)


def test_adain_keeps_content_with_the_style_statistics() -> None:
    style = _rand(2, 3, 8, 8, seed=5, dtype=torch.float64)
    s = style.flatten(2)
    other = _rand(2, 3, 8, 8, seed=6, dtype=torch.float64).flatten(2)
    # a different image rescaled to exactly the style's mean and unbiased std
    z = (other - other.mean(2, keepdim=True)) / other.std(2, keepdim=True)
    content = (z * s.std(2, keepdim=True) + s.mean(2, keepdim=True)).reshape(style.shape)
    torch.testing.assert_close(adain_color_fix(content, style), content, atol=1e-12, rtol=0)
    torch.testing.assert_close(adain_color_fix(style, style), style, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adain_keeps_shape_and_dtype(dtype: torch.dtype) -> None:
    content, style = _rand(2, 3, 9, 6, seed=7, dtype=dtype), _rand(2, 3, 9, 6, seed=8, dtype=dtype)
    out = adain_color_fix(content, style)
    assert out.shape == content.shape
    assert out.dtype == dtype
    assert torch.isfinite(out.float()).all()


def test_adain_rejects_a_single_pixel() -> None:
    with pytest.raises(ValueError, match="2 pixels"):
        adain_color_fix(_rand(1, 3, 1, 1), _rand(1, 3, 1, 1))


# ---------------------------------------------------------------- wavelet


@pytest.mark.parametrize("levels", [1, 5])
def test_wavelet_matches_numpy_reference(levels: int) -> None:
    content = _rand(2, 3, 11, 9, seed=10, dtype=torch.float64)
    style = _rand(2, 3, 11, 9, seed=11, dtype=torch.float64)
    content_high, _ = _np_split(content.numpy(), levels)
    _, style_low = _np_split(style.numpy(), levels)
    out = wavelet_color_fix(content, style, levels=levels)
    np.testing.assert_allclose(out.numpy(), content_high + style_low, atol=1e-12)


def test_wavelet_levels_1_blur_by_hand() -> None:
    # one pixel at the corner checked against the written-out replicate-padded 3x3 blur
    content = _rand(1, 1, 4, 4, seed=12, dtype=torch.float64)
    style = _rand(1, 1, 4, 4, seed=13, dtype=torch.float64)
    out = wavelet_color_fix(content, style, levels=1)

    # the padded 3x3 window around (0, 0) is [[a, a, b], [a, a, b], [c, c, d]]
    def window00(x: np.ndarray) -> float:
        a, b, c, d = x[0, 0], x[0, 1], x[1, 0], x[1, 1]
        win = np.array([[a, a, b], [a, a, b], [c, c, d]])
        return float((WEIGHTS * win).sum())

    c, s = content.numpy()[0, 0], style.numpy()[0, 0]
    assert out[0, 0, 0, 0].item() == pytest.approx(c[0, 0] - window00(c) + window00(s), abs=1e-12)


def test_wavelet_same_content_and_style_is_identity() -> None:
    image = _rand(2, 3, 10, 13, seed=14)
    torch.testing.assert_close(wavelet_color_fix(image, image), image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("levels", [1, 2])
def test_wavelet_constant_style_gives_its_colour_plus_content_detail(levels: int) -> None:
    h = w = 20
    colour = np.array([0.2, 0.5, 0.8])
    style = np.broadcast_to(colour[None, :, None, None], (1, 3, h, w)).copy()
    content = _checkerboard(1, 3, h, w) + 0.3  # zero-mean high frequency on a grey level
    out = wavelet_color_fix(torch.from_numpy(content), torch.from_numpy(style), levels=levels).numpy()

    # everywhere: the style colour plus the content's high frequencies
    content_high, _ = _np_split(content, levels)
    np.testing.assert_allclose(out, colour[None, :, None, None] + content_high, atol=1e-12)

    # the blur reaches 2**levels - 1 pixels; away from the border the checkerboard is pure high frequency
    reach = 2**levels - 1
    inner = (..., slice(reach, -reach), slice(reach, -reach))
    np.testing.assert_allclose(out[inner], (colour[None, :, None, None] + _checkerboard(1, 3, h, w))[inner], atol=1e-12)

    # the low-frequency part of the output is the style's (exactly, beyond twice the reach)
    _, out_low = _np_split(out, levels)
    inner2 = (..., slice(2 * reach, -2 * reach), slice(2 * reach, -2 * reach))
    np.testing.assert_allclose(out_low[inner2], style[inner2], atol=1e-12)


def test_wavelet_bands_and_residual_reconstruct_the_input() -> None:
    image = _rand(2, 3, 17, 12, seed=15, dtype=torch.float64)
    bands, residual = wavelet_decomposition(image, levels=5)
    assert len(bands) == 5
    torch.testing.assert_close(sum(bands) + residual, image, atol=1e-12, rtol=0)
    # and each band is what the numpy blur cascade gives
    low = image.numpy()
    for i, band in enumerate(bands):
        blurred = _np_blur(low, 2**i)
        np.testing.assert_allclose(band.numpy(), low - blurred, atol=1e-12)
        low = blurred
    np.testing.assert_allclose(residual.numpy(), low, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_wavelet_keeps_shape_and_dtype(dtype: torch.dtype) -> None:
    content, style = _rand(1, 4, 6, 5, seed=16, dtype=dtype), _rand(1, 4, 6, 5, seed=17, dtype=dtype)
    out = wavelet_color_fix(content, style)
    assert out.shape == content.shape
    assert out.dtype == dtype


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("fix", [adain_color_fix, wavelet_color_fix])
def test_mismatched_size_raises(fix) -> None:
    with pytest.raises(ValueError, match="resize"):
        fix(_rand(1, 3, 8, 8), _rand(1, 3, 4, 4))
