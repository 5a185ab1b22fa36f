"""Fetching token URIs as hostile input: real local servers and sockets, a CA made here.

Every refusal test checks what an operator would: the stable reason, and that nothing was
fetched (no request reached a server, no TCP connection was even attempted).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpcore
import pytest

from provenance.collection import addresses
from provenance.collection.addresses import PrivateAccess, refusal
from provenance.collection.fetch import METADATA_MAX_BYTES, FetchPolicy, TokenFetcher
from provenance.collection.fetch_errors import FetchError
from provenance.collection.ipfs_readers import GatewayIpfsReader, LocalStoreReader
from provenance.collection.uris import classify_uri
from provenance.ipfs import DirEntry, LocalIpfsStore

from .tls import Pki, make_pki

METADATA = {"name": "Token #1", "image": "ipfs://QmImage/1.png"}
METADATA_BYTES = json.dumps(METADATA).encode()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
TXID = "bNbA3TEQVL60xlgCcqdz4ZPHFZ711cZ3hmkpGttDt_U"
MiB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- a scriptable HTTP(S) server on 127.0.0.1 -------------------------------------------------


@dataclass
class Served:
    """What the server saw: request paths, Host headers, TLS server names, body bytes it got out."""

    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (body, content type)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: Served

    def log_message(self, format: str, *args: object) -> None:
        return  # quiet

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self.close_connection = True
        url = urlsplit(self.path)
        self.served.paths.append(self.path)
        self.served.hosts.append(self.headers.get("Host", ""))
        first = url.path.strip("/").split("/")[0]
        route = getattr(self, "route_" + first.replace("-", "_").replace(".", "_"), None)
        if url.path in self.served.redirects:
            self._redirect(self.served.redirects[url.path])
        elif url.path in self.served.files:
            body, content_type = self.served.files[url.path]
            self._send(200, body, content_type)
        elif route is not None:
            route(url, parse_qs(url.query))
        else:
            self._send(404, b"no such thing", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", Location=location)

    def route_meta_json(self, url, query) -> None:
        self._send(200, METADATA_BYTES, "application/json; charset=utf-8")

    def route_redirect(self, url, query) -> None:
        self._redirect(query["to"][0])

    def route_chain(self, url, query) -> None:  # /chain/<n>: n more redirects, then the metadata
        left = int(url.path.split("/")[2])
        if left:
            self._redirect(f"/chain/{left - 1}")
        else:
            self.route_meta_json(url, query)

    def route_error(self, url, query) -> None:
        self._send(500, b"boom", "text/plain")

    def _stream(self, name: str, pieces: Iterator[bytes]) -> None:
        self.served.bytes_sent[name] = 0
        try:
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                self.served.bytes_sent[name] += len(piece)
        except OSError:
            return  # the client hung up, as it should

    def route_declared_huge(self, url, query) -> None:  # says 64 MiB up front, then sends them
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(64 * MiB))
        self.end_headers()
        self._stream("declared-huge", (b"\0" * 65536 for _ in range(1024)))

    def route_chunked_huge(self, url, query) -> None:  # no length: 64 KiB chunks, up to 64 MiB
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * 65536
        self._stream("chunked-huge", (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(1024)))

    def route_gzip_bomb(self, url, query) -> None:  # 16 MiB of zeros in about 16 KiB
        body = gzip.compress(b"\0" * (16 * MiB))
        self._send(200, body, "application/json", Content_Encoding="gzip")

    def route_trickle(self, url, query) -> None:  # one byte every 0.1 s, for ever (10 s at most)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()

        def drip() -> Iterator[bytes]:
            for _ in range(100):
                yield b" "
                time.sleep(0.1)

        self._stream("trickle", drip())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, served: Served, context: ssl.SSLContext | None) -> None:
        handler = type("BoundHandler", (Handler,), {"served": served})
        super().__init__(("127.0.0.1", 0), handler)
        self.context = context

    def get_request(self):
        sock, address = super().get_request()
        if self.context is not None:  # the handshake happens in the request's thread
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        return  # a client that refuses our certificate or hangs up is part of the tests


@dataclass
class Server:
    base: str  # http(s)://127.0.0.1:<port>
    port: int
    served: Served


@contextmanager
def serving(context: ssl.SSLContext | None = None) -> Iterator[Server]:
    served = Served()
    server = _Server(served, context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield Server(f"{'https' if context else 'http'}://127.0.0.1:{port}", port, served)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def https_server(pki: Pki) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_pem, pki.key_pem)
    names: list[str | None] = []

    def remember(sock, server_name, ctx) -> None:
        names.append(server_name)

    context.sni_callback = remember
    with serving(context) as server:
        server.served.server_names = names
        yield server


@pytest.fixture
def https(https_server: Server) -> Server:
    """The module's HTTPS server with a fresh record of what it saw."""
    served = https_server.served
    served.paths.clear()
    served.hosts.clear()
    served.server_names.clear()
    served.bytes_sent.clear()
    served.files.clear()
    return https_server


@pytest.fixture
def http_server() -> Iterator[Server]:
    with serving() as server:
        yield server


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the fetcher's backend attempts (host, port), recorded before it is made."""
    attempts: list[tuple[str, int]] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def recording(self, host, port, *args, **kwargs):
        attempts.append((host, port))
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recording)
    return attempts


@pytest.fixture
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """Sockets listening on 127.0.0.1:<port> (and [::1]:<port> where it can): proof of no connection."""
    v4 = socket.socket()
    v4.bind(("127.0.0.1", 0))
    v4.listen(8)
    port = v4.getsockname()[1]
    sockets = [v4]
    with contextlib.suppress(OSError):  # a machine without IPv6 loopback has only the IPv4 socket
        v6 = socket.socket(socket.AF_INET6)
        v6.bind(("::1", port))
        v6.listen(8)
        sockets.append(v6)
    yield port, sockets
    for sock in sockets:
        sock.close()


def _pending_connections(sockets: list[socket.socket]) -> int:
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            conn.close()
            count += 1
    return count


@pytest.fixture
def store(tmp_path: Path) -> LocalIpfsStore:
    return LocalIpfsStore(tmp_path / "ipfs", fsync=False)


def _policy(pki: Pki, **changes) -> FetchPolicy:
    return FetchPolicy(ca_bundle=pki.ca_pem, deadline=5.0, connect_timeout=2.0, **changes)


@pytest.fixture
async def fetcher(store: LocalIpfsStore, pki: Pki):
    async with TokenFetcher(LocalStoreReader(store), _policy(pki)) as fetcher:
        yield fetcher


def _allowed(store: LocalIpfsStore, pki: Pki, *entries: str, **changes) -> TokenFetcher:
    return TokenFetcher(LocalStoreReader(store), _policy(pki, allow_private_hosts=frozenset(entries), **changes))


async def _refused(fetcher: TokenFetcher, uri: str, reason: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(uri, **kwargs)
    assert caught.value.reason == reason, caught.value
    assert caught.value.uri == uri
    return caught.value


# --- HTTPS through the allow-list ---------------------------------------------------------------


async def test_https_server_reached_through_the_allow_list(https: Server, store, pki, connects) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        fetched = await fetcher.fetch(f"{https.base}/meta.json", max_bytes=METADATA_MAX_BYTES)
    assert json.loads(fetched.data) == METADATA
    assert (fetched.media_type, fetched.charset, fetched.source) == ("application/json", "utf-8", "http")
    assert fetched.final_url == f"{https.base}/meta.json"
    assert connects == [("127.0.0.1", https.port)]


async def test_allowed_name_is_connected_by_vetted_ip_but_keeps_sni_and_host(https: Server, store, pki, connects):
    async with _allowed(store, pki, f"localhost:{https.port}") as fetcher:
        fetched = await fetcher.fetch(f"https://localhost:{https.port}/meta.json")
    assert json.loads(fetched.data) == METADATA
    # the socket went to an address (resolved once, checked), TLS and HTTP still speak the name
    assert connects and all(ipaddress.ip_address(host).is_loopback for host, _ in connects)
    assert https.served.server_names == ["localhost"]
    assert https.served.hosts == [f"localhost:{https.port}"]


async def test_same_server_refused_without_the_allow_list(https: Server, fetcher, connects) -> None:
    error = await _refused(fetcher, f"{https.base}/meta.json", "refused-address")
    assert "loopback" in str(error) and "allow_private_hosts" in str(error) and f"127.0.0.1:{https.port}" in str(error)
    assert connects == [] and https.served.paths == []


async def test_localhost_name_resolving_to_loopback_refused(https: Server, fetcher, connects) -> None:
    error = await _refused(fetcher, f"https://localhost:{https.port}/meta.json", "refused-address")
    assert "resolves to" in str(error)
    assert connects == [] and https.served.paths == []


async def test_private_ca_needs_the_ca_bundle(https: Server, store) -> None:
    policy = FetchPolicy(allow_private_hosts=frozenset({f"127.0.0.1:{https.port}"}), deadline=5.0)
    async with TokenFetcher(LocalStoreReader(store), policy) as fetcher:
        error = await _refused(fetcher, f"{https.base}/meta.json", "tls")
    assert "ca_bundle" in str(error)
    assert https.served.paths == []


async def test_allow_private_opens_every_host(https: Server, store, pki) -> None:
    async with TokenFetcher(LocalStoreReader(store), _policy(pki, allow_private=True)) as fetcher:
        assert json.loads((await fetcher.fetch(f"{https.base}/meta.json")).data) == METADATA


def test_allow_list_entries_are_normalised() -> None:
    access = PrivateAccess.from_entries(["Gateway.LAN", "10.0.0.5:8080", "[FD00::1]:443", "::1"])
    assert access.allows("gateway.lan", 1234) and access.allows("gateway.lan.", 80)
    assert access.allows("10.0.0.5", 8080) and not access.allows("10.0.0.5", 8081)
    assert access.allows("fd00::1", 443) and access.allows("::1", 9)
    with pytest.raises(ValueError):
        PrivateAccess.from_entries(["host:port"])


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://[::1]:{other}/",
        "http://127.0.0.1:{other}/",  # the allowed host, another port: not allowed
        "https://localhost:{port}/meta.json",  # the same server under a name that is not allowed
        "http://2130706433:{other}/",
    ],
)
async def test_redirect_from_allowed_server_to_private_address_refused(
    https: Server, store, pki, connects, listener, target
) -> None:
    other, sockets = listener
    location = target.format(other=other, port=https.port)
    uri = f"{https.base}/redirect?to={quote(location, safe='')}"
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        error = await _refused(fetcher, uri, "refused-address")
    assert "redirected" in str(error)
    assert connects == [("127.0.0.1", https.port)]  # only the allowed server, for the first hop
    assert len(https.served.paths) == 1 and _pending_connections(sockets) == 0


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "refused-scheme"),
        ("javascript:alert(1)", "refused-scheme"),
        ("gopher://example.org/", "refused-scheme"),
        ("ftp://example.org/x", "refused-scheme"),
        ("data:application/json,{}", "refused-scheme"),
        ("ar://" + TXID, "refused-scheme"),
    ],
)
async def test_redirect_to_other_schemes_refused(https: Server, store, pki, connects, location, reason) -> None:
    uri = f"{https.base}/redirect?to={quote(location, safe='')}"
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        error = await _refused(fetcher, uri, reason)
    assert "redirected to" in str(error)
    assert len(connects) == 1 and len(https.served.paths) == 1


async def test_redirects_followed_up_to_the_limit(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        fetched = await fetcher.fetch(f"{https.base}/chain/5")
        assert json.loads(fetched.data) == METADATA and fetched.final_url == f"{https.base}/chain/0"
        await _refused(fetcher, f"{https.base}/chain/6", "too-many-redirects")
    assert len(https.served.paths) == 6 + 6


async def test_redirect_to_ipfs_is_read_from_the_store(https: Server, store, pki) -> None:
    added = store.add_bytes(METADATA_BYTES)
    uri = f"{https.base}/redirect?to={quote('ipfs://' + added.cid, safe='')}"
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        fetched = await fetcher.fetch(uri)
    assert (fetched.data, fetched.source, fetched.final_url) == (METADATA_BYTES, "ipfs", f"ipfs://{added.cid}")


# --- addresses refused before any connection -----------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://2130706433:{port}/",
        "http://127.1:{port}/",
        "http://0x7f.1:{port}/",
        "http://0x7f000001:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://100.64.0.1/",
        "http://192.168.1.1/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[2002:7f00:1::]:{port}/",  # 6to4 of 127.0.0.1
        "http://[64:ff9b::7f00:1]:{port}/",  # NAT64 of 127.0.0.1
        "https://127.0.0.1:{port}/",
    ],
)
async def test_private_literals_refused_without_connecting(fetcher, connects, listener, template) -> None:
    port, sockets = listener
    uri = template.format(port=port)
    started = time.monotonic()
    await _refused(fetcher, uri, "refused-address")
    assert time.monotonic() - started < 0.5
    assert connects == []
    assert _pending_connections(sockets) == 0


async def test_name_with_one_private_address_among_public_ones_refused(fetcher, connects, monkeypatch) -> None:
    async def answers(host, port, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(addresses.anyio, "getaddrinfo", answers)
    await _refused(fetcher, "https://mixed.example/meta.json", "refused-address")
    assert connects == []


async def test_connection_goes_to_the_address_checked_not_a_second_lookup(fetcher, monkeypatch) -> None:
    """DNS rebinding: the name is resolved once; the socket is opened to that vetted IP, never the name."""
    lookups: list[str] = []
    connects: list[str] = []

    async def rebinding(host, port, **kwargs):
        lookups.append(host)
        address = "93.184.215.14" if len(lookups) == 1 else "127.0.0.1"  # a second lookup would rebind
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    async def no_network(self, host, port, *args, **kwargs):
        connects.append(host)
        raise httpcore.ConnectError("no route (test)")

    monkeypatch.setattr(addresses.anyio, "getaddrinfo", rebinding)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", no_network)
    await _refused(fetcher, "https://rebind.example/meta.json", "unreachable")
    assert lookups == ["rebind.example"] and connects == ["93.184.215.14"]


def test_public_addresses_pass_the_check() -> None:
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::"):
        assert refusal(ipaddress.ip_address(text)) is None, text


# --- limits ---------------------------------------------------------------------------------------


async def test_declared_length_over_the_limit_refused_unread(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        error = await _refused(fetcher, f"{https.base}/declared-huge", "too-large", max_bytes=MiB)
    assert "declares" in str(error)


async def test_chunked_body_cut_at_the_limit(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        started = time.monotonic()
        await _refused(fetcher, f"{https.base}/chunked-huge", "too-large", max_bytes=256 * 1024)
    assert time.monotonic() - started < 2
    time.sleep(0.2)  # let the server notice the hang-up
    assert https.served.bytes_sent["chunked-huge"] < 16 * MiB  # of 64 MiB: the client stopped reading


async def test_compression_bomb_cut_at_the_limit(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        await _refused(fetcher, f"{https.base}/gzip-bomb", "too-large", max_bytes=MiB)


async def test_trickling_server_cut_at_the_deadline(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        started = time.monotonic()
        error = await _refused(fetcher, f"{https.base}/trickle", "timeout", deadline=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0, elapsed
    assert "deadline" in str(error)


async def test_http_errors_are_typed(https: Server, store, pki) -> None:
    async with _allowed(store, pki, f"127.0.0.1:{https.port}") as fetcher:
        await _refused(fetcher, f"{https.base}/nothing-here", "not-found")
        error = await _refused(fetcher, f"{https.base}/error", "http-status")
    assert error.status == 500


async def test_unresolvable_host_is_unreachable(fetcher) -> None:
    await _refused(fetcher, "https://no-such-host.invalid/meta.json", "unreachable")


# --- data: ----------------------------------------------------------------------------------------


async def test_data_uris(fetcher) -> None:
    b64 = base64.b64encode(METADATA_BYTES).decode()
    fetched = await fetcher.fetch(f"data:application/json;base64,{b64}")
    assert (fetched.data, fetched.media_type, fetched.source, fetched.final_url) == (
        METADATA_BYTES,
        "application/json",
        "data",
        None,
    )
    unpadded = await fetcher.fetch(f"data:application/json;base64,{b64.rstrip('=')}")
    assert unpadded.data == METADATA_BYTES
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><text>100% é</text></svg>'
    fetched = await fetcher.fetch(f"data:image/svg+xml;charset=UTF-8,{quote(svg)}")
    assert (fetched.data.decode(), fetched.media_type, fetched.charset) == (svg, "image/svg+xml", "utf-8")
    raw = await fetcher.fetch('data:application/json;utf8,{"name": "On chain"}')
    assert (json.loads(raw.data), raw.charset) == ({"name": "On chain"}, "utf-8")
    png = await fetcher.fetch("data:image/png;base64," + base64.b64encode(PNG).decode())
    assert (png.data, png.media_type) == (PNG, "image/png")
    plain = await fetcher.fetch("data:,hello%20world")
    assert (plain.data, plain.media_type, plain.charset) == (b"hello world", "text/plain", "us-ascii")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("data:application/json;base64,eyJhIjoxfQ=", "bad-uri"),  # 9 characters after padding is stripped
        ("data:application/json;base64,e", "bad-uri"),
        ("data:application/json;base64,ab=c", "bad-uri"),
        ("data:application/json;base64,****", "bad-uri"),
        ("data:application/json", "bad-uri"),  # no comma
        ("data:not a type,x", "bad-uri"),
    ],
)
async def test_bad_data_uris(fetcher, uri, reason) -> None:
    await _refused(fetcher, uri, reason)


async def test_huge_data_uris_refused_by_decoded_size(fetcher) -> None:
    big = base64.b64encode(b"\0" * (2 * 1024)).decode()
    await _refused(fetcher, f"data:image/png;base64,{big}", "too-large", max_bytes=1024)
    await _refused(fetcher, "data:text/plain," + "%00" * 2048, "too-large", max_bytes=1024)
    # 3 KiB of text that decodes to exactly the limit is fine: the limit is on decoded bytes
    assert len((await fetcher.fetch("data:text/plain," + "%41" * 1024, max_bytes=1024)).data) == 1024


# --- IPFS -----------------------------------------------------------------------------------------


async def test_ipfs_cid_v0_and_v1_of_the_same_content(fetcher, store: LocalIpfsStore) -> None:
    v0 = store.add_bytes(PNG, cid_version=0)
    v1 = store.add_bytes(PNG, cid_version=1)
    assert v0.cid.startswith("Qm") and v1.cid.startswith("baf")
    for uri in (f"ipfs://{v0.cid}", f"ipfs://{v1.cid}", f"ipfs://ipfs/{v0.cid}", f"/ipfs/{v1.cid}"):
        fetched = await fetcher.fetch(uri)
        assert (fetched.data, fetched.media_type, fetched.source) == (PNG, "image/png", "ipfs"), uri


async def test_ipfs_folder_paths_and_gateway_urls_read_from_the_store(fetcher, store, connects) -> None:
    meta = store.add_bytes(METADATA_BYTES, cid_version=1)
    image = store.add_bytes(PNG, cid_version=1)
    folder = store.add_directory([DirEntry.of("1.json", meta), DirEntry.of("1 image.png", image)], cid_version=1)
    root = folder.root.encode()
    for uri in (
        f"ipfs://{root}/1.json",
        f"https://gateway.pinata.cloud/ipfs/{root}/1.json",
        f"https://{root}.ipfs.dweb.link/1.json?filename=x",
        f"http://127.0.0.1:1/ipfs/{root}/1.json",  # rewritten, so never refused or connected to
    ):
        fetched = await fetcher.fetch(uri)
        assert (fetched.data, fetched.media_type, fetched.source) == (METADATA_BYTES, "application/json", "ipfs")
        assert fetched.final_url == f"ipfs://{root}/1.json"
    fetched = await fetcher.fetch(f"ipfs://{root}/1%20image.png")
    assert fetched.data == PNG
    assert connects == []


async def test_missing_ipfs_content_is_not_found_at_once(fetcher, store) -> None:
    absent = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    started = time.monotonic()
    await _refused(fetcher, f"ipfs://{absent}", "not-found")
    folder = store.add_directory([DirEntry.of("1.json", store.add_bytes(METADATA_BYTES))])
    await _refused(fetcher, f"ipfs://{folder.root.encode()}/2.json", "not-found")
    await _refused(fetcher, f"ipfs://{folder.root.encode()}", "bad-content")  # a folder, not a file
    assert time.monotonic() - started < 1


async def test_ipfs_size_limit_from_the_root_block(fetcher, store) -> None:
    added = store.add_bytes(b"\1" * (300 * 1024))
    error = await _refused(fetcher, f"ipfs://{added.cid}", "too-large", max_bytes=100 * 1024)
    assert str(300 * 1024) in str(error)


async def test_gateway_reader_on_a_private_address_is_trusted(http_server: Server, store, pki) -> None:
    cid = store.add_bytes(METADATA_BYTES).cid
    http_server.served.files[f"/ipfs/{cid}/1.json"] = (METADATA_BYTES, "application/json")
    async with (
        GatewayIpfsReader(http_server.base) as gateway,
        TokenFetcher(gateway, _policy(pki)) as fetcher,
    ):
        fetched = await fetcher.fetch(f"ipfs://{cid}/1.json")
        assert (fetched.data, fetched.source) == (METADATA_BYTES, "ipfs")
        await _refused(fetcher, f"ipfs://{cid}/2.json", "not-found")
    assert http_server.served.paths == [f"/ipfs/{cid}/1.json", f"/ipfs/{cid}/2.json"]


# --- Arweave --------------------------------------------------------------------------------------


async def test_arweave_through_the_configured_gateway(http_server: Server, store, pki, listener) -> None:
    other, sockets = listener
    sandboxed, escaping = "s" * 43, "e" * 43
    served = http_server.served
    served.files[f"/{TXID}/1.json"] = (METADATA_BYTES, "application/json")
    served.redirects[f"/{sandboxed}"] = f"{http_server.base}/{TXID}/1.json"  # within the gateway: trusted
    served.redirects[f"/{escaping}"] = f"http://127.0.0.1:{other}/"  # out of it: checked like any URL
    async with TokenFetcher(LocalStoreReader(store), _policy(pki, arweave_gateway=http_server.base)) as fetcher:
        fetched = await fetcher.fetch(f"ar://{TXID}/1.json")
        assert (fetched.data, fetched.media_type, fetched.source) == (METADATA_BYTES, "application/json", "arweave")
        assert fetched.final_url == f"{http_server.base}/{TXID}/1.json"
        redirected = await fetcher.fetch(f"ar://{sandboxed}")
        assert (redirected.data, redirected.source) == (METADATA_BYTES, "arweave")
        await _refused(fetcher, f"ar://{TXID}/2.json", "not-found")
        error = await _refused(fetcher, f"ar://{escaping}", "refused-address")
    assert "redirected" in str(error)
    assert _pending_connections(sockets) == 0
    # a plain http URL naming the gateway's host gets no trust: only ar:// is translated to it
    async with TokenFetcher(LocalStoreReader(store), _policy(pki, arweave_gateway=http_server.base)) as fetcher:
        await _refused(fetcher, f"{http_server.base}/{TXID}/1.json", "refused-address")


# --- refused outright -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("file:///etc/passwd", "refused-scheme"),
        ("FILE:///etc/passwd", "refused-scheme"),
        ("javascript:alert(1)", "refused-scheme"),
        ("ftp://example.org/1.json", "refused-scheme"),
        ("ipns://k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8/1.json", "refused-scheme"),
        ("", "bad-uri"),
        ("   ", "bad-uri"),
        ("1.json", "bad-uri"),
        ("/metadata/1.json", "bad-uri"),
        (" https://example.org/1.json", "bad-uri"),
        ("https://example.org/1.json\n", "bad-uri"),
        ("https://exa\u200bmple.org/1.json", "bad-uri"),
        ("https://user:secret@example.org/1.json", "bad-uri"),
        ("ipfs://not-a-cid/1.json", "bad-uri"),
        ("ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/../etc", "bad-uri"),
        ("ar://short/1.json", "bad-uri"),
    ],
)
async def test_refused_uris_fetch_nothing(fetcher, connects, uri, reason) -> None:
    await _refused(fetcher, uri, reason)
    assert connects == []


def test_classify_uri_for_layout_detection() -> None:
    folder = "bafybeibml5uieyxa5tufngvg7fgwbkwvlsuntwbxgtskoqynbt7wlchmfm"
    parsed = classify_uri(f"ipfs://{folder}/17.json")
    assert (parsed.kind, parsed.cid, parsed.path, parsed.via_gateway) == ("ipfs", folder, "17.json", False)
    gateway = classify_uri(f"https://ipfs.io/ipfs/{folder}/17.json")
    assert (gateway.kind, gateway.cid, gateway.path, gateway.host, gateway.via_gateway) == (
        "ipfs",
        folder,
        "17.json",
        "ipfs.io",
        True,
    )
    web = classify_uri("HTTPS://API.Example.org/meta/17")
    assert (web.kind, web.host, web.path, web.url) == (
        "http",
        "api.example.org",
        "meta/17",
        "https://api.example.org/meta/17",
    )
    arweave = classify_uri(f"ar://{TXID}/17.json")
    assert (arweave.kind, arweave.txid, arweave.path) == ("arweave", TXID, "17.json")
    assert classify_uri("data:application/json,{}").kind == "data"
