"""Image input/output as a user sees it: formats, orientation, colour profiles, alpha,
grey and 16-bit, limits and damaged files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image, ImageCms

from sr_core.errors import CorruptImageError, ImageTooLargeError, OutputError, UnsupportedImageError
from sr_core.imageio import ImageLimits, OutputSpec, StreamingWriter, validate_image
from sr_core.upscale import UpscaleOptions, upscale_array, upscale_file

from .helpers import natural_image, psnr


def encode(array: np.ndarray, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    Image.fromarray(array.squeeze(-1) if array.shape[2] == 1 else array, mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def read_back(path: Path) -> np.ndarray:
    image = pyvips.Image.new_from_file(str(path))
    return image.numpy().reshape(image.height, image.width, image.bands)


@pytest.mark.parametrize("in_fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
@pytest.mark.parametrize("out_ext", [".png", ".jpg", ".webp", ".tiff"])
def test_every_format_in_and_out(compact, tmp_path: Path, in_fmt: str, out_ext: str) -> None:
    pixels = natural_image(24, 30, seed=7)
    source = tmp_path / f"in.{in_fmt.lower()}"
    source.write_bytes(encode(pixels, in_fmt, **({"quality": 98} if in_fmt in ("JPEG", "WEBP") else {})))
    target = tmp_path / f"out{out_ext}"
    result = upscale_file(compact, source, target, UpscaleOptions(scale=2))
    out = read_back(target)
    assert (result.width, result.height) == (60, 48) and out.shape == (48, 60, 3)
    decoded = read_back(source)
    expected = upscale_array(compact, decoded, UpscaleOptions(scale=2))
    lossless = out_ext in (".png", ".tiff")
    assert psnr(out, expected, 255) >= (99 if lossless else 30)
    if lossless:
        assert np.array_equal(out, expected)


def test_exif_orientation_is_applied(compact, tmp_path: Path) -> None:
    pixels = natural_image(20, 32, seed=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    exif[0x010F] = "SatscaleCam"
    source = tmp_path / "phone.jpg"
    source.write_bytes(encode(pixels, "JPEG", quality=100, exif=exif.tobytes()))
    target = tmp_path / "phone_x2.jpg"
    result = upscale_file(compact, source, target, UpscaleOptions(scale=2))
    assert result.input.orientation == 6
    assert (result.width, result.height) == (40, 64)  # upright: portrait
    with Image.open(target) as out:
        assert out.size == (40, 64)
        assert out.getexif().get(0x0112, 1) == 1  # nothing left for a viewer to rotate again
        assert out.getexif().get(0x010F) == "SatscaleCam"  # the rest of EXIF travels
    upright = np.rot90(_decoded_pil(source), k=-1)
    expected = upscale_array(compact, np.ascontiguousarray(upright), UpscaleOptions(scale=2))
    assert psnr(read_back(target), expected, 255) >= 30


def _decoded_pil(path: Path) -> np.ndarray:
    with Image.open(path) as image:  # Pillow does not apply orientation by itself
        return np.asarray(image.convert("RGB"))


def test_icc_profile_is_carried(compact, tmp_path: Path) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB", 5000)).tobytes()  # a D50 RGB profile
    source = tmp_path / "tagged.png"
    source.write_bytes(encode(natural_image(16, 16), "PNG", icc_profile=profile))
    for ext in (".png", ".jpg", ".webp", ".tiff"):
        target = tmp_path / f"tagged_x2{ext}"
        upscale_file(compact, source, target, UpscaleOptions(scale=2))
        with Image.open(target) as out:
            assert out.info.get("icc_profile") == profile, ext


def test_alpha_is_upscaled_not_dropped(compact, tmp_path: Path) -> None:
    rgba = natural_image(40, 40, channels=4, seed=9)
    rgba[..., 3] = np.where(np.hypot(*np.mgrid[-20:20, -20:20]) < 14, 255, 0)  # a round cut-out
    source = tmp_path / "sticker.png"
    source.write_bytes(encode(rgba, "PNG"))
    target = tmp_path / "sticker_x4.png"
    upscale_file(compact, source, target, UpscaleOptions(tile=32))
    out = read_back(target)
    assert out.shape == (160, 160, 4)
    alpha = out[..., 3]
    assert alpha[80, 80] == 255 and alpha[2, 2] == 0  # inside opaque, corner transparent
    edge = alpha[80, 80 + 4 * 14 - 2 : 80 + 4 * 14 + 2]
    assert edge.max() > 200 and edge.min() < 60  # a crisp edge, not a blur or a hole
    # constant alpha skips the network and stays exactly constant
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert (upscale_array(compact, opaque)[..., 3] == 255).all()


def test_grey_stays_grey(compact, tmp_path: Path) -> None:
    grey = natural_image(30, 20, channels=1, seed=10)
    source = tmp_path / "grey.png"
    source.write_bytes(encode(grey, "PNG"))
    target = tmp_path / "grey_x4.png"
    upscale_file(compact, source, target)
    with Image.open(target) as out:
        assert out.mode == "L" and out.size == (80, 120)
    rgb = upscale_array(compact, np.repeat(grey, 3, axis=2))
    assert psnr(read_back(target)[..., 0], rgb.mean(axis=2), 255) >= 45


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_stays_sixteen_bit(compact, tmp_path: Path, channels: int) -> None:
    deep = natural_image(24, 24, channels=channels, seed=11, bit_depth=16)
    source = tmp_path / "deep.png"
    vips = pyvips.Image.new_from_array(deep).copy(interpretation="grey16" if channels == 1 else "rgb16")
    vips.pngsave(str(source), bitdepth=16)
    target = tmp_path / "deep_x2.png"
    result = upscale_file(compact, source, target, UpscaleOptions(scale=2))
    assert result.input.bit_depth == 16
    out = pyvips.Image.new_from_file(str(target))
    assert out.format == "ushort" and out.bands == channels
    samples = out.numpy()
    assert np.any(samples % 257 != 0)  # real 16-bit precision, not 8-bit values stretched
    # an 8-bit-only format gets a correct 8-bit conversion
    jpeg = tmp_path / "deep_x2.jpg"
    upscale_file(compact, source, jpeg, UpscaleOptions(scale=2))
    eight = read_back(jpeg).astype(np.float64)
    assert psnr(eight.reshape(samples.shape), samples.astype(np.float64) / 257, 255) >= 30


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = _png_header_only(30_000, 30_000)  # 900 MP announced in 100 bytes
    with pytest.raises(ImageTooLargeError, match="exceeds"):
        validate_image(bomb, ImageLimits(max_side=40_000), source="bomb.png")
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        validate_image(_png_header_only(9000, 9000), source="big.png")


def test_size_limits_are_configurable() -> None:
    data = encode(natural_image(20, 20), "PNG")
    assert validate_image(data).width == 20
    with pytest.raises(ImageTooLargeError, match="bytes"):
        validate_image(data, ImageLimits(max_bytes=100))
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        validate_image(data, ImageLimits(max_pixels=399))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_truncated_files_are_refused(fmt: str) -> None:
    data = encode(natural_image(64, 64, seed=12), fmt)
    with pytest.raises(CorruptImageError, match=f"upload.{fmt.lower()}: damaged"):
        validate_image(data[: len(data) * 2 // 3], source=f"upload.{fmt.lower()}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a supported image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not a supported image"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "not a supported image"),
    ],
)
def test_non_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(UnsupportedImageError, match=message):
        validate_image(data)


def test_validation_reports_what_it_saw() -> None:
    info = validate_image(encode(natural_image(10, 12, channels=4), "PNG"))
    assert (info.format, info.width, info.height, info.channels, info.has_alpha, info.bit_depth) == (
        "png",
        12,
        10,
        4,
        True,
        8,
    )


def test_output_a_format_cannot_hold_is_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="too large for WEBP"):
        StreamingWriter(tmp_path / "huge.webp", OutputSpec(20_000, 100, 3, 8))
    with pytest.raises(OutputError, match="extension"):
        StreamingWriter(tmp_path / "out.bmp", OutputSpec(10, 10, 3, 8))
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_file(compact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(encode(natural_image(80, 80), "PNG"))
    calls = 0
    original = compact.run

    def failing_run(batch):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return original(batch)

    monkeypatch.setattr(compact, "run", failing_run)
    with pytest.raises(RuntimeError):
        upscale_file(compact, source, tmp_path / "out.png", UpscaleOptions(tile=32, batch=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
