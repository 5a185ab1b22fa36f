"""Planning a collection upgrade: read the collection, fetch every token's metadata and image,
decide what each token gets (its pipeline, or nearest-neighbour for pixel art), price it.

A plan changes nothing anywhere (it is what `--dry-run` shows): it reads the chain, fetches
with the fetcher's limits, and asks the intake for prices as a quote would. A token that cannot
be read (reverted, unreachable, not JSON, not an image, an SVG) is in the plan as skipped, with
the reason; it never stops the plan.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from provenance.collection.erc721 import MAX_TOKENS, CollectionError, CollectionFacts, CollectionReader, TokenUri
from provenance.collection.fetch import TokenFetcher
from provenance.collection.fetch_errors import FetchError
from provenance.collection.layout import BaseUriLayout, Layout, detect_layout
from sr_core.errors import SatscaleError
from sr_core.pixel_art import PixelArtVerdict, judge_pixel_art, pixel_art_scale

from ..intake import ADMISSION_SHARE, Intake, JobOptions

#: the model pixel art is upscaled with (the resampling engine's nearest-neighbour)
PIXEL_ART_MODEL = "nearest"
METADATA_MAX_BYTES = 1 << 20
PIXEL_ART_MODES = ("auto", "on", "off")
#: the longest a plan may take, reads, fetches and pricing together
PLAN_DEADLINE = 300.0
#: how much of a token's old URI a plan shows (an on-chain data: URI can be megabytes)
SHOWN_URI_CHARS = 300
T = TypeVar("T")


class PlanKeeper(Protocol):
    """Keeps what a paid run needs of what its plan read (a plan alone keeps nothing)."""

    def metadata(self, token_id: int, data: bytes) -> None: ...
    def image(self, sha256: str, image_format: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class CollectionRequest:
    contract: str
    rpc_url: str | None = None  # None: the server's own chain
    tokens: tuple[int, ...] | None = None  # None: every token the collection lists
    #: what tokens that are not pixel art get (model and scale, or a pipeline)
    options: JobOptions = field(default_factory=JobOptions)
    pixel_art: str = "auto"  # auto: judged per token; on: every token; off: none
    pixel_scale: int | None = None  # None: towards TARGET_SIDE


@dataclass(frozen=True)
class TokenPlan:
    token_id: int
    uri: str | None
    status: str  # "ready" or "skipped"
    error: str | None = None
    name: str | None = None  # its document's name in the collection's folder (base-URI layout)
    image_uri: str | None = None
    image_sha256: str | None = None
    image_format: str | None = None
    width: int | None = None
    height: int | None = None
    pixel_art: PixelArtVerdict | None = None
    pipeline: tuple[dict[str, Any], ...] = ()  # the stages it runs, as a request spells them
    amount_sat: int = 0
    seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_dict(self) -> dict[str, Any]:
        shown = self.uri if self.uri is None or len(self.uri) <= SHOWN_URI_CHARS else self.uri[:SHOWN_URI_CHARS] + "…"
        row: dict[str, Any] = {"token_id": self.token_id, "old_uri": shown, "status": self.status}
        if self.error:
            row["error"] = self.error
        if self.name is not None:
            row["name"] = self.name
        if self.image_uri is not None:
            row |= {"old_image": self.image_uri, "image_sha256": self.image_sha256}
            row |= {"width": self.width, "height": self.height}
        if self.pixel_art is not None:
            row["pixel_art"] = {"chosen": self.pixel_art.pixel_art, "reason": self.pixel_art.reason}
        if self.ready:
            row |= {"pipeline": list(self.pipeline), "amount_sat": self.amount_sat, "seconds": round(self.seconds, 1)}
        return row


@dataclass(frozen=True)
class CollectionPlan:
    facts: CollectionFacts
    layout: Layout
    tokens: tuple[TokenPlan, ...]
    #: token ids per hold invoice, each batch's work inside the hold budget
    batches: tuple[tuple[int, ...], ...]
    #: every token the collection lists was read (not a range): only then does a base-URI verdict
    #: hold for the whole collection (a new base URI moves every token, read or not)
    whole_collection: bool = False

    @property
    def ready(self) -> tuple[TokenPlan, ...]:
        return tuple(t for t in self.tokens if t.ready)

    @property
    def amount_sat(self) -> int:
        return sum(t.amount_sat for t in self.ready)

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.ready)

    def to_dict(self) -> dict[str, Any]:
        layout: dict[str, Any] = {"kind": self.layout.kind}
        if isinstance(self.layout, BaseUriLayout):
            layout |= {"base_uri": self.layout.base, "suffix": self.layout.suffix}
        layout["whole_collection"] = self.whole_collection
        facts = self.facts
        return {
            "contract": facts.address,
            "chain_id": facts.chain_id,
            "name": facts.name,
            "symbol": facts.symbol,
            "supports": {"enumerable": facts.enumerable, "erc4906": facts.erc4906, "erc7160": facts.erc7160},
            "layout": layout,
            "tokens": len(self.tokens),
            "ready": len(self.ready),
            "skipped": len(self.tokens) - len(self.ready),
            "pixel_art": sum(1 for t in self.ready if t.pixel_art and t.pixel_art.pixel_art),
            "amount_sat": self.amount_sat,
            "seconds": round(self.seconds, 1),
            "batches": [list(batch) for batch in self.batches],
            "token_plans": [t.to_dict() for t in self.tokens],
        }


async def _all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Every result in order; when one fails (or the plan is cancelled) the others are cancelled
    too, instead of reading on in the background, and the first failure is raised as itself
    (callers map a chain's or a fetch's errors to answers; a group of them would be a 500)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(awaitable) for awaitable in awaitables]  # type: ignore[arg-type]
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


def plan_batches(tokens: Sequence[TokenPlan], budget_seconds: float) -> tuple[tuple[int, ...], ...]:
    """Ready tokens in id order, cut into batches whose estimated work fits the budget (a
    token alone over it is refused at planning, so every batch can be held to its end)."""
    batches: list[list[int]] = []
    used = 0.0
    for token in tokens:
        if not token.ready:
            continue
        if not batches or used + token.seconds > budget_seconds:
            batches.append([])
            used = 0.0
        batches[-1].append(token.token_id)
        used += token.seconds
    return tuple(tuple(batch) for batch in batches)


def _image_field(metadata: dict[str, Any]) -> str | None:
    for key in ("image", "image_url"):  # image_url: OpenSea's older name
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _is_svg(data: bytes, media_type: str | None) -> bool:
    head = data[:512].lstrip().lower()
    return (media_type or "").startswith("image/svg") or head.startswith((b"<svg", b"<?xml"))


class CollectionPlanner:
    """Reads and plans; `reader_for(rpc_url, address)` gives the chain reader, `fetcher()` a
    token fetcher for one plan (closed after it)."""

    def __init__(
        self,
        intake: Intake,
        fetcher: Callable[[], TokenFetcher],
        reader_for: Callable[[str | None, str], CollectionReader],
        *,
        concurrency: int = 8,
        max_tokens: int = MAX_TOKENS,
        deadline: float = PLAN_DEADLINE,
    ) -> None:
        self.intake = intake
        self.new_fetcher = fetcher
        self.reader_for = reader_for
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.deadline = deadline
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="satscale-plan")

    async def plan(self, request: CollectionRequest, keeper: PlanKeeper | None = None) -> CollectionPlan:
        if request.pixel_art not in PIXEL_ART_MODES:
            raise SatscaleError(f"pixel_art must be one of {', '.join(PIXEL_ART_MODES)}, not {request.pixel_art!r}")
        # the options are checked once, before anything is read: a wrong model is the request's fault
        await self.intake.price(request.options, 64, 64)
        reader = await self._blocking(self.reader_for, request.rpc_url, request.contract)
        try:
            async with asyncio.timeout(self.deadline):
                return await self._plan_with(reader, request, keeper)
        except TimeoutError:
            raise CollectionError(
                f"the plan took longer than {self.deadline:g} s (a slow chain or slow token hosts): plan fewer tokens"
            ) from None
        finally:
            await self._blocking(reader.close)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Chain reads and decoding run on the planner's own threads: a chain that answers slowly
        ties up those, never the threads paid jobs and quotes run on."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def _plan_with(
        self, reader: CollectionReader, request: CollectionRequest, keeper: PlanKeeper | None
    ) -> CollectionPlan:
        facts = await self._blocking(reader.facts)
        ids = await self._blocking(reader.token_ids, facts, request.tokens, self.max_tokens)
        limit = asyncio.Semaphore(self.concurrency)

        async def uri_of(token_id: int) -> TokenUri:
            async with limit:
                return await self._blocking(reader.token_uri, token_id)

        uris = await _all(uri_of(i) for i in ids)
        layout = detect_layout(uris)
        pricing = asyncio.Semaphore(1)  # decoding and pricing use the CPU: one token at a time
        fetcher = self.new_fetcher()

        async def plan_token(token: TokenUri) -> TokenPlan:
            async with limit:
                return await self._plan_token(fetcher, token, layout, request, pricing, keeper)

        try:
            tokens = tuple(await _all(plan_token(t) for t in uris))
        finally:
            await fetcher.aclose()
        budget = self.intake.settings.hold_budget_seconds * ADMISSION_SHARE
        return CollectionPlan(facts, layout, tokens, plan_batches(tokens, budget), request.tokens is None)

    async def _plan_token(
        self,
        fetcher: TokenFetcher,
        token: TokenUri,
        layout: Layout,
        request: CollectionRequest,
        pricing: asyncio.Semaphore,
        keeper: PlanKeeper | None = None,
    ) -> TokenPlan:
        name = layout.name(token.token_id) if isinstance(layout, BaseUriLayout) else None
        plan = TokenPlan(token.token_id, token.uri, "skipped", token.error, name)
        if token.uri is None:
            return plan
        try:
            document = (await fetcher.fetch(token.uri, max_bytes=METADATA_MAX_BYTES)).data
        except FetchError as exc:
            return replace(plan, error=f"metadata: {exc}")
        if keeper is not None:  # every document read, even one we skip: a new folder holds them all
            await self._blocking(keeper.metadata, token.token_id, document)
        try:
            metadata = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            return replace(plan, error=f"metadata is not JSON: {exc}")
        except RecursionError:
            return replace(plan, error="metadata is not JSON this server reads: nested too deeply")
        if not isinstance(metadata, dict):
            return replace(plan, error="metadata is not a JSON object")
        image_uri = _image_field(metadata)
        if image_uri is None:
            why = "an inline SVG (image_data): vector art needs no upscale" if "image_data" in metadata else ""
            return replace(plan, error=why or "metadata has no image")
        plan = replace(plan, image_uri=image_uri)
        limits = self.intake.limits()
        try:
            fetched = await fetcher.fetch(image_uri, max_bytes=limits.max_bytes)
        except FetchError as exc:
            return replace(plan, error=f"image: {exc}")
        if _is_svg(fetched.data, fetched.media_type):
            return replace(plan, error="the image is an SVG: vector art needs no upscale")
        data = fetched.data
        plan = replace(plan, image_sha256=hashlib.sha256(data).hexdigest())
        async with pricing:
            try:
                image = await self.intake.inspect(data)
                verdict = await self._blocking(self._verdict, data, request.pixel_art)
                options = self._options(request, verdict, image.width, image.height)
                priced = await self.intake.price_upload(data, options)
                await self.intake.binding(data, options)  # the output format can hold this image
            except SatscaleError as exc:
                return replace(plan, error=f"image: {exc}")
        if keeper is not None:
            await self._blocking(keeper.image, plan.image_sha256, image.format, data)
        stages = tuple(stage.to_dict() for stage in priced.stages)
        return replace(
            plan,
            status="ready",
            error=None,
            image_format=image.format,
            width=image.width,
            height=image.height,
            pixel_art=verdict,
            pipeline=stages,
            amount_sat=priced.quote.amount_sat,
            seconds=priced.estimate.seconds,
        )

    def _verdict(self, data: bytes, mode: str) -> PixelArtVerdict:
        if mode == "on":
            return PixelArtVerdict(True, "pixel art chosen for every token", None)
        if mode == "off":
            return PixelArtVerdict(False, "pixel art turned off", None)
        return judge_pixel_art(data, self.intake.limits())

    def _options(self, request: CollectionRequest, verdict: PixelArtVerdict, width: int, height: int) -> JobOptions:
        if not verdict.pixel_art:
            return request.options
        largest = self.intake.engines.get(PIXEL_ART_MODEL).info.scales[-1]
        scale = pixel_art_scale(width, height, request.pixel_scale, largest)
        sent = request.options
        stages = [{"model": PIXEL_ART_MODEL, "scale": scale}]
        return JobOptions(output_format=sent.output_format, publish=sent.publish, pipeline=stages)
