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
        xs = torch.arange(x0, x1, dtype=torch.float64)
        ys = torch.arange(r0, r1, dtype=torch.float64)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        m = face.alignment.matrix
        u = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
        v = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
        inside = (u >= 0) & (u <= FACE_SIZE - 1) & (v >= 0) & (v <= FACE_SIZE - 1)  # the crop holds pixels here
        alpha = (face.ellipse.weights(u, v) * face.strength * inside).float()
        if not bool((alpha > 0).any()):
            continue
        if out is None:
            out = band.copy()
        # the restored crop sampled at these pixels: its own matrix maps image (x, y) -> crop (u, v)
        to_crop = np.array([[1.0, 0.0, x0], [0.0, 1.0, r0]])
        restored = sample(face.crop, (0, 0), np.vstack([m, [0, 0, 1]])[:2] @ np.vstack([to_crop, [0, 0, 1]]),
                          x1 - x0, r1 - r0)  # fmt: skip
        window = out[r0 - top : r1 - top, x0:x1, :colour]
        before = torch.from_numpy(window.astype(np.float32)) / peak
        if colour == 1:  # a grey image gets the restored face's luma (BT.601)
            restored = (restored * LUMA[:, None, None]).sum(0, keepdim=True)
        after = before * (1 - alpha[..., None]) + restored.permute(1, 2, 0) * alpha[..., None]
        blended = (after * peak).round().clamp(0, peak).numpy().astype(band.dtype)
        touched = (alpha > 0).numpy()
        window[touched] = blended[touched]
    return band if out is None else out
