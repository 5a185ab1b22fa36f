"""Face-restoration models: the official files load strictly through spandrel, `restore` is the
official pre/post-processing around the network, and only CodeFormer joins from the extra arches.

The checkpoints are random-weight but full-size, in the release files' layouts
(tests/face_weights.py); each is written once for this module. On CPU one 512 face takes
several seconds, so the tests that run a network are marked slow.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from spandrel import MAIN_REGISTRY, ModelLoader
from spandrel_extra_arches import EXTRA_REGISTRY

from sr_core.errors import ParameterError, WeightsError
from sr_core.faces.face_models import (
    CODEFORMER,
    FACE_ARCHS,
    GFPGAN,
    NON_COMMERCIAL,
    RESTOREFORMER,
    RESTOREFORMER_PP,
    FaceRestorer,
    FaceWeightsError,
    detect_face_arch,
    face_arch,
    load_face_model,
    read_state_dict,
    register_face_architectures,
)
from sr_core.faces.restoreformer_pp import RestoreFormerPlusPlus, RestoreFormerPlusPlusArch
from tests.face_weights import (
    BUILDERS,
    OFFICIAL_KEYS,
    SEEDS,
    WRITERS,
    random_state_dict,
    write_compact,
    write_restoreformer_pp,
)

ARCH_IDS = list(WRITERS)


@pytest.fixture(scope="module")
def face_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """arch id -> its official-layout file, written on first use and kept for the module."""
    folder = tmp_path_factory.mktemp("face-weights")
    written: dict[str, Path] = {}

    def get(arch_id: str) -> Path:
        if arch_id not in written:
            written[arch_id] = WRITERS[arch_id](folder)
        return written[arch_id]

    return get


@pytest.fixture(scope="module")
def restorers(face_file: Callable[[str], Path]) -> Callable[[str], FaceRestorer]:
    loaded: dict[str, FaceRestorer] = {}

    def get(arch_id: str) -> FaceRestorer:
        if arch_id not in loaded:
            loaded[arch_id] = load_face_model(face_file(arch_id), "cpu")
        return loaded[arch_id]

    return get


def _face(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 512, 512, generator=torch.Generator().manual_seed(seed))


def _official(restorer: FaceRestorer, faces: torch.Tensor, w: float = 0.5) -> torch.Tensor:
    """The official scripts' processing around the raw network: normalize(0.5, 0.5) on RGB,
    the network called as they call it, tensor2img's clamp to [-1, 1] and (y + 1) / 2."""
    x = faces.clone()
    x.sub_(0.5).div_(0.5)  # torchvision.transforms.functional.normalize, inplace
    net = restorer.model
    with torch.inference_mode():
        if restorer.arch is GFPGAN:  # GFPGANer.enhance (stored noise: see FaceRestorer._forward)
            y = net(x, return_rgb=False, weight=0.5, randomize_noise=False)[0]
        elif restorer.arch is CODEFORMER:  # inference_codeformer.py's net(x, w=w, adain=True)
            y = net(x, weight=w)[0]
        elif restorer.arch is RESTOREFORMER:  # RestoreFormer.enhance: self.RF(x)[0]
            y = net(x)[0]
        else:
            y = net(x)
    return (y.clamp(-1, 1) + 1) / 2


# --- the files load strictly and say what they are -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_official_layouts_load_strictly(face_file: Callable[[str], Path], arch_id: str) -> None:
    path = face_file(arch_id)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if arch_id in ("RestoreFormer", "RestoreFormer++"):  # a Lightning checkpoint, vqvae.-prefixed
        assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict"} <= set(raw)
        assert all(key.startswith("vqvae.") for key in raw["state_dict"])
        assert "vqvae.quantize.utility_counter" in raw["state_dict"]
    else:
        assert list(raw) == ["params_ema"]

    state_dict = read_state_dict(path)
    assert len(state_dict) == OFFICIAL_KEYS[arch_id]
    assert set(state_dict) == set(BUILDERS[arch_id]().state_dict())
    assert detect_face_arch(state_dict) == FACE_ARCHS[arch_id]

    restorer = load_face_model(path, "cpu")
    assert restorer.arch.id == arch_id
    assert face_arch(restorer.descriptor) is restorer.arch
    assert restorer.model.training is False
    expected = random_state_dict(BUILDERS[arch_id], SEEDS[arch_id])
    loaded = restorer.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_arch_facts() -> None:
    assert CODEFORMER.licence_note == NON_COMMERCIAL
    assert "S-Lab" in NON_COMMERCIAL and "non-commercial" in NON_COMMERCIAL
    assert CODEFORMER.takes_fidelity
    for arch in (GFPGAN, RESTOREFORMER, RESTOREFORMER_PP):
        assert arch.licence_note is None and not arch.takes_fidelity
    assert [a.id for a in FACE_ARCHS.values()] == ["GFPGAN", "RestoreFormer", "RestoreFormer++", "CodeFormer"]


# --- strictness ------------------------------------------------------------------------------


def _drop(key: str) -> Callable[[dict], None]:
    return lambda state: state.pop(key)


def _add(key: str) -> Callable[[dict], None]:
    return lambda state: state.__setitem__(key, torch.zeros(4))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch_id", "edit", "named"),
    [
        ("GFPGAN", _drop("stylegan_decoder.noises.noise3"), "Missing key"),
        ("RestoreFormer++", _drop("decoder.up.4.attn.2.proj_out.bias"), "Missing key"),  # still ++, not v1
        ("RestoreFormer", _add("decoder.up.0.block.0.conv3.weight"), "Unexpected key"),
        ("CodeFormer", _add("ft_layers.0.extra_bias"), "Unexpected key"),
    ],
    ids=["gfpgan-missing", "restoreformer++-missing", "restoreformer-extra", "codeformer-extra"],
)
def test_one_key_missing_or_extra_is_refused(
    tmp_path: Path, arch_id: str, edit: Callable[[dict], None], named: str
) -> None:
    path = WRITERS[arch_id](tmp_path, edit=edit)
    with pytest.raises(FaceWeightsError, match=f"do not fit {re.escape(FACE_ARCHS[arch_id].title)} exactly.*{named}"):
        load_face_model(path, "cpu")


@pytest.mark.slow
def test_full_lightning_checkpoint_loads_and_a_stray_entry_does_not(tmp_path: Path) -> None:
    """A full Lightning 1.0 checkpoint (callbacks keyed by a pickled class, loss tensors) loads
    without running Lightning code; an entry outside vqvae. and loss. is refused."""
    path = write_restoreformer_pp(tmp_path, training_extras=True, lightning_callbacks=True)
    with pytest.raises(pickle.UnpicklingError, match="pytorch_lightning"):
        ModelLoader().load_state_dict_from_file(path)  # spandrel alone refuses the class
    state_dict = read_state_dict(path)
    assert len(state_dict) == OFFICIAL_KEYS["RestoreFormer++"]
    assert load_face_model(path, "cpu").arch is RESTOREFORMER_PP

    stray = write_restoreformer_pp(tmp_path, name="stray.ckpt", edit=None, training_extras=False)
    raw = torch.load(stray, weights_only=True)
    raw["state_dict"]["ema.decoder.conv_out.weight"] = torch.zeros(3)
    torch.save(raw, stray)
    with pytest.raises(FaceWeightsError, match=r"neither the network.*ema\.decoder\.conv_out\.weight"):
        read_state_dict(stray)


# --- restore is the official processing --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_restore_is_the_official_processing(restorers: Callable[[str], FaceRestorer], arch_id: str) -> None:
    restorer = restorers(arch_id)
    faces = _face(seed=1)
    out = restorer.restore(faces)
    reference = _official(restorer, faces)
    assert out.shape == faces.shape and out.dtype == faces.dtype and out.device == faces.device
    assert (out - reference).abs().max().item() < 1e-5
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    # the random network's raw output leaves [-1, 1] somewhere, so the clamp was exercised
    assert bool((reference == 0).any() or (reference == 1).any())
    if arch_id == "GFPGAN":  # no draw from torch's RNG: the same face, the same output
        torch.manual_seed(123)
        assert torch.equal(restorer.restore(faces), out)


@pytest.mark.slow
def test_codeformer_fidelity(restorers: Callable[[str], FaceRestorer]) -> None:
    restorer = restorers("CodeFormer")
    faces = _face(seed=2)
    quality, faithful = restorer.restore(faces, 0.0), restorer.restore(faces, 1.0)
    assert (quality - faithful).abs().max().item() > 1e-3
    assert (faithful - _official(restorer, faces, w=1.0)).abs().max().item() < 1e-5
    # (no fidelity means w = 0.5, inference_codeformer.py's default: test_restore_is_the_official_processing)
    with pytest.raises(ParameterError, match="between 0 and 1"):
        restorer.restore(faces, 1.5)


@pytest.mark.slow
def test_other_models_ignore_fidelity_and_batches_change_nothing(restorers: Callable[[str], FaceRestorer]) -> None:
    restorer = restorers("GFPGAN")
    faces = _face(seed=3, batch=2)
    both = restorer.restore(faces, 0.9)
    assert (both[1:] - restorer.restore(faces[1:], 0.1)).abs().max().item() < 1e-5


def test_restore_refuses_what_is_not_an_aligned_face(restorers: Callable[[str], FaceRestorer]) -> None:
    restorer = restorers("GFPGAN")
    for bad in (torch.rand(3, 512, 512), torch.rand(1, 3, 256, 256), torch.rand(1, 4, 512, 512)):
        with pytest.raises(ValueError, match=r"\(N, 3, 512, 512\)"):
            restorer.restore(bad)
    with pytest.raises(ValueError, match="floating point"):
        restorer.restore(torch.zeros(1, 3, 512, 512, dtype=torch.uint8))


# --- what is not a face model ------------------------------------------------------------------


def test_a_non_face_model_is_refused(tmp_path: Path) -> None:
    path = write_compact(tmp_path)
    assert detect_face_arch(read_state_dict(path)) is None
    with pytest.raises(FaceWeightsError, match=r"is a .*Compact model, not a face restoration model") as caught:
        load_face_model(path, "cpu")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, WeightsError)
    descriptor = ModelLoader().load_from_file(path)
    assert face_arch(descriptor) is None
    with pytest.raises(FaceWeightsError, match="not a face restoration model"):
        FaceRestorer(descriptor, "cpu")


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FaceWeightsError, match="no such file"):
        load_face_model(tmp_path / "GFPGANv1.4.pth", "cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FaceWeightsError, match="cannot read the file"):
        read_state_dict(junk)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(FaceWeightsError, match="unsupported extension"):
        load_face_model(other, "cpu")
    unknown = tmp_path / "unknown.pth"
    torch.save({"params_ema": {"encoder.weight": torch.zeros(2)}}, unknown)
    with pytest.raises(FaceWeightsError, match=r"not a face restoration model.*encoder\.weight"):
        load_face_model(unknown, "cpu")


# --- registration ------------------------------------------------------------------------------


def test_registration_is_idempotent_and_adds_only_codeformer() -> None:
    register_face_architectures()
    before = [support.architecture.id for support in MAIN_REGISTRY.architectures("detection")]
    register_face_architectures()
    order = [support.architecture.id for support in MAIN_REGISTRY.architectures("detection")]
    assert order == before
    assert "CodeFormer" in order and "RestoreFormer++" in order
    assert order.index("RestoreFormer++") < order.index("RestoreFormer")
    others = [support.architecture.id for support in EXTRA_REGISTRY if support.architecture.id != "CodeFormer"]
    assert others and not any(arch_id in MAIN_REGISTRY for arch_id in others)


# --- RestoreFormer++ itself, on a small configuration -------------------------------------------

_TINY = dict(
    n_embed=64,
    embed_dim=32,
    ch=32,
    out_ch=3,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(128,),
    in_channels=3,
    resolution=512,
    z_channels=32,
    double_z=False,
)


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    return random_state_dict(lambda: RestoreFormerPlusPlus(**_TINY), 7)  # type: ignore[arg-type]


def test_restoreformer_pp_matches_the_official_network() -> None:
    """Values the official VQVAEGANMultiHeadTransformer (wzhouxiff/RestoreFormerPlusPlus,
    head_size=4, ex_multi_scale_num=1) gives for this configuration, weights and input."""
    model = RestoreFormerPlusPlus(**_TINY).eval()  # type: ignore[arg-type]
    model.load_state_dict(_tiny_state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.inference_mode():
        y = model(x)
    picks = [(0, 0, 0, 0), (0, 1, 17, 40), (0, 2, 63, 63), (0, 0, 31, 5), (0, 1, 50, 22), (0, 2, 8, 57)]
    official = [-0.062396, 0.97282, 0.029262, 0.184187, -0.057556, 0.017715]
    assert [y[i].item() for i in picks] == pytest.approx(official, abs=1e-4)
    assert y.double().sum().item() == pytest.approx(484.63398, abs=2e-2)
    assert y.double().abs().sum().item() == pytest.approx(3115.32405, abs=2e-2)


def test_restoreformer_pp_architecture_detects_and_deduces() -> None:
    state_dict = _tiny_state_dict()
    arch = RestoreFormerPlusPlusArch()
    assert arch.detect(state_dict)
    # plain RestoreFormer (no extra scale) attends at the same levels in both halves: not ++
    v1 = random_state_dict(lambda: RestoreFormerPlusPlus(**_TINY, ex_multi_scale_num=0), 7)  # type: ignore[arg-type]
    assert not arch.detect(v1) and MAIN_REGISTRY["RestoreFormer"].detect(v1)
    descriptor = arch.load(state_dict)
    model = descriptor.model
    assert isinstance(model, RestoreFormerPlusPlus) and descriptor.purpose == "FaceSR"
    assert sorted(state_dict) == sorted(model.state_dict())
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():  # spandrel's own call: [0, 1] in and out, normalised inside
        expected = ((model(image * 2 - 1) + 1) / 2).clamp(0, 1)
        assert torch.allclose(descriptor(image), expected, atol=1e-6)
