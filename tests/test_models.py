"""User checkpoints in weights/: detection, wrappers, strict loading and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sr_core.device import Precision, resolve_precision
from sr_core.engines.builtin import builtin_weights
from sr_core.engines.esrgan import SpandrelEngine, load_descriptor
from sr_core.errors import ParameterError, UnknownModelError, WeightsError
from sr_core.registry import ModelRegistry
from sr_core.upscale import upscale_array

from .helpers import natural_image, psnr


@pytest.fixture
def user_folder(tmp_path: Path, weights_folder: Path) -> Path:
    """A weights folder holding the compact model saved the ways users' files come."""
    state = load_file(builtin_weights("realesr-animevideov3", weights_folder).path)
    torch.save({"params_ema": state, "params": state}, tmp_path / "RealESRGAN_compact.pth")
    torch.save({"params": state}, tmp_path / "compact_params.ckpt")
    save_file(state, tmp_path / "compact_plain.safetensors")
    return tmp_path


def test_builtins_are_listed_with_what_they_are(registry: ModelRegistry) -> None:
    described = {d.entry.name: d for d in registry.describe_all()}
    assert {"realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"} <= set(described)
    x4plus = described["realesrgan-x4plus"].info
    assert (x4plus.architecture, x4plus.native_scale, x4plus.scales) == ("ESRGAN", 4, (2, 3, 4))
    assert x4plus.parameters == 16_697_987  # RRDBNet, 23 blocks
    assert described["realesr-animevideov3"].info.architecture == "Compact"
    assert described["realesr-animevideov3"].info.price_class == "light"
    assert described["realesrgan-x4plus"].info.price_class == "standard"


def test_user_files_in_every_wrapper_load_and_agree(user_folder: Path, compact) -> None:
    registry = ModelRegistry(user_folder)
    names = {e.name for e in registry.entries() if e.source == "file"}
    assert names == {"RealESRGAN_compact", "compact_params", "compact_plain"}
    image = natural_image(24, 24)
    reference = upscale_array(compact, image)
    for name in names:
        engine = registry.load_engine(name, precision="fp32")
        assert engine.info.architecture == "Compact" and engine.info.native_scale == 4
        assert np.array_equal(upscale_array(engine, image), reference), name


def test_truncated_checkpoint_names_the_file(user_folder: Path) -> None:
    path = user_folder / "RealESRGAN_compact.pth"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"RealESRGAN_compact\.pth: cannot read the file"):
        load_descriptor(path)
    registry = ModelRegistry(user_folder)
    broken = registry.describe("RealESRGAN_compact")
    assert broken.info is None and "RealESRGAN_compact.pth" in broken.error  # listed, with the reason
    assert str(user_folder) not in broken.error  # the listing is public: no server paths in it


def test_garbage_safetensors_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    with pytest.raises(WeightsError, match=r"noise\.safetensors: cannot read"):
        load_descriptor(path)


def test_missing_tensor_is_a_strict_failure(user_folder: Path) -> None:
    state = load_file(user_folder / "compact_plain.safetensors")
    del state["body.2.weight"]
    save_file(state, user_folder / "incomplete.safetensors")
    with pytest.raises(WeightsError, match=r"incomplete\.safetensors: the tensors do not fit"):
        load_descriptor(user_folder / "incomplete.safetensors")


def test_wrong_shape_is_a_strict_failure(user_folder: Path) -> None:
    state = load_file(user_folder / "compact_plain.safetensors")
    state["body.4.weight"] = state["body.4.weight"][:, :32].contiguous()
    save_file(state, user_folder / "misshapen.safetensors")
    with pytest.raises(WeightsError, match=r"misshapen\.safetensors: the tensors do not fit"):
        load_descriptor(user_folder / "misshapen.safetensors")


def test_unknown_architecture_is_named(tmp_path: Path) -> None:
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, tmp_path / "bert.safetensors")
    with pytest.raises(WeightsError, match=r"bert\.safetensors: not a super-resolution architecture"):
        load_descriptor(tmp_path / "bert.safetensors")


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"params_ema": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil\.pth"):
        load_descriptor(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_unknown_model_lists_the_choices(registry: ModelRegistry) -> None:
    with pytest.raises(UnknownModelError, match="realesrgan-x4plus"):
        registry.get("no-such-model")


def test_precision_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv("SATSCALE_CPU_BF16", "0")
    assert resolve_precision("auto", cpu, True, True) is Precision.FP32
    monkeypatch.setenv("SATSCALE_CPU_BF16", "1")
    assert resolve_precision("auto", cpu, True, True) is Precision.BF16
    assert resolve_precision("auto", cpu, True, False) is Precision.FP32
    with pytest.raises(ParameterError, match="not supported by this model"):
        resolve_precision("fp16", cpu, False, True)
    with pytest.raises(ParameterError, match="not one of"):
        resolve_precision("int4", cpu, True, True)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_close_to_fp32(weights_folder: Path, compact, precision: str) -> None:
    path = builtin_weights("realesr-animevideov3", weights_folder).path
    engine = SpandrelEngine(load_descriptor(path), weights_sha256="", precision=precision)
    assert engine.info.precision.value == precision
    image = natural_image(32, 32, seed=6)
    assert psnr(upscale_array(engine, image), upscale_array(compact, image), 255) >= 35
