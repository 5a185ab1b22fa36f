"""CARv1 archives: what the Trustless Gateway serves for `?format=car` and `ipfs dag import` reads.

Layout: varint(len) + DAG-CBOR header {"roots": [CID...], "version": 1}, then sections of
varint(len(cid) + len(block)) + binary CID + block. The header is encoded and decoded by hand:
a map with two keys, and CIDs as CBOR tag 42 over a byte string with a 0x00 prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .cid import Block, Cid
from .dagpb import decode_varint, encode_varint
from .errors import CorruptBlock, InvalidCar, InvalidCid

MAX_HEADER = 1 << 20
MAX_SECTION = 8 << 20  # Kubo blocks are at most 2 MiB (1 MiB by default); leave room, refuse absurd lengths


@dataclass(frozen=True)
class CarHeader:
    version: int
    roots: tuple[Cid, ...]


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | extra]) + value.to_bytes(size, "big")
    raise ValueError("CBOR value too large")


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return _cbor_head(3, len(raw)) + raw


def encode_header(roots: Sequence[Cid]) -> bytes:
    """The length-prefixed DAG-CBOR header; DAG-CBOR sorts map keys by length, so "roots" precedes "version"."""
    body = bytearray(_cbor_head(5, 2))
    body += _cbor_text("roots") + _cbor_head(4, len(roots))
    for root in roots:
        raw = b"\0" + root.to_bytes()
        body += b"\xd8\x2a" + _cbor_head(2, len(raw)) + raw
    body += _cbor_text("version") + _cbor_head(0, 1)
    return encode_varint(len(body)) + bytes(body)


def encode_section(cid: Cid, data: bytes) -> bytes:
    raw = cid.to_bytes()
    return encode_varint(len(raw) + len(data)) + raw + data


class _CborReader:
    """Just enough CBOR for a CAR header: ints, strings, arrays, maps, tag 42 and simple values."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise InvalidCar("truncated CBOR in the CAR header")
        out = self.data[self.pos : self.pos + count]
        self.pos += count
        return out

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        sizes = {24: 1, 25: 2, 26: 4, 27: 8}
        if info not in sizes:
            raise InvalidCar("indefinite-length or reserved CBOR items are not DAG-CBOR")
        return int.from_bytes(self._take(sizes[info]), "big")

    def item(self) -> object:
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 31
        if major == 7:
            simple = {20: False, 21: True, 22: None}
            if info not in simple:
                raise InvalidCar("unsupported CBOR simple value in the CAR header")
            return simple[info]
        value = self._argument(info)
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self._take(value)
        if major == 3:
            return self._take(value).decode()
        if major == 4:
            return [self.item() for _ in range(value)]
        if major == 5:
            out: dict[object, object] = {}
            for _ in range(value):
                key = self.item()
                out[key] = self.item()
            return out
        if value != 42:
            raise InvalidCar(f"unexpected CBOR tag {value} in the CAR header")
        raw = self.item()
        if not isinstance(raw, bytes) or not raw.startswith(b"\0"):
            raise InvalidCar("a CBOR tag 42 must wrap 0x00 + a binary CID")
        try:
            return Cid.from_bytes(raw[1:])
        except InvalidCid as exc:
            raise InvalidCar(f"bad root CID in the CAR header: {exc}") from None


def decode_header(body: bytes) -> CarHeader:
    reader = _CborReader(body)
    header = reader.item()
    if reader.pos != len(body):
        raise InvalidCar("trailing bytes after the CAR header")
    if not isinstance(header, dict) or header.get("version") != 1:
        raise InvalidCar("not a CARv1 header (version must be 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(root, Cid) for root in roots):
        raise InvalidCar("CAR header roots must be a list of CIDs")
    return CarHeader(1, tuple(roots))  # type: ignore[arg-type]


class _StreamReader:
    """Exact reads over a binary file or any iterable of byte chunks."""

    def __init__(self, source: BinaryIO | Iterable[bytes]) -> None:
        if hasattr(source, "read"):
            handle = source

            def pieces() -> Iterator[bytes]:
                while piece := handle.read(1 << 16):  # type: ignore[union-attr]
                    yield piece

            self._pieces = pieces()
        else:
            self._pieces = iter(source)  # type: ignore[arg-type]
        self._buffer = bytearray()

    def _fill(self, count: int) -> bool:
        while len(self._buffer) < count:
            piece = next(self._pieces, None)
            if piece is None:
                return False
            self._buffer += piece
        return True

    def at_end(self) -> bool:
        return not self._fill(1)

    def read(self, count: int) -> bytes:
        if not self._fill(count):
            raise InvalidCar("the CAR stream ends in the middle of a section")
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        return out

    def varint(self) -> int:
        self._fill(10)
        try:
            value, used = decode_varint(self._buffer)
        except ValueError as exc:
            raise InvalidCar(f"bad length prefix: {exc}") from None
        del self._buffer[:used]
        return value


def read_car(source: BinaryIO | Iterable[bytes]) -> tuple[CarHeader, Iterator[Block]]:
    """Read the header now; the returned iterator yields the blocks lazily, each verified against its CID.

    Raises InvalidCar for a malformed archive and CorruptBlock for a block whose bytes do not match.
    """
    stream = _StreamReader(source)
    if stream.at_end():
        raise InvalidCar("empty CAR stream")
    length = stream.varint()
    if not 0 < length <= MAX_HEADER:
        raise InvalidCar(f"implausible CAR header length {length}")
    header = decode_header(stream.read(length))

    def blocks() -> Iterator[Block]:
        while not stream.at_end():
            size = stream.varint()
            if not 0 < size <= MAX_SECTION:
                raise InvalidCar(f"implausible CAR section length {size}")
            section = stream.read(size)
            try:
                cid, start = Cid.read(section)
            except InvalidCid as exc:
                raise InvalidCar(f"bad CID in a CAR section: {exc}") from None
            data = section[start:]
            if not cid.matches(data):
                raise CorruptBlock(str(cid), "the CAR section's bytes do not hash to its CID")
            yield Block(cid, data)

    return header, blocks()
