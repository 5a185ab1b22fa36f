"""The nearest-neighbour engine: pixel art stays pixel art, bit for bit, in bands of rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sr_core.engines import Tiling, resample
from sr_core.errors import ParameterError
from sr_core.imageio import ImageInfo
from sr_core.upscale import UpscaleOptions, upscale_file


@pytest.fixture
def nearest(registry):
    return registry.load_engine("nearest")


def _sprite(height: int, width: int, channels: int, dtype=np.uint8) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(height * width).integers(0, top + 1, (height, width, channels), dtype=dtype)


@pytest.mark.parametrize(("channels", "mode"), [(4, "RGBA"), (3, "RGB"), (1, "L")])
def test_every_pixel_becomes_an_exact_block(nearest, tmp_path, channels, mode) -> None:
    sprite = _sprite(24, 24, channels)
    source = tmp_path / "punk.png"
    Image.fromarray(sprite[..., 0] if channels == 1 else sprite, mode).save(source)
    upscale_file(nearest, source, tmp_path / "big.png", UpscaleOptions(scale=8))
    out = np.asarray(Image.open(tmp_path / "big.png"))
    expected = np.kron(sprite[..., 0] if channels == 1 else sprite, np.ones((8, 8) + (() if channels == 1 else (1,))))
    assert out.shape[:2] == (192, 192)
    assert np.array_equal(out, expected.astype(np.uint8))  # hard edges, alpha included, nothing invented
    assert len(np.unique(out.reshape(-1, channels), axis=0)) == len(np.unique(sprite.reshape(-1, channels), axis=0))


def test_sixteen_bit_and_many_bands(nearest, monkeypatch) -> None:
    monkeypatch.setattr(resample, "BAND_OUTPUT_PIXELS", 3 * 40 * 9)  # three input rows per band
    sprite = _sprite(10, 40, 2, np.uint16)
    info = ImageInfo("png", 40, 10, 2, True, 16, None, 1, 0)
    bands: list[np.ndarray] = []
    done: list[tuple[int, int]] = []
    plan = nearest.process(
        lambda x, y, w, h: sprite[y : y + h, x : x + w],
        info,
        bands.append,
        UpscaleOptions(scale=3),
        progress=lambda d, t: done.append((d, t)),
    )
    assert [b.shape[0] for b in bands] == [9, 9, 9, 3]  # streamed, never the whole output at once
    out = np.concatenate(bands)
    assert out.dtype == np.uint16 and np.array_equal(out, sprite.repeat(3, 0).repeat(3, 1))
    assert done[-1] == (10, 10) and plan.work_pixels == 30 * 120


def test_describes_itself(registry, nearest) -> None:
    info = nearest.info
    assert info.tiling is Tiling.ROWS and info.price_class == "light" and info.parameters == 0
    assert info.scales == tuple(range(1, resample.MAX_SCALE + 1))
    row = registry.describe("nearest").to_dict()
    assert row["source"] == "builtin" and row["faces"] == "keeps" and "Pixel art" in row["note"]
    assert row["weights_sha256"] == resample.ALGORITHM_SHA256  # the record names the algorithm
    with pytest.raises(ParameterError, match=r"x1-x64"):
        info.resolve_scale(65)
    with pytest.raises(ParameterError):
        info.resolve_scale(0)
