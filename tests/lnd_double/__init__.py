"""A faithful lnd double for tests: real gRPC + TLS + macaroons, lnd's invoice rules and error texts."""

from .macaroons import ADMIN_PERMISSIONS, INVOICE_PERMISSIONS, READ_PERMISSIONS, Op
from .registry import HOLD_EXPIRY_DELTA, PaymentRejected, State, StoredInvoice
from .server import DoubleFiles, LndDouble, running_lnd_double

__all__ = [
    "ADMIN_PERMISSIONS",
    "HOLD_EXPIRY_DELTA",
    "INVOICE_PERMISSIONS",
    "READ_PERMISSIONS",
    "DoubleFiles",
    "LndDouble",
    "Op",
    "PaymentRejected",
    "State",
    "StoredInvoice",
    "running_lnd_double",
]
