"""A JSON-RPC provider for chains a caller names: the RPC URL is hostile input like a token URI.

`POST /v1/collections/plan` takes the RPC URL from whoever calls it, so the server must not
become a way into its own network: the host is resolved once, every address checked with the
same rules as token fetches (loopback, private, link-local... refused unless the operator
allows the host), and the connection goes to the vetted address (no DNS rebinding). Responses
are size-limited and the call has a deadline. CCIP-read (EIP-3668, where a contract's revert
makes web3 fetch URLs the contract chose) is off for every call the collection reader makes.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from web3 import Web3
from web3.providers import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from .addresses import (
    IPAddress,
    PrivateAccess,
    addresses_of,
    odd_ipv4_spelling,
    parse_address,
    refusal,
    refused_message,
)
from .fetch_errors import FetchError, RefusedAddress, RefusedScheme
from .httpio import ssl_context

MAX_RESPONSE_BYTES = 4 << 20
DEADLINE = 20.0


class VettedSyncBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses the access rules allow."""

    def __init__(self, access: PrivateAccess) -> None:
        self._access = access
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port)
        self._access.check(host, port, addresses)
        failure: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = parse_address(host)
        if literal is not None:
            return [literal]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        return addresses_of(host, infos)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise httpcore.ConnectError("RPC calls never use Unix sockets")


def check_rpc_url(url: str, access: PrivateAccess) -> httpx.URL:
    """The URL parsed, refused before any connection when its scheme or literal address is not allowed."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise RefusedScheme(f"{url!r} is not an RPC URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo:
        raise RefusedScheme(f"{url!r}: an RPC URL is http(s)://host[:port]/path, without credentials")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if odd_ipv4_spelling(parsed.host) is not None:
        raise RefusedAddress(f"{parsed.host!r} spells an IPv4 address in a non-canonical way")
    literal = parse_address(parsed.host)
    if literal is not None and not access.allows(parsed.host, port) and (why := refusal(literal)):
        raise RefusedAddress(refused_message(parsed.host, port, literal, why))
    return parsed


class VettedRpcProvider(JSONBaseProvider):
    """JSON-RPC over HTTP(S) through `VettedSyncBackend`, one bounded POST per call."""

    def __init__(self, url: str, access: PrivateAccess, *, ca_bundle: str | None = None) -> None:
        super().__init__()
        self.url = check_rpc_url(url, access)
        self.global_ccip_read_enabled = False
        context: ssl.SSLContext = ssl_context(ca_bundle)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=VettedSyncBackend(access))

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        timeout = {"connect": 5.0, "read": DEADLINE, "write": DEADLINE, "pool": DEADLINE}
        headers = [(b"Content-Type", b"application/json"), (b"Host", self.url.netloc)]
        deadline = time.monotonic() + DEADLINE
        try:
            with self._pool.stream(
                "POST", str(self.url), headers=headers, content=body, extensions={"timeout": timeout}
            ) as response:
                data = bytearray()
                for chunk in response.iter_stream():
                    data += chunk
                    if time.monotonic() > deadline:  # a server trickling bytes never resets the clock
                        raise ConnectionError(f"the RPC did not answer within {DEADLINE:g} s")
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise ConnectionError(f"the RPC answer exceeds {MAX_RESPONSE_BYTES} bytes")
                if response.status >= 400:
                    raise ConnectionError(f"the RPC answered HTTP {response.status}")
        except FetchError:
            raise
        except httpcore.TimeoutException as exc:
            raise ConnectionError(f"the RPC did not answer in time: {exc}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
            # refused, reset, closed mid-answer, not HTTP (httpcore's errors share no base of their own)
            raise ConnectionError(f"the RPC cannot be reached: {type(exc).__name__}") from None
        try:
            return self.decode_rpc_response(bytes(data))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ConnectionError(f"the RPC answer is not JSON-RPC: {exc}") from None

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            return "result" in self.make_request(RPCEndpoint("web3_clientVersion"), [])
        except (ConnectionError, FetchError):
            return False

    def close(self) -> None:
        self._pool.close()


def vetted_web3(url: str, access: PrivateAccess, *, ca_bundle: str | None = None) -> Web3:
    return Web3(VettedRpcProvider(url, access, ca_bundle=ca_bundle))
