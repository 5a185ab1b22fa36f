"""Random-weight face checkpoints in the official files' key layouts and wrappings.

Each writer builds the network with its release configuration, randomises it from a seed (the
same seed gives the same file) and saves it the way the authors' release file is laid out, so a
test exercises the real unwrapping:

- `write_gfpgan`: GFPGANv1.4.pth, ``{"params_ema": ...}`` in torch's legacy (non-zip) format,
  as GFPGAN's scripts/convert_gfpganv_to_clean.py saves it; built like gfpgan/utils.py's
  GFPGANer (GFPGANv1Clean, out_size 512, channel_multiplier 2, sft_half, different_w...).
- `write_codeformer`: codeformer.pth, ``{"params_ema": ...}``; built like
  inference_codeformer.py (dim_embd 512, codebook 1024, 8 heads, 9 layers, connect 32-256).
- `write_restoreformer`, `write_restoreformer_pp`: RestoreFormer.ckpt / RestoreFormer++.ckpt,
  a Lightning checkpoint (epoch, global_step, pytorch-lightning_version, state_dict) whose
  state_dict holds the network under ``vqvae.`` plus a ``vqvae.quantize.utility_counter``
  buffer of the authors' training code; built as RestoreFormer/RestoreFormer.py does
  (VQVAEGANMultiHeadTransformer with head_size 8 / ex_multi_scale_num 0, and 4 / 1).
  `training_extras` adds ``loss.`` tensors under the names of the Lightning module's loss
  (RestoreFormer/modules/losses/vqperceptual.py, lpips.py); `lightning_callbacks` adds the
  ``callbacks`` entry a full (not weights-only) PyTorch Lightning 1.0 checkpoint pickles, keyed
  by the ModelCheckpoint class itself.

The released files' sizes (294,028,815 bytes for RestoreFormer++.ckpt, 290,861,237 for
RestoreFormer.ckpt) leave room for the network and a few kilobytes only: no losses, no optimiser
state. The utility counter's shape and dtype are a guess (one count per codebook entry).

The key sets were checked against the official classes (GFPGANv1Clean and
StyleGAN2GeneratorCSFT from TencentARC/GFPGAN, CodeFormer from sczhou/CodeFormer,
VQVAEGANMultiHeadTransformer from wzhouxiff/RestoreFormerPlusPlus), instantiated with the
configurations above: `OFFICIAL_KEYS` records their sizes.

A file is 290-380 MB and takes a few seconds; write each once per session, e.g.::

    @pytest.fixture(scope="session")
    def gfpgan_file(tmp_path_factory):
        return write_gfpgan(tmp_path_factory.mktemp("faces"))
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.RestoreFormer import RestoreFormer
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
from torch import nn

from sr_core.faces.restoreformer_pp import RestoreFormerPlusPlus

StateDict = dict[str, torch.Tensor]
Edit = Callable[[StateDict], None]

#: tensors in each official network's state dict (release configuration)
OFFICIAL_KEYS = {"GFPGAN": 285, "RestoreFormer": 405, "RestoreFormer++": 441, "CodeFormer": 515}
#: the seed each writer randomises from unless told otherwise
SEEDS = {"GFPGAN": 0, "RestoreFormer": 1, "RestoreFormer++": 2, "CodeFormer": 3}


def build_gfpgan() -> nn.Module:
    return GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )


def build_codeformer() -> nn.Module:
    return CodeFormer(dim_embd=512, codebook_size=1024, n_head=8, n_layers=9, connect_list=["32", "64", "128", "256"])


_RESTOREFORMER_CONFIG = dict(
    n_embed=1024,
    embed_dim=256,
    ch=64,
    out_ch=3,
    ch_mult=(1, 2, 2, 4, 4, 8),
    num_res_blocks=2,
    attn_resolutions=(16,),
    in_channels=3,
    resolution=512,
    z_channels=256,
    double_z=False,
)


def build_restoreformer() -> nn.Module:
    return RestoreFormer(**_RESTOREFORMER_CONFIG, dropout=0.0, enable_mid=True, head_size=8)  # type: ignore[arg-type]


def build_restoreformer_pp() -> nn.Module:
    return RestoreFormerPlusPlus(**_RESTOREFORMER_CONFIG, head_size=4, ex_multi_scale_num=1)  # type: ignore[arg-type]


def random_state_dict(build: Callable[[], nn.Module], seed: int) -> StateDict:
    """The network's own initialisation drawn from `seed`, and the tensors it initialises to a
    constant (biases, norms, noise strengths, embeddings) given small seeded variation too, so
    every tensor matters to the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    state = {key: value.detach() for key, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    for value in state.values():
        if value.is_floating_point() and value.numel() and bool((value == value.reshape(-1)[0]).all()):
            value.add_(torch.randn(value.shape, generator=generator), alpha=0.02)
    return state


def _edited(state: StateDict, edit: Edit | None) -> StateDict:
    if edit is not None:
        edit(state)
    return state


def write_gfpgan(
    directory: Path, *, seed: int = SEEDS["GFPGAN"], name: str = "GFPGANv1.4.pth", edit: Edit | None = None
) -> Path:
    """GFPGANv1.4.pth's layout. `edit` may change the network's tensors before they are wrapped."""
    state = _edited(random_state_dict(build_gfpgan, seed), edit)
    path = Path(directory) / name
    torch.save({"params_ema": state}, path, _use_new_zipfile_serialization=False)
    return path


def write_codeformer(
    directory: Path, *, seed: int = SEEDS["CodeFormer"], name: str = "codeformer.pth", edit: Edit | None = None
) -> Path:
    """codeformer.pth's layout."""
    state = _edited(random_state_dict(build_codeformer, seed), edit)
    path = Path(directory) / name
    torch.save({"params_ema": state}, path)
    return path


#: a few of the Lightning module's loss tensors, under their names (shapes as built there)
_LOSS_TENSORS = {
    "loss.perceptual_loss.scaling_layer.shift": torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1),
    "loss.perceptual_loss.scaling_layer.scale": torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1),
    "loss.perceptual_loss.lin0.model.1.weight": torch.full((1, 64, 1, 1), 0.1),
    "loss.discriminator.main.0.weight": torch.full((64, 3, 4, 4), 0.01),
    "loss.discriminator.main.0.bias": torch.zeros(64),
}


@contextmanager
def _lightning_classes() -> Iterator[type]:
    """A stand-in `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`, importable
    while the checkpoint is pickled (pickle stores a class by module and name)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    saved = {name: sys.modules.get(name) for name in names}
    modules = [types.ModuleType(name) for name in names]
    checkpoint_class = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[-1].ModelCheckpoint = checkpoint_class  # type: ignore[attr-defined]
    modules[0].callbacks = modules[1]  # type: ignore[attr-defined]
    modules[1].model_checkpoint = modules[2]  # type: ignore[attr-defined]
    sys.modules.update(zip(names, modules, strict=True))
    try:
        yield checkpoint_class
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _write_lightning(
    path: Path, network: StateDict, seed: int, training_extras: bool, lightning_callbacks: bool
) -> Path:
    state: OrderedDict[str, torch.Tensor] = OrderedDict((f"vqvae.{key}", value) for key, value in network.items())
    counts = torch.randint(0, 1000, (1024,), generator=torch.Generator().manual_seed(seed))
    state["vqvae.quantize.utility_counter"] = counts
    if training_extras:
        state.update((key, value.clone()) for key, value in _LOSS_TENSORS.items())
    checkpoint: dict[object, object] = {
        "epoch": 41,
        "global_step": 400000,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
    }
    if not lightning_callbacks:
        torch.save(checkpoint, path)
        return path
    with _lightning_classes() as model_checkpoint:
        best = {"best_model_score": torch.tensor(0.25), "best_model_path": "logs/checkpoints/last.ckpt"}
        checkpoint["callbacks"] = {model_checkpoint: best}
        checkpoint["optimizer_states"] = [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}]
        checkpoint["lr_schedulers"] = []
        torch.save(checkpoint, path)
    return path


def write_restoreformer(
    directory: Path,
    *,
    seed: int = SEEDS["RestoreFormer"],
    name: str = "RestoreFormer.ckpt",
    edit: Edit | None = None,
    training_extras: bool = False,
    lightning_callbacks: bool = False,
) -> Path:
    """RestoreFormer.ckpt's layout (the RestoreFormer++ repository's v1.0.0 release)."""
    network = _edited(random_state_dict(build_restoreformer, seed), edit)
    return _write_lightning(Path(directory) / name, network, seed, training_extras, lightning_callbacks)


def write_restoreformer_pp(
    directory: Path,
    *,
    seed: int = SEEDS["RestoreFormer++"],
    name: str = "RestoreFormer++.ckpt",
    edit: Edit | None = None,
    training_extras: bool = False,
    lightning_callbacks: bool = False,
) -> Path:
    """RestoreFormer++.ckpt's layout."""
    network = _edited(random_state_dict(build_restoreformer_pp, seed), edit)
    return _write_lightning(Path(directory) / name, network, seed, training_extras, lightning_callbacks)


#: spandrel architecture id -> how its network is built, and how its release file is written
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "GFPGAN": build_gfpgan,
    "RestoreFormer": build_restoreformer,
    "RestoreFormer++": build_restoreformer_pp,
    "CodeFormer": build_codeformer,
}
WRITERS: dict[str, Callable[..., Path]] = {
    "GFPGAN": write_gfpgan,
    "RestoreFormer": write_restoreformer,
    "RestoreFormer++": write_restoreformer_pp,
    "CodeFormer": write_codeformer,
}


def write_compact(directory: Path, *, name: str = "tiny-compact-x2.pth") -> Path:
    """A tiny non-face model (spandrel's Compact, 2x, 8 features): a few kilobytes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    path = Path(directory) / name
    torch.save({"params": model.state_dict()}, path)
    return path
