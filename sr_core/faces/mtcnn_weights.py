"""MTCNN's trained weights, read from the files the PyPI wheel `mtcnn==1.0.0` ships.

The wheel's own code needs TensorFlow, so it is never imported: its directory is found with
`importlib.util.find_spec` (which does not run the package) and the three `.lz4` files are read
directly. Each is an lz4 frame holding a joblib pickle of a list of numpy arrays in Keras layout
(conv kernels HWIO, PReLU alphas (1, 1, C) or (C,), dense matrices (in, out)).

A pickle can name any importable callable, so the files are unpickled by `WeightsUnpickler`,
which admits only the few globals a joblib array list needs and refuses object arrays.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path

import lz4.frame
import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

try:  # numpy >= 2 moved the implementation to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

NETS = ("pnet", "rnet", "onet")
INSTALL_HINT = "pip install mtcnn==1.0.0"

#: the arrays each file must hold, in order (Keras `get_weights()` order of the wheel's models)
EXPECTED_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "pnet": (
        (3, 3, 3, 10), (10,), (1, 1, 10),
        (3, 3, 10, 16), (16,), (1, 1, 16),
        (3, 3, 16, 32), (32,), (1, 1, 32),
        (1, 1, 32, 4), (4,),  # box regression
        (1, 1, 32, 2), (2,),  # face / not-face
    ),
    "rnet": (
        (3, 3, 3, 28), (28,), (1, 1, 28),
        (3, 3, 28, 48), (48,), (1, 1, 48),
        (2, 2, 48, 64), (64,), (1, 1, 64),
        (576, 128), (128,), (128,),
        (128, 4), (4,),
        (128, 2), (2,),
    ),
    "onet": (
        (3, 3, 3, 32), (32,), (1, 1, 32),
        (3, 3, 32, 64), (64,), (1, 1, 64),
        (3, 3, 64, 64), (64,), (1, 1, 64),
        (2, 2, 64, 128), (128,), (1, 1, 128),
        (1152, 256), (256,), (256,),
        (256, 4), (4,),
        (256, 10), (10,),  # landmarks: five x, then five y
        (256, 2), (2,),
    ),
}  # fmt: skip

#: what the files reference (joblib's wrapper, numpy.ndarray as its `subclass`, numpy.dtype),
#: plus `_reconstruct`, which a plainly pickled ndarray names, under numpy 1's and numpy 2's module
_ADMITTED = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): NumpyArrayWrapper,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
}
#: no weight file comes near this; a forged shape must not make us allocate gigabytes
_MAX_ARRAY_BYTES = 64 << 20


class WeightsUnpickler(NumpyUnpickler):
    """joblib's unpickler restricted to numeric numpy arrays.

    joblib stores an array as a `NumpyArrayWrapper` (its metadata) followed by the raw bytes in
    the stream; the array is read when the wrapper is BUILT. That step is replaced here so the
    wrapper is checked (plain ndarray, numeric dtype, bounded size) before anything is read.
    joblib would read an object array as a nested pickle through our `find_class`, which would
    keep it restricted, but object arrays have no place in weights, so they are refused outright.
    """

    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, file_handle: io.BufferedIOBase) -> None:
        super().__init__("", file_handle, ensure_native_byte_order=True)

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} in a weights file") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refused persistent id in a weights file")

    def _load_build(self) -> None:
        pickle._Unpickler.load_build(self)
        top = self.stack[-1]
        if isinstance(top, NumpyArrayWrapper):
            self.stack[-1] = _read_wrapped(top, self)
        elif isinstance(top, np.dtype | np.ndarray):
            if _dtype_of(top).hasobject:
                raise pickle.UnpicklingError("refused object dtype in a weights file")
        else:
            raise pickle.UnpicklingError(f"refused BUILD of {type(top).__name__} in a weights file")

    dispatch[pickle.BUILD[0]] = _load_build


def _dtype_of(value: np.dtype | np.ndarray) -> np.dtype:
    return value if isinstance(value, np.dtype) else value.dtype


def _read_wrapped(wrapper: NumpyArrayWrapper, unpickler: WeightsUnpickler) -> np.ndarray:
    dtype, shape = getattr(wrapper, "dtype", None), getattr(wrapper, "shape", None)
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refused array of dtype {dtype!r} in a weights file")
    if getattr(wrapper, "subclass", None) is not np.ndarray or getattr(wrapper, "order", None) not in ("C", "F"):
        raise pickle.UnpicklingError("refused array that is not a plain C/F-ordered ndarray")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"refused array shape {shape!r}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"refused array of shape {shape}: too large for a weights file")
    return wrapper.read(unpickler, ensure_native_byte_order=True)


def weights_dir() -> Path:
    """The wheel's `mtcnn/assets/weights` directory (the package is located, never imported)."""
    spec = importlib.util.find_spec("mtcnn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        folder = Path(root) / "assets" / "weights"
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"MTCNN weights not found: the `mtcnn` wheel is not installed ({INSTALL_HINT})")


def load_weight_file(path: str | Path) -> list[np.ndarray]:
    """Decompress an lz4 joblib file and unpickle it with `WeightsUnpickler`; it must hold a list
    of arrays (shapes are not checked here)."""
    data = lz4.frame.decompress(Path(path).read_bytes())
    value = WeightsUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, list) or not all(isinstance(a, np.ndarray) for a in value):
        raise pickle.UnpicklingError(f"{path}: expected a list of numpy arrays, got {type(value).__name__}")
    return value


def load_mtcnn_weights(net: str) -> list[np.ndarray]:
    """One network's arrays ("pnet", "rnet" or "onet"), checked against `EXPECTED_SHAPES`."""
    if net not in EXPECTED_SHAPES:
        raise ValueError(f"unknown MTCNN network {net!r}; expected one of {NETS}")
    path = weights_dir() / f"{net}.lz4"
    if not path.is_file():
        raise FileNotFoundError(f"MTCNN weights file {path} is missing ({INSTALL_HINT})")
    arrays = load_weight_file(path)
    shapes = tuple(a.shape for a in arrays)
    if shapes != EXPECTED_SHAPES[net]:
        raise ValueError(f"{path}: unexpected array shapes {shapes}")
    if any(a.dtype != np.float32 for a in arrays):
        raise ValueError(f"{path}: expected float32 arrays, got {sorted({str(a.dtype) for a in arrays})}")
    return arrays
