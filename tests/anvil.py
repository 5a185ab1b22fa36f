"""anvil (from the npm package pinned in contracts/) on 127.0.0.1, and a TCP proxy to cut it off.

`npm ci` in contracts/ installs the binary; tests fail with that instruction when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from web3 import Web3

from .servers import free_port

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
#: anvil's first default dev account (its well-known test mnemonic); funded on every anvil
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def find_anvil() -> Path:
    """The anvil binary that `npm ci` in contracts/ installs, or a failure telling how to get it."""
    candidates = [CONTRACTS_DIR / "node_modules" / ".bin" / "anvil"]
    candidates += sorted((CONTRACTS_DIR / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    for candidate in candidates:
        if candidate.is_file():
            binary = candidate.resolve()
            if not os.access(binary, os.X_OK):
                pytest.fail(f"{binary} is not executable: run `npm ci` in contracts/ again")
            return binary
    pytest.fail(
        f"anvil not found under {CONTRACTS_DIR / 'node_modules'}: run `npm ci` in contracts/ "
        "(it installs @foundry-rs/anvil-linux-amd64 from contracts/package-lock.json)"
    )


def _wait_for_anvil(proc: subprocess.Popen[bytes], port: int, log: IO[bytes], timeout: float = 15) -> Web3:
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 10}))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"anvil exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        with contextlib.suppress(Exception):  # still starting
            if w3.is_connected() and w3.eth.chain_id:
                return w3
        if time.monotonic() > deadline:
            pytest.fail(f"anvil did not answer on 127.0.0.1:{port} within {timeout:g} s")
        time.sleep(0.05)


@contextlib.contextmanager
def running_anvil() -> Iterator[tuple[Web3, int]]:
    """A fresh anvil on a free port (prague, the artifacts' EVM); stopped by PID on exit."""
    port = free_port()
    command = [str(find_anvil()), "--host", "127.0.0.1", "--port", str(port), "--hardfork", "prague"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            yield _wait_for_anvil(proc, port, log), port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops the listener and every connection
    (an RPC outage), `restore()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
