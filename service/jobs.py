"""The job state machine: states, allowed transitions and the job record.

    awaiting_payment -> payment_held -> processing -> succeeded
           |                 |              |
           v                 v              v
        expired            failed         failed        (processing -> payment_held on crash recovery)

The invoice has its own state beside the job's (none/open/accepted/settled/canceled):
a job's state is written first, then the invoice is settled or cancelled, so a crash
between the two is repaired by the reconciler (succeeded + accepted -> settle;
failed/expired + open/accepted -> cancel).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from .stages import StageRequest, decode


class JobState(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAYMENT_HELD = "payment_held"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED)


class InvoiceStatus(StrEnum):
    NONE = "none"  # the row exists, the invoice is being created
    OPEN = "open"
    ACCEPTED = "accepted"
    SETTLED = "settled"
    CANCELED = "canceled"
    #: the job is one token of a collection run: its money is the run's batch invoice
    #: (service.collections), settled or cancelled for the whole batch, never for the job alone
    BATCH = "batch"


class ChainStatus(StrEnum):
    NONE = "none"  # no record (the job did not succeed)
    PENDING = "pending"  # in the outbox, not yet mined
    CONFIRMED = "confirmed"  # mined
    FAILED = "failed"  # the chain refused it for good (the reason is in chain_error)


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.AWAITING_PAYMENT: frozenset({JobState.PAYMENT_HELD, JobState.EXPIRED, JobState.FAILED}),
    JobState.PAYMENT_HELD: frozenset({JobState.PROCESSING, JobState.FAILED}),
    JobState.PROCESSING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.PAYMENT_HELD}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


class TransitionError(Exception):
    """A transition the state machine does not allow."""


def check_transition(current: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[current]:
        raise TransitionError(f"a job cannot go from {current.value} to {target.value}")


@dataclass(frozen=True)
class JobRequest:
    """What the client asked for, resolved (scale and format filled in); its hash binds the L402
    token to this request."""

    model: str
    scale: int
    output_format: str
    tile: int | None = None  # None: sized from the memory budget
    precision: str = "auto"
    #: True: input, output and metadata are pinned on the public IPFS gateway and provenance
    #: lookups by either hash show the whole record (the NFT case). False: only the hashes go on
    #: chain; the files are served only to the holder of the job's credential.
    publish: bool = False
    #: every stage, resolved (a single-model job: one stage of model, scale, tile, precision)
    stages: tuple[StageRequest, ...] = ()


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    created_at: float
    updated_at: float
    model: str
    scale: int
    output_format: str
    input_sha256: str
    input_path: str
    input_width: int
    input_height: int
    request_hash: str
    payment_hash: str
    preimage: str | None  # ours, for hold invoices; never shown before settlement
    hold: bool
    amount_msat: int
    invoice_status: InvoiceStatus
    token_valid_until: int
    # filled in as the job goes (the invoice, the payment, the run, the result)
    payment_request: str | None = None
    invoice_expires_at: float | None = None
    macaroon: str | None = None
    idempotency_key: str | None = None
    held_at: float | None = None
    hold_deadline: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    output_path: str | None = None
    output_sha256: str | None = None
    output_width: int | None = None
    output_height: int | None = None
    error: str | None = None
    attempts: int = 0
    # provenance: IPFS CIDs of input, output and metadata, and the on-chain record
    input_cid: str | None = None
    output_cid: str | None = None
    metadata_cid: str | None = None
    chain_status: ChainStatus = ChainStatus.NONE
    chain_tx: str | None = None
    chain_block: int | None = None
    chain_error: str | None = None
    # copies on a remote IPFS node / pinning service, when one is configured
    ipfs_remote_status: str = "none"  # none | pending | pinned
    ipfs_remote_error: str | None = None
    ipfs_remote_attempts: int = 0
    ipfs_remote_next_at: float = 0.0
    tile: int | None = None
    precision: str = "auto"
    publish: bool = False
    #: sha256 of the web app's per-job key (the browser that created the job keeps the key)
    owner_key_sha256: str | None = None
    #: the admission's estimate of the engine run, seconds (what the queue's backlog adds up)
    estimated_seconds: float | None = None
    #: the stages as JSON (service.stages.encode); None: one stage of model, scale, tile, precision
    pipeline: str | None = None
    #: consistency figures of the result as JSON: {"stages": [...], "overall": {...}}
    fidelity: str | None = None
    #: the intermediate images of a multi-stage job as JSON: [{"stage", "path", "sha256", ...}]
    intermediates: str | None = None
    #: the collection run this job is a token of (its payment is that run's batch invoice)
    collection_run: str | None = None
    #: the worker running (or that last ran) the job's engine: which one a takeover fences off
    worker: str | None = None
    #: the Content Credentials signed into the output as JSON, read back from it once signed
    #: (provenance.content_credentials.Credentials.to_dict)
    credentials: str | None = None

    @property
    def stages(self) -> tuple[StageRequest, ...]:
        return decode(self.pipeline, self.model, self.scale, self.tile, self.precision)

    @property
    def content_credentials(self) -> dict | None:
        return json.loads(self.credentials) if self.credentials else None

    @property
    def kept_intermediates(self) -> list[dict]:
        """The intermediate images of a multi-stage job ([] for one stage)."""
        return json.loads(self.intermediates) if self.intermediates else []

    @property
    def charged(self) -> bool:
        return self.invoice_status is InvoiceStatus.SETTLED

    @property
    def releasable(self) -> bool:
        """A result leaves the server only for a finished job whose payment is held or taken."""
        return self.state is JobState.SUCCEEDED and self.invoice_status in (
            InvoiceStatus.SETTLED,
            InvoiceStatus.ACCEPTED,
        )
