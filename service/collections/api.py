"""Collection upgrades over HTTP.

POST /v1/collections/plan        free: what an upgrade would do and cost; changes nothing
POST /v1/collections             a paid run: 402 with the first batch's L402 challenge
GET  /v1/collections/{id}        the run: its invoices, per-token progress, the report
GET  /v1/collections/{id}/report.csv, /folder.car, /manifest.json
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor

from ..openapi import errors
from ..problems import Problem
from .compose import Collections
from .finish import manifest_csv
from .requests import CollectionPlanBody, CollectionRunBody, plan_request, run_request

RUN_RETRY_AFTER = "2"
RUN_ID = r"^col_[A-Za-z0-9_-]{16}$"


class RunIdConvertor(Convertor[str]):
    """Only a run id matches `{run_id:run}`: `/v1/collections/plan` is the plan route's (GET
    there is a 405), and anything else not shaped like an id is not found."""

    regex = RUN_ID.strip("^$")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("run", RunIdConvertor())
#: files a run keeps that its owner may download
RUN_FILES = {"folder.car": "application/vnd.ipld.car", "manifest.json": "application/json"}


def collections_router(collections: Collections) -> APIRouter:
    router = APIRouter(prefix="/v1/collections", tags=["collections"])
    desk, runs = collections.desk, collections.runs

    @router.post("/plan", responses=errors(422, 502, 503))
    async def plan(body: CollectionPlanBody) -> dict[str, Any]:
        """Read the collection and every chosen token's metadata and image; say what each token
        would get (its pipeline, or nearest-neighbour for pixel art, and why), what is skipped
        and why, the price and the payment batches. Changes nothing anywhere (a dry run)."""
        return (await desk.plan(plan_request(body))).to_dict()  # refusals: service.problems

    @router.post("", status_code=402, responses=errors(401, 409, 422, 502, 503))
    async def create(
        body: CollectionRunBody,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        authorization: Annotated[str | None, Header(max_length=8192)] = None,
    ) -> JSONResponse:
        """Plan the upgrade (as `/plan` does), keep every token's image, and answer 402 with the
        first batch's hold invoice (`WWW-Authenticate: L402 ...`; the body's `invoice` too).
        Each later batch's invoice appears in `GET /v1/collections/{id}` once the one before is
        done. A token that fails is never paid for: its batch's invoice is cancelled and a new
        one asks for the tokens that succeeded only. The same Idempotency-Key with the same
        body answers with the same run, and so does the same body with the L402 credential of
        one of its batches (`Authorization: L402 <macaroon>:<preimage>`, what an L402 client
        sends after paying): with the next batch's challenge while one is open."""
        request = run_request(body)
        if authorization:
            started = runs.resume(authorization, request)
        else:
            started = await runs.create(request, idempotency_key)
        return _run_response(runs.view(started.run.id) or {}, started.challenge)

    @router.get("/{run_id:run}", responses=errors(404))
    async def status(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> JSONResponse:
        """The run: its state, the invoice to pay now (if any), each batch, each token's status
        and progress, and once done what was published and sent (the report)."""
        return _run_response(_view(run_id), runs.challenge(run_id))

    @router.get("/{run_id:run}/report.csv", responses=errors(404))
    async def report_csv(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> Response:
        """The report as CSV: one row per token."""
        view = _view(run_id)
        return Response(manifest_csv(view["tokens"]), media_type="text/csv")

    @router.get("/{run_id:run}/{name}", responses=errors(404, 422))
    async def run_file(
        run_id: Annotated[str, Path(pattern=RUN_ID)], name: Annotated[str, Path(pattern=r"^[a-z.]{1,20}$")]
    ) -> FileResponse:
        """A file the finished run wrote: `folder.car` (the new folder's DAG, for a pinning
        service) or `manifest.json` (token id -> new URI, and the base URI)."""
        run = runs.journal.run(run_id)
        media = RUN_FILES.get(name)
        path = FilePath(run.folder) / name if run is not None and media else None
        if path is None or not path.is_file():
            raise Problem(404, "not-found", "Not found", f"run {run_id} has no {name}")
        return FileResponse(path, media_type=media, filename=name)

    def _view(run_id: str) -> dict[str, Any]:
        view = runs.view(run_id)
        if view is None:
            raise Problem(404, "not-found", "Collection run not found", f"no collection run {run_id}")
        return view

    return router


def _run_response(view: dict[str, Any], challenge: str | None) -> JSONResponse:
    """402 while a batch's invoice waits for payment; 202 while the run works; 200 when done."""
    headers = {"Location": f"/v1/collections/{view.get('id')}"}
    if challenge is not None:
        return JSONResponse(view, status_code=402, headers=headers | {"WWW-Authenticate": challenge})
    if view.get("state") == "done":
        return JSONResponse(view, status_code=200, headers=headers)
    return JSONResponse(view, status_code=202, headers=headers | {"Retry-After": RUN_RETRY_AFTER})
