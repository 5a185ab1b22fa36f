"""The core's pipeline: stages run one after the other, as by hand, and fail leaving nothing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sr_core.errors import ParameterError
from sr_core.imageio import OutputOptions
from sr_core.pipeline import Stage, intermediate_path, run_pipeline
from sr_core.upscale import UpscaleOptions, upscale_file

from .helpers import natural_image


def _source(tmp_path, channels=3, size=(20, 28)):
    path = tmp_path / "in.png"
    Image.fromarray(natural_image(*size, channels=channels)).save(path)
    return path


@pytest.mark.parametrize("channels", [3, 4])
def test_two_stages_equal_the_two_runs_by_hand(compact, tmp_path, channels) -> None:
    source = _source(tmp_path, channels)
    by_hand_mid, by_hand = tmp_path / "mid.png", tmp_path / "hand.png"
    upscale_file(compact, source, by_hand_mid, UpscaleOptions(scale=2))
    upscale_file(compact, by_hand_mid, by_hand, UpscaleOptions(scale=3))

    seen: list[float] = []
    stages = [Stage(compact, UpscaleOptions(scale=2)), Stage(compact, UpscaleOptions(scale=3))]
    result = run_pipeline(stages, source, tmp_path / "out.png", progress=seen.append, keep=True)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(out, np.asarray(Image.open(by_hand)))  # bit-identical
    assert (result.width, result.height, result.scale) == (28 * 6, 20 * 6, 6)
    assert [s.scale for s in result.stages] == [2, 3] and result.stages[0].path == intermediate_path(
        tmp_path / "out.png", 1
    )
    mid = np.asarray(Image.open(result.stages[0].path))
    assert np.array_equal(mid, np.asarray(Image.open(by_hand_mid)))  # the intermediate is the first run's output
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1
    # every stage and the whole pipeline report how faithful they are to what they were given
    for figure in [*(s.fidelity for s in result.stages), result.fidelity]:
        assert figure is not None and 20 < figure.psnr < 80 and 0.5 < figure.ssim <= 1


def test_intermediates_go_unless_kept_and_a_jpeg_output_keeps_exif(compact, tmp_path) -> None:
    source = _source(tmp_path)
    stages = [Stage(compact, UpscaleOptions(scale=2)), Stage(compact, UpscaleOptions(scale=2))]
    result = run_pipeline(stages, source, tmp_path / "out.jpg", OutputOptions(quality=90), fidelity=False)
    assert not result.stages[0].path.exists() and result.fidelity is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.jpg"]
    assert Image.open(tmp_path / "out.jpg").size == (112, 80)


def test_a_bad_stage_is_refused_before_any_work_naming_it(compact, tmp_path) -> None:
    source = _source(tmp_path)
    stages = [Stage(compact, UpscaleOptions(scale=2)), Stage(compact, UpscaleOptions(scale=5))]
    with pytest.raises(ParameterError, match="stage 2: scale x5 is not offered"):
        run_pipeline(stages, source, tmp_path / "out.png")
    with pytest.raises(ParameterError, match="stage 2: this model: unknown option 'seed'"):
        run_pipeline(
            [stages[0], Stage(compact, UpscaleOptions(engine_options={"seed": 1}))], source, tmp_path / "o.png"
        )
    with pytest.raises(ParameterError, match="1 to 4 stages"):
        run_pipeline([stages[0]] * 5, source, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_a_failing_second_stage_leaves_nothing_behind(compact, tmp_path, monkeypatch) -> None:
    source = _source(tmp_path)

    class Broken:
        info = compact.info

        def plan(self, image, options):
            return compact.plan(image, options)

        def process(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    stages = [Stage(compact, UpscaleOptions(scale=2)), Stage(Broken(), UpscaleOptions(scale=2))]
    with pytest.raises(RuntimeError, match="out of memory"):
        run_pipeline(stages, source, tmp_path / "out.png", keep=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_the_second_stage_reads_the_intermediate_window_by_window(compact, tmp_path, monkeypatch) -> None:
    """The streaming bound of a pipeline: no stage holds a whole image (the peak RSS beside one
    4x is measured by benchmarks/big_image_memory.py)."""
    from sr_core import imageio

    source = tmp_path / "in.png"
    Image.fromarray(natural_image(300, 400)).save(source)
    reads: dict[str, int] = {}

    def recording(original):
        def read(self, x, y, width, height):
            reads[self.source] = max(reads.get(self.source, 0), width * height)
            return original(self, x, y, width, height)

        return read

    for reader in (imageio.ImageReader, imageio.RawTiffReader):
        monkeypatch.setattr(reader, "read", recording(reader.read))
    stages = [Stage(compact, UpscaleOptions(scale=2, tile=64)), Stage(compact, UpscaleOptions(scale=2, tile=64))]
    result = run_pipeline(stages, source, tmp_path / "out.png", fidelity=False)
    assert (result.width, result.height) == (1600, 1200)
    intermediate_area = 800 * 600
    assert reads["stage 1 output"] < intermediate_area / 20  # windows of a 64 px tile with context
    assert reads[str(source)] < 400 * 300 / 5


@pytest.mark.parametrize(("channels", "depth"), [(1, 8), (3, 8), (4, 16), (2, 16)])
def test_an_intermediate_is_read_window_by_window_exactly(tmp_path, channels, depth) -> None:
    from sr_core.errors import CorruptImageError
    from sr_core.imageio import ImageInfo, OutputSpec, RawTiffReader, StreamingWriter

    dtype = np.uint16 if depth == 16 else np.uint8
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, np.iinfo(dtype).max, (70, 90, channels), dtype=dtype)
    spec = OutputSpec(90, 70, channels, depth)
    with StreamingWriter(tmp_path / "mid.tif", spec, OutputOptions(format="tiff")) as writer:
        writer.write_rows(pixels[:30])
        writer.write_rows(pixels[30:])
        writer.keep_raw()
    like = ImageInfo("png", 9, 7, channels, channels in (2, 4), depth, None, 1, 0)
    reader = RawTiffReader(tmp_path / "mid.tif", like)
    assert (reader.info.width, reader.info.height, reader.info.channels) == (90, 70, channels)
    assert np.array_equal(reader.read(0, 0, 90, 70), pixels)
    assert np.array_equal(reader.read(13, 21, 40, 17), pixels[21:38, 13:53])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.tif"]  # the staging file became it
    reader.close()
    # anything else (a compressed TIFF) is refused, not misread
    Image.fromarray(natural_image(20, 20)).save(tmp_path / "other.tif", compression="tiff_deflate")
    with pytest.raises(CorruptImageError, match="not an uncompressed, contiguous intermediate"):
        RawTiffReader(tmp_path / "other.tif", like)
