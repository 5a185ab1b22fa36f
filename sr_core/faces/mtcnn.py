"""MTCNN five-point face detection (Zhang et al. 2016) in PyTorch, from the weights of the PyPI
wheel `mtcnn==1.0.0` (read by `mtcnn_weights`; the wheel's TensorFlow code is never imported).

Port notes. The wheel's Keras models take NHWC images in natural orientation (not transposed,
as older MTCNN ports fed them), RGB, normalised (x - 127.5) / 128. Here the networks take NCHW:
conv kernels go HWIO -> OIHW; Keras "same" max-pooling (padding at the end, and at the start too
when the total is 2) is replicated by padding with -inf; and R-Net/O-Net flatten a
`Permute((2, 1, 3))` of the channels-last map, i.e. in (W, H, C) order, so their first dense
matrix is re-ordered to read PyTorch's (C, H, W) flatten instead.

Coordinates: continuous pixel coordinates with pixel i's centre at i. Boxes are edges (x1, y1,
x2, y2): a box covering pixels 10..21 is (9.5, ., 21.5, .), width 12.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mtcnn_weights import load_mtcnn_weights

# P-Net scans the image with a 12x12 window at stride 2 (its receptive field and total stride)
_CELL, _STRIDE = 12, 2
# NMS: per pyramid level, across levels, after R-Net (all IoU), after O-Net (intersection / smaller area)
_NMS_LEVEL, _NMS_PROPOSALS, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
_CROP_BATCH = 2048
# bounds on the work an image can cause, whatever it shows (a texture can fire P-Net in every
# cell): the best candidates of a pyramid level, proposals passed on to R-Net, boxes passed on
# to O-Net, faces returned. Real photos stay far below them.
_MAX_LEVEL_CANDIDATES, _MAX_PROPOSALS, _MAX_REFINED, MAX_FACES_FOUND = 4000, 2000, 500, 200


# ---------------------------------------------------------------------------- networks


def _conv(kernel: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw))
    conv.weight.data = torch.tensor(kernel).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    conv.bias.data = torch.tensor(bias)
    return conv


def _prelu(alpha: np.ndarray) -> nn.PReLU:
    # (1, 1, C) for conv maps (shared over H, W) or (C,) after a dense layer: one slope per channel
    prelu = nn.PReLU(alpha.size)
    prelu.weight.data = torch.tensor(alpha.reshape(-1))
    return prelu


def _dense(matrix: np.ndarray, bias: np.ndarray, chw: tuple[int, int, int] | None = None) -> nn.Linear:
    """A Keras (in, out) dense layer. With `chw`, its input was the flatten of a (W, H, C) map
    (after Permute((2, 1, 3))); the rows are re-ordered to take a (C, H, W) flatten."""
    fan_in, fan_out = matrix.shape
    if chw is not None:
        c, h, w = chw
        matrix = matrix.reshape(w, h, c, fan_out).transpose(2, 1, 0, 3).reshape(fan_in, fan_out)
    linear = nn.Linear(fan_in, fan_out)
    linear.weight.data = torch.tensor(np.ascontiguousarray(matrix.T))
    linear.bias.data = torch.tensor(bias)
    return linear


class KerasMaxPool(nn.Module):
    """Max-pooling with Keras/TensorFlow padding semantics. "same": ceil(n / stride) outputs, the
    total padding split with the extra element at the end; padded cells never win."""

    def __init__(self, size: int, stride: int, padding: str) -> None:
        super().__init__()
        self.size, self.stride, self.same = size, stride, padding == "same"

    def _pads(self, n: int) -> tuple[int, int]:
        total = max((math.ceil(n / self.stride) - 1) * self.stride + self.size - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            top, bottom = self._pads(x.shape[-2])
            left, right = self._pads(x.shape[-1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, self.size, self.stride)


class PNet(nn.Module):
    """Proposal net, fully convolutional: (N, 3, H, W) -> box regression (N, 4, h, w) and
    face probability (N, 2, h, w), one cell per 12x12 window at stride 2."""

    def __init__(self, w: Sequence[np.ndarray]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(w[0], w[1]), _prelu(w[2]), KerasMaxPool(2, 2, "same"),
            _conv(w[3], w[4]), _prelu(w[5]),
            _conv(w[6], w[7]), _prelu(w[8]),
        )  # fmt: skip
        self.box = _conv(w[9], w[10])
        self.face = _conv(w[11], w[12])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return self.box(x), self.face(x).softmax(dim=1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box regression (N, 4), face probability (N, 2)."""

    def __init__(self, w: Sequence[np.ndarray]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(w[0], w[1]), _prelu(w[2]), KerasMaxPool(3, 2, "same"),
            _conv(w[3], w[4]), _prelu(w[5]), KerasMaxPool(3, 2, "valid"),
            _conv(w[6], w[7]), _prelu(w[8]),
            nn.Flatten(),
            _dense(w[9], w[10], chw=(64, 3, 3)), _prelu(w[11]),
        )  # fmt: skip
        self.box = _dense(w[12], w[13])
        self.face = _dense(w[14], w[15])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return self.box(x), self.face(x).softmax(dim=1)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box regression (N, 4), landmarks (N, 10: five x relative to
    the box, then five y), face probability (N, 2)."""

    def __init__(self, w: Sequence[np.ndarray]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(w[0], w[1]), _prelu(w[2]), KerasMaxPool(3, 2, "same"),
            _conv(w[3], w[4]), _prelu(w[5]), KerasMaxPool(3, 2, "valid"),
            _conv(w[6], w[7]), _prelu(w[8]), KerasMaxPool(2, 2, "same"),
            _conv(w[9], w[10]), _prelu(w[11]),
            nn.Flatten(),
            _dense(w[12], w[13], chw=(128, 3, 3)), _prelu(w[14]),
        )  # fmt: skip
        self.box = _dense(w[15], w[16])
        self.landmarks = _dense(w[17], w[18])
        self.face = _dense(w[19], w[20])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return self.box(x), self.landmarks(x), self.face(x).softmax(dim=1)


@cache
def _weights() -> tuple[tuple[np.ndarray, ...], ...]:
    # read once per process; the arrays are only copied from (torch.tensor copies)
    return tuple(tuple(load_mtcnn_weights(net)) for net in ("pnet", "rnet", "onet"))


# ---------------------------------------------------------------------------- boxes


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. "union": intersection over
    union; "min": intersection over the smaller box (drops boxes nested in a better one)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        ih = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        denom = area[i] + area[rest] - inter if mode == "union" else np.minimum(area[i], area[rest])
        order = rest[inter <= threshold * denom]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the nets' box offsets (fractions of the box's width/height, per edge)."""
    size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * size


def _square(boxes: np.ndarray) -> np.ndarray:
    """The square with the box's centre and its longer side (the nets see square crops)."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Bilinear resampling of each box to size x size, sampling at the centres of a size x size
    grid over the box; outside the image the normalised image counts as 0 (mid grey)."""
    _, _, height, width = image.shape
    steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    b = torch.from_numpy(boxes)
    # pixel-centre coordinate p -> grid_sample's [-1, 1] (align_corners=False): 2 (p + 0.5) / n - 1
    gx = 2 * (b[:, 0:1] + 0.5 + steps * (b[:, 2:3] - b[:, 0:1])) / width - 1
    gy = 2 * (b[:, 1:2] + 0.5 + steps * (b[:, 3:4] - b[:, 1:2])) / height - 1
    n = len(boxes)
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=-1)
    grid = grid.to(image.device, torch.float32).reshape(1, n * size, size, 2)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(3, n, size, size).transpose(0, 1)


# ---------------------------------------------------------------------------- detector


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face. Coordinates are image pixels, pixel i's centre at i."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2: the box's edges (may extend past the image)
    score: float  # O-Net face probability
    #: (5, 2) float32 (x, y): the eye on the image's left, the eye on the image's right, nose tip,
    #: mouth corner on the image's left, mouth corner on the image's right (FFHQ five-point order)
    landmarks: np.ndarray

    @property
    def eye_distance(self) -> float:
        return float(np.hypot(*(self.landmarks[1] - self.landmarks[0])))


class FaceDetector:
    """MTCNN's three-stage cascade: P-Net proposals over an image pyramid, R-Net refinement,
    O-Net refinement with five landmarks."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be at least 1, got {min_face_size}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {thresholds}")
        self.device = torch.device(device)
        self.min_face_size, self.thresholds, self.scale_factor = min_face_size, tuple(thresholds), scale_factor
        p, r, o = _weights()
        self.pnet, self.rnet, self.onet = (net.to(self.device).eval() for net in (PNet(p), RNet(r), ONet(o)))

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 uint8 RGB image, highest score first."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError("expected an HxWx3 uint8 RGB array")
        with torch.inference_mode():
            image = torch.tensor(rgb, device=self.device)  # a copy: the caller's array may be read-only
            image = (image.permute(2, 0, 1)[None].float() - 127.5) / 128
            boxes = self._propose(image)
            if len(boxes):
                boxes = self._refine(image, boxes)
            return self._finish(image, boxes) if len(boxes) else []

    def _scales(self, height: int, width: int) -> list[float]:
        # the first level maps min_face_size to P-Net's 12 px window; stop before the image is under 12 px
        scale, scales = _CELL / self.min_face_size, []
        while min(height, width) * scale >= _CELL:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    def _propose(self, image: torch.Tensor) -> np.ndarray:
        """P-Net over the pyramid: squared boxes (n, 4)."""
        height, width = image.shape[-2:]
        found = []
        for scale in self._scales(height, width):
            h, w = math.ceil(height * scale), math.ceil(width * scale)
            # antialiased bilinear, close to the area resampling MTCNN's pyramids use
            level = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            offsets, prob = self.pnet(level)
            ys, xs = torch.nonzero(prob[0, 1] > self.thresholds[0], as_tuple=True)
            if not len(ys):
                continue
            scores = prob[0, 1, ys, xs]
            if len(ys) > _MAX_LEVEL_CANDIDATES:
                best = torch.topk(scores, _MAX_LEVEL_CANDIDATES).indices
                ys, xs, scores = ys[best], xs[best], scores[best]
            scores = scores.double().cpu().numpy()
            offsets = offsets[0, :, ys, xs].T.double().cpu().numpy()
            # the 12x12 window of cell (y, x) has edges 2x - 0.5 .. 2x + 11.5 in level pixels
            sx, sy = w / width, h / height
            cx, cy = xs.double().cpu().numpy() * _STRIDE, ys.double().cpu().numpy() * _STRIDE
            boxes = np.stack([cx / sx, cy / sy, (cx + _CELL) / sx, (cy + _CELL) / sy], axis=1) - 0.5
            keep = _nms(boxes, scores, _NMS_LEVEL)
            found.append((boxes[keep], scores[keep], offsets[keep]))
        if not found:
            return np.zeros((0, 4))
        boxes, scores, offsets = (np.concatenate(parts) for parts in zip(*found, strict=True))
        best = np.argsort(-scores, kind="stable")[: 2 * _MAX_LEVEL_CANDIDATES]
        boxes, scores, offsets = boxes[best], scores[best], offsets[best]
        keep = _nms(boxes, scores, _NMS_PROPOSALS)[:_MAX_PROPOSALS]
        return _square(_regress(boxes[keep], offsets[keep]))

    def _run(self, net: nn.Module, image: torch.Tensor, boxes: np.ndarray, size: int) -> list[np.ndarray]:
        """A refinement net over the boxes' crops, batched; its outputs as float64 arrays."""
        outs = []
        for start in range(0, len(boxes), _CROP_BATCH):
            outs.append(net(_crops(image, boxes[start : start + _CROP_BATCH], size)))
        return [torch.cat(parts).double().cpu().numpy() for parts in zip(*outs, strict=True)]

    def _refine(self, image: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        offsets, prob = self._run(self.rnet, image, boxes, 24)
        mask = prob[:, 1] > self.thresholds[1]
        boxes, offsets, scores = boxes[mask], offsets[mask], prob[mask, 1]
        keep = _nms(boxes, scores, _NMS_RNET)[:_MAX_REFINED]
        return _square(_regress(boxes[keep], offsets[keep]))

    def _finish(self, image: torch.Tensor, boxes: np.ndarray) -> list[DetectedFace]:
        offsets, points, prob = self._run(self.onet, image, boxes, 48)
        mask = prob[:, 1] > self.thresholds[2]
        boxes, offsets, points, scores = boxes[mask], offsets[mask], points[mask], prob[mask, 1]
        # landmarks are fractions of the O-Net input box's size, measured (as in the reference
        # ports and the usual training-label code) from its first pixel's centre, not its edge
        size = boxes[:, 2:4] - boxes[:, 0:2]
        xs = boxes[:, 0:1] + 0.5 + points[:, 0:5] * size[:, 0:1]
        ys = boxes[:, 1:2] + 0.5 + points[:, 5:10] * size[:, 1:2]
        landmarks = np.stack([xs, ys], axis=-1).astype(np.float32)
        boxes = _regress(boxes, offsets)
        faces = []
        for i in _nms(boxes, scores, _NMS_ONET, mode="min")[:MAX_FACES_FOUND]:
            points_i = landmarks[i].copy()
            points_i.setflags(write=False)
            faces.append(DetectedFace(tuple(float(v) for v in boxes[i]), float(scores[i]), points_i))
        return faces


_lock = threading.Lock()


@cache
def _detector(device: torch.device) -> FaceDetector:
    return FaceDetector(device)


def face_detector(device: torch.device | str = "cpu") -> FaceDetector:
    """The default-configured detector for a device, built once (the weights are read once)."""
    with _lock:
        return _detector(torch.device(device))
