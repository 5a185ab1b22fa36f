"""CCSR v1 end to end on the CPU with a tiny model in the official checkpoint layout: loading,
the restoration pipeline tiled and untiled (with and without guidance), and the registry, CLI
and upscale integration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core.engines.ccsr.checkpoint import check_ccsr_files, load_ccsr
from sr_core.engines.ccsr.model import CcsrConfig, CcsrModel
from sr_core.engines.ccsr.pipeline import CcsrOptions, CcsrPipeline, working_size
from sr_core.engines.ccsr.sampling import CcsrV1Settings
from sr_core.engines.supir.model import official_shape
from sr_core.errors import WeightsError
from sr_core.registry import ModelRegistry
from sr_core.upscale import upscale_file

from .helpers import natural_image

pytestmark = pytest.mark.slow
FAST = CcsrV1Settings(steps=6)
GUIDED = CcsrV1Settings(steps=6, cfg_scale=2.0)  # the classifier-free guidance branch


@pytest.fixture(scope="module")
def tiny() -> CcsrModel:
    torch.manual_seed(0)
    return CcsrModel(CcsrConfig.tiny(1)).eval()


def _official_state(model: CcsrModel) -> dict[str, torch.Tensor]:
    names = model.official_names()
    return {
        names[k]: v.reshape(official_shape(names[k], tuple(v.shape))).clone() for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def ccsr_weights(tmp_path_factory: pytest.TempPathFactory, tiny: CcsrModel) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    (folder / "ccsr-tiny").mkdir()
    state = _official_state(tiny)
    state["decoder_loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)  # training-only
    torch.save({"state_dict": state}, folder / "ccsr-tiny" / "real-world_ccsr.ckpt")
    return folder


def test_working_size_follows_the_official_arithmetic():
    assert working_size(100, 75, 4, 512, 64) == (640, 512)  # 400x300 -> short side 512 -> floor 64
    assert working_size(333, 250, 4, 512, 64) == (1332 // 64 * 64, 1000 // 64 * 64)


def test_the_checkpoint_loads_strictly_and_ignores_the_discriminator(tiny, ccsr_weights, tmp_path):
    files = [ccsr_weights / "ccsr-tiny" / "real-world_ccsr.ckpt"]
    check = check_ccsr_files(files)
    assert check.complete and check.config == CcsrConfig.tiny(1)
    assert check.ignored == ["decoder_loss.discriminator.main.0.weight"]
    loaded = load_ccsr(files)
    x, hint, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([700])
    with torch.no_grad():
        a = tiny.eps(x, t, {"c_crossattn": tiny.text([""]), "c_latent": hint})
        b = loaded.eps(x, t, {"c_crossattn": loaded.text([""]), "c_latent": hint})
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    broken = _official_state(tiny)
    del broken["control_model.zero_convs.3.0.weight"]
    torch.save(broken, tmp_path / "broken.ckpt")
    with pytest.raises(WeightsError, match=r"control_model\.zero_convs\.3\.0\.weight"):
        load_ccsr([tmp_path / "broken.ckpt"])


@pytest.mark.parametrize(
    ("tiled", "sampler"),
    [
        (False, FAST),
        (True, FAST),
        (False, CcsrV1Settings(steps=6, cfg_scale=2.0)),
        (True, CcsrV1Settings(steps=6, cfg_scale=2.0)),
    ],
)
def test_restoration_runs_tiled_and_untiled(tiny, tiled, sampler):
    pipeline = CcsrPipeline(tiny)
    options = CcsrOptions(
        sampler=sampler, min_side=64, tile=32 if tiled else 512, tile_stride=16, vae_encoder_tile=32,
        vae_decoder_tile=4, negative="blurry",
    )  # fmt: skip
    image = torch.from_numpy(natural_image(20, 28)).permute(2, 0, 1)[None].float() / 255
    seen: list[tuple[str, int, int]] = []
    out = pipeline.restore(image, 2, options, progress=lambda s, d, n: seen.append((s, d, n)))
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1
    calls = len(sampler.plan.loop_indices) + 1
    assert [d for s, d, _ in seen if s == "sample"] == list(range(1, calls + 1))
    assert torch.equal(out, pipeline.restore(image, 2, options))


def test_offloading_and_the_cached_empty_prompt_give_the_same_image(tiny):
    options = CcsrOptions(sampler=FAST, min_side=64)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = CcsrPipeline(tiny)
    first = plain.restore(image, 2, options)
    assert list(plain._contexts) == [""]  # the empty-prompt embedding, computed once
    assert torch.equal(first, plain.restore(image, 2, options))
    assert torch.equal(first, CcsrPipeline(tiny, offload=True).restore(image, 2, options))


def test_registry_cli_and_upscale(ccsr_weights, tmp_path):
    registry = ModelRegistry(ccsr_weights, settings={"ccsr": {"steps": 6, "min_side": 64}})
    entries = {e.name: e for e in registry.entries()}
    assert entries["ccsr-tiny"].kind == "ccsr"
    row = registry.describe("ccsr-tiny").to_dict()
    assert row["architecture"] == "CCSR" and row["price_class"] == "diffusion"
    engine = registry.load_engine("ccsr-tiny")
    source = tmp_path / "in.png"
    Image.fromarray(natural_image(20, 28)).save(source)
    progress: list[tuple[int, int]] = []
    upscale_file(engine, source, tmp_path / "out.png", progress=lambda d, n: progress.append((d, n)))
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (40, 56, 3)
    assert progress[-1][0] == progress[-1][1]
    assert engine.estimate_seconds(28, 20, 2) > 0
    check = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(ccsr_weights / "ccsr-tiny")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "a complete CCSR v1" in check.stdout and "ccsr-controlnet" in check.stdout


@pytest.fixture(scope="module")
def v2_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weights/ccsr-v2-tiny/ as the released v2 is laid out: diffusers folders."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    model = CcsrModel(CcsrConfig.tiny(2))
    folder = tmp_path_factory.mktemp("weights")
    root = folder / "ccsr-v2-tiny"
    model.unet.save_pretrained(root / "unet")
    model.vae.save_pretrained(root / "vae")
    (root / "controlnet").mkdir()
    state = {k: v.contiguous() for k, v in model.control.state_dict().items()}
    save_file(state, root / "controlnet" / "diffusion_pytorch_model.safetensors")
    text = CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu",
    )  # fmt: skip
    CLIPTextModel(text).save_pretrained(root / "text_encoder")
    return folder


@pytest.mark.parametrize("preset", ["one_step", "multi_step"])
def test_v2_folders_load_and_restore(v2_weights, tmp_path, preset):
    registry = ModelRegistry(
        v2_weights, settings={"ccsr": {"preset": preset, "process_size": 64, "negative": "blurry"}}
    )
    row = registry.describe("ccsr-v2-tiny").to_dict()
    assert row["architecture"] == "CCSR" and row["price_class"] == "diffusion"
    engine = registry.load_engine("ccsr-v2-tiny")
    assert engine.info.architecture == "CCSR-v2"
    source = tmp_path / "in.png"
    Image.fromarray(natural_image(20, 28)).save(source)
    progress: list[tuple[int, int]] = []
    upscale_file(engine, source, tmp_path / "out.png", progress=lambda d, n: progress.append((d, n)))
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (40, 56, 3)
    calls = 1 if preset == "one_step" else 2  # 999 | 999 then 499
    assert progress[-1] == (calls + 2, calls + 2)


def test_v2_check_names_a_broken_controlnet(v2_weights, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "ccsr-v2-broken"
    shutil.copytree(v2_weights / "ccsr-v2-tiny", broken)
    weights = broken / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["condition_conv_in.weight"]
    save_file(state, weights)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(broken)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "NOT a complete CCSR v2" in result.stdout and "controlnet.condition_conv_in.weight" in result.stdout


def test_v2_tiled_restoration_with_and_without_offloading(v2_weights, tmp_path):
    settings = {"preset": "multi_step", "process_size": 64, "sampler_tile": 32, "sampler_stride": 16}
    engine = ModelRegistry(v2_weights, settings={"ccsr": settings}).load_engine("ccsr-v2-tiny")
    image = torch.from_numpy(natural_image(20, 28)).permute(2, 0, 1)[None].float() / 255
    out = engine.upscale(image, 2)
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all()
    assert torch.equal(out, engine.upscale(image, 2))
    offloaded = ModelRegistry(v2_weights, settings={"ccsr": settings | {"offload": True}}).load_engine("ccsr-v2-tiny")
    assert torch.equal(out, offloaded.upscale(image, 2))


def test_ccsr_is_selectable_in_the_cli_the_api_and_the_web_app(ccsr_weights, tmp_path):
    import os

    import httpx

    from app import create_app
    from service.config import Settings

    from .servers import serving

    source = tmp_path / "in.png"
    Image.fromarray(natural_image(20, 28)).save(source)
    env = os.environ | {"SATSCALE_WEIGHTS_DIR": str(ccsr_weights)}
    cli = subprocess.run(
        [sys.executable, "-m", "service.cli", "upscale", str(source), "-o", str(tmp_path / "cli.png"), "-m",
         "ccsr-tiny", "-s", "2", "--steps", "6", "--min-side", "64", "--color-fix", "wavelet"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert Image.open(tmp_path / "cli.png").size == (56, 40)

    registry = ModelRegistry(ccsr_weights, settings={"ccsr": {"steps": 6, "min_side": 64}})
    app = create_app(Settings(data_dir=tmp_path / "data"), registry)
    with serving(app) as url:
        quote = httpx.get(f"{url}/v1/quote", params={"model": "ccsr-tiny", "width": 500, "height": 400, "scale": 2})
        assert quote.status_code == 200 and quote.json()["rate_msat_per_megapixel"] == 500_000
        files = {"image": ("in.png", source.read_bytes(), "image/png")}
        challenge = httpx.post(f"{url}/v1/upscales", files=files, data={"model": "ccsr-tiny", "scale": "2"})
        assert challenge.status_code == 402 and challenge.json()["amount_msat"] == 10_000  # the minimum
        config = httpx.get(f"{url}/config", timeout=30).json()
        choices = [
            c["props"].get("choices") for c in config["components"] if c.get("props", {}).get("label") == "Model"
        ]
        assert any("ccsr-tiny" in str(options) for options in choices)


def test_thin_images_tile_within_the_latent(tiny):
    """A 4:1 image whose short latent side is below the tile size still samples tiled."""
    # latent 8x16 with 12-pixel tiles: the short side is below the tile, the long side above it
    options = CcsrOptions(sampler=FAST, min_side=32, tile=96, tile_stride=32, vae_encoder_tile=64, vae_decoder_tile=8)
    out = CcsrPipeline(tiny).restore(torch.rand(1, 3, 8, 40), 2, options)
    assert out.shape == (1, 3, 16, 80) and torch.isfinite(out).all()
