"""Deterministic pseudo-random file contents, the same in any language.

Chunk k (256 KiB) of a stream is SHAKE-128(seed || k as 8 big-endian bytes), so the reference CIDs
in the tests can be recomputed by other implementations (Node's crypto has shake128 too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

PIECE = 262_144


def pseudo_random_chunks(size: int, seed: bytes = b"satscale") -> Iterator[bytes]:
    index = 0
    while size > 0:
        count = min(PIECE, size)
        yield hashlib.shake_128(seed + index.to_bytes(8, "big")).digest(PIECE)[:count]
        size -= count
        index += 1


def pseudo_random(size: int, seed: bytes = b"satscale") -> bytes:
    return b"".join(pseudo_random_chunks(size, seed))


def write_pseudo_random(path: Path, size: int, seed: bytes = b"satscale") -> Path:
    with open(path, "wb") as handle:
        for piece in pseudo_random_chunks(size, seed):
            handle.write(piece)
    return path
