"""Is an image pixel art? Then a network would smear it: it gets nearest-neighbour instead.

Two signs, either enough: the image is tiny (early collections were minted at 24x24 to 48x48,
below what any super-resolution network was trained on), or it has few distinct colours (hand-
placed pixels from a small palette; a photograph or a painting has thousands). The verdict
says which sign it saw, so a quote can show it and a user can override it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .imageio import ImageLimits, ImageReader

#: below this many pixels on the longer side an image is treated as pixel art
TINY_SIDE = 64
#: at most this many distinct colours (alpha included) reads as a hand-placed palette
PALETTE_COLOURS = 32
#: larger images are not counted (decoding them for free costs seconds; a sprite stored enlarged
#: up to 1448x1448 is still counted)
MAX_COUNTED_PIXELS = 1 << 21
#: the side nearest-neighbour aims for when no scale is asked: a 24 px sprite becomes 1008 px
TARGET_SIDE = 1024


@dataclass(frozen=True)
class PixelArtVerdict:
    pixel_art: bool
    reason: str  # said in the quote: why this image gets (or does not get) nearest-neighbour
    colours: int | None  # distinct colours counted (None: not counted)


def distinct_colours(pixels: np.ndarray, stop_after: int) -> int:
    """How many distinct samples (all channels together) an image has, counting no further
    than `stop_after + 1`."""
    flat = pixels.reshape(-1, pixels.shape[-1])
    packed = np.zeros(len(flat), dtype=np.uint64)
    for channel in range(flat.shape[1]):
        packed = (packed << np.uint64(16)) | flat[:, channel].astype(np.uint64)
    # a sample of rows first: most photographs show many colours in a few rows
    sample = np.unique(packed[:: max(1, len(packed) // 65536)])
    if len(sample) > stop_after:
        return len(sample)
    return len(np.unique(packed))


def judge_pixel_art(data: bytes, limits: ImageLimits | None = None) -> PixelArtVerdict:
    reader = ImageReader(data, limits, source="token image")
    width, height = reader.info.width, reader.info.height
    if max(width, height) < TINY_SIDE:
        return PixelArtVerdict(True, f"{width}x{height} is below {TINY_SIDE} px: pixel art", None)
    if width * height > MAX_COUNTED_PIXELS:
        return PixelArtVerdict(False, f"{width}x{height} is too large to be a sprite", None)
    colours = distinct_colours(reader.read(0, 0, width, height), PALETTE_COLOURS)
    if colours <= PALETTE_COLOURS:
        return PixelArtVerdict(True, f"{colours} colours (at most {PALETTE_COLOURS}): pixel art", colours)
    return PixelArtVerdict(False, f"more than {PALETTE_COLOURS} colours", colours)


def pixel_art_scale(width: int, height: int, requested: int | None, largest: int) -> int:
    """The integer scale pixel art gets: the one asked for, else the largest that keeps the
    longer side within TARGET_SIDE (at least x2), never beyond what the engine offers."""
    if requested is not None:
        return requested
    return max(2, min(largest, TARGET_SIDE // max(width, height)))
