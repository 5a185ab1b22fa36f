"""Alignment: the similarity transform that puts a face's five landmarks on the FFHQ-512
template, the warp into that 512x512 crop and back out of it.

Coordinates are continuous pixel coordinates with pixel i's centre at i (what the detector's
landmarks mean). A transform is a 2x3 matrix mapping image (x, y, 1) to crop (u, v).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Read = Callable[[int, int, int, int], np.ndarray]

#: the face models' input side
FACE_SIZE = 512
#: where GFPGAN's FFHQ alignment puts the five landmarks in a 512 crop: eye on the image's left,
#: eye on the right, nose tip, mouth corner on the left, mouth corner on the right
FFHQ_TEMPLATE = np.array(
    [[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]], dtype=np.float64
)

#: rows of a face's footprint read at once
REGION_BAND_ROWS = 256


@dataclass(frozen=True)
class Alignment:
    """One face's transform to the template crop, and how well the landmarks fit it."""

    matrix: np.ndarray  # (2, 3) image -> crop
    #: root-mean-square distance (crop pixels) of the transformed landmarks from the template:
    #: large when the landmarks are not a frontal face's (a profile, a false detection)
    residual: float
    landmarks: np.ndarray  # (5, 2) the face's landmarks in crop coordinates

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel (above 1: the face is smaller than the crop)."""
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def inverse(self) -> np.ndarray:
        return invert(self.matrix)

    def footprint(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The image pixels (x0, y0, x1, y1, exclusive ends) the crop covers, clipped to the
        image; None when it lies outside it."""
        corners = np.array([[0, 0], [FACE_SIZE - 1, 0], [0, FACE_SIZE - 1], [FACE_SIZE - 1, FACE_SIZE - 1]], float)
        points = apply(self.inverse, corners)
        x0, y0 = np.floor(points.min(axis=0)).astype(int)
        x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    `source` points to `target` points (Umeyama 1991), as a 2x3 matrix."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((sigma * sign).sum() / variance) if variance > 0 else 1.0
    linear = scale * rotation
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, (-linear @ matrix[:, 2])[:, None]])


def align(landmarks: np.ndarray, size: int = FACE_SIZE) -> Alignment:
    """The transform of a face (five landmarks, image pixels) to the template crop."""
    template = FFHQ_TEMPLATE * (size / FACE_SIZE)
    matrix = similarity(landmarks, template)
    placed = apply(matrix, landmarks)
    residual = float(np.sqrt(((placed - template) ** 2).sum(axis=1).mean()))
    return Alignment(matrix, residual, placed)


def sample(pixels: torch.Tensor, origin: tuple[int, int], matrix: np.ndarray, width: int, height: int) -> torch.Tensor:
    """Bilinear samples of `pixels` (C, H, W: an image region whose top-left pixel is image pixel
    `origin`) at the image points that `matrix` (output (u, v) -> image (x, y)) gives for each
    pixel of a width x height output; outside the region the nearest edge pixel is repeated."""
    _, rows, cols = pixels.shape
    u = torch.arange(width, dtype=torch.float64)
    v = torch.arange(height, dtype=torch.float64)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    m = torch.as_tensor(matrix, dtype=torch.float64)
    x = m[0, 0] * uu + m[0, 1] * vv + m[0, 2] - origin[0]
    y = m[1, 0] * uu + m[1, 1] * vv + m[1, 2] - origin[1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    gx = 2 * x / max(cols - 1, 1) - 1
    gy = 2 * y / max(rows - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).to(pixels.dtype)[None]
    out = F.grid_sample(pixels[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0]


def crop_face(read: Read, alignment: Alignment, width: int, height: int, colour: int, peak: float) -> torch.Tensor:
    """The 512 crop (3, 512, 512 float32 in [0, 1]) of a face in the image that `read(x, y, w, h)`
    serves (width x height, `colour` colour channels first). Only the face's footprint is read,
    in bands; a face larger than the crop is area-averaged while it is read (so the bilinear warp
    does not alias and a face of a huge image costs at most about a crop's worth of memory)."""
    box = alignment.footprint(width, height)
    if box is None:
        return torch.zeros(3, FACE_SIZE, FACE_SIZE)
    x0, y0, x1, y1 = box
    factor = max(1, math.floor(1 / alignment.scale))
    step = factor * max(1, REGION_BAND_ROWS // factor)
    pooled = []
    for top in range(y0, y1, step):
        rows = read(x0, top, x1 - x0, min(step, y1 - top))[..., :colour]
        band = torch.from_numpy(rows.astype(np.float32)).permute(2, 0, 1) / peak
        if colour == 1:
            band = band.expand(3, -1, -1)
        pooled.append(F.avg_pool2d(band[None], factor, ceil_mode=True)[0] if factor > 1 else band)
    region = torch.cat(pooled, dim=1)
    # crop (u, v) -> image (x, y) -> the pooled region's pixel grid (pixel j of a block of
    # `factor` pixels starting at x0 has its centre at x0 + j * factor + (factor - 1) / 2)
    to_region = np.array([[1 / factor, 0, -x0 / factor + 0.5 / factor - 0.5],
                          [0, 1 / factor, -y0 / factor + 0.5 / factor - 0.5], [0, 0, 1]])  # fmt: skip
    inverse = to_region @ np.vstack([alignment.inverse, [0, 0, 1]])
    return sample(region, (0, 0), inverse[:2], FACE_SIZE, FACE_SIZE).clamp(0.0, 1.0)
