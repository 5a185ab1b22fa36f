"""lnd's macaroons, byte for byte: bakery V3 identifiers in V2 binary macaroons.

What lnd does (macaroons/bake.go, macaroons/service.go and the macaroon-bakery it
builds on): the identifier is the byte 3 followed by the protobuf `MacaroonId
{bytes nonce = 1; bytes storageId = 2; repeated Op ops = 3}` with `Op {string
entity = 1; repeated string actions = 2}`; the storage id is the default root key
id "0"; the macaroon's location is "lnd"; the signature chain is HMAC-SHA256 keyed
first with HMAC("macaroons-key-generator", root key). Files hold the binary V2
encoding; clients send it hex-encoded in the `macaroon` gRPC metadata entry.

`check_request` reproduces lnd's validation and its error texts.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LOCATION = "lnd"
DEFAULT_ROOT_KEY_ID = b"0"
BAKERY_VERSION_3 = 3
MACAROON_V2 = 2
_KEY_GENERATOR = b"macaroons-key-generator"

# V2 binary field types (gopkg.in/macaroon.v2 packet-v2.go)
_EOS, _LOCATION, _IDENTIFIER, _VID, _SIGNATURE = 0, 1, 2, 4, 6


@dataclass(frozen=True, order=True)
class Op:
    entity: str
    action: str


def _ops(*pairs: str) -> frozenset[Op]:
    return frozenset(Op(*pair.split(":")) for pair in pairs)


# rpcserver.go: readPermissions, writePermissions, invoicePermissions; lnd.go: adminPermissions()
READ_PERMISSIONS = _ops(
    "onchain:read",
    "offchain:read",
    "address:read",
    "message:read",
    "peers:read",
    "info:read",
    "invoices:read",
    "signer:read",
    "macaroon:read",
)
WRITE_PERMISSIONS = _ops(
    "onchain:write",
    "offchain:write",
    "address:write",
    "message:write",
    "peers:write",
    "info:write",
    "invoices:write",
    "signer:generate",
    "macaroon:generate",
    "macaroon:write",
    "remotesigner:generate",
)
ADMIN_PERMISSIONS = READ_PERMISSIONS | WRITE_PERMISSIONS
INVOICE_PERMISSIONS = _ops("invoices:read", "invoices:write", "address:read", "address:write", "onchain:read")

# The methods the double serves and what lnd requires for each
# (rpcserver.go MainRPCServerPermissions, lnrpc/invoicesrpc/invoices_server.go macPermissions).
METHOD_PERMISSIONS: dict[str, frozenset[Op]] = {
    "/lnrpc.Lightning/GetInfo": _ops("info:read"),
    "/lnrpc.Lightning/AddInvoice": _ops("invoices:write"),
    "/lnrpc.Lightning/LookupInvoice": _ops("invoices:read"),
    "/lnrpc.Lightning/SubscribeInvoices": _ops("invoices:read"),
    "/invoicesrpc.Invoices/SubscribeSingleInvoice": _ops("invoices:read"),
    "/invoicesrpc.Invoices/SettleInvoice": _ops("invoices:write"),
    "/invoicesrpc.Invoices/CancelInvoice": _ops("invoices:write"),
    "/invoicesrpc.Invoices/AddHoldInvoice": _ops("invoices:write"),
    # lnd really asks for write here, not read
    "/invoicesrpc.Invoices/LookupInvoiceV2": _ops("invoices:write"),
}


class MacaroonError(Exception):
    """A macaroon lnd would refuse; the message is lnd's error text."""


# --- protobuf, by hand: only length-delimited fields occur in MacaroonId


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MacaroonError("varint value extends past end of buffer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _pb_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _pb_fields(data: bytes) -> list[tuple[int, bytes]]:
    """The (field number, payload) pairs of a message; fields of other wire types are skipped."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise MacaroonError("cannot unmarshal macaroon id: unexpected EOF")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise MacaroonError("cannot unmarshal macaroon id: illegal wire type")
    return fields


def encode_identifier(ops: Iterable[Op], nonce: bytes | None = None, storage_id: bytes = DEFAULT_ROOT_KEY_ID) -> bytes:
    """Bakery V3 identifier; ops canonical (sorted, deduplicated, grouped by entity) as the oven does."""
    grouped: dict[str, list[str]] = {}
    for op in sorted(set(ops)):
        grouped.setdefault(op.entity, []).append(op.action)
    if not grouped:
        raise ValueError("cannot mint a macaroon associated with no operations")
    body = _pb_field(1, nonce if nonce is not None else os.urandom(16)) + _pb_field(2, storage_id)
    for entity, actions in grouped.items():
        op_msg = _pb_field(1, entity.encode()) + b"".join(_pb_field(2, a.encode()) for a in actions)
        body += _pb_field(3, op_msg)
    return bytes([BAKERY_VERSION_3]) + body


@dataclass(frozen=True)
class MacaroonId:
    nonce: bytes
    storage_id: bytes
    ops: frozenset[Op]


def decode_identifier(identifier: bytes) -> MacaroonId:
    if not identifier or identifier[0] != BAKERY_VERSION_3:
        raise MacaroonError("invalid ID")
    nonce, storage_id, ops = b"", b"", set()
    for number, payload in _pb_fields(identifier[1:]):
        if number == 1:
            nonce = payload
        elif number == 2:
            storage_id = payload
        elif number == 3:
            entity, actions = "", []
            for op_number, op_payload in _pb_fields(payload):
                if op_number == 1:
                    entity = op_payload.decode()
                elif op_number == 2:
                    actions.append(op_payload.decode())
            ops.update(Op(entity, action) for action in actions)
    if not ops:
        raise MacaroonError("cannot retrieve macaroon: no operations found in macaroon")
    return MacaroonId(nonce, storage_id, frozenset(ops))


# --- V2 binary macaroons


@dataclass(frozen=True)
class Caveat:
    identifier: bytes
    location: str = ""
    verification_id: bytes = b""

    @property
    def first_party(self) -> bool:
        return not self.verification_id


@dataclass(frozen=True)
class Macaroon:
    location: str
    identifier: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes

    def to_bytes(self) -> bytes:
        def packet(field: int, data: bytes) -> bytes:
            return _varint(field) + _varint(len(data)) + data

        out = bytearray([MACAROON_V2])
        if self.location:
            out += packet(_LOCATION, self.location.encode())
        out += packet(_IDENTIFIER, self.identifier) + bytes([_EOS])
        for caveat in self.caveats:
            if caveat.location:
                out += packet(_LOCATION, caveat.location.encode())
            out += packet(_IDENTIFIER, caveat.identifier)
            if caveat.verification_id:
                out += packet(_VID, caveat.verification_id)
            out += bytes([_EOS])
        out += bytes([_EOS]) + packet(_SIGNATURE, self.signature)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Macaroon:
        if not data:
            raise MacaroonError("empty macaroon data")
        if data[0] != MACAROON_V2:
            # lnd accepts only V2 (service.go CheckMacAuth)
            raise MacaroonError("unknown macaroon version: v1")
        try:
            return cls._parse_v2(data[1:])
        except MacaroonError as exc:
            raise MacaroonError(f"unmarshal v2: {exc}") from None

    @classmethod
    def _parse_v2(cls, data: bytes) -> Macaroon:
        pos = 0

        def packet() -> tuple[int, bytes]:
            nonlocal pos
            field, pos = _read_varint(data, pos)
            if field == _EOS:
                return field, b""
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise MacaroonError("field data extends past end of buffer")
            payload = data[pos : pos + length]
            pos += length
            return field, payload

        def section() -> list[tuple[int, bytes]]:
            packets: list[tuple[int, bytes]] = []
            while True:
                if pos >= len(data):
                    raise MacaroonError("section extends past end of buffer")
                field, payload = packet()
                if field == _EOS:
                    return packets
                if packets and field <= packets[-1][0]:
                    raise MacaroonError("fields out of order")
                packets.append((field, payload))

        header = section()
        location = ""
        if header and header[0][0] == _LOCATION:
            location = header.pop(0)[1].decode()
        if len(header) != 1 or header[0][0] != _IDENTIFIER:
            raise MacaroonError("invalid macaroon header")
        identifier = header[0][1]
        caveats = []
        while parts := section():
            fields = dict(parts)
            if _IDENTIFIER not in fields:
                raise MacaroonError("no identifier in caveat")
            caveats.append(
                Caveat(
                    identifier=fields[_IDENTIFIER],
                    location=fields.get(_LOCATION, b"").decode(),
                    verification_id=fields.get(_VID, b""),
                )
            )
        field, signature = packet()
        if field != _SIGNATURE:
            raise MacaroonError("unexpected field found instead of signature")
        if len(signature) != 32:
            raise MacaroonError("signature has unexpected length")
        return cls(location, identifier, tuple(caveats), signature)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def mint(root_key: bytes, ops: Iterable[Op], location: str = LOCATION) -> Macaroon:
    """A fresh macaroon for `ops`, as lnd's BakeFromRootKey makes it."""
    identifier = encode_identifier(ops)
    return Macaroon(location, identifier, (), _hmac(_hmac(_KEY_GENERATOR, root_key), identifier))


def add_first_party_caveat(macaroon: Macaroon, condition: str) -> Macaroon:
    caveat = Caveat(condition.encode())
    return Macaroon(
        macaroon.location,
        macaroon.identifier,
        (*macaroon.caveats, caveat),
        _hmac(macaroon.signature, caveat.identifier),
    )


def time_before_condition(moment: datetime.datetime) -> str:
    """`time-before` in Go's RFC3339Nano (UTC, trailing zeros of the fraction dropped)."""
    moment = moment.astimezone(datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")


def _parse_rfc3339(text: str) -> datetime.datetime:
    match = _RFC3339.match(text)
    if not match:
        raise MacaroonError(f'parsing time "{text}" as "2006-01-02T15:04:05.999999999Z07:00": cannot parse')
    base, fraction, zone = match.groups()
    moment = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment + datetime.timedelta(microseconds=int((fraction or "0").ljust(6, "0")[:6]))


def _check_caveat(condition: str, peer_ip: str | None, now: datetime.datetime) -> str | None:
    """None if the first-party caveat holds, else the reason (bakery checkers' texts)."""
    name, _, arg = condition.partition(" ")
    if name == "time-before":
        try:
            deadline = _parse_rfc3339(arg)
        except MacaroonError as exc:
            return str(exc)
        return None if now < deadline else "macaroon has expired"
    if name == "ipaddr":
        return None if peer_ip is not None and arg == peer_ip else "macaroon locked to different IP address"
    return "caveat not recognized"


def verify(
    macaroon: Macaroon, root_key: bytes, required: frozenset[Op], full_method: str, peer_ip: str | None = None
) -> None:
    """Raise MacaroonError with lnd's text unless the macaroon authorizes `required`.

    Mirrors bakery's AuthChecker.Allow: signature problems and failed caveats are
    reported as such; a valid macaroon lacking an operation gives "permission denied".
    A `uri:<full method>` op also grants the call, as lnd allows.
    """
    if len(macaroon.identifier) < 1 or macaroon.identifier[0] != BAKERY_VERSION_3:
        raise MacaroonError("invalid ID")
    mac_id = decode_identifier(macaroon.identifier)
    if mac_id.storage_id != DEFAULT_ROOT_KEY_ID:
        raise MacaroonError("verification failed: macaroon not found in storage")
    signature = _hmac(_hmac(_KEY_GENERATOR, root_key), macaroon.identifier)
    for caveat in macaroon.caveats:
        if not caveat.first_party:
            raise MacaroonError(
                f"verification failed: cannot find discharge macaroon for caveat {caveat.identifier.hex()}"
            )
        signature = _hmac(signature, caveat.identifier)
    if not hmac.compare_digest(signature, macaroon.signature):
        raise MacaroonError("verification failed: signature mismatch after caveat verification")
    now = datetime.datetime.now(datetime.UTC)
    for caveat in macaroon.caveats:
        condition = caveat.identifier.decode(errors="replace")
        reason = _check_caveat(condition, peer_ip, now)
        if reason is not None:
            raise MacaroonError(f'caveat "{condition}" not satisfied: {reason}')
    if not (required <= mac_id.ops or Op("uri", full_method) in mac_id.ops):
        raise MacaroonError("permission denied")


def check_request(
    macaroon_values: Sequence[str], root_key: bytes, full_method: str, peer_ip: str | None = None
) -> None:
    """The whole of lnd's per-call check, from the raw `macaroon` metadata values."""
    if len(macaroon_values) != 1:
        raise MacaroonError(f"expected 1 macaroon, got {len(macaroon_values)}")
    required = METHOD_PERMISSIONS.get(full_method)
    if required is None:
        raise MacaroonError(f"{full_method}: unknown permissions required for method")
    try:
        raw = bytes.fromhex(macaroon_values[0])
    except ValueError:
        raise MacaroonError("encoding/hex: invalid byte") from None
    verify(Macaroon.from_bytes(raw), root_key, required, full_method, peer_ip)
