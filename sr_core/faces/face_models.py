"""Face-restoration networks (GFPGAN v1.3/v1.4, RestoreFormer, RestoreFormer++, CodeFormer) loaded
strictly through spandrel from the files their authors publish, and one call that restores an
FFHQ-aligned 512x512 face as the official inference scripts do.

The release files, as this module reads them:

- GFPGANv1.3.pth / GFPGANv1.4.pth: ``{"params_ema": state_dict}`` (GFPGAN's
  scripts/convert_gfpganv_to_clean.py writes exactly that; gfpgan/utils.py reads ``params_ema``,
  else ``params``, strictly). spandrel unwraps it.
- codeformer.pth: ``{"params_ema": state_dict}`` (CodeFormer's inference_codeformer.py reads
  ``['params_ema']`` strictly). spandrel unwraps it.
- RestoreFormer.ckpt / RestoreFormer++.ckpt (wzhouxiff/RestoreFormerPlusPlus release v1.0.0): a
  PyTorch Lightning checkpoint whose ``state_dict`` holds the model under ``vqvae.`` (the
  Lightning module's attribute, RestoreFormer/models/vqgan_v1.py) beside whatever else the
  module held (its ``loss.`` module). Upstream strips ``vqvae.`` and loads with strict=False
  (RestoreFormer/RestoreFormer.py); here the prefix is stripped, ``loss.`` entries and the
  training-time ``quantize.utility_counter`` buffer are dropped, and everything else must fit
  the network exactly. GFPGAN's own RestoreFormer.pth (release v1.3.4; bare keys, the file
  spandrel's tests load) needs none of this.

spandrel 0.4.2 cannot run RestoreFormer++ (see restoreformer_pp.py), so it is registered here,
with CodeFormer alone from spandrel_extra_arches (the other extra architectures stay out).

Every official script feeds the network RGB scaled to [-1, 1] ((x - 0.5) / 0.5, torchvision's
normalize) and maps its output back with basicsr's tensor2img(min_max=(-1, 1)): clamp to
[-1, 1], then (y + 1) / 2. spandrel's own call functions do not all do this (its GFPGAN and
CodeFormer descriptors feed [0, 1] straight in and clamp the raw output), so `FaceRestorer`
calls the networks itself.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from spandrel import (
    MAIN_REGISTRY,
    ArchSupport,
    ImageModelDescriptor,
    ModelDescriptor,
    ModelLoader,
    StateDict,
    UnsupportedDtypeError,
    UnsupportedModelError,
    canonicalize_state_dict,
)
from spandrel.__helpers.unpickler import safe_list as _SPANDREL_SAFE  # what spandrel's own reader allows
from torch import nn

from ..errors import ParameterError, WeightsError, error_summary
from ..weights import CHECKPOINT_READ_ERRORS, WEIGHT_SUFFIXES
from .restoreformer_pp import ARCH_ID as RESTOREFORMER_PP_ID
from .restoreformer_pp import RestoreFormerPlusPlusArch

NON_COMMERCIAL = (
    "CodeFormer's weights are under the NTU S-Lab License 1.0: non-commercial use only "
    "(https://github.com/sczhou/CodeFormer/blob/master/LICENSE)."
)

#: the side of the aligned face every one of these networks takes
FACE_SIZE = 512
#: CodeFormer's fidelity weight w when none is given (inference_codeformer.py's --fidelity_weight)
DEFAULT_FIDELITY = 0.5


@dataclass(frozen=True)
class FaceArch:
    """What the project knows about one face architecture."""

    id: str  # spandrel's architecture id
    title: str
    licence_note: str | None = None  # set where the weights' licence restricts their use
    takes_fidelity: bool = False  # CodeFormer's w


GFPGAN = FaceArch("GFPGAN", "GFPGAN")
RESTOREFORMER = FaceArch("RestoreFormer", "RestoreFormer")
RESTOREFORMER_PP = FaceArch(RESTOREFORMER_PP_ID, "RestoreFormer++")
CODEFORMER = FaceArch("CodeFormer", "CodeFormer", licence_note=NON_COMMERCIAL, takes_fidelity=True)
FACE_ARCHS: dict[str, FaceArch] = {arch.id: arch for arch in (GFPGAN, RESTOREFORMER, RESTOREFORMER_PP, CODEFORMER)}


class FaceWeightsError(WeightsError, ValueError):
    """A file that cannot be used as a face model (unreadable, another kind of model, or tensors
    that do not fit the architecture exactly). Both a WeightsError and a ValueError."""


_registered = False
_register_lock = threading.Lock()


def register_face_architectures() -> None:
    """Add RestoreFormer++ (detected before spandrel's RestoreFormer) and CodeFormer, alone of
    spandrel_extra_arches' architectures, to spandrel's MAIN_REGISTRY. Idempotent."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        from spandrel_extra_arches import EXTRA_REGISTRY

        MAIN_REGISTRY.add(
            ArchSupport.from_architecture(RestoreFormerPlusPlusArch(), before=(RESTOREFORMER.id,)),
            EXTRA_REGISTRY[CODEFORMER.id],
            ignore_duplicates=True,
        )
        _registered = True


def _detected(state_dict: StateDict) -> ArchSupport | None:
    """The architecture spandrel would load these tensors as (its detection order)."""
    register_face_architectures()
    for support in MAIN_REGISTRY.architectures("detection"):
        if support.detect(state_dict):
            return support
    return None


def detect_face_arch(state_dict: StateDict) -> FaceArch | None:
    """The face architecture of a state dict (as `read_state_dict` returns it), without building
    the network; None for anything else."""
    support = _detected(state_dict)
    return None if support is None else FACE_ARCHS.get(support.architecture.id)


def face_arch(descriptor: ModelDescriptor) -> FaceArch | None:
    """The face architecture of a loaded spandrel model; None when it is not a face model."""
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "FaceSR":
        return None
    return FACE_ARCHS.get(descriptor.architecture.id)


class _Inert:
    """Stands in for a Lightning object pickled into a checkpoint (a callback's class, used as a
    dict key): it takes any arguments and state and runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


_LIGHTNING_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric")


def _is_lightning(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in _LIGHTNING_MODULES)


class _LightningTolerantUnpickler(pickle.Unpickler):
    """spandrel's allow-list (tensors and ordered dicts), and inert stand-ins for Lightning's
    own objects; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if _is_lightning(module):
            return _Inert
        if (module, name) not in _SPANDREL_SAFE:
            raise pickle.UnpicklingError(f"Global '{module}.{name}' is forbidden")
        return super().find_class(module, name)


_TOLERANT_PICKLE = SimpleNamespace(
    Unpickler=_LightningTolerantUnpickler,
    __name__="pickle",
    load=lambda *args, **kwargs: _LightningTolerantUnpickler(*args, **kwargs).load(),
)


def _read_file(path: Path) -> StateDict:
    loader = ModelLoader(device="cpu")
    try:
        try:
            return loader.load_state_dict_from_file(path)
        except pickle.UnpicklingError as exc:
            # a full (not weights-only) Lightning checkpoint pickles its callbacks' classes as dict
            # keys: read it again with those inert, everything else as spandrel allows
            if "'pytorch_lightning." not in str(exc) and "'lightning" not in str(exc):
                raise
            loaded = torch.load(path, map_location="cpu", pickle_module=_TOLERANT_PICKLE, weights_only=False)  # type: ignore[arg-type]
            if not isinstance(loaded, dict):
                raise ValueError("holds no state dict") from None
            return canonicalize_state_dict(loaded)
    except CHECKPOINT_READ_ERRORS as exc:
        raise FaceWeightsError(
            f"{path}: cannot read the file, it is truncated or not a checkpoint ({error_summary(exc)})"
        ) from None


#: buffers of the authors' training code that the released RestoreFormer networks do not have
_RESTOREFORMER_TRAINING_ONLY = ("quantize.utility_counter",)


def _unwrap_restoreformer(state_dict: StateDict, origin: str) -> StateDict:
    """A RestoreFormer Lightning module's tensors -> the network's; anything else unchanged."""
    if not any(key.startswith("vqvae.") for key in state_dict):
        return state_dict
    network = {key[len("vqvae.") :]: value for key, value in state_dict.items() if key.startswith("vqvae.")}
    support = _detected(network)
    if support is None or support.architecture.id not in (RESTOREFORMER.id, RESTOREFORMER_PP.id):
        return state_dict
    strays = [key for key in state_dict if not key.startswith(("vqvae.", "loss."))]
    if strays:
        raise FaceWeightsError(
            f"{origin}: a RestoreFormer checkpoint with tensors that are neither the network (vqvae.) nor "
            f"its training losses (loss.): {', '.join(strays[:4])}"
        )
    for key in _RESTOREFORMER_TRAINING_ONLY:
        network.pop(key, None)
    return network


def read_state_dict(path: Path) -> StateDict:
    """A checkpoint's network tensors: spandrel's unwrapping (params_ema, state_dict, module.
    ...) and, for RestoreFormer's Lightning checkpoints, the `vqvae.` prefix stripped and the
    training-only entries dropped. Raises FaceWeightsError when the file cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FaceWeightsError(f"{path}: no such file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise FaceWeightsError(f"{path}: unsupported extension {path.suffix!r} (use {', '.join(WEIGHT_SUFFIXES)})")
    state_dict = _read_file(path)
    if not isinstance(state_dict, dict) or not state_dict:
        raise FaceWeightsError(f"{path}: holds no state dict")
    return _unwrap_restoreformer(state_dict, str(path))


class FaceRestorer:
    """A loaded face network and the official pre- and post-processing around it."""

    def __init__(self, descriptor: ModelDescriptor, device: torch.device | str, dtype: torch.dtype = torch.float32):
        arch = face_arch(descriptor)
        if arch is None:
            raise FaceWeightsError(
                f"a {descriptor.architecture.name} {descriptor.purpose} model is not a face restoration model "
                f"({', '.join(a.title for a in FACE_ARCHS.values())})"
            )
        self.arch: FaceArch = arch
        self.device = torch.device(device)
        self.dtype = dtype
        try:
            self.descriptor = descriptor.to(self.device, dtype)
        except UnsupportedDtypeError:
            raise ParameterError(f"{arch.title} does not run in {dtype}") from None
        self.descriptor.model.eval()

    @property
    def model(self) -> nn.Module:
        return self.descriptor.model

    def _fidelity(self, fidelity: float | None) -> float:
        if fidelity is None:
            return DEFAULT_FIDELITY
        w = float(fidelity)
        if not 0.0 <= w <= 1.0:
            raise ParameterError(f"CodeFormer's fidelity must be between 0 and 1 (got {fidelity})")
        return w

    def _forward(self, x: torch.Tensor, fidelity: float | None) -> torch.Tensor:
        """The network on [-1, 1] RGB, called as the official inference calls it."""
        model: Any = self.model
        if self.arch is GFPGAN:
            # GFPGANer.enhance: return_rgb=False (its `weight` is swallowed by **kwargs). The
            # official default draws fresh noise for the StyleGAN2 noise inputs on every call;
            # the checkpoint's own noise buffers (its officially supported randomize_noise=False)
            # give the same kind of sample, reproducibly, without touching torch's global RNG.
            return model(x, return_rgb=False, randomize_noise=False)[0]
        if self.arch is CODEFORMER:
            # inference_codeformer.py: net(x, w=w, adain=True); spandrel_extra_arches names w
            # `weight` (a `w=` keyword would be swallowed) and always applies AdaIN
            return model(x, weight=self._fidelity(fidelity))[0]
        if self.arch is RESTOREFORMER:
            return model(x)[0]
        return model(x)  # RestoreFormer++ returns the image alone

    def restore(self, faces: torch.Tensor, fidelity: float | None = None) -> torch.Tensor:
        """Restore aligned faces: (N, 3, 512, 512) RGB in [0, 1] -> the same shape, dtype and
        device, in [0, 1]. `fidelity` is CodeFormer's w (0 quality ... 1 fidelity to the input,
        default 0.5); the other architectures ignore it. Deterministic."""
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must be (N, 3, {FACE_SIZE}, {FACE_SIZE}), got {tuple(faces.shape)}")
        if not faces.is_floating_point():
            raise ValueError(f"faces must be floating point in [0, 1], got {faces.dtype}")
        if self.arch.takes_fidelity:
            self._fidelity(fidelity)  # refuse a bad value before the work
        with torch.inference_mode():
            x = faces.to(self.device, self.dtype)
            x = (x - 0.5) / 0.5  # torchvision normalize(mean=0.5, std=0.5), as every official script
            y = self._forward(x, fidelity)
            out = (y.clamp(-1.0, 1.0) + 1.0) / 2.0  # basicsr tensor2img(min_max=(-1, 1)) before its uint8
            return out.to(faces.device, faces.dtype)


def load_face_model(path: Path, device: torch.device | str, dtype: torch.dtype = torch.float32) -> FaceRestorer:
    """Load a face checkpoint strictly (every tensor the network has, nothing else) onto `device`.
    Raises FaceWeightsError (a ValueError) naming the file when it is not a face model or does
    not fit one exactly."""
    path = Path(path)
    state_dict = read_state_dict(path)
    support = _detected(state_dict)
    arch = None if support is None else FACE_ARCHS.get(support.architecture.id)
    titles = ", ".join(a.title for a in FACE_ARCHS.values())
    if support is None:
        sample = ", ".join(list(state_dict)[:4])
        raise FaceWeightsError(f"{path}: not a face restoration model ({titles}); keys start: {sample}")
    if arch is None:
        raise FaceWeightsError(
            f"{path}: is a {support.architecture.name} model, not a face restoration model ({titles})"
        )
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise FaceWeightsError(f"{path}: not a face restoration model ({titles})") from None
    except (RuntimeError, KeyError, ValueError, AssertionError, IndexError) as exc:
        # strict load_state_dict: a missing, unexpected or mis-shaped tensor
        raise FaceWeightsError(f"{path}: the tensors do not fit {arch.title} exactly: {error_summary(exc)}") from None
    return FaceRestorer(descriptor, device, dtype)


__all__ = [
    "CODEFORMER",
    "DEFAULT_FIDELITY",
    "FACE_ARCHS",
    "FACE_SIZE",
    "GFPGAN",
    "NON_COMMERCIAL",
    "RESTOREFORMER",
    "RESTOREFORMER_PP",
    "FaceArch",
    "FaceRestorer",
    "FaceWeightsError",
    "detect_face_arch",
    "face_arch",
    "load_face_model",
    "read_state_dict",
    "register_face_architectures",
]
