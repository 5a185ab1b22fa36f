"""One HTTP GET with a byte limit, and httpx's failures turned into FetchErrors.

Shared by the token fetcher (hostile URLs) and the operator's trusted gateways; redirects are
returned, never followed here, so each caller decides which hops it accepts.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx

from .fetch_errors import (
    BadContent,
    BadUri,
    FetchTimeout,
    HttpStatusError,
    NotFound,
    TlsError,
    TooLarge,
    Unreachable,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: no keep-alive: a connection a server closed without saying so is never picked up again (it
#: would fail mid-request); a collection's fetches gain little from reuse
ONE_REQUEST_PER_CONNECTION = httpx.Limits(max_keepalive_connections=0)


@dataclass(frozen=True)
class Body:
    data: bytes
    media_type: str | None
    charset: str | None
    url: str


@dataclass(frozen=True)
class Redirect:
    location: str
    url: str  # the URL that answered with the redirect


def ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """The public CAs (certifi), plus the operator's own CA bundle when one is given."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def parse_content_type(value: str | None) -> tuple[str | None, str | None]:
    """(media type in lower case without parameters, charset) of a Content-Type header."""
    if not value:
        return None, None
    essence, *params = (part.strip() for part in value.split(";"))
    charset = None
    for param in params:
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = param_value.strip().strip('"').lower() or None
    return (essence.lower() or None), charset


class HttpGetter:
    """GETs one URL straight over a transport, below httpx's client layer.

    The client layer is skipped on purpose: it parses every Location itself (and fails on a
    hostile one), keeps cookies and reads proxies from the environment. Here redirects come
    back as `Redirect` for the caller to judge; nothing is remembered between requests.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, *, timeout: httpx.Timeout, user_agent: str) -> None:
        self._transport = transport
        self._timeout = timeout
        self._headers = {"User-Agent": user_agent, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def get_once(self, url: str, limit: int, *, uri: str | None = None) -> Body | Redirect:
        """GET `url`: its body (at most `limit` bytes, else TooLarge), or where it redirects to."""
        with transport_errors(url, uri):
            request = httpx.Request("GET", url, headers=self._headers, extensions={"timeout": self._timeout.as_dict()})
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                return await _outcome(response, url, limit, uri)
            finally:
                await response.aclose()


async def _outcome(response: httpx.Response, url: str, limit: int, uri: str | None) -> Body | Redirect:
    status = response.status_code
    if status in REDIRECT_STATUSES:
        location = response.headers.get("location")
        if not location:
            raise HttpStatusError(f"{url} answered HTTP {status} without a Location", status, uri=uri)
        return Redirect(location, url)
    if status in (404, 410):
        raise NotFound(f"{url} answered HTTP {status}: nothing is there", uri=uri)
    if not 200 <= status < 300 or status in (204, 206):
        raise HttpStatusError(f"{url} answered HTTP {status} {response.reason_phrase}", status, uri=uri)
    data = await read_limited(response, limit, uri)
    media_type, charset = parse_content_type(response.headers.get("content-type"))
    return Body(data, media_type, charset, url)


async def read_limited(response: httpx.Response, limit: int, uri: str | None) -> bytes:
    """The body, stopping as soon as it passes `limit` (a declared length above it is refused unread).

    Read raw and decoded here, never by httpx: its decoders inflate a whole network chunk at once,
    which a compression bomb turns into gigabytes. Ours inflate at most one byte past the limit.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decoder = _decoder(encoding, str(response.url), uri)
    declared = response.headers.get("content-length")
    if decoder is None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{response.url} declares {declared} bytes; this fetch allows {limit}", uri=uri)
    too_large = f"{response.url} sent more than {limit} bytes, the limit for this fetch"
    body = bytearray()
    try:
        async for raw in response.aiter_raw():
            room = limit - len(body)
            piece = decoder.decompress(raw, room + 1) if decoder is not None else raw
            if len(piece) > room:
                raise TooLarge(too_large, uri=uri)
            body += piece
        if decoder is not None:
            body += decoder.flush()
    except zlib.error as exc:
        raise BadContent(f"{response.url} sent a body that does not decompress ({exc})", uri=uri) from None
    if len(body) > limit:
        raise TooLarge(too_large, uri=uri)
    return bytes(body)


def _decoder(encoding: str, url: str, uri: str | None) -> zlib._Decompress | None:
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip framing, detected
    raise BadContent(f"{url} sent Content-Encoding {encoding!r}; only gzip and deflate are read", uri=uri)


@contextmanager
def transport_errors(url: str, uri: str | None) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise FetchTimeout(f"{url} timed out ({type(exc).__name__})", uri=uri) from None
    except httpx.ConnectError as exc:
        if _caused_by_tls(exc):
            raise TlsError(
                f"TLS with {url} failed ({exc}). If this is your own server with a private CA, "
                "set the fetch policy's ca_bundle to that CA's PEM file",
                uri=uri,
            ) from None
        raise Unreachable(f"cannot connect to {url} ({exc})", uri=uri) from None
    except httpx.TransportError as exc:
        raise Unreachable(f"{url} failed mid-transfer ({type(exc).__name__}: {exc})", uri=uri) from None
    except httpx.InvalidURL as exc:
        raise BadUri(f"{url} is not a valid URL ({exc})", uri=uri) from None


def _caused_by_tls(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
