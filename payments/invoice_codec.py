"""BOLT11 payment requests: encode (signed with a node key) and decode (signature checked).

Built on the `bolt11` library (which needs `bitstring<5`). Used by the simulated dev
node to issue real invoices, and by anything that must read an invoice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import bolt11
from bolt11 import Bolt11, MilliSatoshi, Tag, TagChar, Tags
from coincurve import PrivateKey

# BOLT11 human-readable prefixes by network
NETWORK_PREFIX = {"mainnet": "bc", "testnet": "tb", "signet": "tbs", "regtest": "bcrt"}
DEFAULT_CLTV = 80  # LND's default min_final_cltv_expiry


@dataclass(frozen=True)
class DecodedInvoice:
    payment_hash: str
    amount_msat: int | None
    timestamp: int
    expiry: int
    description: str | None
    payee: str  # node pubkey (hex), recovered from the signature
    network: str

    @property
    def expires_at(self) -> int:
        return self.timestamp + self.expiry


class InvoiceDecodeError(ValueError):
    """Not a valid, correctly signed BOLT11 payment request."""


def encode_invoice(
    node_key: bytes,
    payment_hash: bytes,
    amount_msat: int,
    memo: str,
    expiry: int,
    network: str = "regtest",
    created_at: int | None = None,
    cltv_expiry: int = DEFAULT_CLTV,
) -> str:
    """A signed BOLT11 invoice from `node_key` (32-byte secp256k1 secret)."""
    tags = Tags(
        [
            Tag(TagChar.payment_hash, payment_hash.hex()),
            Tag(TagChar.payment_secret, os.urandom(32).hex()),
            Tag(TagChar.description, memo),
            Tag(TagChar.expire_time, expiry),
            Tag(TagChar.min_final_cltv_expiry, cltv_expiry),
        ]
    )
    invoice = Bolt11(
        currency=NETWORK_PREFIX[network],
        date=created_at if created_at is not None else int(time.time()),
        tags=tags,
        amount_msat=MilliSatoshi(amount_msat),
    )
    return bolt11.encode(invoice, PrivateKey(node_key).to_hex())


def decode_invoice(payment_request: str) -> DecodedInvoice:
    try:
        invoice = bolt11.decode(payment_request.strip())
    except Exception as exc:  # the library raises assorted types on garbage
        raise InvoiceDecodeError(f"not a valid BOLT11 payment request: {exc}") from None
    if invoice.signature is None:
        raise InvoiceDecodeError("the payment request is not signed")
    payee = invoice.payee or invoice.signature.recover_public_key()
    network = next((name for name, prefix in NETWORK_PREFIX.items() if prefix == invoice.currency), invoice.currency)
    return DecodedInvoice(
        payment_hash=invoice.payment_hash,
        amount_msat=int(invoice.amount_msat) if invoice.amount_msat else None,
        timestamp=invoice.date,
        expiry=invoice.expiry if invoice.expiry is not None else 3600,
        description=invoice.description,
        payee=payee,
        network=network,
    )
