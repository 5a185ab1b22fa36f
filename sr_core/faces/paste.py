"""Paste-back: a restored face goes into the image through a soft mask shaped by its landmarks.

The mask is an ellipse in crop coordinates around the eyes, nose and mouth (forehead to chin,
cheek to cheek), not the crop's square: hair, ears, glasses' outer frames and the background
stay the background model's (GFPGAN#316), and its edge falls off smoothly (a raised cosine whose
slope is zero at both ends), so there is no seam to see (InvokeAI#662). It is evaluated
analytically at every image pixel's crop position, so it is exact at any face size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .align import FACE_SIZE, Alignment, sample

LUMA = torch.tensor([0.299, 0.587, 0.114])
#: where the fall-off starts, as a fraction of the ellipse's radius (1: the ellipse's edge)
FEATHER_START = 0.75
#: a face is pasted into a band this many columns at a time, so the float64 coordinate grids
#: stay a few MB however wide the face is (a face in a 16k image spans thousands of columns)
PASTE_COLUMNS = 1024


@dataclass(frozen=True)
class FaceEllipse:
    """The mask's ellipse in crop coordinates."""

    centre: tuple[float, float]
    axis: tuple[float, float]  # unit vector along the eye line
    across: float  # semi-axis along the eye line (cheek to cheek)
    down: float  # semi-axis across it (forehead to chin)

    @classmethod
    def around(cls, landmarks: np.ndarray) -> FaceEllipse:
        """From a face's five landmarks in crop coordinates."""
        left_eye, right_eye, _nose, mouth_left, mouth_right = np.asarray(landmarks, np.float64)
        eyes = (left_eye + right_eye) / 2
        mouth = (mouth_left + mouth_right) / 2
        eye_line = right_eye - left_eye
        eye_distance = float(np.hypot(*eye_line))
        axis = eye_line / eye_distance
        eye_to_mouth = float(np.hypot(*(mouth - eyes)))
        centre = eyes + (mouth - eyes) * 0.35
        return cls((float(centre[0]), float(centre[1])), (float(axis[0]), float(axis[1])),
                   1.05 * eye_distance, 1.35 * eye_to_mouth)  # fmt: skip

    def weights(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The mask at crop points (u, v): 1 inside, 0 outside, a raised cosine between."""
        du, dv = u - self.centre[0], v - self.centre[1]
        along = du * self.axis[0] + dv * self.axis[1]
        normal = -du * self.axis[1] + dv * self.axis[0]
        radius = torch.sqrt((along / self.across) ** 2 + (normal / self.down) ** 2)
        t = ((radius - FEATHER_START) / (1 - FEATHER_START)).clamp(0.0, 1.0)
        return 0.5 * (1 + torch.cos(math.pi * t))


@dataclass(frozen=True)
class RestoredFace:
    """A face ready to paste: the restored crop, its transform, its mask and how much of it to use."""

    crop: torch.Tensor  # (3, 512, 512) float32 in [0, 1]
    alignment: Alignment
    ellipse: FaceEllipse
    strength: float  # 1 - weight: 1 pastes the restored face fully, 0 leaves the image as it was
    footprint: tuple[int, int, int, int]  # image pixels the crop covers (x0, y0, x1, y1)


def paste_band(band: np.ndarray, top: int, faces: list[RestoredFace], colour: int, peak: float) -> np.ndarray:
    """The band of image rows starting at row `top` (H, W, C integer array) with every face that
    reaches it pasted in; pixels no face's mask reaches keep their exact values."""
    rows = band.shape[0]
    out = None
    for face in faces:
        x0, y0, x1, y1 = face.footprint
        r0, r1 = max(y0, top), min(y1, top + rows)
        if r0 >= r1 or face.strength <= 0:
            continue
        for c0 in range(x0, x1, PASTE_COLUMNS):
            c1 = min(x1, c0 + PASTE_COLUMNS)
            mask = _mask(face, (c0, r0, c1, r1))
            if mask is None:
                continue
            if out is None:
                out = band.copy()
            pixels = out[r0 - top : r1 - top, c0:c1, :colour]
            _blend(pixels, face, (c0, r0), mask, peak)
    return band if out is None else out


def _mask(face: RestoredFace, window: tuple[int, int, int, int]) -> torch.Tensor | None:
    """The face's paste weights at the image pixels `window` (x0, y0, x1, y1), float32 (rows,
    columns); None where its mask does not reach them."""
    x0, y0, x1, y1 = window
    yy, xx = torch.meshgrid(
        torch.arange(y0, y1, dtype=torch.float64), torch.arange(x0, x1, dtype=torch.float64), indexing="ij"
    )
    m = face.alignment.matrix
    u = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
    v = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    inside = (u >= 0) & (u <= FACE_SIZE - 1) & (v >= 0) & (v <= FACE_SIZE - 1)  # the crop holds pixels here
    alpha = (face.ellipse.weights(u, v) * face.strength * inside).float()
    return alpha if bool((alpha > 0).any()) else None


def _blend(pixels: np.ndarray, face: RestoredFace, origin: tuple[int, int], alpha: torch.Tensor, peak: float) -> None:
    """Blend the restored crop into `pixels` (a view of the image whose top-left pixel is image
    pixel `origin`) with weights `alpha`, in place; pixels of weight 0 keep their values exactly."""
    rows, cols, colour = pixels.shape
    # the restored crop sampled at these pixels: its own matrix maps image (x, y) -> crop (u, v)
    to_crop = np.array([[1.0, 0.0, origin[0]], [0.0, 1.0, origin[1]], [0.0, 0.0, 1.0]])
    matrix = np.vstack([face.alignment.matrix, [0, 0, 1]])[:2] @ to_crop
    restored = sample(face.crop, (0, 0), matrix, cols, rows)
    if colour == 1:  # a grey image gets the restored face's luma (BT.601)
        restored = (restored * LUMA[:, None, None]).sum(0, keepdim=True)
    before = torch.from_numpy(pixels.astype(np.float32)) / peak
    after = before * (1 - alpha[..., None]) + restored.permute(1, 2, 0) * alpha[..., None]
    blended = (after * peak).round().clamp(0, peak).numpy().astype(pixels.dtype)
    touched = (alpha > 0).numpy()
    pixels[touched] = blended[touched]
