"""L402 tokens the way Lightning Labs' Aperture makes them: macaroons bound to a payment hash.

The server answers an unpaid request with one challenge every client in use parses:
`WWW-Authenticate: L402 macaroon="<b64>", invoice="<bolt11>", version="0", token="<b64>"`
(see `challenge_header`).
Once the invoice is paid, the client retries with `Authorization: L402 <b64>:<hex preimage>`; the server
checks the macaroon against its root key and that the preimage hashes to the payment hash the token carries.

Macaroon identifier (66 bytes): 2-byte big-endian version 0, 32-byte payment hash, 32-byte token id.
Each token has its own random 32-byte root key, stored under sha256(identifier), as Aperture's secret store does.
The macaroon travels in the binary V2 format, base64 with the standard alphabet and padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from pymacaroons import MACAROON_V2, Macaroon, Verifier
from pymacaroons.serializers.binary_serializer import BinarySerializer

SERVICE = "satscale"
TIER = 0
CAPABILITY = "upscale"

LOCATION = SERVICE
IDENTIFIER_VERSION = 0
IDENTIFIER_LENGTH = 2 + 32 + 32

COND_SERVICES = "services"
COND_CAPABILITIES = f"{SERVICE}_capabilities"
COND_VALID_UNTIL = f"{SERVICE}_valid_until"
COND_REQUEST = f"{SERVICE}_request"

SCHEMES = ("L402", "LSAT")  # preferred first; LSAT is the scheme's old name

_B64_CHARS = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_PREIMAGE_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]+")  # int() alone would also take "+5", " 5", "5_0" and non-ASCII digits
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


class L402Error(Exception):
    """Base class of every L402 failure. The HTTP layer answers each one with 401 and a fresh challenge."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedCredential(L402Error):
    """The Authorization header or the macaroon in it cannot be decoded."""


class MalformedChallenge(L402Error):
    """A WWW-Authenticate header holds no usable L402 challenge."""


class InvalidToken(L402Error):
    """The macaroon decodes but was not issued by us, was altered, or carries a caveat we do not grant."""


class TokenExpired(L402Error):
    """A valid_until caveat lies in the past."""


class RequestMismatch(L402Error):
    """The token pays for a different input or different parameters."""


class PreimageMismatch(L402Error):
    """The preimage does not hash to the token's payment hash: it pays some other invoice."""


class MissingPreimage(L402Error):
    """The credential carries no preimage, and this request needs proof of payment."""


class RootKeyStore(Protocol):
    """Where per-token root keys live. key_id is sha256(macaroon identifier)."""

    def put(self, key_id: bytes, root_key: bytes) -> None: ...

    def get(self, key_id: bytes) -> bytes | None: ...


class MemoryRootKeyStore:
    """Root keys in a dict: for tests and embedded use. Keys are lost with the process."""

    def __init__(self) -> None:
        self._keys: dict[bytes, bytes] = {}

    def put(self, key_id: bytes, root_key: bytes) -> None:
        # A root key never changes once a token carries it; a second put for the same id is a bug.
        if key_id in self._keys:
            raise ValueError(f"a root key is already stored under {key_id.hex()}")
        self._keys[key_id] = root_key

    def get(self, key_id: bytes) -> bytes | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class MintedToken:
    macaroon: str  # binary V2, standard base64 with padding
    token_id: bytes  # 32 random bytes
    identifier: bytes  # 66 bytes: version, payment hash, token id


@dataclass(frozen=True)
class Challenge:
    macaroon: str
    invoice: str  # BOLT11
    scheme: str  # "L402" or "LSAT"


@dataclass(frozen=True)
class Credential:
    macaroon: str
    preimage: bytes | None  # 32 bytes; None for the status-only form `L402 <macaroon>`


@dataclass(frozen=True)
class VerifiedToken:
    payment_hash: bytes
    token_id: bytes
    valid_until: int  # unix seconds; the earliest if the holder added stricter ones
    request_binding: str  # hex sha256 over the input bytes and the request parameters


def root_key_id(identifier: bytes) -> bytes:
    """The store key of a token's root key."""
    return hashlib.sha256(identifier).digest()


def mint(payment_hash: bytes, request_binding: str, valid_until: int, store: RootKeyStore) -> MintedToken:
    """A new token for one invoice and one request, with its own root key put in `store`."""
    if len(payment_hash) != 32:
        raise ValueError(f"payment hash must be 32 bytes, got {len(payment_hash)}")
    if not _SHA256_HEX.fullmatch(request_binding):
        raise ValueError("request binding must be a lowercase hex sha256 (64 characters)")
    if isinstance(valid_until, bool) or not isinstance(valid_until, int) or valid_until < 0:
        raise ValueError(f"valid_until must be a non-negative unix time, got {valid_until!r}")

    token_id = secrets.token_bytes(32)
    identifier = IDENTIFIER_VERSION.to_bytes(2, "big") + payment_hash + token_id
    root_key = secrets.token_bytes(32)
    store.put(root_key_id(identifier), root_key)

    # pymacaroons' V1 default would try to decode the binary identifier as UTF-8.
    mac = Macaroon(location=LOCATION, identifier=identifier, key=root_key, version=MACAROON_V2)
    for caveat in (
        f"{COND_SERVICES}={SERVICE}:{TIER}",
        f"{COND_CAPABILITIES}={CAPABILITY}",
        f"{COND_VALID_UNTIL}={valid_until}",
        f"{COND_REQUEST}={request_binding}",
    ):
        mac.add_first_party_caveat(caveat)
    encoded = base64.b64encode(BinarySerializer().serialize_raw(mac)).decode("ascii")
    return MintedToken(macaroon=encoded, token_id=token_id, identifier=identifier)


#: the L402 spec version a challenge names
CHALLENGE_VERSION = "0"


def challenge_header(macaroon: str, invoice: str) -> str:
    """The WWW-Authenticate value of a 402 answer: one challenge that every client parses.

    The current spec (lightninglabs/L402) names the macaroon `token` and adds `version="0"`;
    Lightning Labs' own lnget matches only `macaroon="...",` immediately followed by
    `invoice="..."`, and l402-requests reads a challenge only when `macaroon=` comes first;
    Alby's fetchWithL402 takes `token` or `macaroon`. So: macaroon and invoice first, in that
    order, then version and token (the macaroon again)."""
    for name, value in (("macaroon", macaroon), ("invoice", invoice)):
        # Both are base64 / bech32; anything else would break out of the quoted string.
        if not value or not _B64_CHARS.fullmatch(value):
            raise ValueError(f"{name} cannot go into a challenge header: {value[:40]!r}")
    return f'L402 macaroon="{macaroon}", invoice="{invoice}", version="{CHALLENGE_VERSION}", token="{macaroon}"'


def parse_challenge(header: str) -> Challenge:
    """The L402 (or LSAT) challenge in a WWW-Authenticate value, which may list several challenges."""
    found: dict[str, dict[str, str]] = {}
    for scheme, params in _challenges(header):
        upper = scheme.upper()
        if upper in SCHEMES and upper not in found:
            found[upper] = params
    for scheme in SCHEMES:
        if scheme not in found:
            continue
        params = found[scheme]
        macaroon = params.get("macaroon") or params.get("token")  # `token=` is the newer spec's name
        if params.get("macaroon") and params.get("token") and params["macaroon"] != params["token"]:
            raise MalformedChallenge(f"the {scheme} challenge names two different tokens (macaroon and token)")
        invoice = params.get("invoice")
        if not macaroon or not invoice:
            raise MalformedChallenge(f"the {scheme} challenge needs both a macaroon (or token) and an invoice")
        return Challenge(macaroon=macaroon, invoice=invoice, scheme=scheme)
    raise MalformedChallenge("no L402 or LSAT challenge in the WWW-Authenticate header")


def _challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Split a WWW-Authenticate value into (scheme, lower-cased params) per RFC 9110 section 11.6.1."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < end and header[pos] in chars:
            pos += 1

    while True:
        skip(" \t,")
        if pos >= end:
            return challenges
        match = _TOKEN_CHARS.match(header, pos)
        if match is None:
            # Another scheme's token68 (e.g. `Bearer ab/c==`): not ours to read, skip to the next comma.
            while pos < end and header[pos] != ",":
                pos += 1
            continue
        name = match.group()
        pos = match.end()
        skip(" \t")
        if pos >= end or header[pos] != "=":
            challenges.append((name, {}))  # a token not followed by '=' starts a new challenge
            continue
        pos += 1
        skip(" \t")
        if pos < end and header[pos] == '"':
            value, pos = _quoted_string(header, pos)
        else:
            start = pos
            while pos < end and header[pos] not in " \t,":
                pos += 1
            value = header[start:pos]
        if challenges:  # a parameter before any scheme belongs to nothing
            challenges[-1][1].setdefault(name.lower(), value)


def _quoted_string(text: str, pos: int) -> tuple[str, int]:
    """The value of the quoted string opening at text[pos], and the position after its closing quote."""
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\" and pos + 1 < len(text):
            pos += 1
            char = text[pos]
        chars.append(char)
        pos += 1
    raise MalformedChallenge("unterminated quoted string in the WWW-Authenticate header")


def parse_authorization(header: str) -> Credential:
    """An L402 credential: `L402 <macaroon>:<hex preimage>`, `LSAT ...`, or status-only `L402 <macaroon>[:]`.

    Aperture's own client sends the same credential under both schemes; joined by a proxy they arrive as
    `LSAT <m>:<p>, L402 <m>:<p>`. Base64 has no commas, so such a list is split and L402 preferred.
    """
    credentials = [_parse_one_credential(part) for part in header.split(",")]
    credentials.sort(key=lambda found: SCHEMES.index(found[0]))  # stable: the first L402 one, else the first LSAT
    return credentials[0][1]


def _parse_one_credential(text: str) -> tuple[str, Credential]:
    parts = text.split()
    if not parts:
        raise MalformedCredential("the Authorization header is empty; send `L402 <macaroon>:<preimage hex>`")
    scheme = parts[0].upper()
    if scheme not in SCHEMES:
        raise MalformedCredential(f"expected the L402 scheme in the Authorization header, got {parts[0][:20]!r}")
    if len(parts) != 2:
        raise MalformedCredential("expected `L402 <macaroon>:<preimage hex>` with no spaces inside the credential")
    macaroon, _, preimage_hex = parts[1].partition(":")
    if not macaroon or not _B64_CHARS.fullmatch(macaroon):
        raise MalformedCredential("the macaroon in the Authorization header is not base64")
    if not preimage_hex:
        return scheme, Credential(macaroon=macaroon, preimage=None)
    if not _PREIMAGE_HEX.fullmatch(preimage_hex):
        raise MalformedCredential("the preimage must be 64 hex characters (32 bytes), the proof of payment")
    return scheme, Credential(macaroon=macaroon, preimage=bytes.fromhex(preimage_hex))


def payment_hash_of(macaroon: str) -> bytes:
    """The payment hash a token carries, read without verifying it (to find the job it pays for)."""
    payment_hash, _ = _split_identifier(_decode_macaroon(macaroon).identifier_bytes)
    return payment_hash


def verify(
    credential: Credential,
    store: RootKeyStore,
    *,
    now: int,
    request_binding: str | None = None,
    require_preimage: bool = True,
) -> VerifiedToken:
    """Check a credential completely; any failure raises a specific L402Error."""
    mac = _decode_macaroon(credential.macaroon)
    identifier = mac.identifier_bytes
    payment_hash, token_id = _split_identifier(identifier)

    root_key = store.get(root_key_id(identifier))
    if root_key is None:
        raise InvalidToken("this token was not issued here (unknown root key); pay a new invoice")
    # Third-party caveats need discharge macaroons that we never issue; pymacaroons would fail obscurely.
    if any(caveat.third_party() for caveat in mac.caveats):
        raise InvalidToken("the token carries a third-party caveat, which this service does not accept")

    # First the HMAC chain alone (every first-party caveat accepted), so that a forged or altered token
    # is reported as such; the caveats themselves are then judged below with precise errors.
    verifier = Verifier()
    verifier.satisfy_general(lambda _predicate: True)
    try:
        verifier.verify(mac, root_key)
    except Exception as exc:  # pymacaroons raises its own exceptions, and UnicodeDecodeError for binary caveats
        raise InvalidToken("the token's signature does not match: it was altered or forged") from exc

    valid_until, binding = _check_caveats([caveat.caveat_id_bytes for caveat in mac.caveats], now, request_binding)

    if credential.preimage is not None:
        if not hmac.compare_digest(hashlib.sha256(credential.preimage).digest(), payment_hash):
            raise PreimageMismatch("the preimage does not match this token's invoice; send the preimage of its payment")
    elif require_preimage:
        raise MissingPreimage("proof of payment needed: send `L402 <macaroon>:<preimage hex>` once the invoice is paid")

    return VerifiedToken(payment_hash=payment_hash, token_id=token_id, valid_until=valid_until, request_binding=binding)


def _decode_macaroon(text: str) -> Macaroon:
    """A binary V2 macaroon from standard or URL-safe base64, padded or not."""
    if not _B64_CHARS.fullmatch(text):
        raise MalformedCredential("the macaroon is not base64")
    unpadded = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(unpadded) % 4 == 1:
        raise MalformedCredential("the macaroon is not base64 (impossible length)")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error as exc:
        raise MalformedCredential("the macaroon is not base64") from exc
    if raw[:1] != bytes([MACAROON_V2]):
        raise MalformedCredential("the macaroon is not in the binary V2 format")
    try:
        mac = BinarySerializer().deserialize_raw(raw)
        canonical = BinarySerializer().serialize_raw(mac)
    except Exception as exc:  # pymacaroons raises bare Exception, ValueError, IndexError, ... on bad input
        raise MalformedCredential("the macaroon cannot be decoded") from exc
    # pymacaroons ignores bytes after the signature, Aperture's Go library refuses them; so do we.
    if canonical != raw:
        raise MalformedCredential("the macaroon has trailing or non-canonical bytes")
    return mac


def _split_identifier(identifier: bytes) -> tuple[bytes, bytes]:
    """(payment hash, token id) from an Aperture identifier."""
    if len(identifier) != IDENTIFIER_LENGTH:
        raise InvalidToken(f"the token identifier is {len(identifier)} bytes, not {IDENTIFIER_LENGTH}")
    version = int.from_bytes(identifier[:2], "big")
    if version != IDENTIFIER_VERSION:
        raise InvalidToken(f"unknown token identifier version {version}")
    return identifier[2:34], identifier[34:]


def _check_caveats(caveats: list[bytes], now: int, request_binding: str | None) -> tuple[int, str]:
    """Every caveat must hold (a holder may only add restrictions). Returns (earliest valid_until, binding)."""
    seen: set[str] = set()
    deadlines: list[int] = []
    bindings: list[str] = []
    for raw in caveats:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidToken("the token carries a caveat that is not text") from exc
        condition, sep, value = text.partition("=")
        if not sep:
            raise InvalidToken(f"caveat {text[:60]!r} is not of the form condition=value")
        seen.add(condition)
        if condition == COND_SERVICES:
            if (SERVICE, TIER) not in _services(value):
                raise InvalidToken(f"the token is not valid for service {SERVICE} at tier {TIER}")
        elif condition == COND_CAPABILITIES:
            if CAPABILITY not in value.split(","):
                raise InvalidToken(f"the token does not grant the {CAPABILITY!r} capability")
        elif condition == COND_VALID_UNTIL:
            if not _DIGITS.fullmatch(value):
                raise InvalidToken(f"{COND_VALID_UNTIL} must be a unix time, got {value[:30]!r}")
            deadlines.append(int(value))
        elif condition == COND_REQUEST:
            bindings.append(value)
        else:
            raise InvalidToken(f"the token carries caveat {text[:60]!r}, which this service does not understand")

    # Every token we mint has all four; without them it would grant unbounded time or any request.
    missing = [c for c in (COND_SERVICES, COND_CAPABILITIES, COND_VALID_UNTIL, COND_REQUEST) if c not in seen]
    if missing:
        raise InvalidToken(f"the token lacks the {', '.join(missing)} caveat(s)")

    valid_until = min(deadlines)
    if valid_until <= now:
        raise TokenExpired(f"the token expired at unix time {valid_until}; start a new request to get a new one")

    if request_binding is None:
        if len(set(bindings)) > 1:
            raise RequestMismatch("the token is bound to two different requests, so it pays for neither")
        return valid_until, bindings[0]
    if any(binding != request_binding for binding in bindings):
        raise RequestMismatch("this token pays for a different image or different settings; use it for that request")
    return valid_until, request_binding


def _services(value: str) -> set[tuple[str, int]]:
    """Aperture's services list `name:tier,name:tier`; any malformed entry voids the caveat."""
    services: set[tuple[str, int]] = set()
    for entry in value.split(","):
        name, sep, tier = entry.partition(":")
        if not name or not sep or not _DIGITS.fullmatch(tier):
            raise InvalidToken(f"malformed services caveat {value[:60]!r}; expected name:tier,...")
        services.add((name, int(tier)))
    return services
