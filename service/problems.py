"""RFC 9457 problem details: every error the API returns is application/problem+json.

Known errors map to a status and a problem type; anything else still answers in the
same shape (500) without leaking internals.
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from payments.backend import BackendUnavailable, PaymentError
from payments.dev import DevPaymentError
from payments.l402 import L402Error
from provenance.chain import ChainUnavailable
from sr_core.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    ModelError,
    OutputError,
    ParameterError,
    UnsupportedImageError,
)

from .access import AccessDenied, UnknownJob
from .checkout import IdempotencyConflict
from .collections.errors import ChainUnreachable, CollectionRefused, PlannerBusy, RunBusy
from .frontdoor import DevWalletMissing, NotReady, UnknownIntermediate
from .intake import ServerBusy
from .jobs import TransitionError
from .store import store_unavailable
from .verify import NothingToVerify

PLAN_RETRY_AFTER = "5"
log = logging.getLogger("satscale.api")
MEDIA_TYPE = "application/problem+json"
#: sent with every 401: the scheme a client should answer with
CHALLENGE = 'L402 realm="satscale"'
BACKEND_RETRY_AFTER = "5"


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = {
        "type": f"tag:satscale.dev,2026:problem:{problem.slug}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extra,
    }
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


#: errors that may mean the job database cannot be reached (service.store.store_unavailable decides)
STORE_ERRORS = (psycopg.OperationalError, sqlite3.OperationalError)


def to_problem(exc: Exception) -> Problem:
    """The problem document for an exception the core, payments or service raised."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, L402Error | AccessDenied):
        return Problem(401, "invalid-credential", "Invalid credential", str(exc), {"WWW-Authenticate": CHALLENGE})
    if isinstance(exc, UnknownJob):
        return Problem(404, "not-found", "No such job", str(exc))
    if isinstance(exc, UnknownIntermediate):
        return Problem(404, "no-such-stage", "No such intermediate image", str(exc))
    if isinstance(exc, NothingToVerify):
        return Problem(404, "no-provenance", "No provenance record", str(exc))
    if isinstance(exc, NotReady):
        return Problem(409, "not-ready", "Result not ready", str(exc), status=exc.job.state.value)
    if isinstance(exc, ServerBusy):
        return Problem(503, "busy", "Server busy", str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, DevWalletMissing):
        return Problem(404, "no-dev-wallet", "No dev wallet", str(exc))
    if isinstance(exc, DevPaymentError):
        return Problem(422, "dev-payment-refused", "Payment refused", str(exc))
    if isinstance(exc, UnsupportedImageError):
        return Problem(415, "unsupported-image", "Not a supported image", str(exc))
    if isinstance(exc, ImageTooLargeError):
        return Problem(413, "image-too-large", "Image too large", str(exc))
    if isinstance(exc, CorruptImageError | ImageError):
        return Problem(422, "invalid-image", "The image cannot be decoded", str(exc))
    if isinstance(exc, ParameterError | ModelError | OutputError):
        return Problem(422, "invalid-parameters", "Invalid parameters", str(exc))
    if isinstance(exc, IdempotencyConflict):
        if exc.in_flight:
            return Problem(409, "idempotency-in-flight", "Request still in flight", str(exc))
        return Problem(422, "idempotency-mismatch", "Idempotency-Key reused", str(exc))
    if isinstance(exc, CollectionRefused):
        return Problem(422, "collection-refused", "Collection cannot be upgraded as asked", str(exc))
    if isinstance(exc, ChainUnreachable):
        return Problem(502, "chain-unreachable", "Chain unreachable", str(exc))
    if isinstance(exc, PlannerBusy):
        return Problem(503, "planner-busy", "Planner busy", str(exc), {"Retry-After": PLAN_RETRY_AFTER})
    if isinstance(exc, RunBusy):
        if exc.conflict:
            return Problem(422, "idempotency-mismatch", "Idempotency-Key reused", str(exc))
        return Problem(409, "idempotency-in-flight", "Request still in flight", str(exc))
    if isinstance(exc, BackendUnavailable):
        return Problem(
            503,
            "lightning-unavailable",
            "Lightning backend unavailable",
            f"the Lightning node cannot be reached right now ({exc}); nothing was charged, try again shortly",
            {"Retry-After": BACKEND_RETRY_AFTER},
        )
    if isinstance(exc, PaymentError):
        return Problem(
            503,
            "lightning-error",
            "Lightning backend error",
            f"the Lightning backend refused the request ({exc}); nothing was charged",
            {"Retry-After": BACKEND_RETRY_AFTER},
        )
    if isinstance(exc, ChainUnavailable):
        return Problem(
            503, "chain-unavailable", "Chain unavailable", f"the chain cannot be reached: {exc}", {"Retry-After": "5"}
        )
    if isinstance(exc, TransitionError):
        return Problem(409, "job-state", "Job state conflict", str(exc))
    if store_unavailable(exc):
        return Problem(
            503,
            "store-unavailable",
            "Job store unavailable",
            "the job database cannot be reached right now; nothing was charged, try again shortly",
            {"Retry-After": "5"},
        )
    return Problem(500, "internal", "Internal error", "an unexpected error occurred; nothing was charged")


def install(app: FastAPI) -> None:
    """Route every error of the app through problem+json."""

    async def handle_known(request: Request, exc: Exception) -> JSONResponse:
        problem = to_problem(exc)
        if problem.status >= 500 and problem.slug == "internal":
            log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return problem_response(request, problem)

    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}
        problem = Problem(
            exc.status_code,
            "http",
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail),
            dict(exc.headers or {}),
        )
        return problem_response(request, problem)

    async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": ".".join(str(p) for p in error.get("loc", ())), "message": error.get("msg")}
            for error in exc.errors()
        ]
        detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
        return problem_response(
            request, Problem(422, "invalid-parameters", "Invalid parameters", detail, errors=errors)
        )

    app.add_exception_handler(Exception, handle_known)
    app.add_exception_handler(Problem, handle_known)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(RequestValidationError, handle_validation)
    for exc_type in (
        L402Error,
        AccessDenied,
        UnknownJob,
        UnknownIntermediate,
        NothingToVerify,
        NotReady,
        ServerBusy,
        ImageError,
        ParameterError,
        ModelError,
        OutputError,
        IdempotencyConflict,
        PaymentError,
        ChainUnavailable,
        CollectionRefused,
        ChainUnreachable,
        PlannerBusy,
        RunBusy,
        *STORE_ERRORS,
    ):
        app.add_exception_handler(exc_type, handle_known)
