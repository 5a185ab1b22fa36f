from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sr_core.errors import ParameterError
from sr_core.tiling import MIN_TILE, auto_tile_size, plan_tiles
from sr_core.upscale import UpscaleOptions, upscale_array

from .helpers import natural_image, psnr


@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    tile=st.integers(MIN_TILE, 300),
    context=st.integers(0, 40),
)
def test_plan_covers_every_pixel_once_with_context(width: int, height: int, tile: int, context: int) -> None:
    plan = plan_tiles(width, height, tile, context)
    coverage = np.zeros((height, width), dtype=np.int32)
    window = plan.window_size
    for row in plan.rows:
        for t in row.tiles:
            assert t.y == row.y
            for span, length in ((t.x, width), (t.y, height)):
                # split cores are at most `tile`; an unsplit axis fits one window
                assert span.stop - span.start <= (tile if length > tile + 2 * context else length)
            # the same window size everywhere, inside the image, around the core
            assert (t.x.window_stop - t.x.window_start, t.y.window_stop - t.y.window_start) == window
            for span, length in ((t.x, width), (t.y, height)):
                assert 0 <= span.window_start <= span.start < span.stop <= span.window_stop <= length
                # full context wherever the image has it
                assert span.start - span.window_start >= min(context, span.start)
                assert span.window_stop - span.stop >= min(context, length - span.stop)
            coverage[t.y.start : t.y.stop, t.x.start : t.x.stop] += 1
    assert (coverage == 1).all()


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ParameterError, match="minimum"):
        plan_tiles(100, 100, 8, 4)
    with pytest.raises(ParameterError, match="empty"):
        plan_tiles(0, 100, 64, 4)


def test_auto_tile_size_follows_memory() -> None:
    small = auto_tile_size(8192, 32, budget=256 << 20, cap=512)
    large = auto_tile_size(8192, 32, budget=1 << 30, cap=512)
    assert MIN_TILE <= small < large
    assert (large + 64) ** 2 * 8192 <= 1 << 30
    assert auto_tile_size(100, 32, budget=1 << 30, cap=256) == 256


def test_compact_tiles_are_exact(compact) -> None:
    """The compact model's receptive field is 18 px: with that much context, tiling is exact."""
    image = natural_image(90, 121, seed=1)
    whole = upscale_array(compact, image, UpscaleOptions(tile=512))
    tiled = upscale_array(compact, image, UpscaleOptions(tile=40))  # 40 divides neither side
    assert compact.info.context == 18
    assert whole.shape == tiled.shape == (360, 484, 3)
    assert np.abs(whole.astype(int) - tiled).max() <= 1  # float summation order only


@pytest.mark.slow
def test_x4plus_tiled_matches_whole_image(x4plus) -> None:
    """Default context and precision, tiles that divide neither side: >= 50 dB to the whole-image pass."""
    image = natural_image(110, 118, seed=2)
    whole = upscale_array(x4plus, image, UpscaleOptions(tile=512))
    tiled = upscale_array(x4plus, image, UpscaleOptions(tile=36, batch=3))  # 4x4 tiles, windows of 100 px
    assert whole.shape == tiled.shape == (440, 472, 3)
    assert psnr(whole, tiled, peak=255) >= 50


def test_progress_is_reported_per_batch(compact) -> None:
    calls: list[tuple[int, int]] = []
    upscale_array(
        compact, natural_image(70, 70), UpscaleOptions(tile=32, batch=2), progress=lambda d, t: calls.append((d, t))
    )
    total = calls[-1][1]
    assert total == 9 and calls[-1][0] == 9
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("scale", [2, 3])
def test_reduced_scales_tile_seamlessly(compact, scale: int) -> None:
    image = natural_image(64, 75, seed=4)
    whole = upscale_array(compact, image, UpscaleOptions(tile=512, scale=scale))
    tiled = upscale_array(compact, image, UpscaleOptions(tile=33, scale=scale))
    assert whole.shape == (64 * scale, 75 * scale, 3)
    assert psnr(whole, tiled, peak=255) >= 60


def test_unoffered_scale_is_refused(compact) -> None:
    with pytest.raises(ParameterError, match="x5 is not offered"):
        upscale_array(compact, natural_image(16, 16), UpscaleOptions(scale=5))
