"""The face stage in the core: alignment, the paste-back mask, the checks on what the detector
found, and whole runs with random-weight face models in their official layouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from sr_core.engines import Faces, Tiling
from sr_core.errors import ParameterError
from sr_core.faces.align import FACE_SIZE, FFHQ_TEMPLATE, align, apply, crop_face, sample
from sr_core.faces.paste import FEATHER_START, FaceEllipse
from sr_core.faces.search import FoundFace, SearchRules, select_faces
from sr_core.imageio import ImageInfo
from sr_core.pipeline import Stage, plan_pipeline, run_pipeline
from sr_core.plans import UpscaleOptions

FACE_MODELS = ("gfpgan-v1.4", "restoreformer", "codeformer")


def image_info(width: int, height: int, channels: int = 3, bit_depth: int = 8) -> ImageInfo:
    return ImageInfo("png", width, height, channels, channels in (2, 4), bit_depth, None, 1, width * height * channels)


def placed_face(angle_degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """The template's five points turned, scaled and moved: a face's landmarks in an image."""
    a = math.radians(angle_degrees)
    turn = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    return FFHQ_TEMPLATE @ turn.T + np.array(shift)


def save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


# ------------------------------------------------------------ alignment


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 1.0), (10.0, 0.35), (-25.0, 2.5), (170.0, 0.8)])
def test_alignment_recovers_the_transform_that_placed_the_face(angle, scale) -> None:
    landmarks = placed_face(angle, scale, (400.0, 300.0))
    alignment = align(landmarks)
    assert alignment.residual < 1e-6
    assert alignment.scale == pytest.approx(1 / scale)
    assert np.allclose(apply(alignment.matrix, landmarks), FFHQ_TEMPLATE, atol=1e-6)
    assert np.allclose(apply(alignment.inverse, FFHQ_TEMPLATE), landmarks, atol=1e-6)


def test_landmarks_that_are_not_a_face_fit_the_template_badly() -> None:
    landmarks = placed_face(0.0, 0.5, (200.0, 200.0))
    landmarks[2] += (60.0, 0.0)  # the nose far to one side
    assert align(landmarks).residual > 30


def test_align_then_warp_back_recovers_the_image() -> None:
    """Crop a face out of a smooth image and warp the crop back: inside the face, the round trip
    gives the image again (bilinear twice: a small error, no shift)."""
    y, x = np.mgrid[0:600, 0:800].astype(np.float64)
    smooth = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 29), 128 + 80 * np.sin((x + y) / 53)], -1)
    pixels = smooth.round().astype(np.uint8)
    landmarks = placed_face(12.0, 0.6, (420.0, 260.0))
    alignment = align(landmarks)

    def read(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return pixels[y0 : y0 + h, x0 : x0 + w]

    crop = crop_face(read, alignment, 800, 600, 3, 255.0)
    assert crop.shape == (3, FACE_SIZE, FACE_SIZE) and float(crop.min()) >= 0 and float(crop.max()) <= 1
    # back: each image pixel of the face's box sampled from the crop at its crop position
    cx, cy = landmarks.mean(axis=0).round().astype(int)
    x0, y0, x1, y1 = cx - 80, cy - 80, cx + 80, cy + 80
    to_crop = np.vstack([alignment.matrix, [0, 0, 1]]) @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    back = sample(crop, (0, 0), to_crop[:2], x1 - x0, y1 - y0).permute(1, 2, 0).numpy() * 255
    error = np.abs(back - pixels[y0:y1, x0:x1]).mean()
    assert error < 1.5, error


def test_a_face_larger_than_the_crop_is_area_averaged_before_the_warp() -> None:
    """A fine stripe pattern on a face five times the crop: a plain bilinear warp picks whole
    stripes (a standard deviation near 0.5); area-averaging first leaves about its mean grey."""
    stripes = np.zeros((3000, 3000, 3), np.uint8)
    stripes[:, ::2] = 255
    alignment = align(placed_face(0.0, 5.0, (200.0, 100.0)))

    def read(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return stripes[y0 : y0 + h, x0 : x0 + w]

    crop = crop_face(read, alignment, 3000, 3000, 3, 255.0)
    assert abs(float(crop.mean()) - 0.5) < 0.02 and float(crop.std()) < 0.1


# ------------------------------------------------------------ the mask


def test_the_mask_is_shaped_by_the_landmarks_and_has_no_step_at_its_edge() -> None:
    ellipse = FaceEllipse.around(FFHQ_TEMPLATE)
    v, u = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
    mask = ellipse.weights(u, v)
    # the eyes, nose and mouth are fully inside; the crop's corners and the hair above are out
    for x, y in FFHQ_TEMPLATE.round().astype(int):
        assert mask[y, x] == 1.0
    assert mask[0, 0] == 0 and mask[0, 511] == 0 and mask[511, 0] == 0 and mask[40, 256] == 0
    assert 0.15 < float(mask.mean()) < 0.45  # an ellipse, not the square
    # feathered: between neighbouring pixels the mask never jumps
    steps = max(float((mask[1:] - mask[:-1]).abs().max()), float((mask[:, 1:] - mask[:, :-1]).abs().max()))
    assert steps < 0.05, steps
    # and its slope vanishes at both ends of the fall-off (a raised cosine): no crease either
    centre = torch.tensor(ellipse.centre)
    ray = torch.linspace(0, 1.2, 1201)
    points = centre[:, None] + torch.tensor([0.0, ellipse.down])[:, None] * ray[None, :]
    profile = ellipse.weights(points[0], points[1])
    slope = (profile[1:] - profile[:-1]) / (ray[1] - ray[0])
    start, edge = int(FEATHER_START * 1000), 1000
    assert abs(float(slope[start])) < 0.1 and abs(float(slope[edge - 1])) < 0.1
    assert float(slope.abs().max()) > 5  # it does fall off, within the band


def test_a_wide_face_is_pasted_in_column_chunks_with_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paste works a bounded number of columns at a time (its grids do not grow with the
    face); the chunks give exactly the pixels of one pass, and pixels outside the mask keep theirs."""
    from sr_core.faces import paste
    from sr_core.faces.paste import RestoredFace, paste_band

    landmarks = placed_face(7.0, 3.0, (0.0, 0.0))
    alignment = align(landmarks + (np.array([900.0, 640.0]) - landmarks.mean(axis=0)))  # 3x the crop
    footprint = alignment.footprint(1800, 1400)
    assert footprint is not None and footprint[2] - footprint[0] > 1500
    crop = torch.rand(3, FACE_SIZE, FACE_SIZE, generator=torch.Generator().manual_seed(3))
    ellipse = FaceEllipse.around(alignment.landmarks)
    face = RestoredFace(crop, alignment, ellipse, 0.8, footprint)
    band = np.random.default_rng(1).integers(0, 65536, (256, 1800, 3), dtype=np.uint16)
    whole = paste_band(band, 600, [face], 3, 65535.0)
    monkeypatch.setattr(paste, "PASTE_COLUMNS", 97)
    chunked = paste_band(band, 600, [face], 3, 65535.0)
    np.testing.assert_array_equal(whole, chunked)
    changed = (whole != band).any(axis=2)
    assert changed.sum() > 100_000 and not changed[:, :300].any()  # the face only, not its square
    assert band is not whole  # the caller's band is never written to


# ------------------------------------------------------------ what is restored


def found(landmarks: np.ndarray, score: float = 0.999) -> FoundFace:
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    pad = (high - low) * 0.5
    box = (*(low - pad), *(high + pad))
    return FoundFace(tuple(float(v) for v in box), score, landmarks, align(landmarks))  # type: ignore[arg-type]


def test_the_checks_leave_unlikely_faces_alone_and_say_why() -> None:
    big = found(placed_face(0, 0.8, (100, 100)))
    in_its_eye = found(placed_face(0, 0.08, (100 + 0.8 * 180, 100 + 0.8 * 230)))  # a "face" inside an eye
    unsure = found(placed_face(0, 0.5, (700, 100)), score=0.8)
    tiny = found(placed_face(0, 0.1, (700, 500)))
    profile = placed_face(0, 0.6, (400, 400))
    profile[2] = profile[1] + (15, 60)  # the nose beyond the right eye: a face turned away
    turned = found(profile)
    chosen = select_faces([tiny, unsure, in_its_eye, turned, big], image_info(1200, 900), SearchRules())
    assert chosen.restore == (big,)
    reasons = {id(face): reason for face, reason in chosen.left_alone}
    assert "not sure" in reasons[id(unsure)]
    assert "too small" in reasons[id(tiny)] or "inside a larger face" in reasons[id(tiny)]
    assert "inside a larger face" in reasons[id(in_its_eye)] or "too small" in reasons[id(in_its_eye)]
    assert "from the side" in reasons[id(turned)]
    described = chosen.describe()
    assert len(described["faces_restored"]) == 1 and len(described["faces_left_alone"]) == 4
    assert described["faces_left_alone_count"] == 4


def test_a_bad_file_in_the_weights_folder_is_not_mistaken_for_a_face_model(tmp_path) -> None:
    """A checkpoint holding a list, or garbage: the face kind passes over it (the listing of
    every other model must not break) and the feed-forward kind lists it with its error."""
    from sr_core.registry import ModelRegistry

    torch.save([1, 2, 3], tmp_path / "a-list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    rows = {row.entry.name: row for row in ModelRegistry(tmp_path).describe_all() if row.entry.source == "file"}
    assert set(rows) == {"a-list", "garbage"}
    assert all(row.entry.kind != "face" and row.error for row in rows.values())


def test_only_the_centre_face_and_at_most_max_faces() -> None:
    faces = [found(placed_face(0, 0.4 + 0.1 * i, (60 + 300 * i, 200))) for i in range(3)]
    image = image_info(1000, 600)
    centre = select_faces(faces, image, SearchRules(only_center_face=True))
    assert len(centre.restore) == 1 and centre.restore[0] is faces[1]
    largest = select_faces(faces, image, SearchRules(max_faces=2))
    assert largest.restore == (faces[2], faces[1])
    assert "beyond the 2 largest" in largest.left_alone[0][1]
    assert select_faces(faces, image, SearchRules(max_faces=0)).restore == ()


# ------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    return save(tmp_path_factory.mktemp("faces") / "astronaut.png", skimage.data.astronaut())


def run_face(engine, source: Path, target: Path, **options):
    return run_pipeline([Stage(engine, UpscaleOptions(scale=1, engine_options=options))], source, target)


@pytest.mark.slow
@pytest.mark.parametrize("model", FACE_MODELS)
def test_each_face_model_restores_the_face_and_only_the_face(face_registry, astronaut, tmp_path, model) -> None:
    engine = face_registry.load_engine(model)
    info = engine.info
    assert info.kind == "face" and info.faces is Faces.RESTORES and info.scales == (1,)
    assert info.tiling is Tiling.REGIONS and info.price_unit == "face"
    result = run_face(engine, astronaut, tmp_path / "out.png", weight=0.0)
    (restored,) = result.stages[0].outcome["faces_restored"]
    assert restored["eye_distance"] > 30 and restored["score"] > 0.99
    before = np.asarray(Image.open(astronaut)).astype(int)
    after = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    changed = np.abs(after - before).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    # the face changed (random weights: a lot) ...
    assert changed[100:150, 200:250].mean() > 0.9
    # ... and nothing far from it: the hair above, the suit, the flag, the background
    x1, y1, x2, y2 = restored["box"]
    assert xs.min() > x1 - 40 and xs.max() < x2 + 40 and ys.min() > y1 - 40 and ys.max() < y2 + 60
    assert not changed[:40].any() and not changed[300:].any()


@pytest.mark.slow
def test_weight_one_and_an_image_without_faces_are_returned_unchanged(face_registry, astronaut, tmp_path) -> None:
    engine = face_registry.load_engine("gfpgan-v1.4")
    unchanged = run_face(engine, astronaut, tmp_path / "kept.png", weight=1.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "kept.png")), np.asarray(Image.open(astronaut)))
    assert unchanged.fidelity.psnr == math.inf
    coffee = save(tmp_path / "coffee.png", skimage.data.coffee())
    result = run_face(engine, coffee, tmp_path / "coffee-out.png", weight=0.0)
    assert result.stages[0].outcome["faces_restored"] == []
    assert np.array_equal(np.asarray(Image.open(tmp_path / "coffee-out.png")), np.asarray(Image.open(coffee)))


@pytest.mark.slow
def test_the_estimate_counts_faces_and_the_pixels_streamed_and_learns_from_real_restores(
    face_registry, astronaut, tmp_path
) -> None:
    from service.capacity import ThroughputMeter
    from sr_core.faces.engine import FACE_UNITS

    engine = face_registry.load_engine("gfpgan-v1.4")
    meter = ThroughputMeter()

    def seconds(side: int, **options) -> float:
        run = UpscaleOptions(scale=1, engine_options=options)
        return meter.estimate(engine, image_info(side, side), run).stage_seconds[0]  # the stage's, no figure

    ten, one, none = seconds(1024), seconds(1024, max_faces=1), seconds(1024, max_faces=0)
    assert ten > one > none > 0
    # the same faces in an image 16 times bigger: more to read and copy, not more faces
    big = seconds(4096, max_faces=1)
    streamed = meter.streaming_rate(engine) * 2 * (4096**2 - 1024**2)
    assert streamed > 0 and big - one == pytest.approx(streamed, rel=1e-6)
    # a real run's restores are measured in the unit the estimate uses, big enough to count
    timed = []
    engine.process(
        *reader_for(astronaut), lambda rows: None, UpscaleOptions(scale=1, engine_options={"weight": 0.0}),
        timings=lambda units, secs: timed.append((units, secs)),
    )  # fmt: skip
    assert [units for units, _ in timed] == [FACE_UNITS]
    assert meter.record(engine.info, *timed[0])


def reader_for(path: Path):
    from sr_core.imageio import ImageReader

    reader = ImageReader(path)
    return reader.read, reader.info


@pytest.mark.slow
def test_the_stage_reads_bands_and_regions_only_and_keeps_depth_and_alpha(face_registry, astronaut, tmp_path) -> None:
    """A 16-bit RGBA image three times the astronaut's size: every read is a band or a face's
    region in bands (never the whole image), the alpha plane is copied exactly, depth is kept."""
    engine = face_registry.load_engine("gfpgan-v1.4")
    rgb = np.asarray(Image.open(astronaut).resize((1536, 1536), Image.Resampling.BICUBIC)).astype(np.uint16) * 257
    alpha = (np.arange(1536, dtype=np.uint16)[None, :].repeat(1536, 0) * 40).astype(np.uint16)
    pixels = np.dstack([rgb, alpha])
    info = image_info(1536, 1536, 4, 16)
    reads: list[tuple[int, int]] = []

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        reads.append((w, h))
        return pixels[y : y + h, x : x + w]

    rows: list[np.ndarray] = []
    plan = engine.process(read, info, rows.append, UpscaleOptions(scale=1, engine_options={"weight": 0.0}))
    out = np.concatenate(rows)
    assert out.dtype == np.uint16 and out.shape == pixels.shape
    assert np.array_equal(out[..., 3], alpha)
    assert len(plan.outcome["faces_restored"]) == 1
    assert max(h for _, h in reads) <= 1536 // 2 and max(w * h for w, h in reads) < 1536 * 1536 // 2
    assert not np.array_equal(out[..., :3], rgb)


def test_a_face_stage_after_an_illustration_model_is_refused(face_registry, compact) -> None:
    face = face_registry.load_engine("gfpgan-v1.4")
    assert compact.info.faces is Faces.REPAINTS
    stages = [Stage(compact, UpscaleOptions(scale=2)), Stage(face, UpscaleOptions(scale=1))]
    with pytest.raises(ParameterError, match="paste photographic faces into a drawing"):
        plan_pipeline(stages, image_info(64, 64))
    # a photo model before it is fine
    photo = face_registry.load_engine("realesrgan-x4plus")
    plan_pipeline([Stage(photo, UpscaleOptions(scale=2)), Stage(face, UpscaleOptions(scale=1))], image_info(64, 64))


def test_face_models_are_listed_as_face_models_and_not_as_upscalers(face_registry) -> None:
    rows = {row.entry.name: row.to_dict() for row in face_registry.describe_all()}
    for name in FACE_MODELS:
        assert rows[name]["kind"] == "face" and rows[name]["faces"] == "restores", rows[name]
    assert "non-commercial" in rows["codeformer"]["licence"] and "non-commercial" in rows["codeformer"]["note"]
    assert "licence" not in rows["gfpgan-v1.4"]
    assert [o["name"] for o in rows["codeformer"]["options"]] == ["weight", "only_center_face", "max_faces", "fidelity"]
    assert "fidelity" not in [o["name"] for o in rows["gfpgan-v1.4"]["options"]]
    assert {"realesr-animevideov3", "realesrgan-x4plus"} <= set(rows)
