"""What an output keeps of its input's metadata, per format, as a photographer checks it:
camera and date survive, the dimensions are the output's, the ICC profile stays, the location
leaves a published output, and the upscale's parameters are in the file as XMP."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import pyvips
from PIL import Image, ImageCms
from PIL.ExifTags import GPS, IFD, Base

from sr_core.metadata import (
    XMP_NAMESPACE,
    MetadataPolicy,
    MetadataRule,
    StageParameters,
    parameters_xmp,
    without_location,
)
from sr_core.pipeline import Stage, run_pipeline
from sr_core.upscale import UpscaleOptions

from .helpers import natural_image

SATSCALE = str(Path(sys.executable).with_name("satscale"))
FORMATS = ["png", "jpg", "webp", "tiff"]
PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB", 5000)).tobytes()


def camera_photo(path: Path, orientation: int = 1) -> Path:
    """A JPEG as a phone writes it: camera, lens, date, GPS position, an ICC profile."""
    image = Image.fromarray(natural_image(20, 24, seed=5))
    exif = image.getexif()
    exif[Base.Make], exif[Base.Model], exif[Base.Orientation] = "SatscaleCam", "S1", orientation
    exif.get_ifd(IFD.Exif)[Base.DateTimeOriginal] = "2026:05:01 10:00:00"
    exif.get_ifd(IFD.Exif)[Base.LensModel] = "50mm f/1.8"
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = "N", (52.0, 30.0, 15.0)
    gps[GPS.GPSLongitudeRef], gps[GPS.GPSLongitude] = "E", (13.0, 24.0, 0.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes(), icc_profile=PROFILE)
    path.write_bytes(buffer.getvalue())
    return path


def stage_parameters(compact) -> list[StageParameters]:
    return [StageParameters("realesr-animevideov3", 2, compact.info.weights_sha256, {"denoise": 0.5})]


def upscale(compact, source: Path, target: Path, rule: MetadataRule | None) -> None:
    run_pipeline([Stage(compact, UpscaleOptions(scale=2))], source, target, metadata=rule, fidelity=False)


def exif_of(path: Path) -> Image.Exif:
    with Image.open(path) as image:
        return image.getexif()


def xmp_of(path: Path) -> bytes | None:
    image = pyvips.Image.new_from_file(str(path))
    return bytes(image.get("xmp-data")) if image.get_typeof("xmp-data") else None


def icc_of(path: Path) -> bytes | None:
    with Image.open(path) as image:
        return image.info.get("icc_profile")


@pytest.mark.parametrize("ext", FORMATS)
def test_a_published_output_keeps_the_camera_and_loses_the_location(compact, tmp_path: Path, ext: str) -> None:
    source = camera_photo(tmp_path / "phone.jpg")
    target = tmp_path / f"out.{ext}"
    xmp = parameters_xmp("Satscale 9.9.9", stage_parameters(compact))
    upscale(compact, source, target, MetadataRule(MetadataPolicy.AUTO, public=True, xmp=xmp))

    written = xmp_of(target)
    assert written is not None and compact.info.weights_sha256.encode() in written
    assert b"<satscale:Model>realesr-animevideov3</satscale:Model>" in written and b"Satscale 9.9.9" in written
    assert icc_of(target) == PROFILE
    exif = exif_of(target)
    assert exif.get_ifd(IFD.GPSInfo) == {}  # no position, whatever the format
    if ext == "tiff":  # libvips' TIFF writer has no EXIF block (README): nothing of it, so no location
        assert exif.get(Base.Make) is None
        return
    assert exif.get(Base.Make) == "SatscaleCam" and exif.get(Base.Model) == "S1"
    details = exif.get_ifd(IFD.Exif)
    assert details.get(Base.DateTimeOriginal) == "2026:05:01 10:00:00" and details.get(Base.LensModel) == "50mm f/1.8"
    assert (details.get(Base.ExifImageWidth), details.get(Base.ExifImageHeight)) == (48, 40)  # the output's


@pytest.mark.parametrize(("policy", "public"), [(MetadataPolicy.AUTO, False), (MetadataPolicy.KEEP, True)])
@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_the_location_stays_where_the_policy_keeps_it(
    compact, tmp_path: Path, ext: str, policy: MetadataPolicy, public: bool
) -> None:
    """An unpublished output goes to its owner only (auto keeps the position); `keep` keeps it even
    in public."""
    source = camera_photo(tmp_path / "phone.jpg")
    target = tmp_path / f"out.{ext}"
    upscale(compact, source, target, MetadataRule(policy, public=public))
    gps = exif_of(target).get_ifd(IFD.GPSInfo)
    assert gps.get(GPS.GPSLatitudeRef) == "N" and tuple(map(float, gps[GPS.GPSLatitude])) == (52.0, 30.0, 15.0)
    assert exif_of(target).get(Base.Make) == "SatscaleCam"


@pytest.mark.parametrize("ext", FORMATS)
def test_strip_writes_no_exif_and_no_xmp_but_keeps_the_colours(compact, tmp_path: Path, ext: str) -> None:
    source = camera_photo(tmp_path / "phone.jpg")
    target = tmp_path / f"out.{ext}"
    xmp = parameters_xmp("Satscale", stage_parameters(compact))
    upscale(compact, source, target, MetadataRule(MetadataPolicy.STRIP, public=False, xmp=xmp))
    exif = exif_of(target)
    assert exif.get(Base.Make) is None and exif.get_ifd(IFD.GPSInfo) == {}
    assert xmp_of(target) is None
    assert icc_of(target) == PROFILE


def test_a_sideways_photo_comes_out_upright_with_its_exif(compact, tmp_path: Path) -> None:
    source = camera_photo(tmp_path / "phone.jpg", orientation=6)
    target = tmp_path / "out.jpg"
    upscale(compact, source, target, MetadataRule(MetadataPolicy.AUTO, public=True))
    with Image.open(target) as image:
        assert image.size == (40, 48)  # 24x20 stored sideways: 20x24 upright, x2
    exif = exif_of(target)
    assert exif.get(Base.Orientation, 1) == 1 and exif.get(Base.Make) == "SatscaleCam"


def test_without_location_removes_only_the_gps_ifd(tmp_path: Path) -> None:
    source = camera_photo(tmp_path / "phone.jpg")
    blob = bytes(pyvips.Image.new_from_file(str(source)).get("exif-data"))
    cleaned = without_location(blob)
    assert cleaned is not None and cleaned.startswith(b"Exif\x00\x00")
    parsed = Image.Exif()
    parsed.load(cleaned)
    assert 0x8825 not in parsed and parsed.get(Base.Make) == "SatscaleCam"
    assert parsed.get_ifd(IFD.Exif).get(Base.LensModel) == "50mm f/1.8"
    # a block that cannot be parsed cannot be shown to be free of a location: it goes
    assert without_location(b"Exif\x00\x00garbage that is not TIFF") is None


def test_the_xmp_packet_escapes_what_a_request_chose(compact) -> None:
    """A stage's settings come from the request (a prompt): they are text, never markup."""
    stages = [StageParameters("m", 4, "ab" * 32, {"prompt": '</satscale:Value><x a="1">&'})]
    packet = parameters_xmp("Satscale", stages).decode()
    assert '&lt;/satscale:Value&gt;&lt;x a="1"&gt;&amp;' in packet
    assert XMP_NAMESPACE in packet and packet.startswith("<?xpacket begin=")
    import xml.dom.minidom

    xml.dom.minidom.parseString(packet.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])  # well-formed
    # characters XML cannot hold (controls, a lone surrogate from JSON "\\ud800") are replaced
    odd = parameters_xmp("Satscale", [StageParameters("m", 2, "ab" * 32, {"prompt": "a\x01b\x1bc\ud800d"})])
    body = odd.decode("utf-8")
    assert "a\ufffdb\ufffdc\ufffdd" in body
    xml.dom.minidom.parseString(body.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


def test_a_collection_tokens_output_counts_as_public() -> None:
    """A collection run publishes its tokens' outputs once the batch is paid: no location in them."""
    from types import SimpleNamespace

    from service.credentials import metadata_rule

    token = SimpleNamespace(publish=False, collection_run="run_1")
    assert metadata_rule(MetadataPolicy.AUTO, token, []).public  # type: ignore[arg-type]
    private = SimpleNamespace(publish=False, collection_run=None)
    rule = metadata_rule(MetadataPolicy.AUTO, private, [])  # type: ignore[arg-type]
    assert not rule.public and rule.keeps_input_metadata


def test_the_command_line_keeps_exif_writes_xmp_and_strips_on_request(tmp_path: Path, weights_folder: Path) -> None:
    source = camera_photo(tmp_path / "phone.jpg")
    kept, stripped = tmp_path / "kept.jpg", tmp_path / "stripped.jpg"
    for target, extra in ((kept, []), (stripped, ["--metadata", "strip"])):
        done = subprocess.run(
            [SATSCALE, "upscale", str(source), "-o", str(target), "-m", "realesr-animevideov3", "-s", "2", *extra],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    assert exif_of(kept).get_ifd(IFD.GPSInfo).get(GPS.GPSLatitudeRef) == "N"  # a local file: all of it stays
    assert b"realesr-animevideov3" in (xmp_of(kept) or b"")
    assert exif_of(stripped).get(Base.Make) is None and xmp_of(stripped) is None
    assert icc_of(stripped) == PROFILE
