"""A cluster on 127.0.0.1 for tests: one fresh PostgreSQL database, anvil, a data folder every
node shares (inputs, outputs, the local IPFS store and the dev Lightning node live there), and
API nodes (`satscale serve --role api`) and workers (`satscale worker`) as real processes,
each stopped by its PID."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from PIL import Image

from .anvil import ANVIL_KEY_0
from .helpers import natural_image
from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "realesr-animevideov3"


class Node:
    """One Satscale process of the cluster."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log = log
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = dict(self.env)
        if self.port is not None:
            env["SATSCALE_PORT"] = str(self.port)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *self.args], cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


class Cluster:
    def __init__(self, root: Path, store_url: str, chain_port: int, weights_dir: Path) -> None:
        self.root = root
        self.store_url = store_url
        self.env = {
            **os.environ,
            "SATSCALE_STORE_URL": store_url,
            "SATSCALE_DATA_DIR": str(root / "data"),
            "SATSCALE_WEIGHTS_DIR": str(weights_dir),
            "SATSCALE_HOST": "127.0.0.1",
            "SATSCALE_CHAIN_RPC_URL": f"http://127.0.0.1:{chain_port}",
            "SATSCALE_CHAIN_PRIVATE_KEY": ANVIL_KEY_0,
            "PYTHONUNBUFFERED": "1",
        }
        self.apis: list[Node] = []
        self.workers: list[Node] = []

    def add_api(self) -> Node:
        index = len(self.apis)
        node = Node(f"api{index}", ["serve", "--role", "api"], self.env, self.root / f"api{index}.log", free_port())
        self.apis.append(node)
        node.start()
        return node

    def add_worker(self, concurrency: int = 1) -> Node:
        index = len(self.workers)
        args = ["worker", "--queue", "gpu", "--concurrency", str(concurrency)]
        node = Node(f"worker{index}", args, self.env, self.root / f"worker{index}.log")
        self.workers.append(node)
        node.start()
        return node

    def wait_ready(self, timeout: float = 180) -> None:
        """Every API node answers, and every worker has said it is alive."""
        deadline = time.monotonic() + timeout
        for node in self.apis:
            while True:
                if not node.alive():
                    raise AssertionError(f"{node.name} exited: {node.tail()}")
                try:
                    if httpx.get(f"{node.url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} did not start: {node.tail()}")
                time.sleep(0.2)
        for node in self.workers:
            while not self.worker_seen(node):
                if not node.alive():
                    raise AssertionError(f"{node.name} exited: {node.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.name} never said it is alive: {node.tail()}")
                time.sleep(0.2)

    def query(self, sql: str, *args: object) -> list[tuple]:
        with psycopg.connect(self.store_url, autocommit=True) as db:
            return db.execute(sql, args).fetchall()

    def worker_seen(self, node: Node) -> bool:
        rows = self.query("SELECT name, seen_at FROM cluster_workers WHERE name LIKE %s", f"%-{node.pid}")
        return bool(rows) and time.time() - rows[0][1] < 5

    def coordinator(self, timeout: float = 30) -> Node:
        """The API node holding the coordinator lock now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.apis:
                if node.alive():
                    try:
                        if httpx.get(f"{node.url}/healthz", timeout=2).json().get("coordinator"):
                            return node
                    except httpx.HTTPError:
                        pass
            time.sleep(0.2)
        raise AssertionError("no API node became the coordinator")

    def stop(self) -> None:
        for node in [*self.workers, *self.apis]:
            node.stop()


def photo(seed: int, height: int = 48, width: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(height, width, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


def create(node: Node, image: bytes) -> dict:
    response = httpx.post(
        f"{node.url}/v1/upscales", files={"image": ("photo.png", image, "image/png")}, data={"model": MODEL},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 402, response.text
    return response.json()


def pay(node: Node, job: dict) -> None:
    response = httpx.post(f"{node.url}/v1/dev/pay", json={"payment_request": job["payment_request"]}, timeout=30)
    assert response.status_code == 200, response.text


def status(node: Node, job_id: str) -> dict:
    return httpx.get(f"{node.url}/v1/upscales/{job_id}", timeout=30).json()
