"""The paid HTTP API under /v1 (L402 over Lightning), a thin client of the front door.

Every error is RFC 9457 problem+json, and the OpenAPI document says so for every status an
operation can answer (service.openapi), with the real constraints on every parameter.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from payments.backend import InvoiceState
from sr_core.device import Precision
from sr_core.imageio import ACCEPTED_FORMATS, FORMAT_ALIASES, ImageLimits
from sr_core.pipeline import MAX_STAGES
from sr_core.tiling import MIN_TILE

from .access import Grant, Level, LinkSignature, Proof
from .checkout import challenge_for
from .config import Settings
from .engines import DEFAULT_MODEL
from .frontdoor import FrontDoor
from .intake import MAX_REQUEST_TILE, JobOptions, Priced
from .openapi import errors
from .problems import Problem
from .stages import MAX_PIPELINE_CHARS
from .views import JobView, job_document

PROCESSING_RETRY_AFTER = "2"
UPLOAD_CHUNK = 1 << 20
MAX_SIDE = ImageLimits().max_side
IMAGE_TYPES = ", ".join(f"image/{fmt}" for fmt in ACCEPTED_FORMATS)
# what the document offers, from the core's own lists (the core's checks are the rule)
PrecisionName = Literal[tuple(p.value for p in Precision)]  # type: ignore[valid-type]
OutputFormat = Literal[(*ACCEPTED_FORMATS, *FORMAT_ALIASES)]  # type: ignore[valid-type]


def base_url(settings: Settings) -> str:
    """Links in documents: relative, unless the operator configured the public address. Never
    the request's Host header (a client could make the server hand out links to anywhere)."""
    return (settings.public_url or "").rstrip("/")


def job_response(front: FrontDoor, job_view: JobView, challenge: str | None = None) -> JSONResponse:
    """402 with the challenge for the request that created the job (or a holder who has the
    macaroon already) while unpaid; 202 while unpaid, held or processing; 200 when final."""
    body = job_document(job_view, base_url(front.settings), front.chain_description())
    headers = {"Location": f"/v1/upscales/{job_view.job_id}"}
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
        return JSONResponse(body, status_code=402, headers=headers)
    if job_view.status.final:
        return JSONResponse(body, status_code=200, headers=headers)
    headers["Retry-After"] = PROCESSING_RETRY_AFTER
    return JSONResponse(body, status_code=202, headers=headers)


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


class StageQuoteDocument(BaseModel):
    model: str
    scale: int
    output_width: int
    output_height: int
    output_megapixels: float
    #: per output megapixel, or per unit for a stage priced per thing it finds (`unit`)
    rate_msat_per_megapixel: int
    amount_msat: int
    estimated_seconds: float
    #: what the stage is priced by: "megapixel", or "face" for a face stage
    unit: str = "megapixel"
    #: a stage priced per unit: how many the job pays for, at most (a face stage: the faces
    #: found in the upload; priced by size alone, the most it may restore)
    units: int | None = None


PIPELINE_HELP = (
    "instead of model/scale/tile/precision: a JSON list of 1 to 4 stages run one after the other, "
    'e.g. [{"model": "realesrgan-x4plus", "scale": 2}, {"model": "realesrgan-x4plus", "scale": 2}]; a stage '
    "may also set its model's own options (GET /v1/models lists each model's `options`: preset, steps, seed, "
    "prompt...). A face stage, run on the image the stages before it make, is "
    '{"face": "<face model>", "weight": 0.5}: priced per face found in the upload'
)


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
    #: each stage's part (a one-model job: one stage)
    stages: list[StageQuoteDocument]


class ModelOption(BaseModel):
    """An option a request may set for a model's own run (a pipeline stage's values)."""

    name: str
    type: str
    default: Any = None
    help: str
    choices: list[str] | None = None
    minimum: float | None = None
    maximum: float | None = None


class ModelListing(BaseModel):
    name: str
    source: str
    kind: str
    description: str
    path: str | None = None
    error: str | None = None
    architecture: str | None = None
    native_scale: int | None = None
    scales: list[int] | None = None
    precision: str | None = None
    precisions: list[str] | None = None
    parameters: int | None = None
    price_class: str | None = None
    #: external (the server tiles), internal (the engine tiles the whole image), whole-image, or
    #: regions (a face stage: reads the faces' regions and streams the rest through)
    tiling: str | None = None
    bytes_per_output_pixel: int | None = None
    max_output_pixels: int | None = None
    #: keeps, repaints, may-invent or unknown: what the model does to people's faces; restores:
    #: a face model, used as a face stage ({"face": name} in a pipeline)
    faces: str | None = None
    takes_prompt: bool | None = None
    options: list[ModelOption] | None = None
    note: str | None = None
    weights_sha256: str | None = None
    #: what the price counts: "megapixel" (output), or "face" for a face model
    price_unit: str | None = None
    #: a notice about the weights' licence users must read before using the model
    licence: str | None = None


class PresetDocument(BaseModel):
    id: str
    title: str
    description: str
    #: the total scales it offers
    scales: list[int]
    #: total scale -> the `pipeline` to send for it
    pipelines: dict[str, list[dict[str, Any]]]


class JobDocument(BaseModel):
    """A job as its caller may see it: `access` says how much (public, holder, owner)."""

    model_config = {"extra": "allow"}
    job_id: str
    status: str
    access: str
    model: str
    scale: int
    format: str
    publish: bool
    amount_msat: int
    invoice_status: str
    charged: bool
    links: dict[str, str]


class PayRequest(BaseModel):
    payment_request: str = Field(min_length=1, max_length=4096)
    #: wait until the hold invoice settles (or is cancelled), as a real wallet's pay call does
    wait: bool = False
    timeout: float = Field(300.0, gt=0, le=3600)


def build_router(front: FrontDoor) -> APIRouter:
    router = APIRouter(prefix="/v1")
    settings = front.settings

    @router.get("/models", tags=["models"], response_model=list[ModelListing])
    def models() -> list[dict]:
        """Every model the server can run, with the scales and precisions it offers."""
        return [description.to_dict() for description in front.models()]

    @router.get("/presets", tags=["models"], response_model=list[PresetDocument])
    def presets() -> list[dict]:
        """Pipelines users would otherwise build by hand (offered when their models are here):
        send one of `pipelines` as the `pipeline` of a quote or an upscale."""
        return [preset.describe() for preset in front.presets()]

    @router.get("/quote", tags=["upscales"], response_model=QuoteDocument, responses=errors(413, 422))
    async def get_quote(
        width: Annotated[int, Query(ge=1, le=MAX_SIDE, description="input width in pixels")],
        height: Annotated[int, Query(ge=1, le=MAX_SIDE, description="input height in pixels")],
        model: Annotated[str, Query(description="a model name from GET /v1/models")] = DEFAULT_MODEL,
        scale: Annotated[int | None, Query(description="output scale; default: the model's own")] = None,
        tile: Annotated[int | None, Query(ge=MIN_TILE, le=MAX_REQUEST_TILE, description="tile side")] = None,
        precision: Annotated[PrecisionName, Query()] = "auto",
        pipeline: Annotated[str | None, Query(max_length=MAX_PIPELINE_CHARS, description=PIPELINE_HELP)] = None,
    ) -> QuoteDocument:
        """The price of an upscale, in msat, before uploading anything. The upload limits apply:
        an image that could never be uploaded is refused (413), not priced."""
        options = JobOptions(model, scale, None, tile, precision, pipeline=pipeline)
        priced = await front.quote(options, width, height)
        return quote_document(priced)

    @router.post(
        "/upscales",
        tags=["upscales"],
        status_code=402,
        response_model=JobDocument,
        responses={
            402: {"description": "Pay the invoice in WWW-Authenticate, then repeat with the L402 credential"},
            200: {"description": "The job this credential paid for (finished)", "model": JobDocument},
            202: {"description": "The job this credential paid for (paid and running)", "model": JobDocument},
            **errors(401, 409, 413, 415, 422, 503),
        },
        openapi_extra={
            "requestBody": {"content": {"multipart/form-data": {"encoding": {"image": {"contentType": IMAGE_TYPES}}}}}
        },
    )
    async def create_upscale(
        request: Request,
        image: Annotated[UploadFile, File(description="PNG, JPEG, WebP or TIFF")],
        model: Annotated[str, Form(description="a model name from GET /v1/models")] = DEFAULT_MODEL,
        scale: Annotated[int | None, Form(description="output scale; default: the model's own")] = None,
        format: Annotated[OutputFormat | None, Form(description="output format; default: as the input")] = None,
        tile: Annotated[
            int | None, Form(ge=MIN_TILE, le=MAX_REQUEST_TILE, description="tile size in input pixels")
        ] = None,
        precision: Annotated[PrecisionName, Form(description="numeric precision; auto: the server's choice")] = "auto",
        publish: Annotated[
            bool | None,
            Form(
                description="true: pin the input, output and metadata on the public IPFS gateway (the NFT "
                "case); false: only the hashes go on chain and the files are served only with this job's "
                "credential. Default: the server's setting (false unless configured)."
            ),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=16,
                max_length=200,
                description="a unique, unguessable key (a UUID): repeating the request with it returns the "
                "same job and, while unpaid, the same invoice",
            ),
        ] = None,
        authorization: Annotated[str | None, Header()] = None,
        pipeline: Annotated[str | None, Form(max_length=MAX_PIPELINE_CHARS, description=PIPELINE_HELP)] = None,
    ) -> JSONResponse:
        """Ask for an upscale. Unpaid: 402 with an invoice and a macaroon. Paid (repeat the request
        with `Authorization: L402 <macaroon>:<preimage>`): the job this token paid for."""
        data = await _read_upload(request, image, settings.max_upload_bytes)
        proof = Proof.from_authorization(authorization)
        publishing = settings.publish_default if publish is None else publish
        options = JobOptions(model, scale, format, tile, precision, publishing, pipeline=pipeline)
        if proof is not None and proof.l402 is not None:
            grant = await front.repeat(data, options, proof.l402)
            return job_response(front, front.view(grant), _challenge_for_holder(grant))
        created = await front.create(data, options, idempotency_key)
        # the creating request holds the token; a replay once the job is paid gets only its state
        level = Level.HOLDER if created.challenge else Level.PUBLIC
        return job_response(front, front.view(Grant(created.job, level)), created.challenge)

    @router.get(
        "/upscales/{job_id}",
        tags=["upscales"],
        response_model=JobDocument,
        responses={
            202: {"description": "Not final yet (unpaid, held or processing)", "model": JobDocument},
            402: {"description": "Unpaid: the holder of the macaroon is sent the challenge again"},
            **errors(401, 404),
        },
    )
    async def get_upscale(job_id: str, authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """The job's status. The job id alone shows its state and progress, nothing of the input
        or output; the macaroon adds the invoice and the input; proof of payment adds the output."""
        grant = front.grant(job_id, Proof.from_authorization(authorization))
        return job_response(front, front.view(grant), _challenge_for_holder(grant))

    @router.get(
        "/upscales/{job_id}/result",
        tags=["upscales"],
        response_class=FileResponse,
        responses={
            200: {
                "description": "The upscaled image",
                "content": {
                    f"image/{fmt}": {"schema": {"type": "string", "format": "binary"}} for fmt in ACCEPTED_FORMATS
                },
            },
            **errors(401, 404, 409),
        },
    )
    async def get_result(
        job_id: str,
        authorization: Annotated[str | None, Header()] = None,
        expires: Annotated[int | None, Query(description="signed link (web app): expiry, unix time")] = None,
        signature: Annotated[str | None, Query(max_length=128, description="signed link (web app)")] = None,
    ) -> FileResponse:
        """The upscaled image: needs the full credential (macaroon and preimage), or a signed link
        the web app gave the browser that made the job."""
        result = front.result(front.owner_grant(job_id, _download_proof(authorization, expires, signature)))
        return FileResponse(
            result.path,
            media_type=result.media_type,
            filename=result.filename,
            headers={"ETag": f'"{result.sha256}"', "X-Content-SHA256": result.sha256},
        )

    @router.get(
        "/upscales/{job_id}/stages/{stage}",
        tags=["upscales"],
        response_class=FileResponse,
        responses={
            200: {
                "description": "A multi-stage job's image after this stage (lossless TIFF)",
                "content": {"image/tiff": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors(401, 404, 409),
        },
    )
    async def get_intermediate(
        job_id: str,
        stage: Annotated[int, Path(ge=1, le=MAX_STAGES, description="the stage whose output to download")],
        authorization: Annotated[str | None, Header()] = None,
        expires: Annotated[int | None, Query(description="signed link (web app): expiry, unix time")] = None,
        signature: Annotated[str | None, Query(max_length=128, description="signed link (web app)")] = None,
    ) -> FileResponse:
        """An intermediate image of a multi-stage job: the same credential as the result."""
        proof = _download_proof(authorization, expires, signature)
        found = front.intermediate(front.owner_grant(job_id, proof), stage)
        return FileResponse(
            found.path,
            media_type=found.media_type,
            filename=found.filename,
            headers={"ETag": f'"{found.sha256}"', "X-Content-SHA256": found.sha256},
        )

    return router


def _download_proof(authorization: str | None, expires: int | None, signature: str | None) -> Proof:
    """The full credential, or a signed link the web app gave the browser that made the job."""
    proof = Proof.from_authorization(authorization)
    if proof is None and (expires is not None or signature is not None):
        proof = Proof(link=LinkSignature(expires if expires is not None else 0, signature or ""))
    if proof is None:
        raise Problem(
            401,
            "credential-required",
            "Credential required",
            "send Authorization: L402 <macaroon>:<preimage> for this job",
            {"WWW-Authenticate": 'L402 realm="satscale"'},
        )
    return proof


def quote_document(priced: Priced) -> QuoteDocument:
    quote = priced.quote
    seconds = priced.estimate.stage_seconds or (priced.estimate.seconds,)
    stages = [
        StageQuoteDocument(**asdict(stage), estimated_seconds=round(spent, 1))
        for stage, spent in zip(quote.stages, seconds, strict=False)
    ]
    fields = {k: v for k, v in asdict(quote).items() if k != "stages"}
    return QuoteDocument(
        **fields,
        amount_sat=quote.amount_sat,
        estimated_seconds=round(priced.estimate.seconds, 1),
        stages=stages,
    )


def _challenge_for_holder(grant: Grant) -> str | None:
    """A holder of an unpaid job's macaroon may be sent the challenge again: it has the macaroon."""
    return challenge_for(grant.job) if grant.level is Level.HOLDER else None


def dev_router(front: FrontDoor) -> APIRouter:
    """Routes that exist only with the simulated dev node: paying with play money."""
    from payments.dev import DevPaymentError

    node = front.dev_node
    assert node is not None
    lists_preimages = front.settings.dev_wallet_lists_preimages
    router = APIRouter(prefix="/v1/dev", tags=["dev (simulated node, not real money)"])

    @router.post("/pay", responses=errors(422))
    async def pay(body: PayRequest) -> dict[str, Any]:
        """Pay an invoice from the simulated wallet. Not real money. The payer (this request) gets
        the preimage once the invoice settles, as a real wallet would."""
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
        """The simulated wallet's history: what it paid and what each payment became (accepted:
        held; settled: charged; canceled: returned). The wallet is shared by everyone who uses
        this server, so it never lists preimages (with a job's macaroon, a preimage is that job's
        credential), unless the operator set SATSCALE_DEV_WALLET_LISTS_PREIMAGES for a private
        test server."""
        history = []
        for payment in await node.payments():
            entry = {
                "payment_hash": payment.payment_hash,
                "amount_msat": payment.amount_msat,
                "charged_msat": payment.charged_msat,
                "state": str(payment.state),
                "paid_at": payment.paid_at,
            }
            if lists_preimages and payment.state is InvoiceState.SETTLED:
                entry["preimage"] = (await node.lookup(bytes.fromhex(payment.payment_hash))).preimage
            history.append(entry)
        return history

    return router


def provenance_router(front: FrontDoor) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["provenance"])

    @router.get("/provenance/{ref}", responses=errors(401, 404, 503))
    async def verify(ref: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The chain of custody of an image, by its sha256 or a CID: input -> model -> output ->
        payment, each link re-checked against the bytes, with what does not match. A job whose
        owner did not publish it is shown by its input without its output; send that job's
        `L402 <macaroon>:<preimage>` to see it whole."""
        report = await front.verify(ref, Proof.from_authorization(authorization))
        return report.to_dict()

    return router
