"""What collection requests are refused with, whichever door they came in by (the API maps
them to problem documents, the web app shows the same texts: service.problems)."""

from __future__ import annotations


class CollectionRefused(Exception):
    """The request cannot be planned or run as sent (422); the message says what to change."""


class ChainUnreachable(Exception):
    """The collection's chain does not answer (502)."""


class PlannerBusy(Exception):
    """Another plan is running (503): plans read the chain and fetch every token."""


class RunBusy(Exception):
    """A request with this Idempotency-Key is being planned (409), or the key was used for
    another request (422: `conflict`)."""

    def __init__(self, message: str, conflict: bool) -> None:
        super().__init__(message)
        self.conflict = conflict
