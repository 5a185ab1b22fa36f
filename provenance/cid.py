"""CIDs, and the UnixFS file DAG exactly as Kubo's `ipfs add` builds it by default.

Kubo's defaults (boxo importer): fixed-size chunks of 256 KiB, the balanced layout with at most
174 links per node, sha2-256, dag-pb nodes carrying UnixFS Data. With CIDv0 every leaf is a
dag-pb UnixFS "file" node; with `--cid-version=1` Kubo switches to raw leaves (`bafk...`) under
dag-pb CIDv1 parents (`bafy...`). A one-chunk file is its own root. Blocks are produced
leaves-first, so the root is always the last block yielded.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from multiformats import multibase

from .dagpb import PBLink, PBNode, UnixfsData, UnixfsType, decode_varint, encode_node, encode_unixfs, encode_varint
from .errors import InvalidCid

CHUNK_SIZE = 262_144  # Kubo's default chunker: size-262144
MAX_LINKS = 174  # go-unixfs DefaultLinksPerBlock: keeps a full node under 8 KiB

DAG_PB = 0x70
RAW = 0x55
DAG_CBOR = 0x71
CODEC_NAMES = {DAG_PB: "dag-pb", RAW: "raw", DAG_CBOR: "dag-cbor"}

IDENTITY = 0x00
SHA2_256 = 0x12
_HASHERS: dict[int, tuple[str, Callable[[bytes], bytes]]] = {
    IDENTITY: ("identity", lambda data: data),
    SHA2_256: ("sha2-256", lambda data: hashlib.sha256(data).digest()),
    0x13: ("sha2-512", lambda data: hashlib.sha512(data).digest()),
    0x14: ("sha3-512", lambda data: hashlib.sha3_512(data).digest()),
    0x16: ("sha3-256", lambda data: hashlib.sha3_256(data).digest()),
    0xB220: ("blake2b-256", lambda data: hashlib.blake2b(data, digest_size=32).digest()),
}

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: index for index, char in enumerate(_B58_ALPHABET)}


def base58btc_encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    number = int.from_bytes(data, "big")
    out = bytearray()
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    return ("1" * zeros) + out[::-1].decode()


def base58btc_decode(text: str) -> bytes:
    number = 0
    for char in text.encode():
        if char not in _B58_INDEX:
            raise InvalidCid(f"{char!r} is not a base58btc character")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def _base32_decode(text: str) -> bytes:
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def decode_multihash(multihash: bytes) -> tuple[int, bytes]:
    """Split a multihash into (function code, digest); raise InvalidCid when it is malformed."""
    try:
        code, pos = decode_varint(multihash)
        length, pos = decode_varint(multihash, pos)
    except ValueError as exc:
        raise InvalidCid(f"bad multihash: {exc}") from None
    digest = multihash[pos:]
    if len(digest) != length:
        raise InvalidCid(f"multihash says {length} digest bytes but carries {len(digest)}")
    return code, digest


def multihash_of(data: bytes, code: int = SHA2_256) -> bytes:
    if code not in _HASHERS:
        raise InvalidCid(f"unsupported hash function 0x{code:x}")
    digest = _HASHERS[code][1](data)
    return encode_varint(code) + encode_varint(len(digest)) + digest


@dataclass(frozen=True)
class Cid:
    """A content identifier: version 0 (dag-pb + sha2-256, base58btc `Qm...`) or version 1 (any codec)."""

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise InvalidCid(f"unsupported CID version {self.version}")
        code, digest = decode_multihash(self.multihash)
        if self.version == 0 and (self.codec != DAG_PB or code != SHA2_256 or len(digest) != 32):
            raise InvalidCid("a CIDv0 is always dag-pb with a 32-byte sha2-256 multihash")

    @classmethod
    def parse(cls, value: str | bytes | Cid) -> Cid:
        """Parse a CID from its text (any multibase Kubo prints) or binary form."""
        if isinstance(value, Cid):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.from_bytes(bytes(value))
        if not isinstance(value, str) or not value:
            raise InvalidCid(f"not a CID: {value!r}")
        text = value.strip()
        if not text:  # whitespace only
            raise InvalidCid(f"not a CID: {value!r}")
        if len(text) == 46 and text.startswith("Qm"):
            return cls(0, DAG_PB, base58btc_decode(text))
        try:
            prefix, body = text[0], text[1:]
            if prefix in "bB":
                raw = _base32_decode(body)
            elif prefix == "z":
                raw = base58btc_decode(body)
            elif prefix in "fF":
                raw = bytes.fromhex(body)
            else:  # base36, base64 and the rarer bases
                raw = multibase.decode(text)
        except (ValueError, KeyError) as exc:
            raise InvalidCid(f"not a CID: {value!r} ({exc})") from None
        cid = cls.from_bytes(raw)
        if cid.version == 0:
            raise InvalidCid(f"a CIDv0 is written in bare base58btc, not multibase: {value!r}")
        return cid

    @classmethod
    def from_bytes(cls, raw: bytes) -> Cid:
        cid, end = cls.read(raw)
        if end != len(raw):
            raise InvalidCid("trailing bytes after the CID")
        return cid

    @classmethod
    def read(cls, buf: bytes | memoryview, pos: int = 0) -> tuple[Cid, int]:
        """Read a binary CID at `pos` (as in CAR sections); return it and the position after it."""
        try:
            if buf[pos : pos + 2] == b"\x12\x20":
                end = pos + 34
                if end > len(buf):
                    raise InvalidCid("truncated CIDv0")
                return cls(0, DAG_PB, bytes(buf[pos:end])), end
            version, cur = decode_varint(buf, pos)
            if version != 1:
                raise InvalidCid(f"unsupported CID version {version}")
            codec, cur = decode_varint(buf, cur)
            start = cur
            _, cur = decode_varint(buf, cur)
            length, cur = decode_varint(buf, cur)
        except ValueError as exc:
            raise InvalidCid(f"bad binary CID: {exc}") from None
        end = cur + length
        if end > len(buf):
            raise InvalidCid("truncated multihash in CID")
        return cls(1, codec, bytes(buf[start:end])), end

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def encode(self) -> str:
        """The canonical text: base58btc for v0, lower-case base32 (`b...`) for v1, as Kubo prints them."""
        if self.version == 0:
            return base58btc_encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode().lower().rstrip("=")

    def __str__(self) -> str:
        return self.encode()

    @property
    def hash_code(self) -> int:
        return decode_multihash(self.multihash)[0]

    @property
    def digest(self) -> bytes:
        return decode_multihash(self.multihash)[1]

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")

    def same_content(self, other: Cid) -> bool:
        """True when both name the same block (v0 and v1 of one dag-pb block do)."""
        return self.codec == other.codec and self.multihash == other.multihash

    def matches(self, block: bytes) -> bool:
        """Whether `block` hashes to this CID's multihash (raises InvalidCid for an unsupported hash)."""
        return multihash_of(block, self.hash_code) == self.multihash


@dataclass(frozen=True)
class Block:
    cid: Cid
    data: bytes


@dataclass(frozen=True)
class AddResult:
    cid: str  # the root CID, as Kubo prints it
    size: int  # bytes of file content
    dag_size: int  # cumulative size of every block of the DAG: the "Size" in Kubo's add output

    @property
    def root(self) -> Cid:
        return Cid.parse(self.cid)


@dataclass(frozen=True)
class _Child:
    cid: Cid
    tsize: int  # block size plus the tsizes of its links
    filesize: int  # bytes of file content below it


def resolve_raw_leaves(cid_version: int, raw_leaves: bool | None) -> bool:
    """Kubo's rule: raw leaves default to on exactly when CIDv1 is asked for."""
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, not {cid_version}")
    return cid_version == 1 if raw_leaves is None else raw_leaves


class FileDagBuilder:
    """Push-style UnixFS file builder: feed bytes with `write`, then `finish`; both return finished blocks.

    Only one pending list of links per tree level is held (at most 174 entries each) plus one partial
    chunk, so a file of any size is built in constant memory. Groups of 174 children become a parent
    as soon as a 175th sibling arrives; this is exactly boxo's balanced layout, which fills a tree of
    depth d completely before adding a new root above it.
    """

    def __init__(
        self,
        cid_version: int = 0,
        raw_leaves: bool | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
    ) -> None:
        self.raw_leaves = resolve_raw_leaves(cid_version, raw_leaves)
        self.cid_version = cid_version
        self.chunk_size = chunk_size
        self.max_links = max_links
        self._buffer = bytearray()
        self._levels: list[list[_Child]] = []
        self._leaves = 0
        self._size = 0
        self._result: AddResult | None = None

    @property
    def result(self) -> AddResult:
        if self._result is None:
            raise RuntimeError("call finish() first")
        return self._result

    def write(self, data: bytes | bytearray | memoryview) -> list[Block]:
        if self._result is not None:
            raise RuntimeError("the builder is finished")
        out: list[Block] = []
        view = memoryview(data).cast("B")
        self._size += len(view)
        if self._buffer:
            need = self.chunk_size - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) == self.chunk_size:
                self._leaf(bytes(self._buffer), out)
                self._buffer.clear()
        while len(view) >= self.chunk_size:
            self._leaf(bytes(view[: self.chunk_size]), out)
            view = view[self.chunk_size :]
        self._buffer += view
        return out

    def finish(self) -> list[Block]:
        if self._result is not None:
            raise RuntimeError("the builder is finished")
        out: list[Block] = []
        if self._buffer or not self._leaves:  # an empty file is one empty leaf
            self._leaf(bytes(self._buffer), out)
            self._buffer.clear()
        level = 0
        while True:
            pending = self._levels[level]
            if level == len(self._levels) - 1 and len(pending) == 1:
                root = pending[0]
                break
            self._levels[level] = []
            self._push(level + 1, self._parent(pending, out), out)
            level += 1
        self._result = AddResult(root.cid.encode(), self._size, root.tsize)
        return out

    def _leaf(self, chunk: bytes, out: list[Block]) -> None:
        self._leaves += 1
        if self.raw_leaves:
            cid = Cid(1, RAW, multihash_of(chunk))  # raw blocks need CIDv1, whatever the root's version
            block = chunk
        else:
            unixfs = encode_unixfs(UnixfsData(UnixfsType.FILE, chunk, len(chunk)))
            block = encode_node(PBNode((), unixfs))
            cid = Cid(self.cid_version, DAG_PB, multihash_of(block))
        out.append(Block(cid, block))
        self._push(0, _Child(cid, len(block), len(chunk)), out)

    def _push(self, level: int, child: _Child, out: list[Block]) -> None:
        if level == len(self._levels):
            self._levels.append([])
        if len(self._levels[level]) == self.max_links:
            full, self._levels[level] = self._levels[level], []
            self._push(level + 1, self._parent(full, out), out)
        self._levels[level].append(child)

    def _parent(self, children: list[_Child], out: list[Block]) -> _Child:
        filesize = sum(child.filesize for child in children)
        unixfs = encode_unixfs(UnixfsData(UnixfsType.FILE, b"", filesize, tuple(child.filesize for child in children)))
        links = tuple(PBLink(child.cid.to_bytes(), "", child.tsize) for child in children)
        block = encode_node(PBNode(links, unixfs))
        cid = Cid(self.cid_version, DAG_PB, multihash_of(block))
        out.append(Block(cid, block))
        return _Child(cid, len(block) + sum(child.tsize for child in children), filesize)


def iter_chunks_blocks(
    chunks: Iterable[bytes], *, cid_version: int = 0, raw_leaves: bool | None = None
) -> Iterator[Block]:
    """Every block of the file made of `chunks` (any sizes), leaves first; the last one is the root."""
    builder = FileDagBuilder(cid_version, raw_leaves)
    for piece in chunks:
        yield from builder.write(piece)
    yield from builder.finish()


def iter_blocks(data: bytes, *, cid_version: int = 0, raw_leaves: bool | None = None) -> Iterator[Block]:
    """Every block of `data` added as a file, leaves first; the last one is the root."""
    return iter_chunks_blocks([data], cid_version=cid_version, raw_leaves=raw_leaves)


def read_chunks(path: Path, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(size):
            yield piece


def iter_file_blocks(path: Path, *, cid_version: int = 0, raw_leaves: bool | None = None) -> Iterator[Block]:
    """Like `iter_blocks`, reading the file one chunk at a time instead of holding it in memory."""
    return iter_chunks_blocks(read_chunks(Path(path)), cid_version=cid_version, raw_leaves=raw_leaves)


def _summarize(chunks: Iterable[bytes], cid_version: int, raw_leaves: bool | None) -> AddResult:
    builder = FileDagBuilder(cid_version, raw_leaves)
    for piece in chunks:
        builder.write(piece)
    builder.finish()
    return builder.result


def hash_bytes(data: bytes, *, cid_version: int = 0, raw_leaves: bool | None = None) -> AddResult:
    """What `ipfs add --only-hash` prints for `data`."""
    return _summarize([data], cid_version, raw_leaves)


def hash_file(path: Path, *, cid_version: int = 0, raw_leaves: bool | None = None) -> AddResult:
    """What `ipfs add --only-hash` prints for the file at `path`, read in chunks."""
    return _summarize(read_chunks(Path(path)), cid_version, raw_leaves)
