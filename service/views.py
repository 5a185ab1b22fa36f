"""What a caller sees of a job, by access level: the one place that decides it.

The API renders a `JobView` as JSON, the web app as HTML; neither reads a job's fields
directly, so neither can show more than its caller's grant allows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .access import Grant, Level
from .jobs import Job, JobState


@dataclass(frozen=True)
class PaymentView:
    payment_hash: str
    #: the invoice, while it can still be paid
    payment_request: str | None
    expires_at: int | None


@dataclass(frozen=True)
class InputView:
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class OutputView:
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class IntermediateView:
    stage: int
    model: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class ProvenanceView:
    published: bool
    input_cid: str | None
    output_cid: str | None
    metadata_cid: str | None
    remote_status: str
    remote_error: str | None
    chain_status: str
    chain_tx: str | None
    chain_block: int | None
    chain_error: str | None


@dataclass(frozen=True)
class JobView:
    level: Level
    job_id: str
    status: JobState
    model: str
    scale: int
    output_format: str
    tile: int | None
    precision: str
    publish: bool
    created_at: int
    amount_msat: int
    invoice_status: str
    charged: bool
    progress: float | None
    hold_deadline: int | None
    error: str | None
    payment: PaymentView | None  # HOLDER and OWNER
    input: InputView | None  # HOLDER and OWNER
    output: OutputView | None  # OWNER, once the result may be released
    provenance: ProvenanceView | None  # OWNER, once recorded
    #: every stage: model and scale for anyone with the job id (as `model` and `scale` are); the
    #: stage's engine options (a prompt describes the image) from HOLDER on
    stages: tuple[dict[str, Any], ...] = ()
    #: how faithful the output is to the input, per stage and overall: OWNER, with the output
    fidelity: dict[str, Any] | None = None
    #: a multi-stage job's intermediate images: OWNER, with the output
    intermediates: tuple[IntermediateView, ...] = ()
    #: the Content Credentials signed into the output (signer, actions, ingredient): OWNER, with it
    content_credentials: dict[str, Any] | None = None

    @property
    def releasable(self) -> bool:
        return self.output is not None


def view(grant: Grant, progress: float | None) -> JobView:
    job, level = grant.job, grant.level
    holder = level >= Level.HOLDER
    owner = level is Level.OWNER
    return JobView(
        level=level,
        job_id=job.id,
        status=job.state,
        model=job.model,
        scale=job.scale,
        output_format=job.output_format,
        tile=job.tile,
        precision=job.precision,
        publish=job.publish,
        created_at=int(job.created_at),
        amount_msat=job.amount_msat,
        invoice_status=job.invoice_status.value,
        charged=job.charged,
        progress=round(progress, 3) if job.state is JobState.PROCESSING and progress is not None else None,
        hold_deadline=int(job.hold_deadline)
        if job.hold_deadline and job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING)
        else None,
        error=job.error,
        payment=_payment(job) if holder else None,
        input=InputView(job.input_sha256, job.input_width, job.input_height) if holder else None,
        output=_output(job) if owner and job.releasable else None,
        provenance=_provenance(job) if owner and job.output_cid else None,
        stages=tuple(s.to_dict() if holder else {"model": s.model, "scale": s.scale} for s in job.stages),
        fidelity=json.loads(job.fidelity) if owner and job.releasable and job.fidelity else None,
        intermediates=_intermediates(job) if owner and job.releasable else (),
        content_credentials=job.content_credentials if owner and job.releasable else None,
    )


def _intermediates(job: Job) -> tuple[IntermediateView, ...]:
    return tuple(
        IntermediateView(r["stage"], r["model"], r["sha256"], r["width"], r["height"]) for r in job.kept_intermediates
    )


def _payment(job: Job) -> PaymentView:
    unpaid = job.state is JobState.AWAITING_PAYMENT
    return PaymentView(
        payment_hash=job.payment_hash,
        payment_request=job.payment_request if unpaid else None,
        expires_at=int(job.invoice_expires_at) if unpaid and job.invoice_expires_at else None,
    )


def _output(job: Job) -> OutputView:
    return OutputView(job.output_sha256 or "", job.output_width or 0, job.output_height or 0)


def _provenance(job: Job) -> ProvenanceView:
    return ProvenanceView(
        published=job.publish,
        input_cid=job.input_cid,
        output_cid=job.output_cid,
        metadata_cid=job.metadata_cid,
        remote_status=job.ipfs_remote_status,
        remote_error=job.ipfs_remote_error,
        chain_status=job.chain_status.value,
        chain_tx=job.chain_tx,
        chain_block=job.chain_block,
        chain_error=job.chain_error,
    )


def job_document(job_view: JobView, base_url: str = "", chain: dict[str, Any] | None = None) -> dict[str, Any]:
    """The API's JSON form of a view. Links are relative unless a public base URL is set."""
    v = job_view
    link = f"{base_url}/v1/upscales/{v.job_id}"
    document: dict[str, Any] = {
        "job_id": v.job_id,
        "status": v.status.value,
        "access": v.level.name.lower(),
        "model": v.model,
        "scale": v.scale,
        "format": v.output_format,
        "tile": v.tile,
        "precision": v.precision,
        "publish": v.publish,
        "created_at": v.created_at,
        "amount_msat": v.amount_msat,
        "invoice_status": v.invoice_status,
        "charged": v.charged,
        "links": {"self": link},
    }
    for name in ("progress", "hold_deadline", "error"):
        if getattr(v, name) is not None:
            document[name] = getattr(v, name)
    if v.payment is not None:
        document["payment_hash"] = v.payment.payment_hash
        if v.payment.payment_request:
            document["payment_request"] = v.payment.payment_request
            document["expires_at"] = v.payment.expires_at
    if v.input is not None:
        document["input"] = asdict(v.input)
    document["pipeline"] = list(v.stages)
    if v.output is not None:
        document["output"] = {**asdict(v.output), "url": f"{link}/result"}
        document["links"]["result"] = f"{link}/result"
    if v.fidelity is not None:
        document["fidelity"] = v.fidelity
    if v.content_credentials is not None:
        document["content_credentials"] = v.content_credentials
    if v.intermediates:
        document["intermediates"] = [{**asdict(i), "url": f"{link}/stages/{i.stage}"} for i in v.intermediates]
    if v.provenance is not None:
        p = v.provenance
        gateway = (
            {
                name: f"{base_url}/ipfs/{cid}"
                for name, cid in (("input", p.input_cid), ("output", p.output_cid), ("metadata", p.metadata_cid))
                if cid
            }
            if p.published
            else {}
        )
        document["provenance"] = {
            "published": p.published,
            "input_cid": p.input_cid,
            "output_cid": p.output_cid,
            "metadata_cid": p.metadata_cid,
            "gateway": gateway,
            "remote_ipfs": {"status": p.remote_status, "error": p.remote_error},
            "chain": {
                "status": p.chain_status,
                "tx": p.chain_tx,
                "block": p.chain_block,
                "error": p.chain_error,
                **(chain or {}),
            },
        }
    return document
