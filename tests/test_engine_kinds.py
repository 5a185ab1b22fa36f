"""Engines describe themselves: the registry of kinds, options parsed in one place, and callers
(the service, the CLI, the web app) that never name an engine family."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import kinds
from sr_core.device import Precision
from sr_core.engines import Engine, EngineInfo, Faces, Tiling, WholeImageEngine
from sr_core.engines.builtin import builtin_weights
from sr_core.engines.options import Option, parse_values
from sr_core.errors import ParameterError
from sr_core.kinds import EngineKind, ModelEntry
from sr_core.registry import ModelRegistry
from sr_core.upscale import UpscaleOptions, upscale_file

from .helpers import natural_image

ROOT = Path(__file__).resolve().parent.parent
FAMILY = re.compile(
    r"\bsupir|\bccsr|\besrgan\b|spandrel|engines\.(esrgan|supir|ccsr|diffusion)|gfpgan|restoreformer|codeformer|mtcnn",
    re.IGNORECASE,
)
ENGINE_PACKAGES = (ROOT / "sr_core" / "engines", ROOT / "sr_core" / "faces")


def test_no_family_name_outside_the_engine_packages_and_the_registry_of_kinds() -> None:
    """Callers read an engine's description; only the engines and sr_core/kinds.py name them."""
    allowed = {ROOT / "sr_core" / "kinds.py"}
    sources = [ROOT / "app.py", *sorted((ROOT / "service").rglob("*.py")), *sorted((ROOT / "sr_core").rglob("*.py"))]
    found = []
    for path in sources:
        if path in allowed or any(package in path.parents for package in ENGINE_PACKAGES):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if FAMILY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------ a kind added at run time


class NearestEngine(WholeImageEngine):
    """Pixel repetition: a whole-image engine with one per-job option, to show that a new kind
    needs nothing but its own description."""

    def __init__(self, digest: str) -> None:
        self.info = EngineInfo(
            kind="nearest-test",
            architecture="Nearest",
            native_scale=2,
            scales=(1, 2, 3),
            precision=Precision.FP32,
            precisions=(Precision.FP32,),
            device="cpu",
            parameters=0,
            weights_sha256=digest,
            price_class="light",
            tiling=Tiling.WHOLE_IMAGE,
            bytes_per_output_pixel=12,
            faces=Faces.KEEPS,
            job_options=(Option("invert", bool, False, "invert the colours", per_job=True),),
        )
        self.calls: list[dict] = []

    def upscale(self, image, scale, progress=None, options=None):
        self.calls.append(dict(options or {}))
        out = image.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        if progress:
            progress(1, 1)
        return 1 - out if (options or {}).get("invert") else out

    def work(self, width: int, height: int, scale: int, options: Mapping[str, Any]) -> int:
        return width * height * scale * scale

    def calibrate(self) -> float:
        return 1e-9


class NearestKind(EngineKind):
    id = "nearest-test"
    title = "pixel repetition (test)"

    def discover(self, folder: Path, claimed: Sequence[Path]) -> list[ModelEntry]:
        return [ModelEntry("nearest-test", self.id, "builtin", "repeats pixels")]

    def weights(self, entry: ModelEntry, folder: Path) -> tuple[Path, str]:
        return folder, "0" * 64

    def load(self, entry, weights, device, precision, settings) -> Engine:
        return NearestEngine(weights[1])


@pytest.fixture
def nearest_kind(monkeypatch):
    monkeypatch.setattr(kinds, "_kinds", list(kinds.kinds()))
    kinds.register(NearestKind())
    yield
    # monkeypatch restores the list


def test_a_kind_registered_at_run_time_is_listed_priced_and_run(nearest_kind, weights_folder, tmp_path) -> None:
    from .test_api import make_client

    registry = ModelRegistry(weights_folder)
    row = registry.describe("nearest-test").to_dict()
    assert row["kind"] == "nearest-test" and row["tiling"] == "whole-image" and row["faces"] == "keeps"
    assert row["options"] == [{"name": "invert", "type": "a boolean", "default": False, "help": "invert the colours"}]

    engine = registry.load_engine("nearest-test")
    source = tmp_path / "in.png"
    Image.fromarray(natural_image(12, 10)).save(source)
    result = upscale_file(engine, source, tmp_path / "out.png", UpscaleOptions(scale=3))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert (result.width, result.height) == (30, 36)
    assert np.array_equal(out, np.asarray(Image.open(source)).repeat(3, 0).repeat(3, 1))
    with pytest.raises(ParameterError, match="unknown option 'sharpen'"):
        upscale_file(engine, source, tmp_path / "bad.png", UpscaleOptions(engine_options={"sharpen": 1}))
    assert not (tmp_path / "bad.png").exists()

    with make_client(tmp_path, registry) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()}
        assert listed["nearest-test"]["tiling"] == "whole-image"
        quote = client.get("/v1/quote", params={"model": "nearest-test", "width": 1000, "height": 1000, "scale": 2})
        assert quote.status_code == 200, quote.text
        assert quote.json()["rate_msat_per_megapixel"] == 2_000  # the light class it says it is in


def test_one_x_restoration_models_load_with_scale_one(tmp_path) -> None:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=1).state_dict(), tmp_path / "1x_clean.pth")
    registry = ModelRegistry(tmp_path)
    engine = registry.load_engine("1x_clean", precision="fp32")
    assert engine.info.scales == (1,) and engine.info.native_scale == 1
    source = tmp_path / "in.png"
    Image.fromarray(natural_image(20, 16)).save(source)
    result = upscale_file(engine, source, tmp_path / "out.png")
    assert (result.width, result.height, result.scale) == (16, 20, 1)
    with pytest.raises(ParameterError, match="scale x2 is not offered"):
        engine.info.resolve_scale(2)


# ------------------------------------------------------------ descriptions


def test_the_embedded_models_say_what_they_do_to_faces(registry: ModelRegistry) -> None:
    rows = {d.entry.name: d.to_dict() for d in registry.describe_all()}
    assert rows["realesrgan-x4plus"]["faces"] == "keeps"
    assert rows["realesrgan-x4plus-anime"]["faces"] == "repaints"
    assert "not for photos" in rows["realesr-animevideov3"]["note"]
    x4plus = rows["realesrgan-x4plus"]
    assert x4plus["tiling"] == "external" and x4plus["takes_prompt"] is False and x4plus["options"] == []
    # the memory a run holds per output pixel comes from the probe, in the engine's precision
    assert 0 < x4plus["bytes_per_output_pixel"] < 10_000


def test_a_user_checkpoint_is_unknown_for_faces(tmp_path, weights_folder) -> None:
    (tmp_path / "mine.safetensors").write_bytes(
        builtin_weights("realesr-animevideov3", weights_folder).path.read_bytes()
    )
    row = ModelRegistry(tmp_path).describe("mine").to_dict()
    assert row["faces"] == "unknown" and "try it on a picture of a person" in row["note"]


# ------------------------------------------------------------ options, parsed once


def test_options_parse_every_door_s_spelling_and_refuse_the_rest() -> None:
    steps = Option("steps", int, None, "steps", minimum=1, maximum=200, per_job=True)
    fix = Option("color_fix", str, "wavelet", "fix", choices=("wavelet", "none"))
    flag = Option("offload", bool, False, "offload")
    assert steps.parse("12") == 12 and steps.parse(12) == 12 and flag.parse("true") is True and flag.parse("0") is False
    for bad in (True, 1.5, "12a", "١٢", 0, 201, [], {"a": 1}):
        with pytest.raises(ParameterError, match="steps"):
            steps.parse(bad)
    with pytest.raises(ParameterError, match="is not one of wavelet, none"):
        fix.parse("sharp")
    with pytest.raises(ParameterError, match="offload must be a boolean"):
        flag.parse("maybe")
    assert parse_values([steps, fix], {"steps": "3", "color_fix": None}, "x") == {"steps": 3}
    with pytest.raises(ParameterError, match=r"x: unknown option 'stepz' \(known: color_fix, steps\)"):
        parse_values([steps, fix], {"stepz": 3}, "x")


def test_server_settings_come_from_the_environment_and_the_toml_file(tmp_path, monkeypatch) -> None:
    from service.config import Settings

    monkeypatch.setenv("SATSCALE_SUPIR_STEPS", "7")
    config = tmp_path / "satscale.toml"
    config.write_text('ccsr_color_fix = "wavelet"\n[engines.supir]\nprompt = "a cat"\n')
    monkeypatch.setenv("SATSCALE_CONFIG", str(config))
    settings = Settings()
    assert settings.engines == {"supir": {"steps": 7, "prompt": "a cat"}, "ccsr": {"color_fix": "wavelet"}}
    monkeypatch.setenv("SATSCALE_SUPIR_STEPS", "many")
    with pytest.raises(ValueError, match="steps must be an integer"):
        Settings()
    monkeypatch.delenv("SATSCALE_SUPIR_STEPS")
    with pytest.raises(ValueError, match="no engine kind 'esrgn'"):
        Settings(engines={"esrgn": {"steps": 1}})


def test_the_cli_offers_each_kind_s_settings_and_refuses_one_the_model_does_not_take(tmp_path) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(natural_image(8, 8)).save(source)
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "upscale", str(source), "-m", "realesr-animevideov3", "--fp8"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "--fp8: not a setting of realesr-animevideov3" in run.stderr
    assert not list(tmp_path.glob("in_x*"))
    helptext = subprocess.run(
        [sys.executable, "-m", "service.cli", "upscale", "--help"], capture_output=True, text=True
    )
    for flag in ("--steps", "--prompt", "--color-fix", "--offload"):
        assert flag in helptext.stdout


def test_models_check_finds_the_kind_of_a_single_checkpoint(tmp_path, weights_folder) -> None:
    path = tmp_path / "compact.safetensors"
    path.write_bytes(builtin_weights("realesr-animevideov3", weights_folder).path.read_bytes())
    ok = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(path)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "Compact x4 SR network" in ok.stdout and "loads strictly" in ok.stdout
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(junk)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "cannot read the file" in bad.stderr
