"""The `satscale` command as a user runs it: a real subprocess through the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from .helpers import natural_image

SATSCALE = shutil.which("satscale", path=str(Path(sys.executable).parent)) or "satscale"


def run(*args: str, weights: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SATSCALE_WEIGHTS_DIR": str(weights)}
    return subprocess.run([SATSCALE, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def album(tmp_path: Path) -> Path:
    folder = tmp_path / "album"
    (folder / "trip").mkdir(parents=True)
    Image.fromarray(natural_image(20, 24, seed=1)).save(folder / "a.png")
    Image.fromarray(natural_image(18, 16, seed=2)).save(folder / "trip" / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, not picked up")
    return folder


def test_folder_in_folder_out_and_resume(album: Path, tmp_path: Path, weights_folder: Path) -> None:
    out = tmp_path / "out"
    first = run("upscale", str(album), "-o", str(out), "-m", "realesr-animevideov3", "-s", "2", weights=weights_folder)
    assert first.returncode == 0, first.stderr
    assert Image.open(out / "a_x2.png").size == (48, 40)
    assert Image.open(out / "trip" / "b_x2.jpg").size == (32, 36)
    assert "2 upscaled, 0 skipped, 0 failed" in first.stderr
    stamp = (out / "a_x2.png").stat().st_mtime_ns
    again = run("upscale", str(album), "-o", str(out), "-m", "realesr-animevideov3", "-s", "2", weights=weights_folder)
    assert again.returncode == 0 and "0 upscaled, 2 skipped" in again.stderr
    assert (out / "a_x2.png").stat().st_mtime_ns == stamp


def test_one_file_to_a_chosen_name_and_format(album: Path, tmp_path: Path, weights_folder: Path) -> None:
    target = tmp_path / "big.webp"
    result = run(
        "upscale", str(album / "a.png"), "-o", str(target), "-m", "realesr-animevideov3", weights=weights_folder
    )
    assert result.returncode == 0, result.stderr
    with Image.open(target) as image:
        assert image.format == "WEBP" and image.size == (96, 80)


def test_a_bad_file_fails_loudly_but_the_rest_is_done(album: Path, tmp_path: Path, weights_folder: Path) -> None:
    (album / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    result = run("upscale", str(album), "-o", str(out), "-m", "realesr-animevideov3", "-s", "2", weights=weights_folder)
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "error:" in result.stderr
    assert (out / "a_x2.png").exists() and not (out / "broken_x2.png").exists()
    assert "1 failed" in result.stderr


def test_clear_errors_for_bad_arguments(album: Path, weights_folder: Path) -> None:
    unknown = run("upscale", str(album), "-m", "nope", weights=weights_folder)
    assert unknown.returncode == 2 and "no model named 'nope'" in unknown.stderr
    missing = run("upscale", "/no/such/picture.png", "-m", "realesr-animevideov3", weights=weights_folder)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    scale = run("upscale", str(album), "-m", "realesr-animevideov3", "-s", "8", weights=weights_folder)
    assert scale.returncode != 0 and "x8 is not offered" in scale.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr + scale.stderr


def test_models_listing(weights_folder: Path) -> None:
    result = run("models", "--json", weights=weights_folder)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["realesr-animevideov3"]["scales"] == [2, 3, 4]
    assert len(rows["realesrgan-x4plus"]["weights_sha256"]) == 64
    table = run("models", weights=weights_folder)
    assert "realesrgan-x4plus-anime" in table.stdout and "ESRGAN" in table.stdout


def test_then_chains_stages_as_by_hand_and_reports_the_consistency(album: Path, tmp_path: Path, weights_folder: Path):
    import numpy as np

    source = album / "a.png"
    fast = "realesr-animevideov3"
    mid, hand = tmp_path / "mid.png", tmp_path / "hand.png"
    assert run("upscale", str(source), "-o", str(mid), "-m", fast, "-s", "2", weights=weights_folder).returncode == 0
    assert run("upscale", str(mid), "-o", str(hand), "-m", fast, "-s", "3", weights=weights_folder).returncode == 0

    chained = tmp_path / "chained.png"
    both = run("upscale", str(source), "-o", str(chained), "-m", fast, "-s", "2", "--then", f"{fast}:3",
               "--keep-intermediates", weights=weights_folder)  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert np.array_equal(np.asarray(Image.open(chained)), np.asarray(Image.open(hand)))
    assert "2 stages" in both.stdout and "SSIM" in both.stdout and "against the input" in both.stdout
    assert (tmp_path / "chained.stage1.tif").is_file()

    # the same as a --pipeline file, named by the total scale beside the input
    spec = tmp_path / "twice.json"
    spec.write_text(json.dumps([{"model": fast, "scale": 2}, {"model": fast, "scale": 3}]))
    from_file = run("upscale", str(source), "--pipeline", str(spec), "--no-fidelity", weights=weights_folder)
    assert from_file.returncode == 0, from_file.stderr
    assert np.array_equal(np.asarray(Image.open(album / "a_x6.png")), np.asarray(Image.open(hand)))
    assert "SSIM" not in from_file.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--then", "realesr-animevideov3:9"], "stage 2 (realesr-animevideov3): scale x9 is not offered"),
        (["--then", "realesr-animevideov3:2:seed=1"], "unknown option 'seed'"),
        (["--then", "realesr-animevideov3:two"], "the scale must be a whole number"),
        (["--then", ":2"], "name a model"),
        (["--then", "nope"], "no model named 'nope'"),
    ],
)
def test_bad_stages_are_refused_before_any_work(album: Path, weights_folder: Path, extra, message) -> None:
    result = run(
        "upscale", str(album / "a.png"), "-m", "realesr-animevideov3", "-s", "2", *extra, weights=weights_folder
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(album.glob("a_x*"))
