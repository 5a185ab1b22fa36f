"""The two small protobufs behind UnixFS files, encoded by hand: dag-pb's PBNode/PBLink and UnixFS Data.

Byte-for-byte what go-merkledag and go-unixfs (boxo, as in Kubo) write:
- PBNode: every Link (field 2) first, then Data (field 1), as the dag-pb spec requires;
- PBLink: Hash (1), Name (2, always present, "" for file chunks), Tsize (3);
- UnixFS Data: Type (1), Data (2, omitted when empty), filesize (3), blocksizes (4, one unpacked varint each),
  hashType (5) and fanout (6), which only HAMT shards carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

_VARINT, _LEN = 0, 2


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, as protobuf and the multiformats use it."""
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Read one varint at `pos`; return (value, position after it). Rejects truncated and over-long varints."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise ValueError("varint is not minimally encoded")
            return value, pos
        shift += 7


def _key(field: int, wire: int) -> bytes:
    return encode_varint(field << 3 | wire)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, _LEN) + encode_varint(len(value)) + value


def _varint_field(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + encode_varint(value)


def _fields(buf: bytes | memoryview) -> list[tuple[int, int, int | memoryview]]:
    """Split a protobuf message into (field, wire type, value); only varint and length-delimited are valid here."""
    view = memoryview(buf)
    out: list[tuple[int, int, int | memoryview]] = []
    pos = 0
    while pos < len(view):
        key, pos = decode_varint(view, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = decode_varint(view, pos)
            out.append((field, wire, value))
        elif wire == _LEN:
            length, pos = decode_varint(view, pos)
            if pos + length > len(view):
                raise ValueError("truncated length-delimited field")
            out.append((field, wire, view[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


@dataclass(frozen=True)
class PBLink:
    hash: bytes  # binary CID of the child
    name: str | None = ""
    tsize: int | None = None  # cumulative size of the child's DAG


@dataclass(frozen=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_node(node: PBNode) -> bytes:
    out = bytearray()
    for link in node.links:
        body = _bytes_field(1, link.hash)
        if link.name is not None:
            body += _bytes_field(2, link.name.encode())
        if link.tsize is not None:
            body += _varint_field(3, link.tsize)
        out += _bytes_field(2, body)
    if node.data is not None:
        out += _bytes_field(1, node.data)
    return bytes(out)


def decode_node(block: bytes) -> PBNode:
    """Decode a dag-pb block; raises ValueError when it is not one."""
    links: list[PBLink] = []
    data: bytes | None = None
    for field, wire, value in _fields(block):
        if field == 2 and wire == _LEN:
            if data is not None:
                raise ValueError("dag-pb Links must come before Data")
            links.append(_decode_link(value))  # type: ignore[arg-type]
        elif field == 1 and wire == _LEN and data is None:
            data = bytes(value)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unexpected field {field} in a dag-pb node")
    return PBNode(tuple(links), data)


def _decode_link(buf: memoryview) -> PBLink:
    hash_: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    for field, wire, value in _fields(buf):
        if field == 1 and wire == _LEN:
            hash_ = bytes(value)  # type: ignore[arg-type]
        elif field == 2 and wire == _LEN:
            name = bytes(value).decode()  # type: ignore[arg-type]
        elif field == 3 and wire == _VARINT:
            tsize = value  # type: ignore[assignment]
        else:
            raise ValueError(f"unexpected field {field} in a dag-pb link")
    if hash_ is None:
        raise ValueError("dag-pb link without a Hash")
    return PBLink(hash_, name, tsize)


class UnixfsType(IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True)
class UnixfsData:
    type: UnixfsType
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None  # HAMT shards: the multicodec of the hash of entry names (0x22, murmur3)
    fanout: int | None = None  # HAMT shards: buckets per shard node


def encode_unixfs(node: UnixfsData) -> bytes:
    out = _varint_field(1, node.type)
    if node.data:
        out += _bytes_field(2, node.data)
    if node.filesize is not None:
        out += _varint_field(3, node.filesize)
    for size in node.blocksizes:
        out += _varint_field(4, size)
    if node.hash_type is not None:
        out += _varint_field(5, node.hash_type)
    if node.fanout is not None:
        out += _varint_field(6, node.fanout)
    return out


def decode_unixfs(buf: bytes) -> UnixfsData:
    """Decode the UnixFS Data message; mode and mtime are accepted and ignored."""
    type_: int | None = None
    data = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    for field, wire, value in _fields(buf):
        if field == 1 and wire == _VARINT:
            type_ = value  # type: ignore[assignment]
        elif field == 2 and wire == _LEN:
            data = bytes(value)  # type: ignore[arg-type]
        elif field == 3 and wire == _VARINT:
            filesize = value  # type: ignore[assignment]
        elif field == 4 and wire == _VARINT:
            blocksizes.append(value)  # type: ignore[arg-type]
        elif field == 4 and wire == _LEN:  # a packed encoding is legal protobuf too
            inner, pos = bytes(value), 0  # type: ignore[arg-type]
            while pos < len(inner):
                size, pos = decode_varint(inner, pos)
                blocksizes.append(size)
        elif field == 5 and wire == _VARINT:
            hash_type = value  # type: ignore[assignment]
        elif field == 6 and wire == _VARINT:
            fanout = value  # type: ignore[assignment]
        elif field in (7, 8):
            continue
        else:
            raise ValueError(f"unexpected field {field} in UnixFS Data")
    if type_ is None:
        raise ValueError("UnixFS Data without a Type")
    try:
        kind = UnixfsType(type_)
    except ValueError:
        raise ValueError(f"unknown UnixFS type {type_}") from None
    return UnixfsData(kind, data, filesize, tuple(blocksizes), hash_type, fanout)
