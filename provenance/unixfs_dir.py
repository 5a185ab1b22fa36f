"""Flat UnixFS directories exactly as Kubo 0.22 (boxo v0.11) `ipfs add -r` builds them, HAMT sharding included.

A basic directory is one dag-pb node: UnixFS Data {Type: Directory}, one link per entry with the entry's
name and Tsize (the cumulative byte size of the child's DAG), links sorted bytewise by name.

Kubo keeps a running estimate of a directory's size, the sum over its links of len(name in UTF-8) +
len(binary child CID), and turns the directory into a HAMT shard as soon as that estimate reaches
(`>=`) the repo's `Internal.UnixFSShardingSizeThreshold` ("256KiB" by default; 0 disables sharding).
Only adding, never removing, the decision depends on the final estimate alone.

A HAMT shard node has 256 buckets. Bucket i of a node at depth d is chosen by byte d of the name's
hash: murmur3 x64 128 with seed 0, keeping its first 64-bit half, big-endian (Go's murmur3.Sum64).
A bucket holding one entry links it under the name `%02X` % i + entry name; a bucket where several
entries collide links a child shard named just `%02X` % i. The node's UnixFS Data is {Type: HAMTShard,
Data: bitfield of the occupied buckets (bit i set for bucket i, big-endian, leading zero bytes
dropped), hashType: 0x22, fanout: 256}. With inserts only the trie does not depend on insert order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import mmh3

from .cid import DAG_PB, AddResult, Block, Cid, multihash_of
from .dagpb import PBLink, PBNode, UnixfsData, UnixfsType, encode_node, encode_unixfs
from .errors import InvalidDirectoryEntry

KUBO_SHARD_THRESHOLD = 256 * 1024  # Internal.UnixFSShardingSizeThreshold default, "256KiB"
HAMT_FANOUT = 256  # boxo's DefaultShardWidth
MURMUR3_X64_64 = 0x22  # the multicodec Kubo writes as the shard's hashType
HASH_BITS = 64


@dataclass(frozen=True)
class DirEntry:
    """One entry of a directory: `size` is the Tsize Kubo puts on the link (the child DAG's total bytes)."""

    name: str
    cid: Cid
    size: int

    @classmethod
    def of(cls, name: str, added: AddResult) -> DirEntry:
        """The entry for a file added with `provenance.cid` or `LocalIpfsStore.add_*`."""
        return cls(name, added.root, added.dag_size)


@dataclass(frozen=True)
class DirectoryDag:
    root: Cid
    size: int  # the root's Tsize: every byte of every block below and including the root
    blocks: tuple[Block, ...]  # the directory's own nodes (children first, the root last), not the entries'
    sharded: bool

    def entry(self, name: str) -> DirEntry:
        """This directory as an entry of a parent directory."""
        return DirEntry(name, self.root, self.size)


def estimated_size(entries: Iterable[DirEntry]) -> int:
    """Kubo's estimate that decides sharding: len(name) + len(binary CID), summed over the links."""
    return sum(len(entry.name.encode()) + len(entry.cid.to_bytes()) for entry in entries)


def name_hash(name: str) -> int:
    """The 64-bit hash a HAMT places `name` by: the first half of murmur3 x64 128 (seed 0)."""
    return mmh3.hash64(name.encode(), 0, signed=False)[0]


def bucket_index(hashed: int, depth: int, fanout: int = HAMT_FANOUT) -> int:
    """The bucket at `depth`: the next log2(fanout) bits of the hash, most significant first."""
    bits = fanout.bit_length() - 1
    end = (depth + 1) * bits
    if end > HASH_BITS:
        raise ValueError("sharded directory too deep: the name's hash has no bits left")
    return (hashed >> (HASH_BITS - end)) & (fanout - 1)


def prefix_width(fanout: int) -> int:
    """Hex digits of a bucket index in link names: 2 for fanout 256."""
    return len(f"{fanout - 1:X}")


def shard_layout(unixfs: UnixfsData) -> tuple[int, int]:
    """(fanout, hex width of the link-name prefix) of a HAMT shard node; ValueError when we cannot read it."""
    if unixfs.hash_type != MURMUR3_X64_64:
        raise ValueError(f"HAMT hash function 0x{unixfs.hash_type or 0:x} is not murmur3 (0x22)")
    fanout = unixfs.fanout or 0
    if fanout < 2 or fanout & (fanout - 1) or fanout > 1 << 16:
        raise ValueError(f"HAMT fanout {fanout} is not a power of two")
    return fanout, prefix_width(fanout)


def shard_slot(node: PBNode, unixfs: UnixfsData, hashed: int, depth: int) -> PBLink | None:
    """The link in bucket `hashed`'s slot at `depth` of this shard node, or None when the bucket is empty.

    As in boxo, the occupied buckets' links are stored in bucket order, so the slot is found by counting
    the bitfield's set bits below it rather than by scanning names.
    """
    fanout, width = shard_layout(unixfs)
    bitfield = int.from_bytes(unixfs.data, "big")
    if bitfield >> fanout or bitfield.bit_count() != len(node.links):
        raise ValueError("the HAMT bitfield does not match the node's links")
    index = bucket_index(hashed, depth, fanout)
    if not bitfield >> index & 1:
        return None
    link = node.links[(bitfield & ((1 << index) - 1)).bit_count()]
    if (link.name or "")[:width] != f"{index:0{width}X}":
        raise ValueError(f"the link for HAMT bucket {index} is named {link.name!r}")
    return link


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidDirectoryEntry(f"a directory entry needs a non-empty name, not {name!r}")
    if name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidDirectoryEntry(f"{name!r} cannot name a directory entry")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidDirectoryEntry(f"{name!r} is not valid Unicode text") from None


def _checked(entries: Iterable[DirEntry]) -> list[DirEntry]:
    out = list(entries)
    seen: set[str] = set()
    for entry in out:
        check_name(entry.name)
        if entry.name in seen:
            raise InvalidDirectoryEntry(f"duplicate directory entry {entry.name!r}")
        if entry.size < 0:
            raise InvalidDirectoryEntry(f"{entry.name!r} has a negative size")
        seen.add(entry.name)
    return out


def _node(links: list[PBLink], unixfs: UnixfsData, cid_version: int, out: list[Block]) -> tuple[Cid, int]:
    block = encode_node(PBNode(tuple(links), encode_unixfs(unixfs)))
    cid = Cid(cid_version, DAG_PB, multihash_of(block))
    out.append(Block(cid, block))
    return cid, len(block) + sum(link.tsize or 0 for link in links)


def _basic(entries: list[DirEntry], cid_version: int, out: list[Block]) -> tuple[Cid, int]:
    ordered = sorted(entries, key=lambda entry: entry.name.encode())  # Go compares names as bytes
    links = [PBLink(entry.cid.to_bytes(), entry.name, entry.size) for entry in ordered]
    return _node(links, UnixfsData(UnixfsType.DIRECTORY), cid_version, out)


def _shard(hashed: list[tuple[int, DirEntry]], depth: int, cid_version: int, out: list[Block]) -> tuple[Cid, int]:
    buckets: dict[int, list[tuple[int, DirEntry]]] = {}
    for item in hashed:
        buckets.setdefault(bucket_index(item[0], depth), []).append(item)
    links: list[PBLink] = []
    bitfield = 0
    for index in sorted(buckets):  # bucket order is also name order: the hex prefixes have a fixed width
        bitfield |= 1 << index
        group = buckets[index]
        prefix = f"{index:0{prefix_width(HAMT_FANOUT)}X}"
        if len(group) == 1:
            entry = group[0][1]
            links.append(PBLink(entry.cid.to_bytes(), prefix + entry.name, entry.size))
        else:
            child, size = _shard(group, depth + 1, cid_version, out)
            links.append(PBLink(child.to_bytes(), prefix, size))
    bits = bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big")
    unixfs = UnixfsData(UnixfsType.HAMT_SHARD, bits, hash_type=MURMUR3_X64_64, fanout=HAMT_FANOUT)
    return _node(links, unixfs, cid_version, out)


def build_directory(
    entries: Iterable[DirEntry], *, shard_threshold: int = KUBO_SHARD_THRESHOLD, cid_version: int = 0
) -> DirectoryDag:
    """The directory Kubo's `ipfs add -r` makes of a folder holding `entries` (`--cid-version` as given).

    Sharded when `estimated_size(entries) >= shard_threshold` (a threshold of 0 never shards, as in
    Kubo). Raises InvalidDirectoryEntry for names Kubo cannot hold.
    """
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, not {cid_version}")
    checked = _checked(entries)
    sharded = shard_threshold > 0 and estimated_size(checked) >= shard_threshold
    blocks: list[Block] = []
    if sharded:
        root, size = _shard([(name_hash(entry.name), entry) for entry in checked], 0, cid_version, blocks)
    else:
        root, size = _basic(checked, cid_version, blocks)
    return DirectoryDag(root, size, tuple(blocks), sharded)
