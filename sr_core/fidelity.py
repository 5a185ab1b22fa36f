"""How faithful an output is to what was there: PSNR and SSIM against a reference.

Every job reports a *consistency figure*: the output area-averaged back down to the
input's size and compared with the input. A faithful upscale (whatever detail it
invents) averages back to the input, so the figure is high; colour shifts, moved
edges or hallucinated structure lower it. `satscale compare A B` uses the same
measure on any two images (the larger one is reduced to the smaller one's size).

Conventions, for arrays of shape (H, W, C) (a 2-D array is one grey channel):

- 2 or 4 channels means grey or RGB with alpha in the last channel, as
  `ImageReader` returns them; alpha is ignored, pixels are compared as stored
  (not premultiplied).
- A grey image compared with an RGB one counts as that grey in all three channels
  (its BT.601 luma is the grey itself, so SSIM compares like with like).
- PSNR is over every colour channel; SSIM (Wang et al. 2004) is on the BT.601 luma,
  with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, mean over the
  'valid' region: the same numbers as scikit-image's `structural_similarity(...,
  gaussian_weights=True, use_sample_covariance=False, data_range=peak)` on luma.
- Two files of different bit depths are compared at 8 bits (16-bit values / 257).

Outputs can be 192 megapixels: they are read in horizontal bands and reduced band
by band, so memory follows the size compared at, not the output's size.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from .errors import Cancelled, ParameterError
from .imageio import ImageLimits, ImageReader

#: SSIM constants (Wang et al. 2004)
K1, K2, SIGMA, WINDOW = 0.01, 0.03, 1.5, 11
#: BT.601 luma weights of R, G, B
LUMA = (0.299, 0.587, 0.114)
#: aspect ratios further apart than this are different pictures, not a resize
ASPECT_TOLERANCE = 0.01
#: bytes of source pixels read per band while reducing (libvips holds a few bands of a sequential
#: read: 16 MiB bands of a 192 MP PNG cost 0.4 GiB of RSS, 2 MiB bands 0.15 GiB)
BAND_BYTES = 2 << 20
#: pixels per strip in PSNR / SSIM, to bound float64 temporaries
STRIP_PIXELS = 1 << 18
# both files were validated before (an upload, our own output, or the user's own files on the
# command line): the upload limits would refuse a 192 MP output
_TRUSTED = ImageLimits(max_bytes=1 << 44, max_pixels=1 << 40, max_side=1 << 31)

Read = Callable[[int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class Fidelity:
    """PSNR (dB, `math.inf` when identical) and SSIM (1.0 when identical), at width x height."""

    psnr: float
    ssim: float
    width: int
    height: int

    def to_dict(self) -> dict[str, float | None]:
        """For JSON, which has no infinity: identical images give `psnr_db: None`."""
        return {
            "psnr_db": None if math.isinf(self.psnr) else round(self.psnr, 2),
            "ssim": round(self.ssim, 4),
        }


def figure_text(figure: Mapping[str, Any]) -> str:
    """A figure as people read it (`Fidelity.to_dict()`, or a job document's copy of it)."""
    psnr_db = figure.get("psnr_db")
    return f"{'identical' if psnr_db is None else f'PSNR {psnr_db} dB'}, SSIM {figure.get('ssim')}"


def _colour(pixels: np.ndarray) -> np.ndarray:
    """The colour channels of an (H, W) or (H, W, C) array: alpha dropped."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W, C) array with 1 to 4 channels, got shape {pixels.shape}")
    colour = {2: 1, 4: 3}.get(pixels.shape[2])
    return pixels if colour is None else pixels[..., :colour]


def _pair(a: np.ndarray, b: np.ndarray, peak: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    a, b = _colour(np.asarray(a)), _colour(np.asarray(b))
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"images differ in size: {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]}")
    if a.shape[2] != b.shape[2] and 1 not in (a.shape[2], b.shape[2]):
        raise ValueError(f"cannot compare {a.shape[2]} with {b.shape[2]} colour channels")
    if peak is None:
        peaks = {float(np.iinfo(x.dtype).max) for x in (a, b) if x.dtype.kind in "ui"}
        if len(peaks) != 1:
            raise ValueError(f"give the peak value: it cannot be told from {a.dtype} and {b.dtype}")
        peak = peaks.pop()
    if peak <= 0:
        raise ValueError(f"peak must be positive, got {peak}")
    return a, b, float(peak)


def psnr(a: np.ndarray, b: np.ndarray, peak: float | None = None) -> float:
    """PSNR in dB over all colour channels (alpha ignored); `math.inf` for identical images.

    `peak` is the largest possible value (255 for 8-bit, 65535 for 16-bit); None takes it
    from the integer dtype.
    """
    a, b, peak = _pair(a, b, peak)
    height, width = a.shape[:2]
    channels = max(a.shape[2], b.shape[2])
    rows = max(1, STRIP_PIXELS // (width * channels))
    total = 0.0
    for top in range(0, height, rows):
        diff = a[top : top + rows].astype(np.float64) - b[top : top + rows]  # grey broadcasts over RGB
        total += float(np.vdot(diff.ravel(), diff.ravel()))
    mse = total / (height * width * channels)
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _luma(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[2] == 1:
        return pixels[..., 0].astype(np.float64)
    rgb = pixels.astype(np.float64)
    return LUMA[0] * rgb[..., 0] + LUMA[1] * rgb[..., 1] + LUMA[2] * rgb[..., 2]


def _window(side: int) -> np.ndarray:
    """The normalised 1-D Gaussian of one axis. A side shorter than 11 px gets the largest odd
    window that fits (same sigma, truncated and renormalised), so small images still get a
    figure; a 1-px side degenerates to comparing means along that axis."""
    size = min(WINDOW, side if side % 2 else side - 1)
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x * x) / (2 * SIGMA * SIGMA))
    return kernel / kernel.sum()


def _correlate_valid(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    length = x.shape[axis] - len(kernel) + 1
    part = (lambda i: x[i : i + length]) if axis == 0 else (lambda i: x[:, i : i + length])
    out = part(0) * kernel[0]
    scratch = np.empty_like(out)
    for i in range(1, len(kernel)):
        np.multiply(part(i), kernel[i], out=scratch)
        out += scratch
    return out


def ssim(a: np.ndarray, b: np.ndarray, peak: float | None = None) -> float:
    """Mean SSIM of the BT.601 luma over the valid region (see the module docstring); 1.0 for
    identical images. Computed in strips of rows, so memory stays small for large images."""
    a, b, peak = _pair(a, b, peak)
    height, width = a.shape[:2]
    ky, kx = _window(height), _window(width)
    out_h, out_w = height - len(ky) + 1, width - len(kx) + 1
    rows = max(1, STRIP_PIXELS // width)
    total = 0.0
    for top in range(0, out_h, rows):
        bottom = min(out_h, top + rows) + len(ky) - 1
        total += _ssim_sum(_luma(a[top:bottom]) / peak, _luma(b[top:bottom]) / peak, ky, kx)
    return total / (out_h * out_w)


def _axis_weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact area-averaging weights of one axis: output i covers source [i*s/t, (i+1)*s/t).
    Returns first and end source index per output, (target, taps) indices and weights."""
    j = np.arange(target, dtype=np.int64)
    lo, hi = j * source, (j + 1) * source  # in units of 1/target
    first, end = lo // target, -(-hi // target)
    index = first[:, None] + np.arange(int((end - first).max()))[None, :]
    overlap = np.minimum((index + 1) * target, hi[:, None]) - np.maximum(index * target, lo[:, None])
    return first, end, np.minimum(index, source - 1), np.clip(overlap, 0, None) / source


def _reduce_bands(
    read: Read, size: tuple[int, int], channels: int, target: tuple[int, int], row_bytes: int, dtype: type
) -> Iterator[np.ndarray]:
    """Area-average the image that `read(x, y, w, h)` serves down to `target` (w, h), keeping
    its first `channels` channels, reading bands of about BAND_BYTES top to bottom; yields the
    reduced rows band by band."""
    (width, height), (out_w, out_h) = size, target
    if width % out_w == 0 and height % out_h == 0:  # the exact block mean
        fx, fy = width // out_w, height // out_h
        step = max(1, BAND_BYTES // (fy * row_bytes))
        for top in range(0, out_h, step):
            n = min(step, out_h - top)
            band = read(0, top * fy, width, n * fy)[..., :channels]
            sums = band.reshape(n, fy, out_w, fx, channels).sum(axis=(1, 3), dtype=np.float64)
            yield (sums / (fx * fy)).astype(dtype, copy=False)
        return
    first_y, end_y, index_y, weight_y = _axis_weights(height, out_h)
    _, _, index_x, weight_x = _axis_weights(width, out_w)
    step = max(1, BAND_BYTES // (math.ceil(height / out_h) * row_bytes))
    for top in range(0, out_h, step):
        rows = slice(top, min(out_h, top + step))
        lo, hi = int(first_y[rows.start]), int(end_y[rows.stop - 1])
        band = read(0, lo, width, hi - lo)[..., :channels]
        across = sum(w[None, :, None] * band[:, i, :] for i, w in zip(index_x.T, weight_x.T, strict=True))
        local = np.minimum(index_y[rows] - lo, hi - lo - 1)  # padding taps (weight 0) stay in the band
        reduced = sum(w[:, None, None] * across[i] for i, w in zip(local.T, weight_y[rows].T, strict=True))
        yield reduced.astype(dtype, copy=False)


def _reduce(
    read: Read, size: tuple[int, int], channels: int, target: tuple[int, int], row_bytes: int, dtype: type
) -> np.ndarray:
    return np.concatenate(list(_reduce_bands(read, size, channels, target, row_bytes, dtype)), axis=0)


def reduce_image(
    read: Read, size: tuple[int, int], channels: int, target: tuple[int, int], bytes_per_sample: int
) -> np.ndarray:
    """The image `read(x, y, w, h)` serves (`size`: w, h), area-averaged down to `target` (w, h)
    as float64, its first `channels` channels, read in bands of about BAND_BYTES."""
    return _reduce(read, size, channels, target, size[0] * channels * bytes_per_sample, np.float64)


def downscale_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average an (H, W, C) (or (H, W)) array down to width x height, as float64.

    Integer factors give the exact block mean; other ratios the exact area average (each
    output pixel is the mean of the source area it covers, partial pixels weighted by
    coverage), so nothing aliases and 16-bit precision is kept.
    """
    flat = pixels.ndim == 2
    array = np.asarray(pixels)[..., None] if flat else np.asarray(pixels)
    src_h, src_w, channels = array.shape
    if not (0 < width <= src_w and 0 < height <= src_h):
        raise ValueError(f"cannot downscale {src_w}x{src_h} to {width}x{height}")
    out = _reduce(
        lambda x, y, w, h: array[y : y + h, x : x + w],
        (src_w, src_h),
        channels,
        (width, height),
        src_w * channels * array.itemsize,
        np.float64,
    )
    return out[..., 0] if flat else out


def _reader(source: bytes | str | os.PathLike[str], name: str) -> ImageReader:
    """Each image is read once, top to bottom (whole, or in full-width bands): in order, so a
    PNG or JPEG streams instead of being decoded whole first."""
    if isinstance(source, bytes | bytearray | memoryview):
        return ImageReader(bytes(source), _TRUSTED, source=name, sequential=True)
    return ImageReader(Path(source), _TRUSTED, sequential=True)


def _compare(small: ImageReader, large: ImageReader, should_stop: Callable[[], bool] | None = None) -> Fidelity:
    """`small` loaded whole, `large` reduced to its size band by band; `should_stop` is asked
    before every band and before the comparison (a stopped run raises Cancelled)."""
    (w, h), (big_w, big_h) = (small.info.width, small.info.height), (large.info.width, large.info.height)
    if abs((w / h) / (big_w / big_h) - 1) > ASPECT_TOLERANCE:
        raise ParameterError(
            f"{small.source} ({w}x{h}) and {large.source} ({big_w}x{big_h}) have different aspect ratios: "
            "they are not the same picture at two sizes"
        )
    if big_w < w or big_h < h:
        raise ParameterError(f"{large.source} ({big_w}x{big_h}) is smaller than {small.source} ({w}x{h}) on one side")
    read = large.read if should_stop is None else _stoppable(large.read, should_stop)
    if (big_w, big_h) == (w, h):  # nothing to reduce: bands of the image itself
        rows = max(1, BAND_BYTES // (w * large.info.channels * 2))
        bands: Iterator[np.ndarray] = (
            read(0, top, w, min(rows, h - top))[..., : large.info.colour_channels] for top in range(0, h, rows)
        )
    else:
        # float32 holds any block mean of 16-bit samples to well under 1/100 of a level
        row_bytes = big_w * large.info.channels * (2 if large.info.bit_depth == 16 else 1)
        bands = _reduce_bands(read, (big_w, big_h), large.info.colour_channels, (w, h), row_bytes, np.float32)
    depths = {small.info.bit_depth, large.info.bit_depth}
    peak = 65535.0 if depths == {16} else 255.0
    # at 8 bits when the depths differ (e.g. a 16-bit PNG upscaled to JPEG)
    small_scale = 257.0 if depths == {8, 16} and small.info.bit_depth == 16 else 1.0
    large_scale = 257.0 if depths == {8, 16} and large.info.bit_depth == 16 else 1.0
    streamed = _Streamed(w, h, peak)
    top = 0
    for band in bands:
        n = band.shape[0]
        reference = small.read(0, top, w, n)[..., : small.info.colour_channels]
        streamed.add(band / np.float32(large_scale) if large_scale != 1 else band,
                     reference / np.float32(small_scale) if small_scale != 1 else reference)  # fmt: skip
        top += n
    if should_stop is not None and should_stop():
        raise Cancelled("the run was stopped")
    return Fidelity(psnr=streamed.psnr(), ssim=streamed.ssim(), width=w, height=h)


class _Streamed:
    """PSNR and SSIM of two images handed over in matching bands of rows, top to bottom: the
    same figures as psnr() and ssim() on the whole arrays, holding only a band and the last
    window's rows (an SSIM window spans rows of two bands)."""

    def __init__(self, width: int, height: int, peak: float) -> None:
        self.peak = peak
        self.ky, self.kx = _window(height), _window(width)
        self.squared = 0.0
        self.samples = 0
        self.ssim_sum = 0.0
        self.ssim_count = (height - len(self.ky) + 1) * (width - len(self.kx) + 1)
        self.carry: tuple[np.ndarray, np.ndarray] | None = None  # luma rows a window still needs

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b, _ = _pair(a, b, self.peak)
        diff = a.astype(np.float64) - b  # grey broadcasts over RGB
        self.squared += float(np.vdot(diff.ravel(), diff.ravel()))
        self.samples += diff.size
        la, lb = _luma(a) / self.peak, _luma(b) / self.peak
        if self.carry is not None:
            la, lb = np.concatenate([self.carry[0], la]), np.concatenate([self.carry[1], lb])
        keep = len(self.ky) - 1
        if la.shape[0] > keep:
            self.ssim_sum += _ssim_sum(la, lb, self.ky, self.kx)
        self.carry = (la[-keep:], lb[-keep:]) if keep else (la[:0], lb[:0])

    def psnr(self) -> float:
        mse = self.squared / self.samples
        return math.inf if mse == 0 else 10 * math.log10(self.peak * self.peak / mse)

    def ssim(self) -> float:
        return self.ssim_sum / self.ssim_count


def _ssim_sum(ya: np.ndarray, yb: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> float:
    """The sum of the SSIM map over the valid region of two luma strips scaled to [0, 1]."""
    c1, c2 = K1 * K1, K2 * K2

    def blur(x: np.ndarray) -> np.ndarray:
        return _correlate_valid(_correlate_valid(x, ky, 0), kx, 1)

    mu_a, mu_b = blur(ya), blur(yb)
    var_a, var_b, cov = blur(ya * ya) - mu_a * mu_a, blur(yb * yb) - mu_b * mu_b, blur(ya * yb) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((numerator / denominator).sum())


def _stoppable(read: Read, should_stop: Callable[[], bool]) -> Read:
    def checked(x: int, y: int, width: int, height: int) -> np.ndarray:
        if should_stop():
            raise Cancelled("the run was stopped")
        return read(x, y, width, height)

    return checked


def consistency(
    source: bytes | str | os.PathLike[str],
    output: str | os.PathLike[str],
    should_stop: Callable[[], bool] | None = None,
) -> Fidelity:
    """The consistency figure of a job: `output` area-averaged down to the size of `source`
    (the input file or its bytes), compared with it. The output is read in bands, so a
    192-megapixel output costs little more memory than the input."""
    return _compare(_reader(source, "input"), _reader(output, "output"), should_stop)


def compared_pixels(width: int, height: int, scale: int) -> int:
    """The unit a consistency figure's time is counted in: the pixels of both images."""
    return width * height * (1 + scale * scale)


def calibrate(folder: Path) -> float:
    """Seconds per compared pixel here: one figure of a synthetic 2048x1536 output against its
    512x384 input, as PNG files in `folder` (a figure decodes the output file)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
    paths = []
    for name, pixels in (("in", small), ("out", big)):
        path = folder / f".calibration-{name}.png"
        pyvips.Image.new_from_array(pixels).copy(interpretation="srgb").pngsave(str(path), compression=1)
        paths.append(path)
    try:
        started = time.perf_counter()
        consistency(paths[0], paths[1])
        return (time.perf_counter() - started) / compared_pixels(512, 384, 4)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def compare_files(a: bytes | str | os.PathLike[str], b: bytes | str | os.PathLike[str]) -> Fidelity:
    """PSNR and SSIM of two image files (`satscale compare A B`): same size, or the larger one
    area-averaged down to the smaller one's size. Raises ParameterError when their aspect
    ratios differ by more than 1% (different pictures, or a crop)."""
    first, second = _reader(a, "first image"), _reader(b, "second image")
    if first.info.width * first.info.height > second.info.width * second.info.height:
        first, second = second, first
    return _compare(first, second)
