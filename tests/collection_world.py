"""Collections as they exist in the wild, on a real anvil, for the collection-upgrade tests.

`third_party`: an OpenZeppelin ERC-721 with a base URI and `.json` names (not our contract), 20
tokens whose documents sit in one IPFS folder. Most images are small photographs on IPFS; the
odd ones are what real collections contain: a 24x24 sprite, an image in a `data:` URI, one on
an HTTPS server, one on a private address (refused), a document that is not JSON, an SVG, and
an image nobody holds.

`per_token`: an ERC721URIStorage collection without enumeration, each token's own URI: IPFS
documents, an on-chain base64 document and a percent-encoded one.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from web3 import Web3
from web3.contract import Contract

from app import create_app
from provenance.contracts import FIXTURES_DIR, load_artifact
from provenance.ipfs import LocalIpfsStore
from provenance.unixfs_dir import DirEntry
from service.config import Settings

from .anvil import ANVIL_KEY_0, running_anvil
from .helpers import natural_image
from .servers import serving
from .tls import Pki, make_pki, server_context

TOKENS = 20
PIXEL_ART, DATA_IMAGE, HTTPS_IMAGE, PRIVATE, NOT_JSON, SVG, MISSING = 3, 4, 5, 6, 7, 8, 9
SKIPPED = {PRIVATE: "refused", NOT_JSON: "not JSON", SVG: "SVG", MISSING: "not in the local IPFS store"}
SVG_BYTES = b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24"><rect width="24" height="24"/></svg>'


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def sprite() -> np.ndarray:
    palette = np.array([[0, 0, 0, 0], [255, 204, 0, 255], [40, 40, 40, 255], [200, 30, 30, 255]], np.uint8)
    return palette[np.random.default_rng(7).integers(0, 4, (24, 24))]


def photo(token_id: int) -> bytes:
    return png(natural_image(64, 72, seed=token_id))


def deploy(w3: Web3, name: str, *args: Any) -> Contract:
    artifact = load_artifact(name, FIXTURES_DIR)
    owner = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": owner}))
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def send(fn: Any, w3: Web3) -> None:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": w3.eth.accounts[0]}))
    assert receipt["status"] == 1


@dataclass
class StaticServer:
    """An HTTPS server on 127.0.0.1 for files (the test CA's certificate), recording requests."""

    port: int
    files: dict[str, tuple[bytes, str]]
    requests: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextmanager
def https_files(pki: Pki, files: dict[str, tuple[bytes, str]]) -> Iterator[StaticServer]:
    context = server_context(pki)
    record: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            record.append(self.path)
            body, kind = files.get(self.path, (b"not here", "text/plain"))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            sock, address = super().get_request()
            return context.wrap_socket(sock, server_side=True), address

        def handle_error(self, request, client_address) -> None:
            return

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield StaticServer(server.server_address[1], files, record)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class World:
    third_party: Contract
    per_token: Contract
    folder_cid: str
    documents: dict[int, dict]  # the third-party collection's documents, by token


def _pin(store: LocalIpfsStore, data: bytes) -> str:
    return store.add_bytes(data, cid_version=0, pin=True).cid


def build_world(w3: Web3, store: LocalIpfsStore, https_origin: str, files: dict[str, tuple[bytes, str]]) -> World:
    """Deploy both collections, mint their tokens, and put their content where their URIs say."""
    documents: dict[int, dict] = {}
    raw: dict[int, bytes] = {}
    for token_id in range(1, TOKENS + 1):
        image = f"ipfs://{_pin(store, photo(token_id))}"
        if token_id == PIXEL_ART:
            image = f"ipfs://{_pin(store, png(sprite()))}"
        elif token_id == DATA_IMAGE:
            image = "data:image/png;base64," + base64.b64encode(photo(token_id)).decode()
        elif token_id == HTTPS_IMAGE:
            files["/art/5.png"] = (photo(token_id), "image/png")
            image = f"{https_origin}/art/5.png"
        elif token_id == PRIVATE:
            image = "http://10.11.12.13/6.png"
        elif token_id == SVG:
            image = f"ipfs://{_pin(store, SVG_BYTES)}"
        elif token_id == MISSING:
            image = "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        documents[token_id] = {
            "name": f"Pixel Pal #{token_id}",
            "description": "An early collection",
            "image": image,
            "attributes": [{"trait_type": "Background", "value": ["Blue", "Red"][token_id % 2]}],
        }
        raw[token_id] = json.dumps(documents[token_id]).encode()
    raw[NOT_JSON] = b'{"name": "broken", "image": '
    entries = [DirEntry.of(f"{i}.json", store.add_bytes(data, cid_version=0, pin=True)) for i, data in raw.items()]
    folder = store.add_directory(entries).root.encode()

    third_party = deploy(w3, "BaseURICollection", "Pixel Pals", "PALS", f"ipfs://{folder}/", ".json")
    for token_id in range(1, TOKENS + 1):
        send(third_party.functions.mint(w3.eth.accounts[1], token_id), w3)

    per_token = deploy(w3, "URIStorageCollection", "One of Ones", "ONE")
    on_chain = {"name": "On chain", "image": "data:image/png;base64," + base64.b64encode(photo(101)).decode()}
    percent = {"name": "Percent", "image": f"ipfs://{_pin(store, photo(102))}"}
    first = {"name": "First", "image": f"ipfs://{_pin(store, photo(100))}"}
    uris = {
        1: f"ipfs://{_pin(store, json.dumps(first).encode())}",
        2: "data:application/json;base64," + base64.b64encode(json.dumps(on_chain).encode()).decode(),
        3: "data:application/json," + quote(json.dumps(percent)),
    }
    for token_id, uri in uris.items():
        send(per_token.functions.mint(w3.eth.accounts[1], token_id, uri), w3)
    return World(third_party, per_token, folder, documents)


def build_satscale_collection(
    w3: Web3, store: LocalIpfsStore, registry: str, https_origin: str, files: dict[str, tuple[bytes, str]]
) -> tuple[Contract, dict[int, dict]]:
    """Satscale's own collection (ERC-7160, linked to `registry`), 20 tokens with a URI each, as
    odd as the third-party one: a sprite, a `data:` image, an HTTPS image, a private address, a
    broken document."""
    artifact = load_artifact("SatscaleCollection")
    owner = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor("Satscale Pals", "SPAL", registry, owner).transact({"from": owner})
    collection = w3.eth.contract(address=w3.eth.wait_for_transaction_receipt(tx)["contractAddress"], abi=artifact.abi)
    for role in ("MINTER_ROLE", "UPGRADER_ROLE"):
        send(collection.functions.grantRole(Web3.keccak(text=role), owner), w3)
    documents: dict[int, dict] = {}
    for token_id in range(1, TOKENS + 1):
        image = f"ipfs://{_pin(store, photo(200 + token_id))}"
        if token_id == PIXEL_ART:
            image = f"ipfs://{_pin(store, png(sprite()))}"
        elif token_id == DATA_IMAGE:
            image = "data:image/png;base64," + base64.b64encode(photo(300)).decode()
        elif token_id == HTTPS_IMAGE:
            files["/ours/5.png"] = (photo(301), "image/png")
            image = f"{https_origin}/ours/5.png"
        elif token_id == PRIVATE:
            image = "http://192.168.77.1/6.png"
        documents[token_id] = {"name": f"Satscale Pal #{token_id}", "image": image, "attributes": [{"value": token_id}]}
        uri = f"ipfs://{_pin(store, json.dumps(documents[token_id]).encode())}"
        if token_id == NOT_JSON:
            uri = f"ipfs://{_pin(store, b'not json at all')}"
        send(collection.functions.mint(w3.eth.accounts[1], uri), w3)
    return collection, documents


class Client(httpx.Client):
    """A client of the live server that also holds the app (to look at its stores)."""

    app: FastAPI


@dataclass
class Served:
    client: Client
    world: World
    rpc: str
    w3: Web3
    web: StaticServer
    files: dict[str, tuple[bytes, str]]


@contextmanager
def served_world(tmp_path_factory: pytest.TempPathFactory, registry: Any, *, server_chain: bool) -> Iterator[Served]:
    """anvil, an HTTPS file server and a live Satscale server allowed to reach both, with both
    collections built; `server_chain`: the server records on that anvil too (a paid run), else on
    its embedded chain (plans only)."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    files: dict[str, tuple[bytes, str]] = {}
    with running_anvil() as (w3, port), https_files(pki, files) as web:
        rpc = f"http://127.0.0.1:{port}"
        chain = {"chain_rpc_url": rpc, "chain_private_key": ANVIL_KEY_0} if server_chain else {}
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("data"),
            fetch_allow_private_hosts=[f"127.0.0.1:{port}", f"127.0.0.1:{web.port}"],
            fetch_ca_bundle=pki.ca_pem,
            **chain,
        )
        app = create_app(settings, registry)
        with serving(app) as url, Client(base_url=url, timeout=120) as client:
            client.app = app
            world = build_world(w3, app.state.ipfs, web.origin, files)
            yield Served(client, world, rpc, w3, web, files)
