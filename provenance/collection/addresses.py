"""Which addresses a hostile token URI may reach, and a connection backend that enforces it.

Judged on resolved addresses with `ipaddress`, never on the URL's text: a name is resolved once,
every address it gives is checked, and the connection goes to one of those vetted addresses
(`VettedBackend`), so a DNS answer that changes between check and connect (rebinding) changes
nothing. TLS still verifies the certificate for the name: httpcore passes the URL's host as SNI.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx

from .fetch_errors import RefusedAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def refusal(address: IPAddress) -> str | None:
    """Why a token fetch may not connect to `address` (None: a public unicast address)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        why = refusal(embedded)
        if why is not None:
            return f"{why}, embedded in {address}"
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata services live at 169.254.169.254)"),
        (address.is_multicast, "multicast"),
        (address in _CGNAT, "shared address space (CGNAT, 100.64.0.0/10)"),
        (_mapped_or_compatible(address), "an IPv4-mapped or IPv4-compatible IPv6 address"),
        (address.is_reserved, "reserved or broadcast"),
        (address.is_private, "a private network"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "IPv6 site-local"),
        (not address.is_global, "not globally routable"),
    )
    return next((why for refused, why in checks if refused), None)


def _mapped_or_compatible(address: IPAddress) -> bool:
    return isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None or (address in _IPV4_COMPATIBLE and int(address) > 1)
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped, compatible, 6to4, Teredo client or NAT64."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if (address in _IPV4_COMPATIBLE and int(address) > 1) or any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def odd_ipv4_spelling(host: str) -> ipaddress.IPv4Address | None:
    """The address a non-canonical IPv4 spelling means ("2130706433", "127.1", "0x7f.1", "0177.0.0.1").

    The C resolver reads these as addresses; a name never looks like one (no top-level domain is numeric).
    """
    text = host.removesuffix(".")
    try:
        address = ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None
    return None if str(address) == text else address


def parse_address(host: str) -> IPAddress | None:
    """The address an IP literal host names (brackets and an IPv6 zone allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class PrivateAccess:
    """Which hosts may be private: any (`allow_all`), or exact hosts and host:port pairs as written in URLs."""

    allow_all: bool = False
    hosts: frozenset[str] = frozenset()  # normalised: lower case, IPv6 without brackets, canonical IPs
    host_ports: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str], allow_all: bool = False) -> PrivateAccess:
        """Entries like "gateway.lan", "gateway.lan:8080", "10.0.0.5:443", "[fd00::1]:8443", "::1"."""
        hosts: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        for entry in entries:
            host, port = _split_entry(entry)
            if port is None:
                hosts.add(host)
            else:
                host_ports.add((host, port))
        return cls(allow_all, frozenset(hosts), frozenset(host_ports))

    def allows(self, host: str, port: int) -> bool:
        key = normalise_host(host)
        return self.allow_all or key in self.hosts or (key, port) in self.host_ports

    def check(self, host: str, port: int, addresses: Iterable[IPAddress]) -> None:
        """Raise RefusedAddress unless every address is public or the host is allowed to be private."""
        if self.allows(host, port):
            return
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise RefusedAddress(refused_message(host, port, address, why))


def normalise_host(host: str) -> str:
    address = parse_address(host)
    return str(address) if address is not None else host.lower().removesuffix(".")


def _split_entry(entry: str) -> tuple[str, int | None]:
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host:
        raise ValueError(f"allow_private_hosts entry {entry!r} has no host")
    if port is not None and not port.isdigit():
        raise ValueError(f"allow_private_hosts entry {entry!r}: the port must be a number")
    return normalise_host(host), int(port) if port is not None else None


def refused_message(host: str, port: int, address: IPAddress, why: str) -> str:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    # what a name resolves to is not said: the answer would let anyone map the server's network
    if parse_address(host) != address:
        why = "it resolves to an address that is not public"
    return (
        f"refused {where}: {why}. Token URIs come from a public chain and may not reach "
        f"private networks. If this host is yours and trusted, add {where!r} (or just the host) to "
        f"the fetch policy's allow_private_hosts, or set allow_private"
    )


def addresses_of(host: str, infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    """The distinct addresses getaddrinfo gave for `host`, in its order (none: a ConnectError)."""
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return addresses


class VettedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves once, checks every address, then connects to the IP.

    httpcore hands it the URL's host; TLS is started later by httpcore with that host as SNI and
    for certificate verification, so only the TCP destination is pinned to the vetted address.
    """

    def __init__(self, access: PrivateAccess, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._access = access
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        self._access.check(host, port, addresses)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # _resolve never returns an empty list
        raise failure

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = parse_address(host)
        if literal is not None:
            return [literal]
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        return addresses_of(host, infos)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("token fetches never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class VettedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool built on `VettedBackend`.

    httpx (0.28/0.29) takes no network backend, so the pool it made is replaced by an identical
    one that has ours; the check below makes an httpx that renames `_pool` fail loudly here
    instead of silently connecting without the address checks.
    """

    def __init__(self, access: PrivateAccess, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version keeps no httpcore pool in _pool; VettedTransport needs updating")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=100,
            # one request per connection: hostile hosts gain nothing from reuse, and a connection the
            # server already closed can never be picked up again (a stale keep-alive fails mid-request)
            max_keepalive_connections=0,
            network_backend=VettedBackend(access),
        )
