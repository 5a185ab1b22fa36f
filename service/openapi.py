"""The OpenAPI document as the contract: what the server really answers.

- every error status an operation can answer is declared, as application/problem+json;
- parameters carry the server's real constraints (model names and scales from the registry
  at the time the document is read, tile range, size limits, enums), and optional ones are
  optional, not nullable (a null form field is not a way to say "default");
- a method a path does not declare answers 405 with an Allow header (as problem+json), and an
  unknown path under /v1 answers 404 problem+json, instead of falling through to the web app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from .problems import MEDIA_TYPE, Problem

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
DESCRIPTIONS = {
    400: "Bad request: a body that does not parse, or a path that is not a CID",
    401: "The credential is missing, malformed, forged, expired or belongs to another job",
    402: "Payment required",
    404: "No such job or record",
    405: "Method not allowed",
    409: "Conflict: not ready yet, or a request with this Idempotency-Key is still in flight",
    413: "Too large: beyond the upload limits, or more work than a payment can be held for",
    415: "Not a supported image (PNG, JPEG, WebP, TIFF)",
    422: "Invalid parameters (names the parameter and the rule)",
    502: "The collection's chain RPC does not answer",
    503: "Lightning node or chain unreachable, or the server is busy; nothing was charged (see Retry-After)",
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each problem+json (422 included, which
    replaces FastAPI's own validation-error entry)."""
    return {
        status: {"description": DESCRIPTIONS[status], "content": {MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}}
        for status in statuses
    }


def _set_enum(schema: dict[str, Any], values: list[Any]) -> None:
    schema.pop("anyOf", None)
    schema["enum"] = values


def _parameters(document: dict[str, Any], path: str, method: str) -> dict[str, dict[str, Any]]:
    operation = document["paths"].get(path, {}).get(method, {})
    return {parameter["name"]: parameter["schema"] for parameter in operation.get("parameters", [])}


def _form_fields(document: dict[str, Any], path: str, method: str) -> dict[str, dict[str, Any]]:
    operation = document["paths"].get(path, {}).get(method, {})
    content = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
    reference = content.get("schema", {}).get("$ref", "")
    schemas = document.get("components", {}).get("schemas", {})
    return schemas.get(reference.rsplit("/", 1)[-1], {}).get("properties", {}) if reference else {}


def _not_nullable(node: Any) -> None:
    """An optional parameter is left out to get its default; `anyOf [X, null]` becomes X."""
    if isinstance(node, dict):
        branches = node.get("anyOf")
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [branch for branch in branches if branch != {"type": "null"}]
            del node["anyOf"]
            if len(rest) == 1:
                node.update(rest[0])
            else:
                node["anyOf"] = rest
        for value in node.values():
            _not_nullable(value)
    elif isinstance(node, list):
        for value in node:
            _not_nullable(value)


def _request_parts(document: dict[str, Any]) -> list[Any]:
    """Where a client's inputs are described: parameters and request body schemas."""
    parts: list[Any] = []
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            parts.extend(parameter.get("schema", {}) for parameter in operation.get("parameters", []))
    schemas = document.get("components", {}).get("schemas", {})
    parts.extend(schema for name, schema in schemas.items() if name.startswith("Body_"))
    return parts


def _problems_for_validation(document: dict[str, Any]) -> None:
    """Every operation that takes input can answer 422 (and one with a body 400, for a body that
    does not parse), as problem+json."""
    invalid, unparsable = errors(422)[422], errors(400)[400]
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or operation.get("requestBody"):
                responses["422"] = invalid
            if operation.get("requestBody"):
                responses.setdefault("400", unparsable)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install_contract(app: FastAPI, models: Callable[[], tuple[list[str], list[int]]]) -> None:
    """Make /openapi.json name the models and scales there are when it is read; guard methods.
    Call once every API route is added, before the web app takes the rest."""

    def document() -> dict[str, Any]:
        names, scales = models()
        built = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for part in _request_parts(built):
            _not_nullable(part)
        for where in (_parameters(built, "/v1/quote", "get"), _form_fields(built, "/v1/upscales", "post")):
            if "model" in where:
                _set_enum(where["model"], names)
            if "scale" in where:
                _set_enum(where["scale"], scales)
        _problems_for_validation(built)
        return built

    app.openapi = document  # type: ignore[method-assign]
    declared = {
        path: {method.upper() for method in operations}
        for path, operations in get_openapi(title=app.title, version=app.version, routes=app.routes)["paths"].items()
    }
    _guard_methods(app, declared)


def _refusal(allow: str) -> Callable[[Request], Any]:
    async def not_allowed(request: Request) -> None:
        raise Problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{request.method} is not allowed here; allowed: {allow}",
            {"Allow": allow},
        )

    return not_allowed


def _guard_methods(app: FastAPI, declared: dict[str, set[str]]) -> None:
    """Each documented path answers the methods it does not declare with 405 and Allow."""
    for path, methods in declared.items():
        others = [method for method in METHODS if method not in methods]
        app.add_api_route(path, _refusal(", ".join(sorted(methods))), methods=others, include_in_schema=False)

    async def unknown(request: Request) -> None:
        raise Problem(404, "not-found", "Not found", f"there is no {request.url.path} (see /docs)")

    for path in ("/v1/{rest:path}", "/ipfs/{rest:path}", "/v1", "/ipfs"):
        app.add_api_route(path, unknown, methods=list(METHODS), include_in_schema=False)
