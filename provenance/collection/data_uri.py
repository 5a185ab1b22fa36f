"""`data:` URIs (RFC 2397), as on-chain collections write them.

`data:[<media type>][;charset=<c>][;base64],<payload>`. The payload is percent-decoded; base64 is
then read the forgiving way browsers read it (ASCII whitespace ignored, padding optional, but a
length that cannot be base64 is refused). The bare `;utf8` many contracts write means UTF-8.
The size limit applies to the decoded bytes and is checked before decoding where it can be.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .fetch_errors import BadUri, TooLarge

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*")
_WHITESPACE = re.compile(rb"[\t\n\f\r ]+")


@dataclass(frozen=True)
class DataContent:
    data: bytes
    media_type: str  # lower case, without parameters
    charset: str | None


def decode_data_uri(uri: str, max_bytes: int) -> DataContent:
    """The bytes, media type and charset of a `data:` URI; BadUri or TooLarge when it cannot be used."""
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise BadUri("a data: URI needs a ',' between its media type and its data", uri=uri)
    params = [part.strip() for part in header.split(";")]
    media_type, params = params[0].lower(), params[1:]
    is_base64 = bool(params) and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    charset = None
    for param in params:
        name, equals, value = param.partition("=")
        if equals and name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower() or None
        elif not equals and name.lower() in ("utf8", "utf-8"):
            charset = "utf-8"
    if not media_type:
        media_type, charset = "text/plain", charset or "us-ascii"
    elif not _MEDIA_TYPE.fullmatch(media_type):
        raise BadUri(f"{media_type!r} is not a media type (type/subtype)", uri=uri)
    if len(payload) > 3 * max_bytes + 3 and not is_base64:
        # percent-encoding at most triples a byte: this many characters cannot fit
        raise TooLarge(_too_large(max_bytes), uri=uri)
    raw = unquote_to_bytes(payload)
    data = _forgiving_base64(uri, raw, max_bytes) if is_base64 else raw
    if len(data) > max_bytes:
        raise TooLarge(_too_large(max_bytes), uri=uri)
    return DataContent(data, media_type, charset)


def _too_large(max_bytes: int) -> str:
    return f"the data: URI decodes to more than {max_bytes} bytes, the limit for this fetch"


def _forgiving_base64(uri: str, raw: bytes, max_bytes: int) -> bytes:
    text = _WHITESPACE.sub(b"", raw)
    if len(text) % 4 == 0:
        text = text.removesuffix(b"=").removesuffix(b"=")
    if len(text) % 4 == 1 or not _BASE64.fullmatch(text):
        raise BadUri("the data: URI's base64 payload is malformed (bad characters or padding)", uri=uri)
    if len(text) * 3 // 4 > max_bytes:
        raise TooLarge(_too_large(max_bytes), uri=uri)
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise BadUri(f"the data: URI's base64 payload is malformed ({exc})", uri=uri) from None
