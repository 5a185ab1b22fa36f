"""Fetching NFT token URIs (metadata JSON, images) safely: every URI is hostile input.

    async with TokenFetcher(LocalStoreReader(store), FetchPolicy()) as fetcher:
        fetched = await fetcher.fetch(token_uri, max_bytes=METADATA_MAX_BYTES)

- `ipfs://`, `/ipfs/...` and gateway-style http(s) URLs are read through the injected
  `IpfsReader` (the local store, or the operator's gateway), never from the URL's host.
- `https://`/`http://` go through httpx with a connection backend that resolves the host once,
  refuses loopback/private/link-local/... addresses and connects to the vetted IP (see
  `addresses`). Redirects are followed here, each hop checked again (scheme and address).
- `data:` is decoded locally; `ar://` goes through the operator's Arweave gateway.
- Every fetch has a byte limit (checked on Content-Length, then while streaming) and one total
  deadline covering resolution, connection, redirects and the whole body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx

from .addresses import (
    PrivateAccess,
    VettedTransport,
    odd_ipv4_spelling,
    parse_address,
    refusal,
    refused_message,
)
from .data_uri import decode_data_uri
from .fetch_errors import FetchError, FetchTimeout, RefusedAddress, RefusedScheme, TooLarge, TooManyRedirects
from .httpio import ONE_REQUEST_PER_CONNECTION, Body, HttpGetter, Redirect, ssl_context
from .ipfs_readers import IpfsReader
from .media import sniff_media_type
from .uris import ParsedUri, classify_uri, has_scheme

#: sized for NFT metadata documents and their images
METADATA_MAX_BYTES = 1 << 20
IMAGE_MAX_BYTES = 32 << 20

Source = Literal["ipfs", "http", "data", "arweave"]


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and trust for token fetches; `fetch()` may narrow the byte limit and deadline per call."""

    max_bytes: int = IMAGE_MAX_BYTES
    deadline: float = 20.0  # seconds for the whole fetch, redirects and body included
    connect_timeout: float = 5.0
    max_redirects: int = 5
    #: reach private addresses anyway: hosts as written in URLs, "host" or "host:port"
    #: ("gateway.lan", "10.0.0.5:8080", "[fd00::1]:443"); or every host with allow_private
    allow_private_hosts: frozenset[str] = frozenset()
    allow_private: bool = False
    #: a PEM bundle of extra CAs trusted for TLS (beside the public ones), e.g. a private CA
    ca_bundle: str | Path | None = None
    #: where ar:// is read (operator-configured, so trusted even on a private address)
    arweave_gateway: str = "https://arweave.net"
    user_agent: str = "satscale-token-fetch/1"


@dataclass(frozen=True)
class Fetched:
    data: bytes
    media_type: str | None  # lower case, no parameters ("application/json", "image/png")
    uri: str  # the token URI as asked
    final_url: str | None  # where the bytes came from (after redirects; ipfs://<cid>/<path> for IPFS)
    source: Source
    charset: str | None = None


@dataclass(frozen=True)
class _Hop:
    target: ParsedUri
    source: Source
    trusted: bool = False  # a URL of the operator's Arweave gateway: no address checks


class TokenFetcher:
    """Fetches token URIs under one `FetchPolicy`; safe to share between concurrent tasks."""

    def __init__(self, ipfs: IpfsReader, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self.ipfs = ipfs
        self._access = PrivateAccess.from_entries(self.policy.allow_private_hosts, self.policy.allow_private)
        self._arweave = httpx.URL(self.policy.arweave_gateway.rstrip("/") + "/")
        context = ssl_context(self.policy.ca_bundle)
        timeout = httpx.Timeout(self.policy.deadline, connect=self.policy.connect_timeout)
        agent = self.policy.user_agent
        self._hostile = HttpGetter(VettedTransport(self._access, context), timeout=timeout, user_agent=agent)
        trusted = httpx.AsyncHTTPTransport(verify=context, trust_env=False, limits=ONE_REQUEST_PER_CONNECTION)
        self._trusted = HttpGetter(trusted, timeout=timeout, user_agent=agent)

    async def __aenter__(self) -> TokenFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._hostile.aclose()
        await self._trusted.aclose()

    async def fetch(self, uri: str, *, max_bytes: int | None = None, deadline: float | None = None) -> Fetched:
        """The content `uri` names, at most `max_bytes` bytes, within `deadline` seconds (policy defaults).

        Raises a FetchError subclass; its `reason` says which kind of failure it is."""
        limit = self.policy.max_bytes if max_bytes is None else max_bytes
        seconds = self.policy.deadline if deadline is None else deadline
        if limit <= 0 or seconds <= 0:
            raise ValueError("max_bytes and deadline must be positive")
        parsed = classify_uri(uri)
        try:
            async with asyncio.timeout(seconds):
                return await self._follow(uri, parsed, limit)
        except TimeoutError:
            raise FetchTimeout(
                f"{uri} was not fetched within {seconds:g} s, this fetch's deadline: the server or gateway "
                "is too slow or sends too little at a time",
                uri=uri,
            ) from None
        except FetchError as exc:
            if exc.uri is None:
                exc.uri = uri
            raise

    async def _follow(self, uri: str, parsed: ParsedUri, limit: int) -> Fetched:
        if parsed.kind == "data":
            content = decode_data_uri(uri, limit)
            return Fetched(content.data, content.media_type, uri, None, "data", content.charset)
        if parsed.kind == "arweave":
            hop = _Hop(self._arweave_target(parsed), "arweave", trusted=True)
        else:
            hop = _Hop(parsed, "ipfs" if parsed.kind == "ipfs" else "http")
        via: str | None = None  # the URL that redirected to this hop
        for _ in range(self.policy.max_redirects + 1):
            try:
                if hop.target.kind == "ipfs":
                    return await self._read_ipfs(uri, hop.target, limit)
                result = await self._get(uri, hop, limit)
            except FetchError as exc:
                if via is not None:
                    exc.within(f"{via} redirected to {hop.target.uri}")
                raise
            if isinstance(result, Body):
                media_type = result.media_type
                if media_type in (None, "application/octet-stream"):
                    media_type = sniff_media_type(result.data, hop.target.path) or media_type
                return Fetched(result.data, media_type, uri, result.url, hop.source, result.charset)
            hop, via = self._redirected(uri, hop, result), result.url
        raise TooManyRedirects(f"{uri} redirected more than {self.policy.max_redirects} times", uri=uri)

    async def _read_ipfs(self, uri: str, target: ParsedUri, limit: int) -> Fetched:
        assert target.cid is not None
        data = await self.ipfs.read(target.cid, target.path, limit)
        if len(data) > limit:  # a reader that ignored its limit
            raise TooLarge(f"ipfs://{target.cid}/{target.path} is over {limit} bytes", uri=uri)
        final = f"ipfs://{target.cid}" + (f"/{quote(target.path)}" if target.path else "")
        return Fetched(data, sniff_media_type(data, target.path), uri, final, "ipfs")

    async def _get(self, uri: str, hop: _Hop, limit: int) -> Body | Redirect:
        target = hop.target
        assert target.url is not None
        if not hop.trusted:
            self._precheck(uri, target)
        return await (self._trusted if hop.trusted else self._hostile).get_once(target.url, limit, uri=uri)

    def _precheck(self, uri: str, target: ParsedUri) -> None:
        """Refuse IP literals and odd IPv4 spellings before any socket; names are checked once resolved."""
        assert target.host is not None and target.url is not None
        port = target.port or (443 if target.url.startswith("https:") else 80)
        if self._access.allows(target.host, port):
            return
        literal = parse_address(target.host)
        if literal is not None:
            why = refusal(literal)
            if why is not None:
                raise RefusedAddress(refused_message(target.host, port, literal, why), uri=uri)
        odd = odd_ipv4_spelling(target.host)
        if odd is not None:
            raise RefusedAddress(
                f"{target.host!r} is a non-canonical spelling of the IPv4 address {odd}, a classic way past "
                "address filters; token URLs must write addresses as a.b.c.d",
                uri=uri,
            )

    def _redirected(self, uri: str, hop: _Hop, redirect: Redirect) -> _Hop:
        location = redirect.location
        try:
            text = location if has_scheme(location) else str(httpx.URL(redirect.url).join(location))
            target = classify_uri(text)
        except (FetchError, httpx.InvalidURL) as exc:
            why = exc.message if isinstance(exc, FetchError) else str(exc)
            kind = type(exc) if isinstance(exc, FetchError) else RefusedScheme
            raise kind(f"{redirect.url} redirected to {location!r}, refused: {why}", uri=uri) from None
        if target.kind not in ("http", "ipfs"):
            raise RefusedScheme(
                f"{redirect.url} redirected to {location!r}: a redirect may lead only to http(s) or ipfs", uri=uri
            )
        if target.kind == "ipfs":
            return _Hop(target, "ipfs")
        if hop.trusted and self._in_arweave_gateway(target):
            return _Hop(target, hop.source, trusted=True)
        return _Hop(target, "http")

    def _arweave_target(self, parsed: ParsedUri) -> ParsedUri:
        suffix = "/" + quote(parsed.path, safe="/") if parsed.path else ""
        url = self._arweave.join(f"{parsed.txid}{suffix}")
        host = url.raw_host.decode("ascii")
        return ParsedUri("http", str(url), path=url.path.lstrip("/"), host=host, port=url.port, url=str(url))

    def _in_arweave_gateway(self, target: ParsedUri) -> bool:
        """The gateway's own host or a subdomain (arweave.net redirects to per-transaction sandboxes)."""
        host, base = target.host or "", self._arweave.raw_host.decode("ascii")
        return (host == base or host.endswith("." + base)) and target.port == self._arweave.port
