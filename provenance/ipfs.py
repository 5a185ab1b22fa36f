"""A local IPFS store: blocks on disk, recursive pins, UnixFS files and directories in and out, CAR export/import.

Content added here gets the same CIDs Kubo's `ipfs add` gives (see `provenance.cid`), so the
CIDs recorded on chain can later be pinned by any Kubo node or pinning service and still match.
Every block read back is re-hashed, so a damaged disk never serves wrong bytes silently.

Layout under `root`:
  blocks/XY/<BASE32 MULTIHASH>.data   one file per block, keyed by multihash like Kubo's flatfs
                                      (XY = the next-to-last two characters), written atomically
  pins.json                           the recursive pin set
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .car import encode_header, encode_section, read_car
from .cid import DAG_PB, IDENTITY, RAW, AddResult, Block, Cid, FileDagBuilder, read_chunks
from .dagpb import PBLink, PBNode, UnixfsData, UnixfsType, decode_node, decode_unixfs
from .errors import (
    BlockNotFound,
    CorruptBlock,
    InvalidCid,
    NotADirectory,
    NotAFile,
    PathNotFound,
    UnsupportedCodec,
)
from .unixfs_dir import (
    KUBO_SHARD_THRESHOLD,
    DirectoryDag,
    DirEntry,
    build_directory,
    name_hash,
    shard_layout,
    shard_slot,
)

__all__ = [
    "AddResult",
    "BlockNotFound",
    "CarImport",
    "CorruptBlock",
    "DirEntry",
    "DirectoryDag",
    "FileStat",
    "InvalidCid",
    "LocalIpfsStore",
    "NotADirectory",
    "NotAFile",
    "PathNotFound",
]


@dataclass(frozen=True)
class FileStat:
    cid: str
    size: int  # bytes of file content, from the root block


@dataclass(frozen=True)
class CarImport:
    roots: tuple[str, ...]
    blocks: int  # sections read (duplicates included)


def _atomic_write(path: Path, data: bytes, fsync: bool) -> None:
    atomic_write_chunks(path, (data,), fsync)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes], fsync: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole
    new one, and a failure midway (a chunk that raises) leaves neither the file nor the temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode_pb(cid: Cid, block: bytes) -> tuple[PBNode, UnixfsData | None]:
    try:
        node = decode_node(block)
        return node, decode_unixfs(node.data) if node.data is not None else None
    except ValueError as exc:
        raise CorruptBlock(str(cid), f"not a valid dag-pb/UnixFS node ({exc})") from None


def _child_cids(cid: Cid, node: PBNode) -> list[Cid]:
    return [_link_cid(cid, link) for link in node.links]


def _link_cid(parent: Cid, link: PBLink) -> Cid:
    try:
        return Cid.from_bytes(link.hash)
    except InvalidCid as exc:
        raise CorruptBlock(str(parent), f"a link holds an invalid CID ({exc})") from None


def _split_ref(ref: str | Cid) -> tuple[str | Cid, str]:
    """("<cid>", "<path>") of a "<cid>/<path>" or "/ipfs/<cid>/<path>"; a bare CID has the empty path."""
    if isinstance(ref, Cid):
        return ref, ""
    text = ref.strip()
    if text.startswith("/ipfs/"):
        text = text[len("/ipfs/") :]
    root, _, path = text.partition("/")
    return root, path


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


class LocalIpfsStore:
    """Blockstore + pin set on disk. Thread-safe for concurrent adds and reads within one process."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._blocks = self.root / "blocks"
        self._pins_file = self.root / "pins.json"
        self._fsync = fsync
        self._lock = threading.Lock()
        self._blocks.mkdir(parents=True, exist_ok=True)

    # blocks

    def block_path(self, cid: str | Cid) -> Path:
        key = base64.b32encode(Cid.parse(cid).multihash).decode().rstrip("=")
        return self._blocks / key[-3:-1] / f"{key}.data"

    def has(self, cid: str | Cid) -> bool:
        parsed = Cid.parse(cid)
        return parsed.hash_code == IDENTITY or self.block_path(parsed).is_file()

    def put_block(self, cid: str | Cid, data: bytes) -> Cid:
        """Store one block after checking that `data` hashes to `cid`."""
        parsed = Cid.parse(cid)
        if not parsed.matches(data):
            raise CorruptBlock(str(parsed), "refusing to store bytes that do not hash to the CID")
        self._write_block(parsed, data)
        return parsed

    def _write_block(self, cid: Cid, data: bytes) -> None:
        if cid.hash_code == IDENTITY:
            return  # the data lives inside the CID
        path = self.block_path(cid)
        try:
            if path.read_bytes() == data:
                return  # content-addressed: already here, intact
        except FileNotFoundError:
            pass
        _atomic_write(path, data, self._fsync)  # new, or repairing a damaged copy

    def get_block(self, cid: str | Cid) -> bytes:
        """The block's bytes, re-hashed against the CID (CorruptBlock if they differ)."""
        parsed = Cid.parse(cid)
        if parsed.hash_code == IDENTITY:
            return parsed.digest
        try:
            data = self.block_path(parsed).read_bytes()
        except FileNotFoundError:
            raise BlockNotFound(str(parsed)) from None
        if not parsed.matches(data):
            raise CorruptBlock(str(parsed), "its bytes on disk no longer hash to the CID")
        return data

    # adding

    def add_bytes(
        self, data: bytes, *, cid_version: int = 0, raw_leaves: bool | None = None, pin: bool = True
    ) -> AddResult:
        """Add `data` as a UnixFS file (Kubo's `ipfs add` defaults); pinned recursively unless pin=False."""
        return self._add_chunks([data], cid_version, raw_leaves, pin)

    def add_file(
        self, path: Path, *, cid_version: int = 0, raw_leaves: bool | None = None, pin: bool = True
    ) -> AddResult:
        """Like `add_bytes`, streaming the file one 256 KiB chunk at a time."""
        return self._add_chunks(read_chunks(Path(path)), cid_version, raw_leaves, pin)

    def _add_chunks(self, chunks: Iterable[bytes], cid_version: int, raw_leaves: bool | None, pin: bool) -> AddResult:
        builder = FileDagBuilder(cid_version, raw_leaves)
        for piece in chunks:
            # the builder hashed these blocks itself: store them without hashing again
            for block in builder.write(piece):
                self._write_block(block.cid, block.data)
        for block in builder.finish():
            self._write_block(block.cid, block.data)
        result = builder.result
        if pin:
            self._update_pins(add=result.cid)
        return result

    def add_directory(
        self,
        entries: Iterable[DirEntry],
        *,
        pin: bool = True,
        shard_threshold: int = KUBO_SHARD_THRESHOLD,
        cid_version: int = 0,
    ) -> DirectoryDag:
        """Store the directory `build_directory` makes of `entries` (Kubo's `ipfs add -r` layout) and pin it.

        With pin=True every entry's root block must already be here (BlockNotFound otherwise, before
        anything is written): add the files first. Their DAGs are not re-walked, to keep large folders cheap.
        """
        entries = list(entries)
        dag = build_directory(entries, shard_threshold=shard_threshold, cid_version=cid_version)
        if pin:
            for entry in entries:
                if not self.has(entry.cid):
                    raise BlockNotFound(entry.cid.encode())
        for block in dag.blocks:
            self._write_block(block.cid, block.data)
        if pin:
            self._update_pins(add=dag.root.encode())
        return dag

    # pins

    def _read_pins(self) -> set[str]:
        try:
            document = json.loads(self._pins_file.read_text())
        except FileNotFoundError:
            return set()
        return set(document["recursive"])

    def _update_pins(self, add: str | None = None, remove: str | None = None) -> bool:
        with self._lock:
            pins = self._read_pins()
            before = set(pins)
            if add is not None:
                pins.add(add)
            if remove is not None:
                pins.discard(remove)
            if pins != before:
                body = json.dumps({"recursive": sorted(pins)}, indent=1).encode()
                _atomic_write(self._pins_file, body, self._fsync)
            return pins != before

    def pin(self, cid: str | Cid) -> str:
        """Pin a DAG recursively; every block must be present and intact (BlockNotFound/CorruptBlock if not)."""
        parsed = Cid.parse(cid)
        for _ in self.iter_dag(parsed):
            continue
        self._update_pins(add=parsed.encode())
        return parsed.encode()

    def unpin(self, cid: str | Cid) -> bool:
        """Remove a recursive pin; False if it was not pinned. Blocks stay until a future garbage collection."""
        return self._update_pins(remove=Cid.parse(cid).encode())

    def pins(self) -> list[str]:
        with self._lock:
            return sorted(self._read_pins())

    def is_pinned(self, cid: str | Cid) -> bool:
        return Cid.parse(cid).encode() in self.pins()

    # reading DAGs

    def iter_dag(self, root: str | Cid) -> Iterator[Block]:
        """Every distinct block of the DAG in depth-first pre-order (parent, then children left to right)."""
        stack = [Cid.parse(root)]
        seen: set[bytes] = set()
        while stack:
            cid = stack.pop()
            key = cid.to_bytes()
            if key in seen:
                continue
            seen.add(key)
            data = self.get_block(cid)
            yield Block(cid, data)
            if cid.codec == DAG_PB:
                node, _ = _decode_pb(cid, data)
                stack.extend(reversed(_child_cids(cid, node)))
            elif cid.codec != RAW:
                raise UnsupportedCodec(f"{cid} uses codec {cid.codec_name}; only dag-pb and raw DAGs are walked")

    def stat(self, cid: str | Cid) -> FileStat:
        """Size of a UnixFS file from its root block alone; raises early, before any content is streamed.

        `cid` may be a "<cid>/<path>" (see `resolve`)."""
        parsed = self.resolve(cid)
        data = self.get_block(parsed)
        if parsed.codec == RAW:
            return FileStat(parsed.encode(), len(data))
        unixfs = self._file_node(parsed, data)[1]
        size = unixfs.filesize if unixfs.filesize is not None else len(unixfs.data) + sum(unixfs.blocksizes)
        return FileStat(parsed.encode(), size)

    def _file_node(self, cid: Cid, data: bytes) -> tuple[PBNode, UnixfsData]:
        if cid.codec != DAG_PB:
            raise NotAFile(f"{cid} is {cid.codec_name}, not a UnixFS file")
        node, unixfs = _decode_pb(cid, data)
        if unixfs is None:
            raise NotAFile(f"{cid} is a dag-pb node without UnixFS data")
        if unixfs.type not in (UnixfsType.FILE, UnixfsType.RAW):
            raise NotAFile(f"{cid} is a UnixFS {unixfs.type.name.lower()}, not a file")
        if unixfs.blocksizes and len(unixfs.blocksizes) != len(node.links):
            raise CorruptBlock(str(cid), "blocksizes and links disagree")
        return node, unixfs

    def cat(self, cid: str | Cid) -> Iterator[bytes]:
        """The file's bytes, block by block, each block verified as it is read; `cid` may be "<cid>/<path>"."""
        parsed = self.resolve(cid)
        yield from self._file_bytes(parsed, None)

    def _file_bytes(self, cid: Cid, expected: int | None) -> Iterator[bytes]:
        data = self.get_block(cid)
        if cid.codec == RAW:
            produced = len(data)
            if data:
                yield data
        else:
            node, unixfs = self._file_node(cid, data)
            produced = len(unixfs.data)
            if unixfs.data:
                yield unixfs.data
            sizes: list[int | None] = list(unixfs.blocksizes) or [None] * len(node.links)
            for child, size in zip(_child_cids(cid, node), sizes, strict=True):
                for piece in self._file_bytes(child, size):
                    produced += len(piece)
                    yield piece
            if unixfs.filesize is not None and unixfs.filesize != produced:
                raise CorruptBlock(str(cid), f"says {unixfs.filesize} bytes but its DAG holds {produced}")
        if expected is not None and expected != produced:
            raise CorruptBlock(str(cid), f"its parent expects {expected} bytes, it holds {produced}")

    # directories

    def resolve(self, ref: str | Cid) -> Cid:
        """A CID, or the CID a "<cid>/<path>" (or "/ipfs/<cid>/<path>") leads to through directories."""
        return self.resolve_path(*_split_ref(ref))

    def resolve_path(self, root: str | Cid, path: str) -> Cid:
        """Follow `path` ("a/b", slashes at either end ignored) from `root` through basic and HAMT directories.

        Raises PathNotFound for a missing name and NotADirectory when the path goes through a file.
        A HAMT lookup hashes the name and follows its buckets, reading one block per level.
        """
        cid = Cid.parse(root)
        walked: list[str] = []
        for name in _segments(path):
            node, unixfs = self._directory_node(cid, "/".join(walked))
            walked.append(name)
            where = "/".join(walked)
            if unixfs.type is UnixfsType.DIRECTORY:
                cid = self._basic_lookup(cid, node, name, where)
            else:
                cid = self._shard_lookup(cid, node, unixfs, name, where)
        return cid

    def list_directory(self, root: str | Cid) -> list[DirEntry]:
        """Every entry of a basic or HAMT-sharded directory, sorted bytewise by name; `root` may be a path."""
        base, path = _split_ref(root)
        cid = self.resolve_path(base, path)
        node, unixfs = self._directory_node(cid, path.strip("/"))
        if unixfs.type is UnixfsType.DIRECTORY:
            entries = [DirEntry(link.name or "", _link_cid(cid, link), link.tsize or 0) for link in node.links]
        else:
            entries = list(self._shard_entries(cid, node, unixfs))
        return sorted(entries, key=lambda entry: entry.name.encode())

    def _directory_node(self, cid: Cid, where: str) -> tuple[PBNode, UnixfsData]:
        data = self.get_block(cid)
        if cid.codec != DAG_PB:
            raise NotADirectory(cid.encode(), where)
        node, unixfs = _decode_pb(cid, data)
        if unixfs is None or unixfs.type not in (UnixfsType.DIRECTORY, UnixfsType.HAMT_SHARD):
            raise NotADirectory(cid.encode(), where)
        return node, unixfs

    def _shard_node(self, cid: Cid) -> tuple[PBNode, UnixfsData]:
        data = self.get_block(cid)
        if cid.codec == DAG_PB:
            node, unixfs = _decode_pb(cid, data)
            if unixfs is not None and unixfs.type is UnixfsType.HAMT_SHARD:
                return node, unixfs
        raise CorruptBlock(cid.encode(), "a HAMT shard links, as a child shard, something that is not one")

    @staticmethod
    def _basic_lookup(cid: Cid, node: PBNode, name: str, where: str) -> Cid:
        for link in node.links:
            if link.name == name:
                return _link_cid(cid, link)
        raise PathNotFound(cid.encode(), where)

    def _shard_lookup(self, root: Cid, node: PBNode, unixfs: UnixfsData, name: str, where: str) -> Cid:
        try:
            hashed = name_hash(name)
        except UnicodeEncodeError:  # no entry can have a name that is not valid UTF-8
            raise PathNotFound(root.encode(), where) from None
        cid, depth = root, 0
        while True:
            try:
                width = shard_layout(unixfs)[1]
                link = shard_slot(node, unixfs, hashed, depth)
            except ValueError as exc:
                raise CorruptBlock(cid.encode(), str(exc)) from None
            if link is None:
                raise PathNotFound(root.encode(), where)
            label = (link.name or "")[width:]
            if label:  # an entry: the bucket holds exactly one name
                if label != name:
                    raise PathNotFound(root.encode(), where)
                return _link_cid(cid, link)
            cid = _link_cid(cid, link)  # a child shard: go one level down
            node, unixfs = self._shard_node(cid)
            depth += 1

    def _shard_entries(self, root: Cid, node: PBNode, unixfs: UnixfsData) -> Iterator[DirEntry]:
        stack = [(root, node, unixfs)]
        while stack:
            cid, node, unixfs = stack.pop()
            try:
                width = shard_layout(unixfs)[1]
            except ValueError as exc:
                raise CorruptBlock(cid.encode(), str(exc)) from None
            for link in node.links:
                child, label = _link_cid(cid, link), (link.name or "")[width:]
                if label:
                    yield DirEntry(label, child, link.tsize or 0)
                else:
                    stack.append((child, *self._shard_node(child)))

    # CAR

    def export_car(self, root_cid: str | Cid) -> Iterator[bytes]:
        """A CARv1 of the whole DAG: header naming the root, then each block once, depth-first.

        This is the Trustless Gateway's `?format=car` response (order=dfs, dups=n). Blocks are
        read lazily, so a missing or corrupt block raises mid-stream.
        """
        root = Cid.parse(root_cid)
        yield encode_header([root])
        for block in self.iter_dag(root):
            yield encode_section(block.cid, block.data)

    def import_car(self, stream: BinaryIO | Iterable[bytes], *, pin_roots: bool = True) -> CarImport:
        """Store every block of a CARv1 (each verified against its CID), then pin its roots recursively.

        With pin_roots=True (as `ipfs dag import`) every root's DAG must be complete in the archive
        or already in the store, otherwise BlockNotFound.
        """
        header, blocks = read_car(stream)
        count = 0
        for block in blocks:
            self._write_block(block.cid, block.data)
            count += 1
        if pin_roots:
            for root in header.roots:
                self.pin(root)
        return CarImport(tuple(root.encode() for root in header.roots), count)
