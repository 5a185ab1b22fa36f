"""From an admitted upload to a job waiting for payment.

The order makes a crash at any point harmless: the input is stored (by sha256) and the job
row written first, with our own preimage for a hold invoice, before the node hears of the
payment hash; then the invoice is issued and the L402 token minted. A job whose invoice was
never issued is found by the reconciler and ends before anyone could pay.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from payments import l402
from payments.backend import BackendUnavailable, Feature, LightningBackend, PaymentError

from .config import Settings
from .inputs import Inputs
from .intake import Admission
from .jobs import InvoiceStatus, Job, JobState
from .settlement import Settlement
from .stages import encode
from .store import JobStore, RootKeys


class IdempotencyConflict(Exception):
    """The key was used with another payload (422) or its first request is still in flight (409)."""

    def __init__(self, message: str, in_flight: bool) -> None:
        super().__init__(message)
        self.in_flight = in_flight


@dataclass(frozen=True)
class Created:
    job: Job
    #: the WWW-Authenticate value: the job's macaroon and invoice, for the creating request (or
    #: its replay with the same Idempotency-Key while unpaid); None once the job is paid
    challenge: str | None


def challenge_for(job: Job) -> str | None:
    """The 402 challenge (macaroon and invoice) of a job that can still be paid; None after. Only
    a caller that holds the macaroon already, or the request that made the job, is sent it."""
    if job.state is JobState.AWAITING_PAYMENT and job.macaroon and job.payment_request:
        return l402.challenge_header(job.macaroon, job.payment_request)
    return None


def invoice_memo(admission: Admission) -> str:
    """What the payer's wallet shows. Never the job id: an invoice travels (QR codes, wallets,
    explorers), and the job id is all a status request needs."""
    request, image = admission.request, admission.image
    return f"Satscale {request.model} x{request.scale} {image.width}x{image.height}"


class Checkout:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: LightningBackend,
        settlement: Settlement,
        inputs: Inputs,
        clock: Callable[[], float],
        on_created: Callable[[Job], None],
    ) -> None:
        """`on_created` is told of each job whose invoice is out (the payment watcher)."""
        self.settings = settings
        self.store = store
        self.backend = backend
        self.settlement = settlement
        self.inputs = inputs
        self.clock = clock
        self.on_created = on_created
        self.root_keys = RootKeys(store)
        self.hold = backend.supports(Feature.HOLD_INVOICES)

    async def create(
        self, admission: Admission, idempotency_key: str | None = None, owner_key_sha256: str | None = None
    ) -> Created:
        idempotency_key = idempotency_key or None  # an empty header is no key (and no unique value)
        if idempotency_key:
            existing = self.store.by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, admission.binding)
        image, request = admission.image, admission.request
        input_path = self.inputs.path_for(admission)
        now = self.clock()
        base = dict(
            id="job_" + secrets.token_urlsafe(12),
            created_at=now,
            updated_at=now,
            model=request.model,
            scale=request.scale,
            output_format=request.output_format,
            input_sha256=admission.input_sha256,
            input_path=str(input_path),
            input_width=image.width,
            input_height=image.height,
            request_hash=admission.binding,
            tile=request.tile,
            precision=request.precision,
            publish=request.publish,
            pipeline=encode(request.stages) if request.stages else None,
            owner_key_sha256=owner_key_sha256,
            estimated_seconds=admission.estimate.seconds,
            amount_msat=admission.quote.amount_msat,
            token_valid_until=int(now + self.settings.token_validity_seconds),
            idempotency_key=idempotency_key,
            state=JobState.AWAITING_PAYMENT,
            invoice_status=InvoiceStatus.NONE,
        )
        memo = invoice_memo(admission)
        expiry = self.settings.invoice_expiry_seconds
        amount = admission.quote.amount_msat
        if self.hold:
            # the preimage is ours and stored before the node ever hears of the hash
            preimage = secrets.token_bytes(32)
            payment_hash = hashlib.sha256(preimage).digest()
            job = Job(**base, payment_hash=payment_hash.hex(), preimage=preimage.hex(), hold=True)
            await self.inputs.store_for(admission, lambda: self._insert(job))
            try:
                invoice = await self.backend.add_hold_invoice(payment_hash, amount, memo, expiry)
            except PaymentError as exc:
                await self._abandon(job, exc)
                raise
        else:
            invoice = await self.backend.add_invoice(amount, memo, expiry)
            job = Job(**base, payment_hash=invoice.payment_hash, preimage=None, hold=False)
            await self.inputs.store_for(admission, lambda: self._insert(job))
        token = l402.mint(bytes.fromhex(job.payment_hash), admission.binding, job.token_valid_until, self.root_keys)
        job = self.store.update(
            job.id,
            payment_request=invoice.payment_request,
            invoice_status=InvoiceStatus.OPEN,
            invoice_expires_at=float(invoice.expires_at),
            macaroon=token.macaroon,
        )
        self.on_created(job)
        return Created(job, l402.challenge_header(token.macaroon, invoice.payment_request))

    def _insert(self, job: Job) -> None:
        try:
            self.store.insert(job)
        except Exception as exc:  # a concurrent request with the same Idempotency-Key won the race
            if job.idempotency_key and self.store.by_idempotency_key(job.idempotency_key) is not None:
                raise IdempotencyConflict("a request with this Idempotency-Key is still in flight", True) from exc
            raise

    async def _abandon(self, job: Job, exc: Exception) -> None:
        """No invoice could be issued: the job ends before anyone could pay."""
        self.store.transition(job.id, [JobState.AWAITING_PAYMENT], JobState.EXPIRED, error=f"no invoice: {exc}")
        ended = self.store.update(job.id, invoice_status=InvoiceStatus.CANCELED)
        await self.inputs.release(ended)
        if isinstance(exc, BackendUnavailable):
            self.settlement.lost(exc)

    def _replay(self, job: Job, binding: str) -> Created:
        """The same request again: the same job. The challenge (the macaroon) is repeated only while
        the job waits for payment, so whoever learns a key later cannot take a paid job over."""
        if job.request_hash != binding:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request", False)
        if job.invoice_status is InvoiceStatus.NONE or job.macaroon is None or job.payment_request is None:
            raise IdempotencyConflict("a request with this Idempotency-Key is still in flight", True)
        return Created(job, challenge_for(job))
