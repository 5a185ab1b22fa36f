"""Import ncnn Real-ESRGAN graphs into PyTorch state dicts in the official key layout.

Each architecture is a small recogniser, in the spirit of spandrel: it looks at the
graph's structure (not at file names or byte offsets), reads the hyper-parameters
off the layers, and names the weighted layers in execution order with the keys of
the official PyTorch implementation (Real-ESRGAN's RRDBNet and SRVGGNetCompact).
Every layer is checked against what the template expects at that position
(kind, fused activation), so a graph that merely has the right number of layers
is still refused if its wiring differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import NcnnFormatError
from .ncnn_format import NcnnGraph, NcnnLayer, read_graph

LEAKY_RELU = 2  # ncnn activation_type for LeakyReLU, slope in activation_params[0]
NEAREST, BILINEAR, BICUBIC = 1, 2, 3  # ncnn Interp resize_type


@dataclass(frozen=True)
class ImportedModel:
    """A network read from ncnn files, ready for spandrel."""

    architecture: str
    state_dict: dict[str, torch.Tensor]
    scale: int
    #: the ncnn graph's own final resize (x2/x3 animevideov3 files), else None
    output_resize: float | None
    hyperparameters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Slot:
    key: str  # official PyTorch module path, e.g. "body.0.rdb1.conv1"
    layer_type: str  # ncnn layer type expected there
    leaky_slope: float | None = None  # fused LeakyReLU slope expected on a Convolution


def _leaky_slope(layer: NcnnLayer) -> float | None:
    if int(layer.param(9, 0)) != LEAKY_RELU:
        return None
    params = layer.param(10, [0.0])
    return float(params[0]) if isinstance(params, list) else float(params)


def _interp(layer: NcnnLayer) -> tuple[int, float, float]:
    return int(layer.param(0, 0)), float(layer.param(1, 1.0)), float(layer.param(2, 1.0))


def _fill(graph: NcnnGraph, slots: list[_Slot]) -> dict[str, torch.Tensor]:
    weighted = graph.weighted_layers
    if len(weighted) != len(slots):
        raise NcnnFormatError(f"{graph.source}: {len(weighted)} weighted layers, the template expects {len(slots)}")
    state: dict[str, torch.Tensor] = {}
    for layer, slot in zip(weighted, slots, strict=True):
        if layer.type != slot.layer_type:
            raise NcnnFormatError(
                f"{graph.source}: {layer.name} is {layer.type}, expected {slot.layer_type} ({slot.key})"
            )
        slope = _leaky_slope(layer) if layer.type == "Convolution" else None
        if slope is not None and slot.leaky_slope is not None:
            matches = abs(slope - slot.leaky_slope) < 1e-6
        else:
            matches = slope is None and slot.leaky_slope is None
        if layer.type == "Convolution" and not matches:
            raise NcnnFormatError(
                f"{graph.source}: {layer.name} has fused activation slope {slope}, "
                f"{slot.key} expects {slot.leaky_slope}"
            )
        for blob_name, array in layer.blobs.items():
            state[f"{slot.key}.{blob_name}"] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def _rrdbnet(graph: NcnnGraph) -> ImportedModel | None:
    """ESRGAN / Real-ESRGAN RRDBNet: dense blocks with 0.2-scaled residuals, nearest x2 upsampling."""
    residuals = [e for e in graph.of_type("Eltwise") if e.param(1, []) == [0.2, 1.0]]
    if not residuals or graph.of_type("PReLU", "PixelShuffle"):
        return None
    ups = [i for i in graph.of_type("Interp") if _interp(i) == (NEAREST, 2.0, 2.0)]
    convs = graph.of_type("Convolution")
    num_up = len(ups)
    num_blocks, rest = divmod(len(convs) - 4 - num_up, 15)
    if rest or num_blocks < 1:
        raise NcnnFormatError(f"{graph.source}: {len(convs)} convolutions do not form an RRDBNet")
    slots = [_Slot("conv_first", "Convolution")]
    for block in range(num_blocks):
        for rdb in (1, 2, 3):
            for conv in (1, 2, 3, 4, 5):
                slots.append(_Slot(f"body.{block}.rdb{rdb}.conv{conv}", "Convolution", 0.2 if conv < 5 else None))
    slots.append(_Slot("conv_body", "Convolution"))
    slots += [_Slot(f"conv_up{i + 1}", "Convolution", 0.2) for i in range(num_up)]
    slots += [_Slot("conv_hr", "Convolution", 0.2), _Slot("conv_last", "Convolution")]
    state = _fill(graph, slots)
    hyper = {
        "num_in_ch": int(convs[0].blobs["weight"].shape[1]),
        "num_out_ch": int(convs[-1].param(0, 0)),
        "num_feat": int(convs[0].param(0, 0)),
        "num_grow_ch": int(convs[1].param(0, 0)),
        "num_block": num_blocks,
    }
    return ImportedModel("RRDBNet", state, 2**num_up, None, hyper)


def _compact(graph: NcnnGraph) -> ImportedModel | None:
    """SRVGGNetCompact: conv/PReLU chain, pixel shuffle, plus a nearest-upsampled copy of the input."""
    shuffles = graph.of_type("PixelShuffle")
    if len(shuffles) != 1 or not graph.of_type("PReLU"):
        return None
    scale = int(shuffles[0].param(0, 1))
    weighted = graph.weighted_layers
    # conv, PReLU, conv, PReLU, ..., conv: module index = position in the chain
    slots = [_Slot(f"body.{index}", "Convolution" if index % 2 == 0 else "PReLU") for index in range(len(weighted))]
    if len(weighted) < 3 or weighted[-1].type != "Convolution":
        raise NcnnFormatError(f"{graph.source}: a compact network must end with a convolution")
    interps = [_interp(i) for i in graph.of_type("Interp")]
    if (NEAREST, float(scale), float(scale)) not in interps:
        raise NcnnFormatError(f"{graph.source}: compact network without the nearest x{scale} input skip")
    resizes = [i for i in interps if i != (NEAREST, float(scale), float(scale))]
    output_resize = None
    if resizes:
        kind, height_factor, width_factor = resizes[-1]
        if len(resizes) > 1 or kind != BICUBIC or height_factor != width_factor:
            raise NcnnFormatError(f"{graph.source}: unexpected resize layers {resizes}")
        output_resize = height_factor
    state = _fill(graph, slots)
    hyper = {
        "num_in_ch": int(weighted[0].blobs["weight"].shape[1]),
        "num_feat": int(weighted[0].param(0, 0)),
        "num_conv": (len(weighted) - 3) // 2,
    }
    return ImportedModel("SRVGGNetCompact", state, scale, output_resize, hyper)


RECOGNISERS: tuple[Callable[[NcnnGraph], ImportedModel | None], ...] = (_rrdbnet, _compact)


def import_graph(graph: NcnnGraph) -> ImportedModel:
    for recognise in RECOGNISERS:
        imported = recognise(graph)
        if imported is not None:
            return imported
    raise NcnnFormatError(f"{graph.source}: not a Real-ESRGAN RRDBNet or SRVGGNetCompact graph")


def import_ncnn(param_path: Path, bin_path: Path) -> ImportedModel:
    """Read an ncnn model and return its weights in the official PyTorch layout."""
    return import_graph(read_graph(param_path, bin_path))
