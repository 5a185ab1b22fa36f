"""Load one random state dict into the official SUPIR UNet + GLVControl and into ours, run one
denoiser step on the same inputs, print the difference.

The official code is not part of Satscale: pass a checkout of Fanghua-Yu/SUPIR with --official.
Its training-only imports (pytorch_lightning, omegaconf) are stubbed, so only torch, einops and
open_clip are needed. Runs at the official channel widths with transformer depth [1, 1, 1] (the
reduced depth the official code also accepts), which fits in a few GB of RAM on a CPU.

    python benchmarks/supir_vs_official.py --official /path/to/SUPIR
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import torch
from torch import nn


def _stub_training_imports(official: str) -> None:
    # the package __init__ files pull in the training stack; register the packages bare
    for name, sub in (
        ("sgm", "sgm"),
        ("sgm.modules", "sgm/modules"),
        ("sgm.modules.diffusionmodules", "sgm/modules/diffusionmodules"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [f"{official}/{sub}"]
        sys.modules.setdefault(name, package)
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = nn.Module
    pl.seed_everything = lambda seed: torch.manual_seed(seed)
    sys.modules.setdefault("pytorch_lightning", pl)
    omegaconf = types.ModuleType("omegaconf")
    listconfig = types.ModuleType("omegaconf.listconfig")

    class ListConfig(list):
        pass

    listconfig.ListConfig = ListConfig
    omegaconf.ListConfig = ListConfig
    omegaconf.DictConfig = dict
    omegaconf.OmegaConf = object
    omegaconf.listconfig = listconfig
    sys.modules.setdefault("omegaconf", omegaconf)
    sys.modules.setdefault("omegaconf.listconfig", listconfig)


def _official_kwargs(depth: list[int]) -> dict:
    # options/SUPIR_v0.yaml, control_stage_config / network_config params
    return dict(
        adm_in_channels=2816,
        num_classes="sequential",
        use_checkpoint=False,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 4],
        num_head_channels=64,
        use_spatial_transformer=True,
        use_linear_in_transformer=True,
        transformer_depth=depth,
        context_dim=2048,
        spatial_transformer_attn_type="softmax",
        legacy=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="checkout of Fanghua-Yu/SUPIR")
    parser.add_argument("--depth", type=int, nargs=3, default=[1, 1, 1])
    parser.add_argument("--size", type=int, default=32, help="latent side")
    parser.add_argument("--control-scale", type=float, default=0.8)
    args = parser.parse_args()

    _stub_training_imports(args.official)
    sys.path.insert(0, args.official)
    from SUPIR.modules.SUPIR_v0 import GLVControl as OfficialControl
    from SUPIR.modules.SUPIR_v0 import LightGLVUNet as OfficialUNet

    from sr_core.engines.supir.config import SupirConfig
    from sr_core.engines.supir.keys import our_to_official
    from sr_core.engines.supir.unet import GLVControl, SupirUNet

    torch.manual_seed(0)
    t0 = time.perf_counter()
    official_control = OfficialControl(**_official_kwargs(args.depth), input_upscale=1).eval()
    official_unet = OfficialUNet(
        mode="XL-base",
        project_type="ZeroSFT",
        project_channel_scale=2,
        **_official_kwargs(args.depth),
    ).eval()
    # the official init zeroes the connectors; random values make every path count
    with torch.no_grad():
        for module in (official_control, official_unet):
            for p in module.parameters():
                p.normal_(0.0, 0.02)
    print(f"official modules built in {time.perf_counter() - t0:.1f} s")

    d = tuple(args.depth)
    config = SupirConfig.official().with_depths((d, d[-1]), (d, d[-1]))
    ours_unet = SupirUNet(config.unet, config.control).eval()
    ours_control = GLVControl(config.control).eval()
    official_sd = {f"model.diffusion_model.{k}": v for k, v in official_unet.state_dict().items()}
    official_sd.update({f"model.control_model.{k}": v for k, v in official_control.state_dict().items()})
    for prefix, module in (("unet.", ours_unet), ("control.", ours_control)):
        state = {}
        for key in module.state_dict():
            state[key] = official_sd.pop(our_to_official(prefix + key, config))
        module.load_state_dict(state, strict=True)
    print(f"official tensors left unmapped: {len(official_sd)}")

    g = torch.Generator().manual_seed(1)
    s = args.size
    x = torch.randn(1, 4, s, s, generator=g)
    lq = torch.randn(1, 4, s, s, generator=g)
    t = torch.tensor([537.0])
    context = torch.randn(1, 77, 2048, generator=g)
    y = torch.randn(1, 2816, generator=g)
    with torch.no_grad():
        t0 = time.perf_counter()
        hs_official = official_control(lq, t, x, context, y)
        out_official = official_unet(x, t, context, y, hs_official, args.control_scale)
        t1 = time.perf_counter()
        hs_ours = ours_control(lq, t, x, context, y)
        out_ours = ours_unet(x, t, context, y, hs_ours, args.control_scale)
        t2 = time.perf_counter()
    worst = max((a - b).abs().max().item() for a, b in zip(hs_official, hs_ours, strict=True))
    diff = (out_official - out_ours).abs()
    rel = diff.max().item() / out_official.abs().max().item()
    print(f"control features: {len(hs_ours)} tensors, max abs difference {worst:.3e}")
    print(
        f"UNet output: max abs difference {diff.max().item():.3e}, relative {rel:.3e}, "
        f"output scale {out_official.abs().max().item():.3f}"
    )
    print(f"time: official {t1 - t0:.2f} s, ours {t2 - t1:.2f} s, ratio {(t1 - t0) / (t2 - t1):.2f}x")
    vae_rel = _compare_vae(args.official)
    return 0 if rel < 1e-4 and vae_rel < 1e-4 else 1


def _compare_vae(official: str) -> float:
    """The official first stage (ldm Encoder/Decoder, SDXL ddconfig) against our diffusers one."""
    from sgm.modules.diffusionmodules.model import Decoder as OfficialDecoder
    from sgm.modules.diffusionmodules.model import Encoder as OfficialEncoder

    from sr_core.engines.supir.config import SupirConfig
    from sr_core.engines.supir.keys import our_to_official
    from sr_core.engines.supir.vae import SupirFirstStage

    ddconfig = dict(
        double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
        ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0, attn_type="vanilla",
    )  # fmt: skip
    torch.manual_seed(2)
    encoder, decoder = OfficialEncoder(**ddconfig).eval(), OfficialDecoder(**ddconfig).eval()
    with torch.no_grad():
        for module in (encoder, decoder):
            for p in module.parameters():
                p.normal_(0.0, 0.05)
    official_sd = {f"first_stage_model.encoder.{k}": v for k, v in encoder.state_dict().items()}
    official_sd |= {f"first_stage_model.decoder.{k}": v for k, v in decoder.state_dict().items()}
    config = SupirConfig.official()
    ours = SupirFirstStage(config.vae).eval()
    state = {}
    for key, value in ours.state_dict().items():
        name = our_to_official("first_stage." + key, config)
        if name in official_sd:
            state[key] = official_sd[name].reshape(value.shape)
        else:  # quant convs and the denoise encoder are not part of this comparison
            state[key] = value
    ours.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        enc_diff = (encoder(x) - ours.vae.encoder(x)).abs().max() / encoder(x).abs().max()
        dec_diff = (decoder(z) - ours.vae.decoder(z)).abs().max() / decoder(z).abs().max()
    print(f"VAE: encoder relative difference {enc_diff:.3e}, decoder {dec_diff:.3e}")
    return float(max(enc_diff, dec_diff))


if __name__ == "__main__":
    raise SystemExit(main())
