"""Load one random state dict into the official CCSR v1 UNet + ControlNet and into ours, run one
noise prediction with control on the same inputs, print the difference and the speed ratio.

The official code is not part of Satscale: pass a checkout of csslc/CCSR with --official. Its
training-only imports (the Lightning model class, the sampler, utils.common) are stubbed. Runs
at the official widths (SD 2.1-base UNet, 8-channel ControlNet); about 10 GB of RAM in fp32.

    python benchmarks/ccsr_vs_official.py --official /path/to/CCSR
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import torch
from torch import nn


def _stub(official: str) -> None:
    for name, sub in (
        ("ldm", "ldm"),
        ("ldm.models", "ldm/models"),
        ("ldm.models.diffusion", "ldm/models/diffusion"),
        ("model", "model"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [f"{official}/{sub}"]
        sys.modules.setdefault(name, package)
    ddpm = types.ModuleType("ldm.models.diffusion.ddpm_ccsr_stage2")
    ddpm.LatentDiffusion = nn.Module
    sys.modules["ldm.models.diffusion.ddpm_ccsr_stage2"] = ddpm
    common = types.ModuleType("utils.common")
    common.frozen_module = lambda module: None
    sys.modules.setdefault("utils", types.ModuleType("utils"))
    sys.modules["utils.common"] = common
    omegaconf = types.ModuleType("omegaconf")
    listconfig = types.ModuleType("omegaconf.listconfig")
    listconfig.ListConfig = type("ListConfig", (list,), {})
    omegaconf.listconfig = listconfig
    sys.modules.setdefault("omegaconf", omegaconf)
    sys.modules.setdefault("omegaconf.listconfig", listconfig)
    sampler = types.ModuleType("model.spaced_sampler")
    sampler.SpacedSampler = object
    sys.modules["model.spaced_sampler"] = sampler


# configs/model/ccsr_stage2.yaml, control_stage_config / unet_config params
_COMMON = dict(
    use_checkpoint=False,
    image_size=32,
    in_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
    legacy=False,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="checkout of csslc/CCSR")
    parser.add_argument("--size", type=int, default=32, help="latent side")
    parser.add_argument("--strength", type=float, default=0.9, help="control scale")
    args = parser.parse_args()
    _stub(args.official)
    sys.path.insert(0, args.official)
    from model.ccsr_stage2 import ControlledUnetModel, ControlNet

    from sr_core.engines.ccsr.model import CcsrConfig, CcsrModel, ccsr_official_name

    torch.manual_seed(0)
    started = time.perf_counter()
    official_control = ControlNet(hint_channels=4, **_COMMON).eval()
    official_unet = ControlledUnetModel(out_channels=4, **_COMMON).eval()
    with torch.no_grad():  # the official init zeroes the ControlNet's convs: randomise everything
        for module in (official_control, official_unet):
            for p in module.parameters():
                p.normal_(0.0, 0.02)
    print(f"official modules built in {time.perf_counter() - started:.1f} s")

    config = CcsrConfig(version=1)
    with torch.device("meta"):
        ours = CcsrModel(config)
    official = {f"model.diffusion_model.{k}": v for k, v in official_unet.state_dict().items()}
    official |= {f"control_model.{k}": v for k, v in official_control.state_dict().items()}
    state = {}
    for key, value in ours.state_dict().items():
        name = ccsr_official_name(key, config)
        if key.startswith(("unet.", "control.")):
            state[key] = official.pop(name).reshape(value.shape)
        else:  # text, VAE, condition encoder, schedule: not compared here
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()
    print(f"official tensors left unmapped: {len(official)}")

    g = torch.Generator().manual_seed(1)
    s = args.size
    x, hint = torch.randn(1, 4, s, s, generator=g), torch.randn(1, 4, s, s, generator=g)
    context = torch.randn(1, 77, 1024, generator=g)
    t = torch.tensor([658])
    with torch.no_grad():
        started = time.perf_counter()
        control = official_control(x=x, hint=hint, timesteps=t, context=context)
        control = [c * args.strength for c in control]
        expected = official_unet(x=x, timesteps=t, context=context, control=control, only_mid_control=False)
        official_seconds = time.perf_counter() - started
        started = time.perf_counter()
        got = ours.eps(x, t, {"c_crossattn": context, "c_latent": hint, "control_scale": args.strength})
        our_seconds = time.perf_counter() - started
    diff = (expected - got).abs().max().item()
    relative = diff / expected.abs().max().item()
    print(f"eps with control: max abs difference {diff:.3e}, relative {relative:.3e}")
    ratio = official_seconds / our_seconds
    print(f"time: official {official_seconds:.2f} s, ours {our_seconds:.2f} s, ratio {ratio:.2f}x")
    return 0 if relative < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
