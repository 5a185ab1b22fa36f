"""Which token images are pixel art (and get nearest-neighbour instead of a network)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from sr_core.pixel_art import PALETTE_COLOURS, TARGET_SIDE, judge_pixel_art, pixel_art_scale

from .helpers import natural_image


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _palette_image(side: int, colours: int) -> np.ndarray:
    rng = np.random.default_rng(colours)
    palette = rng.integers(0, 256, (colours, 4), dtype=np.uint8)
    sprite = palette[rng.integers(0, colours, (side // 8, side // 8))]
    return sprite.repeat(8, 0).repeat(8, 1)  # already stored enlarged, as many collections do


def test_tiny_images_are_pixel_art_whatever_their_colours() -> None:
    verdict = judge_pixel_art(_png(natural_image(24, 24)))
    assert verdict.pixel_art and "24x24" in verdict.reason


def test_a_small_palette_is_pixel_art_at_any_size() -> None:
    verdict = judge_pixel_art(_png(_palette_image(512, 12)))
    assert verdict.pixel_art and verdict.colours == 12
    assert not judge_pixel_art(_png(_palette_image(512, PALETTE_COLOURS + 8))).pixel_art


def test_photographs_are_not() -> None:
    verdict = judge_pixel_art(_png(natural_image(256, 256)))
    assert not verdict.pixel_art and verdict.colours > PALETTE_COLOURS


def test_scale_aims_at_the_target_side() -> None:
    assert pixel_art_scale(24, 24, None, 64) == TARGET_SIDE // 24  # 42: 1008 px
    assert pixel_art_scale(24, 24, 4, 64) == 4  # asked for
    assert pixel_art_scale(8, 8, None, 64) == 64  # never beyond what the engine offers
    assert pixel_art_scale(900, 600, None, 64) == 2  # at least x2
