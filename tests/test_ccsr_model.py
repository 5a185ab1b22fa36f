"""CCSR's module tree: the official v1 checkpoint layout and the v2 ControlNet layout, one to one,
and the control wiring on a tiny configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sr_core.engines.ccsr.model import CcsrConfig, CcsrModel
from sr_core.engines.supir.model import official_shape

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference not beside the checkout")


def _reference(name: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in (REFERENCE / name).read_text().splitlines():
        key, shape = line.split("\t")
        rows[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return rows


@needs_reference
def test_v1_tree_maps_one_to_one_onto_the_official_checkpoint():
    reference = _reference("ccsr_v1_official_keys.tsv")
    assert len(reference) == 1741
    training_only = {k for k in reference if k.startswith("decoder_loss.")}
    assert len(training_only) == 56
    with torch.device("meta"):
        model = CcsrModel(CcsrConfig(version=1))
    names = model.official_names()
    assert len(set(names.values())) == len(names)
    ours = {names[k]: official_shape(names[k], tuple(v.shape)) for k, v in model.state_dict().items()}
    assert set(ours) == set(reference) - training_only
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    counts = {
        "model.diffusion_model.": 865_910_724,
        "control_model.": 363_153_280,
        "cond_encoder.": 34_163_664,
        "first_stage_model.": 83_653_863,
        "cond_stage_model.": 354_032_641,
    }
    for prefix, expected in counts.items():
        assert sum(torch.Size(s).numel() for k, s in ours.items() if k.startswith(prefix)) == expected, prefix
    # the ControlNet's first conv takes the noisy and the low-quality latents: 8 channels, 13 outputs
    assert ours["control_model.input_blocks.0.0.weight"] == (320, 8, 3, 3)
    assert len(model.control.controlnet_down_blocks) + 1 == 13


@needs_reference
def test_v2_controlnet_matches_the_released_layout():
    reference = _reference("ccsr_v2_controlnet_keys.tsv")
    with torch.device("meta"):
        model = CcsrModel(CcsrConfig(version=2))
    ours = {k[len("control.") :]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("control.")}
    assert ours == reference
    assert sum(torch.Size(s).numel() for s in ours.values()) == 363_153_600
    assert ours["condition_conv_in.weight"] == (320, 4, 3, 3)


@pytest.mark.parametrize("version", [1, 2])
def test_tiny_control_wiring(version):
    torch.manual_seed(0)
    model = CcsrModel(CcsrConfig.tiny(version)).eval()
    x = torch.randn(1, 4, 16, 16)
    hint = torch.randn(1, 4, 16, 16)
    t = torch.tensor([500])
    with torch.no_grad():
        context = model.text([""])
        cond = {"c_crossattn": context, "c_latent": hint}
        with_control = model.eps(x, t, cond)
        without = model.eps(x, t, cond | {"control_scale": 0.0})
        plain = model.unet(x, t, encoder_hidden_states=context).sample
        down, mid = model.control(x, hint, t, context)
    assert context.shape == (1, 77, model.config.text.width)
    assert torch.allclose(without, plain, atol=1e-6)  # scale 0: exactly the SD 2.1 UNet
    assert (with_control - plain).abs().max() > 1e-4  # the control acts
    assert len(down) == 12 and mid.shape[1] == model.config.unet.block_out_channels[-1]
    assert [d.shape[1] for d in down] == model.config.unet.skip_channels()
