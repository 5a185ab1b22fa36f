"""Typed failures of fetching a token URI: one base class, one stable `reason` per kind.

`reason` is machine-readable and never changes for a kind (plans and logs group by it); the
message is for the operator and says what to do about it where anything can be done.
"""

from __future__ import annotations


class FetchError(Exception):
    """Fetching a token URI failed; `reason` says how, the message what to do."""

    reason = "fetch-error"

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.uri = uri

    def within(self, context: str) -> FetchError:
        """This error, its message prefixed with where it happened (e.g. which redirect led there)."""
        self.message = f"{context}: {self.message}"
        self.args = (self.message,)
        return self


class BadUri(FetchError):
    """Not a URI we can read: empty, relative, malformed, whitespace or control characters, a bad CID."""

    reason = "bad-uri"


class RefusedScheme(FetchError):
    """A scheme never fetched (file:, ftp:, javascript:, ...), or one not allowed where it appeared."""

    reason = "refused-scheme"


class RefusedAddress(FetchError):
    """The host is, or resolves to, an address token URIs may not reach (loopback, private, metadata, ...)."""

    reason = "refused-address"


class TooLarge(FetchError):
    """The content is larger than this fetch allows; nothing past the limit was read."""

    reason = "too-large"


class FetchTimeout(FetchError):
    """The fetch did not finish before its deadline (or could not connect in time)."""

    reason = "timeout"


class Unreachable(FetchError):
    """The host name does not resolve, the connection was refused or dropped."""

    reason = "unreachable"


class TlsError(FetchError):
    """The TLS handshake or certificate check failed."""

    reason = "tls"


class HttpStatusError(FetchError):
    """The server answered with a status other than success (404/410 are NotFound)."""

    reason = "http-status"

    def __init__(self, message: str, status: int, *, uri: str | None = None) -> None:
        super().__init__(message, uri=uri)
        self.status = status


class NotFound(FetchError):
    """The content does not exist where the URI points (a missing CID or path, an HTTP 404/410)."""

    reason = "not-found"


class TooManyRedirects(FetchError):
    """More redirects than the policy allows."""

    reason = "too-many-redirects"


class BadContent(FetchError):
    """The content exists but cannot be served as a file (a directory, a corrupt block, bad data: payload)."""

    reason = "bad-content"
