"""SUPIR's module tree: the official layout, checkpoint loading, connector maths, text encoders,
and the decoder wiring (with the control switched off it is exactly diffusers' SDXL UNet)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from open_clip.transformer import TextTransformer
from safetensors.torch import save_file

from sr_core.engines.supir.checkpoint import SUPIR_ONLY, check_files, load_supir, part_of
from sr_core.engines.supir.config import SupirConfig
from sr_core.engines.supir.connectors import ZeroCrossAttn, ZeroSFT
from sr_core.engines.supir.model import SupirModel, official_shape
from sr_core.engines.supir.text import EOT, SOT, tokenize
from sr_core.errors import WeightsError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "supir_official_keys.tsv"


def _official_state(model: SupirModel) -> dict[str, torch.Tensor]:
    names = model.official_names()
    return {
        names[k]: v.reshape(official_shape(names[k], tuple(v.shape))).clone() for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def tiny() -> SupirModel:
    torch.manual_seed(0)
    return SupirModel(SupirConfig.tiny()).eval()


def _cond(model: SupirModel, latent: tuple[int, int] = (8, 12)) -> dict[str, torch.Tensor]:
    cond = model.conditioner(["a sharp photo of a cat", ""])
    cond["control"] = torch.randn(2, 4, *latent, generator=torch.Generator().manual_seed(3))
    return cond


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/reference not beside the checkout")
def test_full_size_tree_maps_one_to_one_onto_the_official_layout():
    reference = {}
    for line in REFERENCE.read_text().splitlines():
        name, shape = line.split("\t")
        reference[name] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    with torch.device("meta"):
        model = SupirModel(SupirConfig.official())
    names = model.official_names()
    assert len(set(names.values())) == len(names)  # injective
    ours = {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}
    assert set(ours) == set(reference)
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    assert len(ours) == 3549
    assert sum(torch.Size(s).numel() for s in ours.values()) == 4_801_177_780 + 1000  # + sigmas


def test_the_configuration_is_read_off_the_checkpoint():
    tiny = SupirConfig.tiny()
    deep = tiny.with_depths(((1, 2, 3), 2), ((1, 1, 2), 3))
    with torch.device("meta"):
        model = SupirModel(deep)
    names = model.official_names()
    shapes = {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}
    assert SupirConfig.from_state_dict(shapes) == deep  # widths, levels, depths, towers, VAE
    with torch.device("meta"):
        official = SupirModel(SupirConfig.official())
    names = official.official_names()
    keys = {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in official.state_dict().items()}
    assert SupirConfig.from_state_dict(keys, base=tiny) == SupirConfig.official()
    # a file with only the SUPIR deltas keeps the base's text towers and VAE
    deltas = {k: v for k, v in keys.items() if k.startswith("model.control_model.")}
    assert SupirConfig.from_state_dict(deltas).clip_g == SupirConfig.official().clip_g


@pytest.mark.parametrize("supir_suffix", [".ckpt", ".safetensors"])
def test_official_layout_checkpoints_load_strictly_and_reproduce_the_model(tiny, tmp_path, supir_suffix):
    state = _official_state(tiny)
    base = {k: v for k, v in state.items() if part_of(k) not in SUPIR_ONLY and k != "denoiser.sigmas"}
    deltas = {k: v for k, v in state.items() if part_of(k) in SUPIR_ONLY}
    save_file(base, tmp_path / "sd_xl_base.safetensors")
    supir = tmp_path / f"SUPIR-v0Q{supir_suffix}"
    if supir_suffix == ".ckpt":
        torch.save({"state_dict": deltas}, supir)  # the Lightning wrapper the official .ckpt has
    else:
        save_file(deltas, supir)
    files = [tmp_path / "sd_xl_base.safetensors", supir]
    check = check_files(files)
    assert check.complete and check.is_supir
    assert (check.missing, check.unexpected, check.wrong_shape) == ([], [], [])
    loaded = load_supir(files)
    with torch.no_grad():
        x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(1))
        sigma = torch.tensor([0.7, 9.0])
        expected = tiny.denoise(x, sigma, _cond(tiny), 0.8)
        got = loaded.denoise(x, sigma, _cond(loaded), 0.8)
    # same tensors; only kernel choice on differently laid-out memory may differ in rounding
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fp16_pruned_files_load(tiny, tmp_path):
    state = {k: v.half() for k, v in _official_state(tiny).items() if k != "denoiser.sigmas"}
    save_file(state, tmp_path / "supir_fp16.safetensors")
    model = load_supir([tmp_path / "supir_fp16.safetensors"], dtype=torch.bfloat16)
    assert model.unet.base.conv_in.weight.dtype == torch.bfloat16
    assert model.denoiser.sigmas.dtype == torch.float32
    with torch.no_grad():
        out = model.denoise(torch.randn(2, 4, 8, 8), torch.tensor([2.0, 0.5]), _cond(model, (8, 8)), 1.0)
    assert torch.isfinite(out.float()).all()


def test_check_names_missing_unexpected_and_misshapen_tensors(tiny, tmp_path):
    state = _official_state(tiny)
    del state["model.control_model.input_hint_block.0.weight"]
    state["model.diffusion_model.project_modules.99.zero_conv.weight"] = torch.zeros(1)
    state["first_stage_model.quant_conv.bias"] = torch.zeros(3)
    state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, tmp_path / "broken.safetensors")
    check = check_files([tmp_path / "broken.safetensors"])
    assert not check.complete
    assert check.missing == ["model.control_model.input_hint_block.0.weight"]
    assert check.unexpected == ["model.diffusion_model.project_modules.99.zero_conv.weight"]
    assert check.wrong_shape == ["first_stage_model.quant_conv.bias: file [3], expected [8]"]
    assert check.ignored == ["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    summary = check.summary()
    assert "NOT a complete SUPIR" in summary and "input_hint_block.0.weight" in summary
    with pytest.raises(WeightsError, match="input_hint_block"):
        load_supir([tmp_path / "broken.safetensors"])


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "SUPIR-v0F.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"SUPIR-v0F\.ckpt"):
        check_files([bad])


def test_zero_sft_follows_its_formula():
    torch.manual_seed(0)
    sft = ZeroSFT(label_nc=32, norm_nc=32, concat_channels=64)
    for p in sft.parameters():
        torch.nn.init.normal_(p, std=0.1)
    c, skip, dec = torch.randn(1, 32, 6, 5), torch.randn(1, 32, 6, 5), torch.randn(1, 64, 6, 5)
    s = 0.7
    h = torch.cat([dec, skip + sft.zero_conv(c)], 1)
    actv = torch.nn.functional.silu(sft.mlp_shared[0](c))
    gamma, beta = sft.zero_mul(actv), sft.zero_add(actv)
    norm = torch.nn.functional.group_norm(h, 32, sft.param_free_norm.weight, sft.param_free_norm.bias, 1e-5)
    expected = (norm * (gamma + 1) + beta) * s + torch.cat([dec, skip], 1) * (1 - s)
    torch.testing.assert_close(sft(c, skip, dec, control_scale=s), expected)
    # control off: exactly the plain UNet's concatenation
    assert torch.equal(sft(c, skip, dec, control_scale=0.0), torch.cat([dec, skip], 1))


def test_zero_cross_attn_follows_its_formula():
    torch.manual_seed(0)
    xattn = ZeroCrossAttn(context_dim=32, query_dim=128)
    x, ctx = torch.randn(2, 128, 3, 4), torch.randn(2, 32, 5, 2)
    gn = torch.nn.functional.group_norm
    q_in = gn(x, 32, xattn.norm1.weight, xattn.norm1.bias, 1e-5).flatten(2).transpose(1, 2)
    c_in = gn(ctx, 32, xattn.norm2.weight, xattn.norm2.bias, 1e-5).flatten(2).transpose(1, 2)
    a = xattn.attn

    def heads(t):  # [B, N, 128] -> [B, 2 heads, N, 64]
        return t.reshape(t.shape[0], t.shape[1], 2, 64).transpose(1, 2)

    q, k, v = heads(a.to_q(q_in)), heads(a.to_k(c_in)), heads(a.to_v(c_in))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
    out = a.to_out[0]((weights @ v).transpose(1, 2).reshape(2, 12, 128))
    expected = x + out.transpose(1, 2).reshape(2, 128, 3, 4) * 0.5
    torch.testing.assert_close(xattn(ctx, x, control_scale=0.5), expected, atol=1e-5, rtol=1e-5)


def test_without_control_the_decoder_is_diffusers_sdxl_unet(tiny):
    """control_scale 0 turns every connector into the identity/concatenation: the output must be
    diffusers' own UNet2DConditionModel forward (which also checks our SDXL size embedding)."""
    cond = _cond(tiny)
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([999, 10])
    with torch.no_grad():
        control = tiny.control(cond["control"], t, x, cond["crossattn"], cond["vector"])
        ours = tiny.unet(x, t, cond["crossattn"], cond["vector"], control, control_scale=0.0)
        pooled = tiny.config.clip_g.output_dim
        time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2)
        reference = tiny.unet.base(
            x,
            t,
            encoder_hidden_states=cond["crossattn"],
            added_cond_kwargs={"text_embeds": cond["vector"][:, :pooled], "time_ids": time_ids},
        ).sample
        with_control = tiny.unet(x, t, cond["crossattn"], cond["vector"], control, control_scale=1.0)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert (with_control - reference).abs().max() > 1e-3  # the control path does act


def test_tokenizers_pad_like_sdxl():
    l_tokens = tokenize(["a cat"], pad=EOT)[0]
    g_tokens = tokenize(["a cat"])[0]
    assert l_tokens[0] == SOT and g_tokens[0] == SOT
    eot = int((g_tokens == EOT).nonzero()[0])
    assert eot == 3  # <sot> a cat <eot>
    assert (g_tokens[eot + 1 :] == 0).all() and (l_tokens[eot:] == EOT).all()
    long = tokenize(["word " * 200])[0]
    assert long.shape == (77,) and long[-1] == EOT


def test_openclip_tower_pooling_matches_open_clip(tiny):
    embedder = tiny.conditioner.embedders[1]
    tower = embedder.model
    prompts = ["a sharp photo", "b"]
    with torch.no_grad():
        penultimate, pooled = embedder(prompts)
        tokens = tokenize(prompts)
        reference_pooled = TextTransformer.forward(tower, tokens)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:
            x = block(x, attn_mask=tower.attn_mask)
    if isinstance(reference_pooled, tuple):
        reference_pooled = reference_pooled[0]
    torch.testing.assert_close(pooled, reference_pooled)
    torch.testing.assert_close(penultimate, x)


def test_conditioner_shapes_follow_the_config(tiny):
    cond = tiny.conditioner(["x"])
    cfg = tiny.config
    assert cond["crossattn"].shape == (1, 77, cfg.unet.context_dim)
    assert cond["vector"].shape == (1, cfg.unet.adm_in_channels)
    official = SupirConfig.official()
    assert official.unet.context_dim == official.clip_l.width + official.clip_g.width == 2048
    assert official.unet.adm_in_channels == official.clip_g.output_dim + 3 * 2 * 256 == 2816
    assert replace(official, sft_hidden=128) == official
