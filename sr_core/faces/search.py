"""Finding the faces worth restoring: detection on a bounded copy of the image, then the checks
that keep the detector's mistakes away from the face model.

The failure modes users report are guarded here: "faces" found inside eyes or in textures
(Real-ESRGAN#72: a detection inside a larger face is dropped, and so is one whose landmarks do
not make a frontal face's geometry), side profiles (GFPGAN#86: the nose outside the eyes' span
or landmarks that do not fit the template), and tiny faces that a 512 model would invent
rather than restore (below a minimum eye distance in the image the face is pasted into).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..fidelity import reduce_image
from ..imageio import ImageInfo
from .align import Alignment, align

Read = Callable[[int, int, int, int], np.ndarray]

#: the detector looks at a copy of the image at most this many pixels on its longer side
DETECTION_SIDE = 1280
#: a face's landmarks must fit the template this well (RMS, crop pixels) to be a frontal face
MAX_RESIDUAL = 30.0
#: where the nose may sit along the eye line (0: at the left eye, 1: at the right eye)
NOSE_SPAN = (0.15, 0.85)
#: a job's record lists at most this many of the faces it left alone (a crowd has thousands)
LISTED_LEFT_ALONE = 20
#: the mouth's distance below the eye line, in eye distances, for a face seen from the front
MOUTH_DROP = (0.6, 1.8)


@dataclass(frozen=True)
class SearchRules:
    min_score: float = 0.95
    min_eye_distance: float = 16.0  # pixels of the image the face is pasted into
    only_center_face: bool = False
    max_faces: int = 10


@dataclass(frozen=True)
class FoundFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels
    score: float
    landmarks: np.ndarray  # (5, 2) in the image's pixels
    alignment: Alignment

    @property
    def eye_distance(self) -> float:
        return float(np.hypot(*(self.landmarks[1] - self.landmarks[0])))

    def describe(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "eye_distance": round(self.eye_distance, 1),
        }


@dataclass(frozen=True)
class FaceSearch:
    restore: tuple[FoundFace, ...]
    #: faces the detector found and the checks left alone, each with the reason
    left_alone: tuple[tuple[FoundFace, str], ...]

    def describe(self) -> dict:
        """What a run reports (the job's stage record): the faces restored and the ones left alone
        (the first LISTED_LEFT_ALONE of them, and how many there were)."""
        return {
            "faces_restored": [face.describe() for face in self.restore],
            "faces_left_alone": [
                face.describe() | {"reason": reason} for face, reason in self.left_alone[:LISTED_LEFT_ALONE]
            ],
            "faces_left_alone_count": len(self.left_alone),
        }


def detection_copy(read: Read, image: ImageInfo, side: int = DETECTION_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit RGB copy of the image at most `side` pixels on its longer side (area-averaged,
    read in bands) and the factors (x, y) from its pixels to the image's."""
    longest = max(image.width, image.height)
    factor = max(1.0, longest / side)
    width, height = max(1, round(image.width / factor)), max(1, round(image.height / factor))
    colour = image.colour_channels
    peak = image.peak
    copy = reduce_image(read, (image.width, image.height), colour, (width, height), image.bit_depth // 8)
    rgb = np.repeat(copy, 3, axis=2) if colour == 1 else copy
    factors = np.array([image.width / width, image.height / height])
    return np.clip(np.rint(rgb * (255.0 / peak)), 0, 255).astype(np.uint8), factors


def _frontal_problem(face: FoundFace) -> str | None:
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks.astype(np.float64)
    eye_line = right_eye - left_eye
    distance = float(np.hypot(*eye_line))
    if distance <= 0:
        return "its landmarks coincide"
    along = float(np.dot(nose - left_eye, eye_line)) / distance**2
    if not NOSE_SPAN[0] <= along <= NOSE_SPAN[1]:
        return "a face seen from the side (the nose is outside the eyes' span)"
    normal = np.array([-eye_line[1], eye_line[0]]) / distance
    drop = float(np.dot((mouth_left + mouth_right) / 2 - left_eye, normal)) / distance
    if not MOUTH_DROP[0] <= drop <= MOUTH_DROP[1]:
        return "its landmarks are not a face's (the mouth is not below the eyes)"
    if face.alignment.residual > MAX_RESIDUAL:
        return f"its landmarks fit a frontal face badly ({face.alignment.residual:.0f} px off the template)"
    return None


def _inside(inner: FoundFace, outer: FoundFace) -> bool:
    x1, y1, x2, y2 = inner.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ox1, oy1, ox2, oy2 = outer.box
    return ox1 <= cx <= ox2 and oy1 <= cy <= oy2 and (x2 - x1) < (ox2 - ox1)


def select_faces(found: list[FoundFace], image: ImageInfo, rules: SearchRules) -> FaceSearch:
    """The faces to restore (largest first, at most rules.max_faces) and the others, with why."""
    kept: list[FoundFace] = []
    left: list[tuple[FoundFace, str]] = []
    for face in sorted(found, key=lambda f: f.eye_distance, reverse=True):
        if face.score < rules.min_score:
            left.append((face, f"the detector is not sure it is a face (score {face.score:.2f})"))
        elif face.eye_distance < rules.min_eye_distance:
            left.append((face, f"too small to restore (eyes {face.eye_distance:.0f} px apart)"))
        elif any(_inside(face, bigger) for bigger in kept):
            left.append((face, "it lies inside a larger face"))
        elif (problem := _frontal_problem(face)) is not None:
            left.append((face, problem))
        else:
            kept.append(face)
    if rules.only_center_face and kept:
        centre = np.array([image.width / 2, image.height / 2])
        chosen = min(kept, key=lambda f: float(np.hypot(*(f.landmarks.mean(axis=0) - centre))))
        left += [(f, "only the face nearest the centre was asked for") for f in kept if f is not chosen]
        kept = [chosen]
    if len(kept) > rules.max_faces:
        left += [(f, f"beyond the {rules.max_faces} largest faces the job covers") for f in kept[rules.max_faces :]]
        kept = kept[: rules.max_faces]
    return FaceSearch(tuple(kept), tuple(left))


def find_faces(
    read: Read, image: ImageInfo, detect: Callable[[np.ndarray], list], rules: SearchRules, magnified: int = 1
) -> FaceSearch:
    """Detect on a bounded copy of the image and select. `magnified`: the image is a job's input
    that the stages before the face stage will make this many times larger (at intake, where
    the faces are counted for the price): sizes are judged in the image the faces go into."""
    copy, factors = detection_copy(read, image)
    scale = factors * magnified
    shown = replace(image, width=image.width * magnified, height=image.height * magnified)
    found = []
    for face in detect(copy):
        # copy pixel centres i map to image pixel centres (i + 0.5) * factor - 0.5 (boxes too)
        landmarks = (np.asarray(face.landmarks, np.float64) + 0.5) * scale - 0.5
        corners = (np.asarray(face.box, np.float64).reshape(2, 2) + 0.5) * scale - 0.5
        box = tuple(float(v) for v in corners.reshape(-1))
        found.append(FoundFace(box, float(face.score), landmarks, align(landmarks)))  # type: ignore[arg-type]
    return select_faces(found, shown, rules)
