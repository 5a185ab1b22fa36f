"""Publishing a collection's new metadata: one UnixFS folder (base-URI collections) or one
document per token, pinned in the local store, and a CAR of the folder for pinning services.

The folder is built exactly as `ipfs add -r` builds it (provenance.unixfs_dir), so its CID is
the one Kubo computes for the same files, sharded past Kubo's threshold as Kubo shards it; a
pinning service given the CAR, or a Kubo node given the files, ends up with the same root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..ipfs import LocalIpfsStore, atomic_write_chunks
from ..unixfs_dir import KUBO_SHARD_THRESHOLD, DirEntry

#: Kubo's default (`ipfs add -r` without --cid-version): what most collections' folders are
FOLDER_CID_VERSION = 0


@dataclass(frozen=True)
class FolderRelease:
    root: str  # the folder's CID
    names: tuple[str, ...]  # its entries, sorted as Kubo sorts them
    sharded: bool  # a HAMT-sharded directory (a large collection)
    size: int  # the DAG's total size in bytes (its Tsize)

    @property
    def base_uri(self) -> str:
        """What a base-URI contract is pointed at: tokenURI(id) = base_uri + name."""
        return f"ipfs://{self.root}/"


def publish_folder(
    store: LocalIpfsStore,
    documents: Mapping[str, bytes],
    *,
    cid_version: int = FOLDER_CID_VERSION,
    shard_threshold: int = KUBO_SHARD_THRESHOLD,
) -> FolderRelease:
    """Every document under its name in one folder, pinned (with every document in it)."""
    entries = [
        DirEntry.of(name, store.add_bytes(data, cid_version=cid_version, pin=False)) for name, data in documents.items()
    ]
    dag = store.add_directory(entries, pin=True, shard_threshold=shard_threshold, cid_version=cid_version)
    return FolderRelease(dag.root.encode(), tuple(sorted(documents, key=str.encode)), dag.sharded, dag.size)


def publish_document(store: LocalIpfsStore, document: bytes, *, cid_version: int = 1) -> str:
    """One token's document, pinned on its own (a per-token collection): its CID."""
    return store.add_bytes(document, cid_version=cid_version, pin=True).cid


def write_car(store: LocalIpfsStore, root: str, path: Path) -> Path:
    """The folder's whole DAG as a CARv1 at `path`, written atomically: a failure midway leaves
    no file and no temporary behind."""
    atomic_write_chunks(path, store.export_car(root))
    return path
