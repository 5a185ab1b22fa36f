"""What a token URI names, read off its text alone (no network): `classify_uri`.

Accepted: `ipfs://<cid>[/path]` (also the common `ipfs://ipfs/<cid>` mistake and a bare
`/ipfs/<cid>/...`), gateway URLs `http(s)://<any host>/ipfs/<cid>/...` and subdomain gateways
`http(s)://<cid>.ipfs.<host>/...` (both read as IPFS, never from that host), other
`http(s)://` URLs, `data:` and `ar://<txid>[/path]`. Everything else is refused with a reason.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

import httpx

from ..cid import Cid
from ..errors import InvalidCid
from .fetch_errors import BadUri, RefusedScheme

UriKind = Literal["ipfs", "http", "data", "arweave"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_ARWEAVE_TXID = re.compile(r"[A-Za-z0-9_-]{43}")
#: one DNS label as it reaches the resolver (IDNA already applied); "_" occurs in real host names
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
#: character classes no honest URI contains: controls, format characters (zero-width, bidi), spaces
_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


@dataclass(frozen=True)
class ParsedUri:
    """A token URI taken apart. `path` has no leading slash; for IPFS and Arweave it is decoded."""

    kind: UriKind
    uri: str
    cid: str | None = None  # IPFS: the CID as written (validated)
    path: str = ""
    host: str | None = None  # http: the host (lower case, IDNA); IPFS via a gateway URL: that gateway
    port: int | None = None  # http: the port as written (None: the scheme's default)
    url: str | None = None  # http: the URL to request
    txid: str | None = None  # Arweave: the transaction id

    @property
    def via_gateway(self) -> bool:
        """An http(s) gateway URL that is read through IPFS instead of from its host."""
        return self.kind == "ipfs" and self.host is not None


def classify_uri(uri: str) -> ParsedUri:
    """Take a token URI apart; raises BadUri or RefusedScheme (never touches the network)."""
    if not isinstance(uri, str) or not uri.strip():
        raise BadUri("the token URI is empty", uri=uri if isinstance(uri, str) else None)
    if _invisible(uri[0]):
        raise BadUri("the token URI starts with whitespace or a control character", uri=uri)
    match = _SCHEME.match(uri)
    scheme = match.group()[:-1].lower() if match else None
    if scheme == "data":
        # on-chain JSON often carries raw spaces and newlines in its payload: only the header is strict
        if any(_invisible(char) and char != " " for char in uri.partition(",")[0]):
            raise BadUri("the data: URI's media type holds control characters", uri=uri)
        return ParsedUri("data", uri)
    if any(_invisible(char) for char in uri):
        raise BadUri("the token URI holds whitespace or invisible/control characters", uri=uri)
    if uri.startswith("/ipfs/"):
        return _ipfs(uri, uri[len("/ipfs/") :])
    if scheme is None:
        raise BadUri(
            "a relative reference is not a token URI: it must be absolute (ipfs://, https://, ar:// or data:)",
            uri=uri,
        )
    rest = uri[len(scheme) + 1 :]
    if scheme == "ipfs":
        if not rest.startswith("//"):
            raise BadUri("an ipfs URI is written ipfs://<cid>[/path]", uri=uri)
        rest = rest[2:]
        return _ipfs(uri, rest[len("ipfs/") :] if rest.startswith("ipfs/") else rest)
    if scheme == "ar":
        return _arweave(uri, rest)
    if scheme in ("http", "https"):
        return _http(uri)
    if scheme == "ipns":
        raise RefusedScheme("ipns:// names are mutable pointers; only content-addressed ipfs:// URIs are read", uri=uri)
    raise RefusedScheme(
        f"the {scheme}: scheme is never fetched (only ipfs://, https://, http://, ar:// and data:)", uri=uri
    )


def has_scheme(text: str) -> bool:
    """Whether `text` starts with a URI scheme ("https:", "file:", ...) rather than being relative."""
    return _SCHEME.match(text) is not None


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in _INVISIBLE


def _strip_query(text: str) -> str:
    # queries and fragments mean nothing to content-addressed storage (gateways add ?filename=...)
    return text.split("#", 1)[0].split("?", 1)[0]


def _decoded_path(uri: str, raw: str) -> str:
    segments = []
    for segment in raw.split("/"):
        if not segment:
            continue
        name = unquote(segment, errors="strict")
        if name in (".", "..") or "/" in name or "\x00" in name:
            raise BadUri(f"the path segment {segment!r} cannot name a file", uri=uri)
        segments.append(name)
    return "/".join(segments)


def _ipfs(uri: str, rest: str, *, host: str | None = None, port: int | None = None) -> ParsedUri:
    cid_text, _, raw_path = _strip_query(rest).partition("/")
    try:
        Cid.parse(cid_text)
    except InvalidCid as exc:
        raise BadUri(f"{cid_text!r} is not a CID ({exc})", uri=uri) from None
    try:
        path = _decoded_path(uri, raw_path)
    except UnicodeDecodeError:
        raise BadUri("the IPFS path is not valid percent-encoded UTF-8", uri=uri) from None
    return ParsedUri("ipfs", uri, cid=cid_text, path=path, host=host, port=port)


def _arweave(uri: str, rest: str) -> ParsedUri:
    if not rest.startswith("//"):
        raise BadUri("an Arweave URI is written ar://<transaction id>[/path]", uri=uri)
    txid, _, raw_path = _strip_query(rest[2:]).partition("/")
    if not _ARWEAVE_TXID.fullmatch(txid):
        raise BadUri(f"{txid!r} is not an Arweave transaction id (43 base64url characters)", uri=uri)
    try:
        path = _decoded_path(uri, raw_path)
    except UnicodeDecodeError:
        raise BadUri("the Arweave path is not valid percent-encoded UTF-8", uri=uri) from None
    return ParsedUri("arweave", uri, path=path, txid=txid)


def _http(uri: str) -> ParsedUri:
    try:
        url = httpx.URL(uri)
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadUri(f"not a valid URL ({exc})", uri=uri) from None
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise BadUri("the URL has no host", uri=uri)
    if url.userinfo:
        raise BadUri("credentials in a token URL are refused (user:password@host)", uri=uri)
    if ":" not in host and not all(_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise BadUri(f"{host!r} is not a valid host name", uri=uri)
    gateway = _gateway_ipfs(uri, url, host)
    if gateway is not None:
        return gateway
    return ParsedUri("http", uri, path=url.path.lstrip("/"), host=host, port=url.port, url=str(url))


def _gateway_ipfs(uri: str, url: httpx.URL, host: str) -> ParsedUri | None:
    """A path gateway (`/ipfs/<cid>/...`) or subdomain gateway (`<cid>.ipfs.<host>`) URL, read as IPFS."""
    raw_path = url.raw_path.decode("ascii")
    labels = host.split(".")
    if len(labels) > 2 and labels[1] == "ipfs" and _is_cid(labels[0]):
        rest = labels[0] + raw_path
    elif raw_path.startswith("/ipfs/") and _is_cid(raw_path[len("/ipfs/") :].split("/", 1)[0].split("?", 1)[0]):
        rest = raw_path[len("/ipfs/") :]
    else:
        return None  # an ordinary URL that happens to look gateway-ish: fetched from its host
    return _ipfs(uri, rest, host=host, port=url.port)


def _is_cid(text: str) -> bool:
    try:
        Cid.parse(text)
    except InvalidCid:
        return False
    return True
