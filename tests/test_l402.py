"""L402 tokens: what a paying client sees, and what an attacker who alters a token gets back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l402_requests.challenge import parse_challenge as third_party_parse_challenge
from l402_requests.credential_cache import L402Credential
from pymacaroons import MACAROON_V1, MACAROON_V2, Macaroon
from pymacaroons.serializers.binary_serializer import BinarySerializer
from pymacaroons.serializers.json_serializer import JsonSerializer

from payments.l402 import (
    CAPABILITY,
    SERVICE,
    TIER,
    Challenge,
    Credential,
    InvalidToken,
    L402Error,
    MalformedChallenge,
    MalformedCredential,
    MemoryRootKeyStore,
    MintedToken,
    MissingPreimage,
    PreimageMismatch,
    RequestMismatch,
    TokenExpired,
    challenge_header,
    mint,
    parse_authorization,
    parse_challenge,
    payment_hash_of,
    verify,
)

NOW = 1_700_000_000
VALID_UNTIL = NOW + 3600
BINDING_A = hashlib.sha256(b"input A|scale=4|model=realesrgan-x4plus").hexdigest()
BINDING_B = hashlib.sha256(b"input B|scale=4|model=realesrgan-x4plus").hexdigest()
INVOICE = "lnbcrt10u1pjexampleinvoicexqzyssp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"


@pytest.fixture
def store() -> MemoryRootKeyStore:
    return MemoryRootKeyStore()


@pytest.fixture
def preimage() -> bytes:
    return os.urandom(32)


@pytest.fixture
def token(store: MemoryRootKeyStore, preimage: bytes) -> MintedToken:
    return mint(hashlib.sha256(preimage).digest(), BINDING_A, VALID_UNTIL, store)


def decode(macaroon: str) -> Macaroon:
    return BinarySerializer().deserialize_raw(base64.b64decode(macaroon))


def encode(mac: Macaroon) -> str:
    return base64.b64encode(BinarySerializer().serialize_raw(mac)).decode()


def attenuate(macaroon: str, *caveats: str) -> str:
    """What any holder can do without the root key: append caveats."""
    mac = decode(macaroon)
    for caveat in caveats:
        mac.add_first_party_caveat(caveat)
    return encode(mac)


def paid(macaroon: str, preimage: bytes) -> Credential:
    return parse_authorization(f"L402 {macaroon}:{preimage.hex()}")


# --- minting and the token's layout -----------------------------------------------------------------------------


def test_round_trip_mint_challenge_parse_verify(store: MemoryRootKeyStore, preimage: bytes) -> None:
    payment_hash = hashlib.sha256(preimage).digest()
    minted = mint(payment_hash, BINDING_A, VALID_UNTIL, store)

    header = challenge_header(minted.macaroon, INVOICE)
    mac = minted.macaroon
    assert header == f'L402 macaroon="{mac}", invoice="{INVOICE}", version="0", token="{mac}"'
    challenge = parse_challenge(header)
    assert challenge == Challenge(macaroon=minted.macaroon, invoice=INVOICE, scheme="L402")

    credential = parse_authorization(f"L402 {challenge.macaroon}:{preimage.hex()}")
    assert credential == Credential(macaroon=minted.macaroon, preimage=preimage)
    verified = verify(credential, store, now=NOW, request_binding=BINDING_A)
    assert verified.payment_hash == payment_hash
    assert verified.token_id == minted.token_id
    assert verified.valid_until == VALID_UNTIL
    assert verified.request_binding == BINDING_A
    assert payment_hash_of(minted.macaroon) == payment_hash


def test_identifier_is_version_zero_payment_hash_token_id(token: MintedToken, preimage: bytes) -> None:
    mac = decode(token.macaroon)
    identifier = mac.identifier_bytes
    assert identifier == token.identifier
    assert len(identifier) == 66
    assert identifier[:2] == b"\x00\x00"
    assert identifier[2:34] == hashlib.sha256(preimage).digest()
    assert identifier[34:] == token.token_id
    assert len(token.token_id) == 32


def test_macaroon_is_binary_v2_standard_base64_with_caveats_in_order(token: MintedToken) -> None:
    raw = base64.b64decode(token.macaroon, validate=True)
    assert raw[0] == MACAROON_V2
    assert base64.b64encode(raw).decode() == token.macaroon  # standard alphabet, padded
    mac = decode(token.macaroon)
    assert mac.location == "satscale"
    assert [c.caveat_id_bytes.decode() for c in mac.caveats] == [
        f"services={SERVICE}:{TIER}",
        f"satscale_capabilities={CAPABILITY}",
        f"satscale_valid_until={VALID_UNTIL}",
        f"satscale_request={BINDING_A}",
    ]
    assert all(c.first_party() for c in mac.caveats)


def test_each_token_has_its_own_root_key_stored_under_sha256_of_identifier(store: MemoryRootKeyStore) -> None:
    payment_hash = os.urandom(32)
    first = mint(payment_hash, BINDING_A, VALID_UNTIL, store)
    second = mint(payment_hash, BINDING_A, VALID_UNTIL, store)

    assert first.token_id != second.token_id
    assert len(store) == 2
    key_1 = store.get(hashlib.sha256(first.identifier).digest())
    key_2 = store.get(hashlib.sha256(second.identifier).digest())
    assert key_1 is not None and key_2 is not None
    assert len(key_1) == len(key_2) == 32
    assert key_1 != key_2
    assert store.get(first.token_id) is None  # keyed by the identifier's hash, not the token id
    # the stored key is the one that signed the token: re-signing its caveats with it gives the same macaroon
    resigned = Macaroon(location="satscale", identifier=first.identifier, key=key_1, version=MACAROON_V2)
    for caveat in decode(first.macaroon).caveats:
        resigned.add_first_party_caveat(caveat.caveat_id_bytes)
    assert encode(resigned) == first.macaroon


def test_mint_refuses_bad_arguments(store: MemoryRootKeyStore) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        mint(b"short", BINDING_A, VALID_UNTIL, store)
    with pytest.raises(ValueError, match="request binding"):
        mint(os.urandom(32), "input.png\nsatscale_request=anything", VALID_UNTIL, store)
    with pytest.raises(ValueError, match="valid_until"):
        mint(os.urandom(32), BINDING_A, -1, store)
    assert len(store) == 0


def test_store_never_replaces_a_root_key(store: MemoryRootKeyStore) -> None:
    store.put(b"k" * 32, b"1" * 32)
    with pytest.raises(ValueError):
        store.put(b"k" * 32, b"2" * 32)
    assert store.get(b"k" * 32) == b"1" * 32


# --- headers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "scheme"),
    [
        ('LSAT macaroon="MAC=", invoice="lnbc1"', "LSAT"),
        ('L402 token="MAC=", invoice="lnbc1"', "L402"),
        ('l402 Macaroon="MAC=", Invoice="lnbc1"', "L402"),
        ("L402 macaroon=MAC=, invoice=lnbc1", "L402"),
        ('L402 invoice = "lnbc1" , macaroon = "MAC="', "L402"),
        ('Bearer realm="api", L402 macaroon="MAC=", invoice="lnbc1"', "L402"),
        ('LSAT macaroon="OLD=", invoice="lnbc0", L402 macaroon="MAC=", invoice="lnbc1"', "L402"),
        ('Bearer ab/c+d==, L402 token=MAC=, invoice="lnbc1"', "L402"),
        ('Basic realm="a, L402 macaroon=\\"X\\"", LSAT macaroon="MAC=", invoice="lnbc1"', "LSAT"),
    ],
)
def test_parse_challenge_forms(header: str, scheme: str) -> None:
    challenge = parse_challenge(header)
    assert challenge.scheme == scheme
    assert challenge.invoice == "lnbc1"
    assert challenge.macaroon == "MAC="


@pytest.mark.parametrize(
    "header",
    [
        "",
        'Bearer realm="api"',
        'L402 macaroon="MAC="',
        'L402 invoice="lnbc1"',
        'L402 macaroon="", invoice="lnbc1"',
        'L402 macaroon="MAC=, invoice="lnbc1',
        'L402 invoice="lnbc1", macaroon="MAC=',
    ],
)
def test_parse_challenge_refuses_headers_without_a_usable_challenge(header: str) -> None:
    with pytest.raises(MalformedChallenge):
        parse_challenge(header)


def test_challenge_header_refuses_values_that_would_break_the_header() -> None:
    with pytest.raises(ValueError):
        challenge_header("MAC=", 'lnbc1", evil="1')
    with pytest.raises(ValueError):
        challenge_header("", "lnbc1")


def test_third_party_client_reads_our_challenge_and_we_read_its_credential(
    token: MintedToken, store: MemoryRootKeyStore, preimage: bytes
) -> None:
    theirs = third_party_parse_challenge(challenge_header(token.macaroon, INVOICE))
    assert (theirs.macaroon, theirs.invoice) == (token.macaroon, INVOICE)
    header = L402Credential(macaroon=theirs.macaroon, preimage=preimage.hex()).authorization_header
    verified = verify(parse_authorization(header), store, now=NOW, request_binding=BINDING_A)
    assert verified.token_id == token.token_id


#: lnget (Lightning Labs' client), lightninglabs/lnget l402/header.go at 258f429a: `challengeRegex`, a
#: Go RE2 pattern this Python pattern spells the same, applied to the first WWW-Authenticate value,
#: which IsL402Challenge requires to start with "L402 " or "LSAT " (case-insensitive)
LNGET_CHALLENGE = re.compile(r'(?i)(LSAT|L402)\s+macaroon="([^"]+)",\s*invoice="([^"]+)"')


def lnget_reads(header: str) -> tuple[str, str]:
    assert header.lower().startswith(("l402 ", "lsat "))
    found = LNGET_CHALLENGE.search(header)
    assert found is not None, header
    return found.group(2), found.group(3)


def alby_reads(header: str) -> tuple[str, str]:
    r"""Alby's fetchWithL402 (getAlby/js-lightning-tools src/l402/l402.ts at 1f815b2d and
    src/l402/parse.ts at df6d5bee): the first "L402" (then "LSAT") is removed, every key=value pair
    is read by /(\w+)=("([^"]*)"|'([^']*)'|([^,]*))/g, and the token is `token || macaroon`."""
    rest = header.replace("L402", "", 1).replace("LSAT", "", 1).strip()
    pairs = {m[0]: m[2] or m[3] or m[4] for m in re.findall(r"""(\w+)=("([^"]*)"|'([^']*)'|([^,]*))""", rest)}
    return pairs.get("token") or pairs["macaroon"], pairs["invoice"]


def test_our_challenge_is_read_alike_by_every_client_in_use(token: MintedToken) -> None:
    header = challenge_header(token.macaroon, INVOICE)
    expected = (token.macaroon, INVOICE)
    # the current spec's parameters are there: version "0" and the macaroon as `token`
    params = dict(re.findall(r'(\w+)="([^"]*)"', header))
    assert params["version"] == "0" and params["token"] == token.macaroon
    # l402-requests 0.9.0, run: it reads a challenge only when `macaroon=` follows "L402 "
    theirs = third_party_parse_challenge(header)
    assert (theirs.macaroon, theirs.invoice) == expected
    assert lnget_reads(header) == expected
    assert alby_reads(header) == expected
    # a client that needs `version` and `macaroon` (both present) and ours
    assert "macaroon" in params and "version" in params
    ours = parse_challenge(header)
    assert (ours.macaroon, ours.invoice, ours.scheme) == (*expected, "L402")
    # the spec's own order, and the old scheme, still parse here
    assert (
        parse_challenge(f'L402 version="0", token="{token.macaroon}", invoice="{INVOICE}"').macaroon == token.macaroon
    )
    assert parse_challenge(f'LSAT macaroon="{token.macaroon}", invoice="{INVOICE}"').scheme == "LSAT"


def test_a_challenge_naming_two_different_tokens_is_refused() -> None:
    with pytest.raises(MalformedChallenge, match="two different tokens"):
        parse_challenge('L402 macaroon="MAC=", invoice="lnbc1", version="0", token="OTHER="')


def test_parse_authorization_forms(preimage: bytes) -> None:
    full = Credential(macaroon="AgEIc2F0c2NhbGU=", preimage=preimage)
    status = Credential(macaroon="AgEIc2F0c2NhbGU=", preimage=None)
    assert parse_authorization(f"L402 AgEIc2F0c2NhbGU=:{preimage.hex()}") == full
    assert parse_authorization(f"LSAT AgEIc2F0c2NhbGU=:{preimage.hex()}") == full
    assert parse_authorization(f"  l402   AgEIc2F0c2NhbGU=:{preimage.hex().upper()} ") == full
    assert parse_authorization("L402 AgEIc2F0c2NhbGU=") == status
    assert parse_authorization("L402 AgEIc2F0c2NhbGU=:") == status
    # Aperture's client sends LSAT and L402 headers; a proxy may join them
    other = os.urandom(32)
    joined = f"LSAT OLDc2F0c2NhbGU:{other.hex()}, L402 AgEIc2F0c2NhbGU=:{preimage.hex()}"
    assert parse_authorization(joined) == full


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "L402",
        "Bearer AgEIc2F0c2NhbGU=",
        "Basic dXNlcjpwYXNz",
        "L402 :" + "ab" * 32,
        "L402 AgEIc2F0c2NhbGU=:" + "zz" * 32,
        "L402 AgEIc2F0c2NhbGU=:" + "ab" * 31,
        "L402 AgEIc2F0c2NhbGU=:" + "ab" * 33,
        "L402 AgEIc2F0c2NhbGU=:" + "ab" * 32 + ":",
        "L402 AgEI c2F0c2NhbGU=:" + "ab" * 32,
        "L402 Ag!I*2F0c2NhbGU=:" + "ab" * 32,
        "L402 AgEIc2F0c2NhbGU=:" + "ab" * 32 + ", Bearer x",
    ],
)
def test_parse_authorization_refuses_malformed_headers(header: str) -> None:
    with pytest.raises(MalformedCredential) as caught:
        parse_authorization(header)
    assert caught.value.message


# --- verification: what an attacker or a careless client gets -------------------------------------------------


def test_forged_signature_is_refused(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    mac = decode(token.macaroon)
    signature = bytearray(binascii.unhexlify(mac.signature_bytes))
    signature[0] ^= 0x01
    mac.signature = binascii.hexlify(bytes(signature))
    with pytest.raises(InvalidToken, match="signature"):
        verify(paid(encode(mac), preimage), store, now=NOW, request_binding=BINDING_A)


@pytest.mark.parametrize(
    ("original", "tampered"),
    [
        (f"satscale_valid_until={VALID_UNTIL}", f"satscale_valid_until={VALID_UNTIL + 10**9}"),
        (f"satscale_request={BINDING_A}", f"satscale_request={BINDING_B}"),
        (f"services={SERVICE}:{TIER}", "services=satscale:0,admin:0"),
    ],
)
def test_tampered_caveat_is_refused(
    token: MintedToken, store: MemoryRootKeyStore, preimage: bytes, original: str, tampered: str
) -> None:
    mac = decode(token.macaroon)
    for caveat in mac.caveats:
        if caveat.caveat_id_bytes == original.encode():
            caveat.caveat_id = tampered.encode()
    forged = encode(mac)
    assert forged != token.macaroon
    with pytest.raises(InvalidToken, match="signature"):
        verify(paid(forged, preimage), store, now=NOW, request_binding=BINDING_B if "request" in tampered else None)


def test_token_signed_with_a_root_key_we_never_stored_is_refused(store: MemoryRootKeyStore, preimage: bytes) -> None:
    elsewhere = MemoryRootKeyStore()
    foreign = mint(hashlib.sha256(preimage).digest(), BINDING_A, VALID_UNTIL, elsewhere)
    with pytest.raises(InvalidToken, match="root key"):
        verify(paid(foreign.macaroon, preimage), store, now=NOW, request_binding=BINDING_A)


@pytest.mark.parametrize(
    "identifier",
    [
        (1).to_bytes(2, "big") + os.urandom(64),  # unknown version
        bytes(2) + os.urandom(63),  # one byte short
        bytes(2) + os.urandom(65),  # one byte long
    ],
)
def test_identifier_with_another_layout_is_refused(store: MemoryRootKeyStore, identifier: bytes) -> None:
    root_key = os.urandom(32)
    store.put(hashlib.sha256(identifier).digest(), root_key)  # correctly signed: only the layout is wrong
    mac = Macaroon(location="satscale", identifier=identifier, key=root_key, version=MACAROON_V2)
    for caveat in ("services=satscale:0", "satscale_capabilities=upscale", f"satscale_valid_until={VALID_UNTIL}"):
        mac.add_first_party_caveat(caveat)
    mac.add_first_party_caveat(f"satscale_request={BINDING_A}")
    with pytest.raises(InvalidToken, match="identifier"):
        verify(Credential(macaroon=encode(mac), preimage=None), store, now=NOW, require_preimage=False)
    with pytest.raises(InvalidToken):
        payment_hash_of(encode(mac))


def test_expired_token_is_refused(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    assert verify(paid(token.macaroon, preimage), store, now=VALID_UNTIL - 1).valid_until == VALID_UNTIL
    with pytest.raises(TokenExpired):
        verify(paid(token.macaroon, preimage), store, now=VALID_UNTIL)
    with pytest.raises(TokenExpired):
        verify(paid(token.macaroon, preimage), store, now=VALID_UNTIL + 86400)


def test_preimage_of_another_invoice_is_refused(token: MintedToken, store: MemoryRootKeyStore) -> None:
    with pytest.raises(PreimageMismatch):
        verify(paid(token.macaroon, os.urandom(32)), store, now=NOW, request_binding=BINDING_A)


def test_token_for_request_a_does_not_pay_for_request_b(
    token: MintedToken, store: MemoryRootKeyStore, preimage: bytes
) -> None:
    with pytest.raises(RequestMismatch):
        verify(paid(token.macaroon, preimage), store, now=NOW, request_binding=BINDING_B)
    assert verify(paid(token.macaroon, preimage), store, now=NOW).request_binding == BINDING_A


def test_status_only_credential(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    for header in (f"L402 {token.macaroon}", f"L402 {token.macaroon}:"):
        credential = parse_authorization(header)
        verified = verify(credential, store, now=NOW, request_binding=BINDING_A, require_preimage=False)
        assert verified.payment_hash == hashlib.sha256(preimage).digest()
        with pytest.raises(MissingPreimage):
            verify(credential, store, now=NOW, request_binding=BINDING_A)
    # a preimage, when given, is checked even if it was not required
    with pytest.raises(PreimageMismatch):
        verify(paid(token.macaroon, os.urandom(32)), store, now=NOW, require_preimage=False)


# --- attenuation by the holder ----------------------------------------------------------------------------------


def test_stricter_valid_caveats_added_by_the_holder_pass(
    token: MintedToken, store: MemoryRootKeyStore, preimage: bytes
) -> None:
    narrowed = attenuate(
        token.macaroon,
        f"satscale_valid_until={NOW + 60}",
        "services=other:1,satscale:0",
        "satscale_capabilities=upscale,download",
        f"satscale_request={BINDING_A}",
    )
    verified = verify(paid(narrowed, preimage), store, now=NOW, request_binding=BINDING_A)
    assert verified.valid_until == NOW + 60
    with pytest.raises(TokenExpired):
        verify(paid(narrowed, preimage), store, now=NOW + 60, request_binding=BINDING_A)


@pytest.mark.parametrize(
    ("caveat", "error"),
    [
        (f"satscale_valid_until={NOW - 1}", TokenExpired),
        (f"satscale_request={BINDING_B}", RequestMismatch),
        ("services=other:0", InvalidToken),
        ("services=satscale:1", InvalidToken),
        ("services=satscale", InvalidToken),
        ("satscale_capabilities=download", InvalidToken),
        ("satscale_valid_until=+99999999999", InvalidToken),
        ("satscale_valid_until= 99999999999", InvalidToken),
        ("ip_address=127.0.0.1", InvalidToken),
        ("no condition at all", InvalidToken),
        ("other_valid_until=99999999999", InvalidToken),
    ],
)
def test_added_caveat_that_does_not_hold_is_refused(
    token: MintedToken, store: MemoryRootKeyStore, preimage: bytes, caveat: str, error: type[L402Error]
) -> None:
    with pytest.raises(error) as caught:
        verify(paid(attenuate(token.macaroon, caveat), preimage), store, now=NOW, request_binding=BINDING_A)
    assert caught.value.message


def test_two_request_bindings_pay_for_neither(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    doubled = attenuate(token.macaroon, f"satscale_request={BINDING_B}")
    with pytest.raises(RequestMismatch):
        verify(paid(doubled, preimage), store, now=NOW)


def test_third_party_caveat_is_refused(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    mac = decode(token.macaroon)
    mac.add_third_party_caveat("https://auth.example", os.urandom(32), "user is alice")
    with pytest.raises(InvalidToken, match="third-party"):
        verify(paid(encode(mac), preimage), store, now=NOW, request_binding=BINDING_A)


def test_token_missing_a_caveat_is_refused(store: MemoryRootKeyStore, preimage: bytes) -> None:
    identifier = bytes(2) + hashlib.sha256(preimage).digest() + os.urandom(32)
    root_key = os.urandom(32)
    store.put(hashlib.sha256(identifier).digest(), root_key)
    mac = Macaroon(location="satscale", identifier=identifier, key=root_key, version=MACAROON_V2)
    mac.add_first_party_caveat("services=satscale:0")
    mac.add_first_party_caveat("satscale_capabilities=upscale")
    mac.add_first_party_caveat(f"satscale_request={BINDING_A}")  # no valid_until: would never expire
    with pytest.raises(InvalidToken, match="valid_until"):
        verify(paid(encode(mac), preimage), store, now=NOW, request_binding=BINDING_A)


# --- encodings --------------------------------------------------------------------------------------------------


def test_url_safe_and_unpadded_base64_are_accepted(store: MemoryRootKeyStore, preimage: bytes) -> None:
    # our layout always needs padding; mint until the encoding also holds '+' or '/', so every variant differs
    tokens = (mint(hashlib.sha256(preimage).digest(), BINDING_A, VALID_UNTIL, store) for _ in range(50))
    token = next(t for t in tokens if "+" in t.macaroon or "/" in t.macaroon)
    assert token.macaroon.endswith("=")
    raw = base64.b64decode(token.macaroon)
    variants = {
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        token.macaroon.rstrip("="),
    }
    assert len(variants) == 3 and token.macaroon not in variants
    for variant in variants:
        verified = verify(paid(variant, preimage), store, now=NOW, request_binding=BINDING_A)
        assert verified.token_id == token.token_id
        assert payment_hash_of(variant) == hashlib.sha256(preimage).digest()


def test_v1_macaroon_is_refused(store: MemoryRootKeyStore, preimage: bytes) -> None:
    root_key = os.urandom(32)
    v1 = Macaroon(location="satscale", identifier="a text identifier", key=root_key, version=MACAROON_V1)
    v1.add_first_party_caveat("services=satscale:0")
    encoded = base64.b64encode(BinarySerializer().serialize_raw(v1)).decode()
    with pytest.raises(MalformedCredential, match="V2"):
        verify(paid(encoded, preimage), store, now=NOW)
    with pytest.raises(MalformedCredential):
        payment_hash_of(encoded)


@pytest.mark.parametrize(
    "macaroon",
    [
        "bm90IGEgbWFjYXJvb24=",  # valid base64 of plain text
        "AgEIc2F0c2NhbGU",  # a V2 header cut short
        "A",  # impossible base64 length
        "AgE=AgE=",  # padding in the middle
        base64.b64encode(b"\x02" + os.urandom(40)).decode(),  # V2 marker, random body
        base64.b64encode(b'{"v":2,"i64":"AAAA"}').decode(),  # JSON format
        "====",
    ],
)
def test_garbage_macaroon_is_refused(store: MemoryRootKeyStore, preimage: bytes, macaroon: str) -> None:
    with pytest.raises(MalformedCredential):
        verify(Credential(macaroon=macaroon, preimage=preimage), store, now=NOW)
    with pytest.raises(MalformedCredential):
        payment_hash_of(macaroon)


def test_json_serialized_macaroon_is_refused(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    as_json = decode(token.macaroon).serialize(JsonSerializer())
    encoded = base64.b64encode(as_json.encode()).decode()
    with pytest.raises(MalformedCredential):
        verify(paid(encoded, preimage), store, now=NOW, request_binding=BINDING_A)


def test_bytes_after_the_signature_are_refused(token: MintedToken, store: MemoryRootKeyStore, preimage: bytes) -> None:
    padded = base64.b64encode(base64.b64decode(token.macaroon) + b"\x00extra").decode()
    with pytest.raises(MalformedCredential, match="trailing"):
        verify(paid(padded, preimage), store, now=NOW, request_binding=BINDING_A)


# --- property ---------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(preimage=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32))
def test_any_preimage_round_trips_and_only_it_verifies(preimage: bytes, other: bytes) -> None:
    store = MemoryRootKeyStore()
    payment_hash = hashlib.sha256(preimage).digest()
    token = mint(payment_hash, BINDING_A, VALID_UNTIL, store)
    assert payment_hash_of(token.macaroon) == payment_hash
    challenge = parse_challenge(challenge_header(token.macaroon, INVOICE))
    verified = verify(paid(challenge.macaroon, preimage), store, now=NOW, request_binding=BINDING_A)
    assert (verified.payment_hash, verified.token_id) == (payment_hash, token.token_id)
    if other != preimage:
        with pytest.raises(PreimageMismatch):
            verify(paid(challenge.macaroon, other), store, now=NOW, request_binding=BINDING_A)
