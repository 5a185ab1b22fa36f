"""The one place collection requests are checked and planned, whichever door they come in by
(the API now; the web app's Collection tab calls the same methods)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from web3.exceptions import Web3Exception

from provenance.chain import ChainError, ChainUnavailable
from provenance.collection.erc721 import CollectionError, parse_token_selection
from provenance.collection.fetch import TokenFetcher
from provenance.collection.fetch_errors import FetchError
from provenance.ipfs import LocalIpfsStore
from sr_core.errors import SatscaleError

from ..config import Settings
from ..intake import Intake
from .errors import ChainUnreachable, CollectionRefused, PlannerBusy
from .planner import CollectionPlan, CollectionPlanner, CollectionRequest, PlanKeeper
from .sources import ReaderFactory, fetch_policy, ipfs_reader

#: a plan is free: it reads at most this many tokens (a larger collection is planned in ranges)
PLAN_MAX_TOKENS = 2_000


class CollectionDesk:
    def __init__(self, settings: Settings, intake: Intake, ipfs: LocalIpfsStore, readers: ReaderFactory) -> None:
        self.settings = settings
        reader = ipfs_reader(settings, ipfs)
        policy = fetch_policy(settings)
        fetcher: Callable[[], TokenFetcher] = lambda: TokenFetcher(reader, policy)  # noqa: E731
        self.planner = CollectionPlanner(
            intake,
            fetcher,
            readers,
            concurrency=settings.collection_concurrency,
            max_tokens=PLAN_MAX_TOKENS,
        )
        self._planning = asyncio.Lock()

    @staticmethod
    def tokens(text: str | None) -> tuple[int, ...] | None:
        if text is None or not text.strip():
            return None
        try:
            return parse_token_selection(text)
        except CollectionError as exc:
            raise CollectionRefused(str(exc)) from None

    async def plan(self, request: CollectionRequest, keeper: PlanKeeper | None = None) -> CollectionPlan:
        """What an upgrade would do and cost; changes nothing anywhere (`keeper`: a paid run
        keeps what the plan read, in its own folder)."""
        if self._planning.locked():
            raise PlannerBusy("another collection is being planned; try again in a few seconds")
        async with self._planning:
            try:
                return await self.planner.plan(request, keeper)
            except (CollectionError, FetchError, SatscaleError) as exc:
                raise CollectionRefused(str(exc)) from None
            except ChainUnavailable as exc:
                raise ChainUnreachable(str(exc)) from None
            except (Web3Exception, ValueError, TypeError) as exc:  # answers no JSON-RPC chain gives
                raise ChainUnreachable(f"the chain's RPC answered something malformed ({type(exc).__name__})") from None
            except ChainError as exc:
                raise CollectionRefused(f"the collection cannot be read: {exc}") from None
