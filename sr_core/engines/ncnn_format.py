"""Reader for ncnn model files (.param text graph + .bin weights).

General: it parses any .param file and reads the weights of every layer type
that owns data, in .param order, exactly as ncnn's own ModelBin does. Mapping
the result onto a PyTorch architecture is `ncnn_import`'s job.

Format facts (ncnn src/net.cpp, src/modelbin.cpp, src/paramdict.cpp):
- .param: magic 7767517; "layer_count blob_count"; then one line per layer:
  type name n_bottoms n_tops bottoms... tops... key=value...
  A negative key -233xx marks an array: id = -key - 23300, value "n,v1,...,vn".
- .bin: for each layer in order, its blobs. A blob loaded with "type 0" starts
  with a 4-byte tag: 0x01306B47 fp16 data, 0x000D4B38 int8 data, 0x0002C056 raw
  fp32; all-zero tag = raw fp32; any other tag = 256-entry quantisation table.
  Blobs loaded with "type 1" (biases, PReLU slopes) are raw fp32 with no tag.
  fp16/int8 payloads are padded to a multiple of 4 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NcnnFormatError

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_RAW_FP32 = 0x0002C056

ParamValue = int | float | list[int] | list[float]


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue]
    #: weight blobs in load order, e.g. {"weight": ..., "bias": ...}
    blobs: dict[str, np.ndarray] = field(default_factory=dict)

    def param(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)


@dataclass(frozen=True)
class NcnnGraph:
    layers: tuple[NcnnLayer, ...]
    source: str

    def of_type(self, *types: str) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type in types]

    @property
    def weighted_layers(self) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.blobs]


def _parse_scalar(text: str) -> int | float:
    if any(c in text for c in ".eE") and not text.lstrip("-").isdigit():
        return float(text)
    return int(text)


def _parse_params(tokens: list[str], where: str) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        if not sep:
            raise NcnnFormatError(f"{where}: malformed parameter {token!r}")
        try:
            key = int(key_text)
            if key <= -23300:
                count_text, *items = value_text.split(",")
                values = [_parse_scalar(v) for v in items]
                if int(count_text) != len(values):
                    raise ValueError(f"array says {count_text} items, has {len(values)}")
                params[-key - 23300] = values  # type: ignore[assignment]
            else:
                params[key] = _parse_scalar(value_text)
        except ValueError as exc:
            raise NcnnFormatError(f"{where}: bad parameter {token!r}: {exc}") from None
    return params


def parse_param(text: str, source: str = "<param>") -> list[NcnnLayer]:
    """Parse the text of a .param file into layers (without weights)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != str(PARAM_MAGIC):
        raise NcnnFormatError(f"{source}: not an ncnn .param file (magic {PARAM_MAGIC} missing)")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnFormatError(f"{source}: line 2 must be 'layer_count blob_count'") from None
    body = lines[2:]
    if len(body) != layer_count:
        raise NcnnFormatError(f"{source}: header announces {layer_count} layers, found {len(body)}")
    layers = []
    for number, line in enumerate(body, start=3):
        tokens = line.split()
        where = f"{source}:{number}"
        try:
            layer_type, name, n_bottom, n_top = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        except (IndexError, ValueError):
            raise NcnnFormatError(f"{where}: malformed layer line") from None
        bottoms = tuple(tokens[4 : 4 + n_bottom])
        tops = tuple(tokens[4 + n_bottom : 4 + n_bottom + n_top])
        if len(bottoms) != n_bottom or len(tops) != n_top:
            raise NcnnFormatError(f"{where}: layer {name} lists fewer blobs than it declares")
        params = _parse_params(tokens[4 + n_bottom + n_top :], where)
        layers.append(NcnnLayer(layer_type, name, bottoms, tops, params))
    return layers


class _BinReader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.offset = 0
        self.source = source

    def _take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise NcnnFormatError(
                f"{self.source}: file ends at byte {len(self.data)} while reading {what} "
                f"({size} bytes at offset {self.offset}); .bin does not match .param"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        """A blob loaded by ncnn with type 0: 4-byte tag, then the payload."""
        flags = self._take(4, f"{what} tag")
        (tag,) = struct.unpack("<I", flags)
        if tag == TAG_FP16:
            size = 2 * count
            payload = self._take(size + (-size % 4), what)[:size]
            return np.frombuffer(payload, dtype="<f2").astype(np.float32)
        if tag == TAG_RAW_FP32 or tag == 0:
            return self.raw_fp32(count, what)
        if tag == TAG_INT8:
            raise NcnnFormatError(f"{self.source}: {what} is int8-quantised; only fp32/fp16 models are supported")
        raise NcnnFormatError(
            f"{self.source}: {what} uses a quantisation table (tag 0x{tag:08X}); only fp32/fp16 models are supported"
        )


def _conv_blobs(layer: NcnnLayer, reader: _BinReader) -> dict[str, np.ndarray]:
    num_output = int(layer.param(0, 0))
    kernel_w = int(layer.param(1, 0))
    kernel_h = int(layer.param(11, kernel_w))
    weight_size = int(layer.param(6, 0))
    if int(layer.param(8, 0)):
        raise NcnnFormatError(f"{reader.source}: layer {layer.name} is int8-quantised; not supported")
    per_output = kernel_w * kernel_h * num_output
    if num_output <= 0 or weight_size % per_output:
        raise NcnnFormatError(
            f"{reader.source}: layer {layer.name}: weight_data_size {weight_size} is not a multiple of "
            f"num_output*kernel ({per_output})"
        )
    in_per_group = weight_size // per_output  # in_channels / groups for depthwise layers
    weight = reader.tagged(weight_size, f"{layer.name} weights")
    blobs = {"weight": weight.reshape(num_output, in_per_group, kernel_h, kernel_w)}
    if int(layer.param(5, 0)):
        blobs["bias"] = reader.raw_fp32(num_output, f"{layer.name} bias")
    return blobs


def _prelu_blobs(layer: NcnnLayer, reader: _BinReader) -> dict[str, np.ndarray]:
    count = int(layer.param(0, 0))
    return {"weight": reader.raw_fp32(count, f"{layer.name} slopes")}


# Layer types that own weights, and how ncnn reads them.
_WEIGHT_READERS = {
    "Convolution": _conv_blobs,
    "ConvolutionDepthWise": _conv_blobs,
    "PReLU": _prelu_blobs,
}

# Layer types known to own no weights. Anything else is refused rather than
# guessed: an unknown layer with weights would shift every later blob.
_WEIGHTLESS = {
    "Input",
    "Split",
    "Concat",
    "Eltwise",
    "BinaryOp",
    "Interp",
    "PixelShuffle",
    "ReLU",
    "Sigmoid",
    "TanH",
    "Clip",
    "Crop",
    "Padding",
    "Reshape",
    "Permute",
    "Noop",
}


def read_graph(param_path: Path, bin_path: Path) -> NcnnGraph:
    """Read a .param/.bin pair; every byte of the .bin must be accounted for."""
    source = f"{param_path.name}/{bin_path.name}"
    try:
        text = param_path.read_text(encoding="ascii")
        data = bin_path.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise NcnnFormatError(f"{source}: cannot read: {exc}") from None
    layers = parse_param(text, str(param_path.name))
    reader = _BinReader(data, source)
    loaded = []
    for layer in layers:
        if layer.type in _WEIGHT_READERS:
            layer = NcnnLayer(**{**layer.__dict__, "blobs": _WEIGHT_READERS[layer.type](layer, reader)})
        elif layer.type not in _WEIGHTLESS:
            raise NcnnFormatError(f"{source}: layer type {layer.type} ({layer.name}) is not supported by the importer")
        loaded.append(layer)
    if reader.offset != len(data):
        raise NcnnFormatError(
            f"{source}: {len(data) - reader.offset} bytes left over after the last layer; .bin does not match .param"
        )
    return NcnnGraph(tuple(loaded), source)
