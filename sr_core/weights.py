"""Weights on disk: the weights/ folder, hashing, user files, atomic caching.

Users drop checkpoints into weights/; the embedded defaults (sr_core/engines/builtin.py) are
cached under weights/builtin/. Nothing is ever downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_SUBDIR = "builtin"
#: what reading a checkpoint that is truncated, not a checkpoint, or a pickle of something other
#: than a dict (the loader's unwrapping then trips with AttributeError/TypeError) raises
CHECKPOINT_READ_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    SafetensorError,
    AttributeError,
    TypeError,
)


def weights_dir() -> Path:
    """The weights folder: $SATSCALE_WEIGHTS_DIR, else weights/ in the project."""
    configured = os.environ.get("SATSCALE_WEIGHTS_DIR")
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / "weights"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): multi-GB checkpoints are hashed
    once per change, not once per job."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def combined_sha256(files: list[Path]) -> str:
    """One digest for a model made of several files: sha256 over 'name sha256' lines."""
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def discover_user_weights(folder: Path | None = None, claimed: Sequence[Path] = ()) -> list[Path]:
    """Checkpoint files a user dropped into the weights folder (recursively, sorted); files in
    `claimed` folders are parts of a model made of several files, not models of their own."""
    folder = folder or weights_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] == BUILTIN_SUBDIR or any(part.startswith(".") for part in relative.parts):
            continue
        if any(path.is_relative_to(part) for part in claimed):
            continue
        if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
            found.append(path)
    return found


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Serialise cache writers across processes (CLI and server may start together)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def atomic_write(path: Path, write) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        write(Path(temp_name))
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def save_state_dict(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Write a state dict as float32 safetensors atomically; return its sha256.

    The bytes depend only on the tensors and metadata, so the hash is reproducible.
    """
    tensors = {key: value.detach().to(torch.float32).contiguous() for key, value in state.items()}
    # one metadata entry holding sorted JSON: safetensors writes several keys in random order
    header = {"satscale": json.dumps(metadata, sort_keys=True)}
    atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=header))
    return sha256_file(path)
