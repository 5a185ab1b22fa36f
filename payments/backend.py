"""The Lightning backend interface: every funding source is one module behind it.

Modelled on LNbits' `Wallet`: a handful of async methods, small immutable records,
optional abilities declared as features. Errors are typed exceptions, never None.
Hashes and preimages are 32 raw bytes at this boundary; records carry hex.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum


class InvoiceState(StrEnum):
    OPEN = "open"  # waiting for a payment
    ACCEPTED = "accepted"  # hold invoice: HTLC locked in, funds held, not yet taken
    SETTLED = "settled"  # paid: the preimage is released, the money is ours
    CANCELED = "canceled"  # expired or cancelled: the payer keeps the money

    @property
    def final(self) -> bool:
        return self in (InvoiceState.SETTLED, InvoiceState.CANCELED)


class Feature(StrEnum):
    HOLD_INVOICES = "hold_invoices"


@dataclass(frozen=True)
class Invoice:
    payment_hash: str  # hex
    payment_request: str  # BOLT11
    amount_msat: int
    state: InvoiceState
    created_at: int  # unix seconds
    expires_at: int  # unix seconds; an OPEN invoice is cancelled after this
    hold: bool
    preimage: str | None = None  # hex; known to us for plain invoices and once settled
    amount_paid_msat: int = 0


@dataclass(frozen=True)
class NodeInfo:
    pubkey: str  # hex, 33-byte compressed
    alias: str
    network: str  # "regtest", "testnet", "signet", "mainnet"
    block_height: int
    real_money: bool  # False for simulated nodes: the UI labels them


class PaymentError(Exception):
    """Base class of every error a backend raises."""


class BackendUnavailable(PaymentError):
    """The node cannot be reached now (connection, TLS, timeout). Retry later."""


class BackendConfigError(PaymentError):
    """Credentials or settings are missing or wrong; retrying will not help."""


class InvoiceNotFound(PaymentError):
    """No invoice with this payment hash on the node."""


class InvoiceStateError(PaymentError):
    """The invoice is not in a state that allows this (e.g. settling an OPEN invoice)."""


class DuplicateInvoice(PaymentError):
    """An invoice with this payment hash already exists."""


class LightningBackend(ABC):
    """One funding source. Implementations: `dev` (simulated) and `lnd` (gRPC)."""

    name: str
    features: frozenset[Feature] = frozenset()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and streams."""

    @abstractmethod
    async def node_info(self) -> NodeInfo: ...

    @abstractmethod
    async def add_hold_invoice(self, payment_hash: bytes, amount_msat: int, memo: str, expiry: int) -> Invoice:
        """A hold invoice for a hash whose preimage only the caller knows.
        Requires Feature.HOLD_INVOICES."""

    @abstractmethod
    async def add_invoice(self, amount_msat: int, memo: str, expiry: int) -> Invoice:
        """A plain invoice; the node makes the preimage and settles on payment."""

    @abstractmethod
    async def settle(self, preimage: bytes) -> None:
        """Settle an ACCEPTED hold invoice. Repeating it on a settled invoice succeeds."""

    @abstractmethod
    async def cancel(self, payment_hash: bytes) -> None:
        """Cancel an OPEN or ACCEPTED invoice. Repeating it succeeds; a settled one raises."""

    @abstractmethod
    async def lookup(self, payment_hash: bytes) -> Invoice: ...

    @abstractmethod
    def watch(self, payment_hash: bytes, hold: bool | None = None) -> AsyncIterator[Invoice]:
        """Yield the invoice now and on every state change; ends after a final state.
        `hold` tells whether it is a hold invoice when the caller knows (after a restart
        the backend may not). Raises BackendUnavailable when the stream drops."""

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the node answers. Uses an invoice lookup, which an
        invoice-only credential may make (LND's invoice macaroon cannot call GetInfo)."""
        try:
            await self.lookup(bytes(32))
        except InvoiceNotFound:
            return

    def supports(self, feature: Feature) -> bool:
        return feature in self.features
