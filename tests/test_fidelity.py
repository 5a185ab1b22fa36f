"""The consistency figure and `compare`: PSNR / SSIM as a user would check them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image

from sr_core import imageio
from sr_core.errors import ParameterError
from sr_core.fidelity import Fidelity, compare_files, consistency, downscale_to, psnr, ssim

from .helpers import natural_image


def save(path: Path, pixels: np.ndarray) -> Path:
    """PNG (8 or 16 bit, grey/RGB, with or without alpha) of an (H, W, C) array."""
    sixteen = pixels.dtype == np.uint16
    grey = pixels.shape[2] <= 2
    interpretation = ("grey16" if grey else "rgb16") if sixteen else ("b-w" if grey else "srgb")
    image = pyvips.Image.new_from_array(pixels).copy(interpretation=interpretation)
    image.pngsave(str(path), bitdepth=16 if sixteen else 8, compression=1)
    return path


def nearest(pixels: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def reference_ssim(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    """Wang et al. 2004 written out: a 2-D Gaussian window slid over every valid position."""

    def luma(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x[..., 0] if x.shape[2] == 1 else 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    def gauss(side: int) -> np.ndarray:
        n = min(11, side if side % 2 else side - 1)
        t = np.arange(n) - n // 2
        return np.exp(-(t**2) / (2 * 1.5**2))

    x, y = luma(a), luma(b)
    window = np.outer(gauss(x.shape[0]), gauss(x.shape[1]))
    window /= window.sum()
    wh, ww = window.shape
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    values = []
    for i in range(x.shape[0] - wh + 1):
        for j in range(x.shape[1] - ww + 1):
            px, py = x[i : i + wh, j : j + ww], y[i : i + wh, j : j + ww]
            mx, my = (window * px).sum(), (window * py).sum()
            vx, vy = (window * (px - mx) ** 2).sum(), (window * (py - my) ** 2).sum()
            cov = (window * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def blurred(pixels: np.ndarray) -> np.ndarray:
    """A 3x3 box blur, edges replicated."""
    padded = np.pad(pixels.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = pixels.shape[:2]
    out = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return np.round(out).astype(pixels.dtype)


def noisy(pixels: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    peak = np.iinfo(pixels.dtype).max
    noise = np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return np.clip(np.round(pixels + noise), 0, peak).astype(pixels.dtype)


# --- the measures ----------------------------------------------------------------------------


def test_identical_images_are_perfect() -> None:
    pixels = natural_image(40, 50)
    assert psnr(pixels, pixels) == math.inf
    assert ssim(pixels, pixels) == 1.0
    figure = Fidelity(psnr=psnr(pixels, pixels), ssim=ssim(pixels, pixels), width=50, height=40)
    assert figure.to_dict() == {"psnr_db": None, "ssim": 1.0}


@pytest.mark.parametrize(("dtype", "peak", "d"), [(np.uint8, 255, 3), (np.uint16, 65535, 700)])
def test_psnr_of_a_constant_offset(dtype: type, peak: int, d: int) -> None:
    a = natural_image(30, 20, bit_depth=16 if dtype == np.uint16 else 8) // 2
    b = a + dtype(d)
    expected = 20 * math.log10(peak / d)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-9)
    assert psnr(b, a, peak=peak) == pytest.approx(expected, abs=1e-9)
    assert Fidelity(psnr(a, b), 0.5, 20, 30).to_dict()["psnr_db"] == round(expected, 2)


def test_psnr_ignores_alpha_and_spreads_grey_over_rgb() -> None:
    rgb = natural_image(16, 16)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    assert psnr(rgba, rgb) == math.inf
    grey = rgb[..., :1]
    as_rgb = np.repeat(grey, 3, axis=-1)
    assert psnr(grey, as_rgb) == math.inf
    assert ssim(grey, as_rgb) == pytest.approx(1.0, abs=1e-12)


def test_float_arrays_need_a_peak() -> None:
    a = np.zeros((12, 12, 3))
    with pytest.raises(ValueError, match="peak"):
        psnr(a, a + 0.1)
    assert psnr(a, a + 0.1, peak=1.0) == pytest.approx(20.0)


@pytest.mark.parametrize(("shape", "channels"), [((24, 20), 3), ((19, 23), 1), ((7, 30), 3), ((12, 4), 4)])
def test_ssim_matches_a_straightforward_implementation(shape: tuple[int, int], channels: int) -> None:
    rng = np.random.default_rng(sum(shape) + channels)
    a = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    colour = a[..., :3] if channels == 4 else a
    assert abs(ssim(a, b) - reference_ssim(colour, b[..., : colour.shape[2]], 255)) < 1e-6


def test_ssim_matches_reference_on_16_bit() -> None:
    a = natural_image(21, 26, bit_depth=16, seed=3)
    b = noisy(a, 3000)
    assert abs(ssim(a, b) - reference_ssim(a, b, 65535)) < 1e-6


def test_ssim_drops_with_noise_and_blur() -> None:
    pixels = natural_image(64, 64, seed=2)
    light, heavy = ssim(pixels, noisy(pixels, 4)), ssim(pixels, noisy(pixels, 25))
    soft = ssim(pixels, blurred(pixels))
    assert 1.0 > light > heavy and heavy < 0.8
    assert soft < 0.99
    assert psnr(pixels, noisy(pixels, 4)) > psnr(pixels, noisy(pixels, 25))


def test_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))


# --- downscaling -------------------------------------------------------------------------------


def test_integer_downscale_is_the_block_mean() -> None:
    pixels = natural_image(30, 45, bit_depth=16)
    out = downscale_to(pixels, 15, 10)
    expected = pixels.astype(np.float64).reshape(10, 3, 15, 3, 3).mean(axis=(1, 3))
    assert out.shape == (10, 15, 3)
    assert np.array_equal(out, expected)


def test_non_integer_downscale_averages_areas() -> None:
    pixels = np.arange(100, dtype=np.float64).reshape(10, 10)
    out = downscale_to(pixels, 4, 4)
    # output pixel (0, 0) covers source rows and columns [0, 2.5): weights 1, 1, 0.5
    weights = np.array([1, 1, 0.5]) / 2.5
    assert out[0, 0] == pytest.approx(weights @ pixels[:3, :3] @ weights)
    assert out.mean() == pytest.approx(pixels.mean())
    flat = np.full((97, 131, 3), 40000, dtype=np.uint16)
    assert np.allclose(downscale_to(flat, 50, 37), 40000)


# --- the consistency figure of a job ---------------------------------------------------------------


def test_nearest_upscale_is_perfectly_consistent(tmp_path: Path) -> None:
    pixels = natural_image(48, 64)
    source = save(tmp_path / "in.png", pixels)
    output = save(tmp_path / "out.png", nearest(pixels, 4))
    figure = consistency(source, output)
    assert (figure.psnr, figure.ssim, figure.width, figure.height) == (math.inf, 1.0, 64, 48)
    assert figure.to_dict() == {"psnr_db": None, "ssim": 1.0}
    assert consistency(source.read_bytes(), str(output)) == figure  # input as bytes, output as str


def test_a_soft_or_noisy_upscale_scores_lower(tmp_path: Path) -> None:
    pixels = natural_image(48, 64)
    source = save(tmp_path / "in.png", pixels)
    smooth = np.asarray(Image.fromarray(pixels).resize((256, 192), Image.Resampling.BICUBIC))
    soft = consistency(source, save(tmp_path / "soft.png", smooth))
    grainy = consistency(source, save(tmp_path / "grainy.png", noisy(nearest(pixels, 4), 60)))
    shifted = consistency(source, save(tmp_path / "shifted.png", np.roll(nearest(pixels, 4), 8, axis=1)))
    for figure in (soft, grainy, shifted):
        assert math.isfinite(figure.psnr) and figure.ssim < 1.0
    assert shifted.psnr < soft.psnr and shifted.ssim < soft.ssim


def test_16_bit_consistency(tmp_path: Path) -> None:
    pixels = natural_image(40, 30, bit_depth=16) // 2
    source = save(tmp_path / "in.png", pixels)
    assert consistency(source, save(tmp_path / "out.png", nearest(pixels, 2))).psnr == math.inf
    # an offset of 10 / 65535, invisible at 8 bits, is measured on the 16-bit scale
    figure = consistency(source, save(tmp_path / "off.png", nearest(pixels + np.uint16(10), 2)))
    assert figure.psnr == pytest.approx(20 * math.log10(65535 / 10), abs=1e-9)
    assert 0.999 < figure.ssim < 1.0


def test_16_bit_input_against_8_bit_output(tmp_path: Path) -> None:
    pixels = natural_image(40, 30, bit_depth=16)
    source = save(tmp_path / "in.png", pixels)
    eight = np.round(pixels / 257).astype(np.uint8)
    figure = consistency(source, save(tmp_path / "out.png", nearest(eight, 3)))
    assert figure.psnr > 55 and figure.ssim > 0.999  # only the 8-bit rounding differs


def test_alpha_is_ignored(tmp_path: Path) -> None:
    rgb = natural_image(32, 32)
    alpha = np.random.default_rng(5).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    source = save(tmp_path / "in.png", np.concatenate([rgb, alpha], axis=-1))
    other_alpha = np.full((128, 128, 1), 255, np.uint8)
    output = save(tmp_path / "out.png", np.concatenate([nearest(rgb, 4), other_alpha], axis=-1))
    figure = consistency(source, output)
    assert (figure.psnr, figure.ssim) == (math.inf, 1.0)
    assert consistency(source, save(tmp_path / "rgb.png", nearest(rgb, 4))).psnr == math.inf


def test_grey_input_with_rgb_output(tmp_path: Path) -> None:
    grey = natural_image(32, 40, channels=1)
    source = save(tmp_path / "in.png", grey)
    figure = consistency(source, save(tmp_path / "out.png", np.repeat(nearest(grey, 2), 3, axis=-1)))
    assert figure.psnr == math.inf and figure.ssim == pytest.approx(1.0, abs=1e-12)


def test_large_output_is_read_in_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = natural_image(1024, 1024)
    source = save(tmp_path / "in.png", pixels)
    output = save(tmp_path / "out.png", nearest(pixels, 4))
    requests: list[tuple[str, int, int, int, int]] = []
    real_read = imageio.ImageReader.read

    def recording_read(self: imageio.ImageReader, x: int, y: int, w: int, h: int) -> np.ndarray:
        requests.append((self.source, x, y, w, h))
        return real_read(self, x, y, w, h)

    monkeypatch.setattr(imageio.ImageReader, "read", recording_read)
    figure = consistency(source, output)
    assert (figure.psnr, figure.ssim) == (math.inf, 1.0)
    bands = [r for r in requests if r[0] == str(output)]
    assert len(bands) > 1
    assert max(w * h for _, _, _, w, h in bands) <= 4096 * 4096 // 2
    # every output row read exactly once, in order
    assert [y for _, _, y, _, _ in bands] == list(np.cumsum([0] + [h for *_, h in bands[:-1]]))
    assert sum(h for *_, h in bands) == 4096 and all(w == 4096 for *_, w, _ in bands)


def test_non_integer_ratio_is_read_in_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sr_core.fidelity.BAND_BYTES", 64 * 1024)
    pixels = natural_image(300, 400)
    smaller = np.asarray(Image.fromarray(pixels).resize((120, 90), Image.Resampling.BOX))
    source = save(tmp_path / "in.png", smaller)
    heights: list[int] = []
    real_read = imageio.ImageReader.read

    def recording_read(self: imageio.ImageReader, x: int, y: int, w: int, h: int) -> np.ndarray:
        heights.append(h)
        return real_read(self, x, y, w, h)

    monkeypatch.setattr(imageio.ImageReader, "read", recording_read)
    figure = consistency(source, save(tmp_path / "out.png", pixels))
    assert max(heights[1:]) < 300 and len(heights) > 3
    expected = downscale_to(pixels, 120, 90)
    assert figure.psnr == pytest.approx(psnr(expected, smaller, 255), abs=1e-6)
    assert figure.psnr > 35


# --- satscale compare A B ----------------------------------------------------------------------------


def test_compare_downscales_the_larger(tmp_path: Path) -> None:
    pixels = natural_image(48, 64)
    small = save(tmp_path / "small.png", pixels)
    large = save(tmp_path / "large.png", nearest(pixels, 2))
    for a, b in ((small, large), (large, small)):
        figure = compare_files(a, b)
        assert (figure.psnr, figure.ssim, figure.width, figure.height) == (math.inf, 1.0, 64, 48)
    other = save(tmp_path / "other.png", noisy(pixels, 10))
    same_size = compare_files(small, other)
    assert same_size.psnr == pytest.approx(psnr(pixels, noisy(pixels, 10)))
    assert same_size.ssim == pytest.approx(ssim(pixels, noisy(pixels, 10)))


def test_compare_close_aspect_ratios(tmp_path: Path) -> None:
    pixels = natural_image(300, 400)
    a = save(tmp_path / "a.png", pixels)
    b = save(tmp_path / "b.png", np.asarray(Image.fromarray(pixels).resize((133, 100), Image.Resampling.LANCZOS)))
    figure = compare_files(a, b)
    assert (figure.width, figure.height) == (133, 100) and figure.psnr > 25


def test_compare_refuses_different_aspect_ratios(tmp_path: Path) -> None:
    a = save(tmp_path / "a.png", natural_image(48, 64))
    b = save(tmp_path / "b.png", natural_image(64, 64))
    with pytest.raises(ParameterError, match="aspect ratio"):
        compare_files(a, b)


def test_the_cli_compares_two_images(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(small.repeat(2, 0).repeat(2, 1)).save(tmp_path / "big.png")
    noisy = np.clip(small.astype(int) + rng.integers(-20, 21, small.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "compare", *args], capture_output=True, text=True)

    same = run(str(tmp_path / "big.png"), str(tmp_path / "small.png"))
    assert same.returncode == 0 and "PSNR identical  SSIM 1.0000  (compared at 24x16)" in same.stdout
    report = json.loads(run(str(tmp_path / "small.png"), str(tmp_path / "noisy.png"), "--json").stdout)
    assert 20 < report["psnr_db"] < 40 and report["ssim"] < 0.995 and report["width"] == 24
    missing = run(str(tmp_path / "small.png"), str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
