"""Test pictures and measures shared by the tests."""

from __future__ import annotations

import numpy as np


def natural_image(height: int, width: int, channels: int = 3, seed: int = 0, bit_depth: int = 8) -> np.ndarray:
    """A photo-like test picture: smooth shading, hard edges, fine texture and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for c in range(channels):
        phase = rng.uniform(0, 2 * np.pi)
        shading = 0.5 + 0.3 * np.sin(x / (9 + 3 * c) + phase) * np.cos(y / (13 - 2 * c))
        disc = ((x - width * (0.3 + 0.1 * c)) ** 2 + (y - height * 0.5) ** 2) < (min(height, width) * 0.25) ** 2
        stripes = ((x + 2 * y) // 5 % 2) * (x > width * 0.6)
        plane = shading + 0.25 * disc - 0.2 * stripes + rng.normal(0, 0.02, (height, width))
        planes.append(np.clip(plane, 0, 1))
    image = np.stack(planes, axis=-1)
    peak = 65535 if bit_depth == 16 else 255
    return np.round(image * peak).astype(np.uint16 if bit_depth == 16 else np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))
