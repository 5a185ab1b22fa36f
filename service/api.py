"""The paid HTTP API under /v1 (L402 over Lightning)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from payments import l402
from payments.backend import InvoiceState
from provenance.ipfs import LocalIpfsStore
from sr_core.imageio import FORMAT_EXTENSIONS, normalise_format
from sr_core.registry import ModelRegistry

from .chain_sender import ChainSender
from .jobs import Job, JobRequest, JobState
from .problems import Problem
from .verify import NothingToVerify, Verifier
from .worker import JobService, request_hash

DEFAULT_MODEL = "realesrgan-x4plus"
PROCESSING_RETRY_AFTER = "2"
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff"}
UPLOAD_CHUNK = 1 << 20


def job_document(job: Job, service: JobService, base_url: str, chain: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a client sees of a job. The preimage never appears here."""
    document: dict[str, Any] = {
        "job_id": job.id,
        "status": job.state.value,
        "model": job.model,
        "scale": job.scale,
        "format": job.output_format,
        "tile": job.tile,
        "precision": job.precision,
        "created_at": int(job.created_at),
        "amount_msat": job.amount_msat,
        "payment_hash": job.payment_hash,
        "invoice_status": job.invoice_status.value,
        "charged": job.charged,
        "input": {"sha256": job.input_sha256, "width": job.input_width, "height": job.input_height},
        "links": {"self": f"{base_url}/v1/upscales/{job.id}"},
    }
    if job.state is JobState.AWAITING_PAYMENT:
        document["payment_request"] = job.payment_request
        document["expires_at"] = int(job.invoice_expires_at or 0)
    if job.state is JobState.PROCESSING:
        document["progress"] = round(service.progress(job.id) or 0.0, 3)
    if job.hold_deadline and job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING):
        document["hold_deadline"] = int(job.hold_deadline)
    if job.output_cid:
        document["provenance"] = {
            "input_cid": job.input_cid,
            "output_cid": job.output_cid,
            "metadata_cid": job.metadata_cid,
            "gateway": {
                name: f"{base_url}/ipfs/{cid}"
                for name, cid in (("input", job.input_cid), ("output", job.output_cid), ("metadata", job.metadata_cid))
            },
            "remote_ipfs": {"status": job.ipfs_remote_status, "error": job.ipfs_remote_error},
            "chain": {
                "status": job.chain_status.value,
                "tx": job.chain_tx,
                "block": job.chain_block,
                "error": job.chain_error,
                **(chain or {}),
            },
        }
    if job.state is JobState.SUCCEEDED:
        document["output"] = {
            "sha256": job.output_sha256,
            "width": job.output_width,
            "height": job.output_height,
            "url": f"{base_url}/v1/upscales/{job.id}/result",
        }
        document["links"]["result"] = document["output"]["url"]
    if job.error:
        document["error"] = job.error
    return document


def _base_url(request: Request, service: JobService) -> str:
    return (service.settings.public_url or str(request.base_url)).rstrip("/")


def job_response(request: Request, service: JobService, job: Job, proof_of_payment: bool = False) -> JSONResponse:
    """402 with the challenge while unpaid, 202 while held or processing, 200 when final.

    A caller holding the preimage has paid (a plain invoice gives it at once) even if the
    node's notice has not reached us yet: never ask them to pay again."""
    sender = getattr(request.app.state, "chain_sender", None)
    body = job_document(job, service, _base_url(request, service), sender.describe() if sender else None)
    headers = {"Location": f"/v1/upscales/{job.id}"}
    unpaid = job.state is JobState.AWAITING_PAYMENT
    if unpaid and not proof_of_payment and job.macaroon and job.payment_request:
        headers["WWW-Authenticate"] = l402.challenge_header(job.macaroon, job.payment_request)
        code = 402
    elif unpaid or job.state in (JobState.PAYMENT_HELD, JobState.PROCESSING):
        headers["Retry-After"] = PROCESSING_RETRY_AFTER
        code = 202
    else:
        code = 200
    return JSONResponse(body, status_code=code, headers=headers)


async def _read_upload(request: Request, image: UploadFile, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise Problem(413, "image-too-large", "Image too large", f"the upload exceeds {limit} bytes")
    chunks, size = [], 0
    while chunk := await image.read(UPLOAD_CHUNK):
        size += len(chunk)
        if size > limit:
            raise Problem(413, "image-too-large", "Image too large", f"the upload exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _credential(authorization: str | None) -> l402.Credential | None:
    if not authorization:
        return None
    return l402.parse_authorization(authorization)


class QuoteDocument(BaseModel):
    model: str
    scale: int
    width: int
    height: int
    output_width: int
    output_height: int
    output_megapixels: float
    rate_msat_per_megapixel: int
    minimum_msat: int
    amount_msat: int
    amount_sat: int
    #: how long the upscale should take on this server, measured, in seconds
    estimated_seconds: float


def build_router(service: JobService, registry: ModelRegistry) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models", tags=["models"])
    def models() -> list[dict]:
        """Every model the server can run, with the scales and precisions it offers."""
        return [description.to_dict() for description in registry.describe_all()]

    @router.get("/quote", tags=["upscales"], response_model=QuoteDocument)
    async def get_quote(
        width: Annotated[int, Query(gt=0, le=100_000)],
        height: Annotated[int, Query(gt=0, le=100_000)],
        model: str = DEFAULT_MODEL,
        scale: int | None = None,
    ) -> QuoteDocument:
        """The price of an upscale, in msat, before uploading anything."""
        priced = await service.quote(model, width, height, scale)
        estimate = await service.estimate(model, width, height, priced.scale)
        return QuoteDocument(
            **priced.__dict__, amount_sat=priced.amount_sat, estimated_seconds=round(estimate.seconds, 1)
        )

    @router.post(
        "/upscales",
        tags=["upscales"],
        status_code=402,
        responses={
            402: {"description": "Pay the invoice in WWW-Authenticate, then repeat with the L402 credential"},
            200: {"description": "The job (with a credential for a finished job)"},
            202: {"description": "The job is paid and running"},
        },
    )
    async def create_upscale(
        request: Request,
        image: Annotated[UploadFile, File(description="PNG, JPEG, WebP or TIFF")],
        model: Annotated[str, Form()] = DEFAULT_MODEL,
        scale: Annotated[int | None, Form()] = None,
        format: Annotated[str | None, Form(description="png, jpeg, webp, tiff; default: as the input")] = None,
        tile: Annotated[int | None, Form(description="tile size in input pixels; default: from memory")] = None,
        precision: Annotated[str, Form(description="auto, fp32, bf16 or fp16")] = "auto",
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Ask for an upscale. Unpaid: 402 with an invoice and a macaroon. Paid (repeat the request
        with `Authorization: L402 <macaroon>:<preimage>`): the job this token paid for."""
        data = await _read_upload(request, image, service.settings.max_upload_bytes)
        credential = _credential(authorization)
        info = await service.inspect(data)
        fmt = normalise_format(format) if format else info.format
        priced = await service.quote(model, info.width, info.height, scale)
        job_request = JobRequest(model, priced.scale, fmt, tile, precision)
        if credential is not None:
            binding = request_hash(hashlib.sha256(data).hexdigest(), job_request)
            job = _authorised_job(service, credential, binding, require_preimage=False)
            return job_response(request, service, job, proof_of_payment=credential.preimage is not None)
        challenge = await service.create_job(data, job_request, idempotency_key)
        return job_response(request, service, challenge.job)

    @router.get("/upscales/{job_id}", tags=["upscales"])
    async def get_upscale(
        request: Request, job_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        """The job's status. The job id suffices; a credential, if sent, must be this job's."""
        job = _job_or_404(service, job_id)
        credential = _credential(authorization)
        if credential is not None:
            _authorised_job(service, credential, job.request_hash, require_preimage=False, expected=job)
        return job_response(request, service, job, proof_of_payment=bool(credential and credential.preimage))

    @router.get("/upscales/{job_id}/result", tags=["upscales"], response_class=FileResponse)
    async def get_result(job_id: str, authorization: Annotated[str | None, Header()] = None) -> FileResponse:
        """The upscaled image: needs the full credential (macaroon and preimage)."""
        job = _job_or_404(service, job_id)
        credential = _credential(authorization)
        if credential is None:
            raise Problem(
                401,
                "credential-required",
                "Credential required",
                "send Authorization: L402 <macaroon>:<preimage> for this job",
                {"WWW-Authenticate": 'L402 realm="satscale"'},
            )
        _authorised_job(service, credential, job.request_hash, require_preimage=True, expected=job)
        if job.state is not JobState.SUCCEEDED or not job.output_path:
            raise Problem(409, "not-ready", "Result not ready", f"the job is {job.state.value}", status=job.state.value)
        return FileResponse(
            job.output_path,
            media_type=MEDIA_TYPES[job.output_format],
            filename=f"{job.id}{FORMAT_EXTENSIONS[job.output_format]}",
            headers={"ETag": f'"{job.output_sha256}"', "X-Content-SHA256": job.output_sha256 or ""},
        )

    return router


def _job_or_404(service: JobService, job_id: str) -> Job:
    job = service.store.get(job_id)
    if job is None:
        raise Problem(404, "not-found", "No such job", f"there is no job {job_id!r}")
    return job


def _authorised_job(
    service: JobService,
    credential: l402.Credential,
    binding: str,
    *,
    require_preimage: bool,
    expected: Job | None = None,
) -> Job:
    """The job a verified token paid for; a token never unlocks another job."""
    token = l402.verify(
        credential,
        service.root_keys,
        now=int(time.time()),
        request_binding=binding,
        require_preimage=require_preimage,
    )
    job = service.store.by_payment_hash(token.payment_hash.hex())
    if job is None or (expected is not None and job.id != expected.id):
        raise Problem(401, "invalid-credential", "Invalid L402 credential", "this token does not belong to this job")
    return job


class PayRequest(BaseModel):
    payment_request: str
    #: wait until the hold invoice settles (or is cancelled), as a real wallet's pay call does
    wait: bool = False
    timeout: float = 300.0


def dev_router(service: JobService) -> APIRouter:
    """Routes that exist only with the simulated dev node: paying with play money."""
    from payments.dev import DevNode, DevPaymentError

    node = service.backend
    assert isinstance(node, DevNode)
    router = APIRouter(prefix="/v1/dev", tags=["dev (simulated node, not real money)"])

    @router.post("/pay")
    async def pay(body: PayRequest) -> dict[str, Any]:
        """Pay an invoice from the simulated wallet. Not real money."""
        try:
            result = await node.pay(body.payment_request)
            preimage = result.preimage
            state = result.state
            if body.wait and preimage is None:
                preimage = await node.wait_for_preimage(bytes.fromhex(result.payment_hash), body.timeout)
                state = InvoiceState.SETTLED
        except DevPaymentError as exc:
            raise Problem(422, "dev-payment-refused", "Payment refused", str(exc)) from None
        return {
            "payment_hash": result.payment_hash,
            "state": str(state),
            "preimage": preimage.hex() if isinstance(preimage, bytes) else preimage,
            "real_money": False,
        }

    @router.get("/payments")
    async def payments() -> list[dict[str, Any]]:
        """The simulated wallet's history: what it paid, and what each payment became
        (accepted: held; settled: charged, with the preimage it received; canceled: returned)."""
        history = []
        for payment in await node.payments():
            preimage = None
            if payment.state is InvoiceState.SETTLED:
                preimage = (await node.lookup(bytes.fromhex(payment.payment_hash))).preimage
            history.append(
                {
                    "payment_hash": payment.payment_hash,
                    "amount_msat": payment.amount_msat,
                    "charged_msat": payment.charged_msat,
                    "state": str(payment.state),
                    "paid_at": payment.paid_at,
                    "preimage": preimage,
                }
            )
        return history

    return router


def provenance_router(service: JobService, sender: ChainSender, ipfs: LocalIpfsStore) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["provenance"])

    @router.get("/provenance/{ref}")
    async def verify(ref: str) -> dict[str, Any]:
        """The chain of custody of an image, by its sha256 or a CID: input -> model -> output ->
        payment, each link re-checked against the bytes, with what does not match."""

        def run() -> dict[str, Any]:
            verifier = Verifier(sender.chain, ipfs, service.store, service.registry)
            return verifier.verify(ref).to_dict()

        try:
            return await asyncio.to_thread(run)
        except NothingToVerify as exc:
            raise Problem(404, "no-provenance", "No provenance record", str(exc)) from None

    return router
