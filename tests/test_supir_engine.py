"""SUPIR end to end on CPU with a tiny model in the official checkpoint layout: every sampler
branch tiled and untiled, the registry/CLI/API integration, fp8 storage and offloading."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from payments import l402
from sr_core.engines.diffusion.fp8 import store_fp8, weight_bytes
from sr_core.engines.supir.checkpoint import SUPIR_ONLY, part_of
from sr_core.engines.supir.config import SupirConfig
from sr_core.engines.supir.model import SupirModel, official_shape
from sr_core.engines.supir.pipeline import RestoreOptions, SupirPipeline, working_size
from sr_core.engines.supir.sampling import PRESETS, SamplerSettings
from sr_core.registry import ModelRegistry
from sr_core.upscale import upscale_file

from .helpers import natural_image

pytestmark = pytest.mark.slow
FAST = {"steps": 2, "min_side": 64}


@pytest.fixture(scope="module")
def tiny_model() -> SupirModel:
    torch.manual_seed(0)
    return SupirModel(SupirConfig.tiny()).eval()


@pytest.fixture(scope="module")
def supir_weights(tmp_path_factory: pytest.TempPathFactory, tiny_model: SupirModel) -> Path:
    """weights/ with supir-tiny/: an SDXL-layout base file and a SUPIR-layout .ckpt."""
    folder = tmp_path_factory.mktemp("weights")
    model_dir = folder / "supir-tiny"
    model_dir.mkdir()
    names = tiny_model.official_names()
    state = {
        names[k]: v.reshape(official_shape(names[k], tuple(v.shape))).clone()
        for k, v in tiny_model.state_dict().items()
        if names[k] != "denoiser.sigmas"
    }
    base = {k: v for k, v in state.items() if part_of(k) not in SUPIR_ONLY}
    deltas = {k: v for k, v in state.items() if part_of(k) in SUPIR_ONLY}
    save_file(base, model_dir / "sd_xl_base_1.0.safetensors")
    torch.save({"state_dict": deltas}, model_dir / "SUPIR-v0Q.ckpt")
    return folder


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_working_size_follows_the_official_arithmetic():
    assert working_size(512, 384, 2, 1024, 64) == (1344, 1024)  # 1024x768 -> short side 1024
    assert working_size(1000, 700, 2, 1024, 64) == (1984, 1408)  # 2000x1400: nearest multiples of 64
    assert working_size(20, 28, 2, 64, 64) == (64, 64)  # 40x56 -> 64x89.6 -> 64x64


@pytest.mark.parametrize(
    ("name", "sampler", "tiled", "color_fix"),
    [
        # EDM with churn, linear CFG, linear control scale and restoration guidance all on
        (
            "edm-all",
            SamplerSettings(
                kind="edm", num_steps=3, s_churn=5.0, cfg_scale=4.0, cfg_scale_start=1.0, linear_cfg=True,
                control_scale=1.0, control_scale_start=0.2, linear_control_scale=True, restore_cfg=4.0,
            ),
            False,
            "wavelet",
        ),
        ("edm-all-tiled", None, True, "adain"),
        ("quality-tiled", replace(PRESETS["quality"], num_steps=2), True, "none"),
        ("lightning", replace(PRESETS["lightning"], num_steps=3), False, "wavelet"),
        ("lightning-tiled", replace(PRESETS["lightning"], num_steps=3), True, "wavelet"),
    ],
)  # fmt: skip
def test_every_sampler_branch_restores_end_to_end(tiny_model, name, sampler, tiled, color_fix):
    if sampler is None:  # the first case's settings, tiled
        sampler = SamplerSettings(
            kind="edm", num_steps=3, s_churn=5.0, cfg_scale=4.0, cfg_scale_start=1.0, linear_cfg=True,
            control_scale=1.0, control_scale_start=0.2, linear_control_scale=True, restore_cfg=4.0,
        )  # fmt: skip
    pipeline = SupirPipeline(tiny_model)
    options = RestoreOptions(
        sampler=sampler, min_side=64, color_fix=color_fix, seed=7,
        sample_tile=4 if tiled else 128, sample_stride=2, vae_encoder_tile=32, vae_decoder_tile=4,
    )  # fmt: skip
    image = torch.from_numpy(natural_image(20, 28)).permute(2, 0, 1)[None].float() / 255
    seen: list[tuple[str, int, int]] = []
    out = pipeline.restore(image, 2, options, progress=lambda s, d, n: seen.append((s, d, n)))
    assert out.shape == (1, 3, 40, 56) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    steps = [d for s, d, _ in seen if s == "sample"]
    assert steps == list(range(1, sampler.num_steps + 1))
    again = pipeline.restore(image, 2, options)
    assert torch.equal(out, again)  # a seed gives the same image
    other = pipeline.restore(image, 2, replace(options, seed=8))
    assert not torch.equal(out, other)


def test_registry_lists_a_supir_folder_as_one_model(supir_weights):
    registry = ModelRegistry(supir_weights, settings={"supir": FAST})
    entries = {e.name: e for e in registry.entries()}
    assert entries["supir-tiny"].kind == "supir"
    assert [p.name for p in entries["supir-tiny"].files] == ["sd_xl_base_1.0.safetensors", "SUPIR-v0Q.ckpt"]
    assert not [name for name in entries if name.startswith("supir-tiny/")]  # its files are not models
    row = registry.describe("supir-tiny").to_dict()
    assert row["architecture"] == "SUPIR" and row["price_class"] == "diffusion" and row["scales"] == [1, 2, 3, 4]
    assert row["parameters"] == sum(v.numel() for k, v in SupirModel(SupirConfig.tiny()).state_dict().items()) - 1000


def test_cli_models_check(supir_weights, tmp_path):
    folder = supir_weights / "supir-tiny"
    ok = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(folder)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "a complete SUPIR" in ok.stdout and "supir-control" in ok.stdout
    half = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "check", str(folder / "sd_xl_base_1.0.safetensors")],
        capture_output=True,
        text=True,
    )
    assert half.returncode == 1
    assert "NOT a complete SUPIR" in half.stdout
    for part in ("supir-control", "supir-connectors", "supir-denoise-encoder"):
        assert any(line.split()[:1] == [part] and line.endswith("MISSING") for line in half.stdout.splitlines())


def test_engine_upscales_a_file_with_alpha(supir_weights, tmp_path):
    registry = ModelRegistry(supir_weights, settings={"supir": FAST | {"preset": "lightning"}})
    engine = registry.load_engine("supir-tiny")
    pixels = natural_image(20, 28, channels=4)
    pixels[..., 3] = np.linspace(0, 255, 28, dtype=np.uint8)[None, :]
    source = tmp_path / "in.png"
    source.write_bytes(_png(pixels))
    progress: list[tuple[int, int]] = []
    result = upscale_file(engine, source, tmp_path / "out.png", progress=lambda d, n: progress.append((d, n)))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (40, 56, 4) and result.scale == 2
    # alpha is resized, not hallucinated: still a left-to-right ramp
    assert (np.diff(out[20, :, 3].astype(int)) >= -2).all() and out[20, 0, 3] < 20 and out[20, -1, 3] > 235
    assert progress[-1][0] == progress[-1][1] and progress == sorted(progress)
    assert engine.estimate_seconds(28, 20, 2) > 0


def test_fp8_storage_halves_the_weights_and_stays_close(tiny_model):
    model = SupirModel(SupirConfig.tiny()).eval()
    model.load_state_dict(tiny_model.state_dict())
    model.to(torch.bfloat16)
    cond = model.conditioner(["a", ""]) | {"control": torch.randn(2, 4, 8, 8)}
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 4.0])
    with torch.no_grad():
        reference = model.denoise(x, sigma, cond, 1.0)
        before = weight_bytes(model.unet) + weight_bytes(model.control)
        converted = store_fp8(model.unet) + store_fp8(model.control)
        after = weight_bytes(model.unet) + weight_bytes(model.control)
        got = model.denoise(x, sigma, cond, 1.0)
    assert converted > 300 and after < 0.52 * before
    assert ((got - reference).norm() / reference.norm()) < 0.15


def test_sequential_offloading_gives_the_same_image(tiny_model):
    options = RestoreOptions(sampler=replace(PRESETS["fidelity"], num_steps=2), min_side=64)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = SupirPipeline(tiny_model).restore(image, 2, options)
    offloaded = SupirPipeline(tiny_model, offload=True).restore(image, 2, options)
    assert torch.equal(plain, offloaded)


def test_supir_is_sold_over_the_api_at_the_diffusion_rate(supir_weights, tmp_path):
    from .test_api import make_client, pay, settled, wait_for

    registry = ModelRegistry(supir_weights, settings={"supir": FAST})
    with make_client(tmp_path, registry) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()}
        assert models["supir-tiny"]["architecture"] == "SUPIR"
        size = {"width": 500, "height": 400, "scale": 2}
        supir = client.get("/v1/quote", params={"model": "supir-tiny", **size}).json()
        # 1000x800 output = 0.8 MP at the diffusion class's 500 sat/MP
        assert supir["rate_msat_per_megapixel"] == 500_000 and supir["amount_msat"] == 400_000

        # an output over SUPIR's size limit is refused before any invoice
        big = client.get("/v1/quote", params={"model": "supir-tiny", "width": 1100, "height": 1100, "scale": 2})
        assert big.status_code == 422 and big.headers["content-type"] == "application/problem+json"
        assert "2200x2200" in big.json()["detail"]

        image = _png(natural_image(20, 28))
        # a multi-GB model is never reloaded per request: another precision is refused up front
        listed = models["supir-tiny"]
        elsewise = next(p for p in listed["precisions"] if p != listed["precision"])
        other = client.post(
            "/v1/upscales",
            files={"image": ("in.png", image, "image/png")},
            data={"model": "supir-tiny", "scale": "2", "precision": elsewise},
        )
        assert other.status_code == 422 and "server's precision" in other.json()["detail"]
        data = {"model": "supir-tiny", "scale": "2"}
        response = client.post("/v1/upscales", files={"image": ("in.png", image, "image/png")}, data=data)
        assert response.status_code == 402, response.text
        body = response.json()
        paid = pay(client, body["payment_request"])
        challenge = l402.parse_challenge(response.headers["WWW-Authenticate"])
        credential = f"L402 {challenge.macaroon}:{paid['preimage']}"
        done = wait_for(client, body["job_id"], settled, timeout=120, credential=credential)
        assert done["output"]["width"] == 56 and done["output"]["height"] == 40
        result = client.get(f"/v1/upscales/{body['job_id']}/result", headers={"Authorization": credential})
        assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (56, 40)


def test_esrgan_then_supir_at_1x_as_a_preset_with_per_job_options(supir_weights, tmp_path):
    """The preset exists once a SUPIR folder is here; SUPIR runs at 1x as a restorer on the photo
    model's result; a job's own steps and seed are checked before any invoice and change the run."""
    import json
    import math

    from .test_api import make_client, pay, settled, wait_for

    registry = ModelRegistry(supir_weights, settings={"supir": FAST})
    offered = {p.id: p for p in registry.presets()}
    assert set(offered) == {"2x-then-2x", "esrgan-then-supir"}
    assert offered["esrgan-then-supir"].pipeline(2) == [
        {"model": "realesrgan-x4plus", "scale": 2},
        {"model": "supir-tiny", "scale": 1},
    ]
    assert "esrgan-then-supir" not in {p.id for p in ModelRegistry(tmp_path).presets()}  # no SUPIR: not offered

    with make_client(tmp_path, registry) as client:
        listed = {p["id"]: p for p in client.get("/v1/presets").json()}
        stages = listed["esrgan-then-supir"]["pipelines"]["2"]
        supir = {m["name"]: m for m in client.get("/v1/models").json()}["supir-tiny"]
        assert supir["takes_prompt"] and {o["name"] for o in supir["options"]} == {
            "preset", "steps", "seed", "prompt", "color_fix"
        }  # fmt: skip
        image = _png(natural_image(20, 28))
        files = {"image": ("in.png", image, "image/png")}
        bad = [stages[0], stages[1] | {"steps": 0}]
        refused = client.post("/v1/upscales", files=files, data={"pipeline": json.dumps(bad)})
        assert refused.status_code == 422 and "stage 2 (supir-tiny): steps must be between 1 and 200" in refused.text
        chosen = [stages[0], stages[1] | {"steps": 1, "seed": 7, "prompt": "a test card"}]
        quote = client.get("/v1/quote", params={"pipeline": json.dumps(chosen), "width": 28, "height": 20}).json()
        # a job's own steps cost what they take: (steps + 4 VAE-equivalent passes) over the server's 2 + 4
        assert [s["rate_msat_per_megapixel"] for s in quote["stages"]] == [10_000, math.ceil(500_000 * 5 / 6)]
        many = [stages[0], stages[1] | {"steps": 40}]
        dear = client.get("/v1/quote", params={"pipeline": json.dumps(many), "width": 28, "height": 20}).json()
        assert dear["stages"][1]["rate_msat_per_megapixel"] == math.ceil(500_000 * 44 / 6)
        response = client.post("/v1/upscales", files=files, data={"pipeline": json.dumps(chosen)})
        assert response.status_code == 402, response.text
        public = client.get(f"/v1/upscales/{response.json()['job_id']}").json()
        assert public["pipeline"][1] == {"model": "supir-tiny", "scale": 1}  # the job id alone: no prompt
        challenge = l402.parse_challenge(response.headers["WWW-Authenticate"])
        paid = pay(client, response.json()["payment_request"])
        credential = f"L402 {challenge.macaroon}:{paid['preimage']}"
        done = wait_for(client, response.json()["job_id"], settled, timeout=180, credential=credential)
        assert (done["output"]["width"], done["output"]["height"]) == (56, 40)  # x2, then x1
        assert done["pipeline"][1] == {
            "model": "supir-tiny",
            "scale": 1,
            "steps": 1,
            "seed": 7,
            "prompt": "a test card",
        }
        result = client.get(f"/v1/upscales/{response.json()['job_id']}/result", headers={"Authorization": credential})
        ours = np.asarray(Image.open(io.BytesIO(result.content)))
        # the prompt is the payer's: a provenance lookup by the (public) input shows each stage's
        # model and scale only, unless the caller holds the job
        import hashlib
        import time

        job_url = f"/v1/upscales/{response.json()['job_id']}"
        deadline = time.monotonic() + 60
        while (
            client.get(job_url, headers={"Authorization": credential}).json()["provenance"]["chain"]["status"]
            != "confirmed"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        by_input = f"/v1/provenance/{hashlib.sha256(image).hexdigest()}"
        anonymous = client.get(by_input)
        assert anonymous.status_code == 200 and "a test card" not in anonymous.text
        assert anonymous.json()["records"][0]["custody"]["model"]["stages"][1] == {"model": "supir-tiny", "scale": 1}
        assert "a test card" in client.get(by_input, headers={"Authorization": credential}).text
        # the metadata names every option in force, the server's defaults included
        from service.access import Proof

        front = client.app.state.front
        document = front.metadata(front.grant(response.json()["job_id"], Proof.from_authorization(credential)))
        used = document["properties"]["provenance"]["stages"][1]["settings"]
        assert used == {"preset": "quality", "steps": 1, "seed": 7, "prompt": "a test card", "color_fix": "wavelet"}

    # the same two stages by hand, with the same per-job options, give the same image
    first = registry.load_engine("realesrgan-x4plus")
    restorer = registry.load_engine("supir-tiny")
    from sr_core.upscale import UpscaleOptions

    source = tmp_path / "in.png"
    source.write_bytes(image)
    upscale_file(first, source, tmp_path / "mid.png", UpscaleOptions(scale=2))
    options = {"steps": 1, "seed": 7, "prompt": "a test card"}
    upscale_file(restorer, tmp_path / "mid.png", tmp_path / "hand.png", UpscaleOptions(scale=1, engine_options=options))
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "hand.png")))
    upscale_file(
        restorer,
        tmp_path / "mid.png",
        tmp_path / "other.png",
        UpscaleOptions(scale=1, engine_options={"seed": 8, "steps": 1}),
    )
    assert not np.array_equal(ours, np.asarray(Image.open(tmp_path / "other.png")))  # the job's seed was used
