"""A collection's new metadata folder: the CID Kubo computes for the same files (basic and
sharded), a CAR that rebuilds it anywhere, and the gateway serving it by path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from provenance.collection.publish import publish_document, publish_folder, write_car
from provenance.ipfs import LocalIpfsStore
from provenance.metadata import document_bytes, upgraded_token_document
from service import problems
from service.gateway import gateway_router
from tests.kubo_double import KuboNode


def documents(count: int) -> dict[str, bytes]:
    """What an upgrade publishes: every token's document under the collection's own name."""
    out = {}
    for token_id in range(1, count + 1):
        original = {"name": f"Pal #{token_id}", "image": f"ipfs://QmOld/{token_id}.png", "attributes": []}
        provenance = {"payment_hash": f"{token_id:064x}", "output_cid": "bafy..."}
        out[f"{token_id}.json"] = document_bytes(upgraded_token_document(original, "ipfs://bafynew", provenance))
    return out


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str | None, KuboNode]]:
    root = tmp_path_factory.mktemp("kubo-publish")
    nodes = {None: KuboNode.start(root / "default"), "4KiB": KuboNode.start(root / "small", shard_threshold="4KiB")}
    yield nodes
    for node in nodes.values():
        node.close()


def on_disk(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("count", "threshold", "node", "sharded"), [(20, 262_144, None, False), (300, 4096, "4KiB", True)]
)
def test_the_folder_is_what_kubo_adds(kubo, tmp_path: Path, count, threshold, node, sharded) -> None:
    files = documents(count)
    store = LocalIpfsStore(tmp_path / "store")
    release = publish_folder(store, files, shard_threshold=threshold)
    assert release.root == kubo[node].add_directory(on_disk(tmp_path / "folder", files))
    assert release.sharded is sharded and release.base_uri == f"ipfs://{release.root}/"
    assert store.is_pinned(release.root) and release.root.startswith("Qm")  # Kubo's default CIDv0
    assert b"".join(store.cat(f"{release.root}/7.json")) == files["7.json"]


def test_the_car_rebuilds_the_folder_elsewhere(tmp_path: Path) -> None:
    files = documents(300)
    release = publish_folder(LocalIpfsStore(tmp_path / "ours"), files, shard_threshold=4096)
    car = write_car(LocalIpfsStore(tmp_path / "ours"), release.root, tmp_path / "out" / "folder.car")
    elsewhere = LocalIpfsStore(tmp_path / "pinning-service")
    with car.open("rb") as stream:
        imported = elsewhere.import_car(stream)
    assert imported.roots == (release.root,)
    for name, data in files.items():
        assert b"".join(elsewhere.cat(f"{release.root}/{name}")) == data
    assert [p.name for p in car.parent.iterdir()] == ["folder.car"]  # nothing else left behind


def test_a_failed_car_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalIpfsStore(tmp_path / "store")
    release = publish_folder(store, documents(3))

    def broken(root):
        yield b"half a header"
        raise OSError("disk gone")

    monkeypatch.setattr(store, "export_car", broken)
    with pytest.raises(OSError):
        write_car(store, release.root, tmp_path / "out" / "folder.car")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_gateway_serves_the_folder_by_name(tmp_path: Path) -> None:
    store = LocalIpfsStore(tmp_path / "store")
    files = documents(300)
    release = publish_folder(store, files, shard_threshold=4096)
    single = publish_document(store, files["1.json"])
    app = FastAPI()
    problems.install(app)
    app.include_router(gateway_router(store))
    client = TestClient(app)
    response = client.get(f"/ipfs/{release.root}/42.json")
    assert response.status_code == 200 and response.content == files["42.json"]
    assert response.headers["x-ipfs-path"] == f"/ipfs/{release.root}/42.json"
    assert client.get(f"/ipfs/{single}").content == files["1.json"]
    # a missing name, a file used as a folder, and a climb out (the client folds it into /ipfs/1.json)
    for missing, status in (("301.json", 404), ("42.json/deeper", 404), ("../1.json", 400)):
        answer = client.get(f"/ipfs/{release.root}/{missing}")
        assert answer.status_code == status, missing
        assert answer.headers["content-type"] == "application/problem+json"
