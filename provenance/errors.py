"""Typed errors of provenance: CIDs, the local store, Kubo RPC, pinning services, Content Credentials."""

from __future__ import annotations


class IpfsError(Exception):
    """Base class of every IPFS error raised by `provenance`."""


class InvalidCid(IpfsError, ValueError):
    """The text or bytes are not a CID we can use (bad multibase, varint, multihash or unsupported hash)."""


class BlockNotFound(IpfsError, LookupError):
    """The block is not in the store. Add or import the content first."""

    def __init__(self, cid: str) -> None:
        super().__init__(f"block {cid} is not in the local store")
        self.cid = cid


class CorruptBlock(IpfsError):
    """A block's bytes do not hash to its CID, or the block cannot be decoded. The copy is unusable."""

    def __init__(self, cid: str, reason: str) -> None:
        super().__init__(f"block {cid} is corrupt: {reason}")
        self.cid = cid
        self.reason = reason


class NotAFile(IpfsError):
    """The DAG is valid but not a UnixFS file (a directory, a symlink, ...); only files are served."""


class NotADirectory(IpfsError):
    """A path goes through something that is not a UnixFS directory or HAMT shard (a file, a raw block, ...)."""

    def __init__(self, cid: str, path: str) -> None:
        where = f" (at {path!r})" if path else ""
        super().__init__(f"{cid}{where} is not a UnixFS directory")
        self.cid = cid
        self.path = path


class PathNotFound(IpfsError, LookupError):
    """The directory has no entry of that name."""

    def __init__(self, cid: str, path: str) -> None:
        super().__init__(f"no {path!r} under {cid}")
        self.cid = cid
        self.path = path


class InvalidDirectoryEntry(IpfsError, ValueError):
    """A directory entry Kubo could not hold: empty name, '.', '..', a '/' or NUL in it, or a duplicate."""


class UnsupportedCodec(IpfsError):
    """The DAG uses a codec other than dag-pb or raw, so its links cannot be followed."""


class InvalidCar(IpfsError):
    """The stream is not a well-formed CARv1 archive."""


class CidMismatch(IpfsError):
    """A remote named a different CID than the one we computed locally: do not record either."""

    def __init__(self, expected: str, actual: str, context: str = "") -> None:
        where = f" ({context})" if context else ""
        super().__init__(f"CID mismatch{where}: computed locally {expected}, remote says {actual}")
        self.expected = expected
        self.actual = actual


class RemoteIpfsError(IpfsError):
    """Base class of errors reported by a remote IPFS service (Kubo RPC or a pinning service)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RemoteUnavailable(RemoteIpfsError):
    """The remote could not be reached or timed out. Retry later."""


class KuboError(RemoteIpfsError):
    """Kubo answered with its error JSON {"Message", "Code", "Type": "error"} (or a plain-text error)."""

    def __init__(self, message: str, status: int, code: int | None = None) -> None:
        super().__init__(message, status)
        self.code = code

    def __str__(self) -> str:
        return f"Kubo RPC error (HTTP {self.status}, code {self.code}): {self.message}"


class KuboClientError(KuboError):
    """Kubo rejected the request's arguments (error code 1, HTTP 400)."""


class KuboAuthError(KuboError):
    """Kubo refused the credentials (HTTP 401/403). Check the RPC Authorization secret."""


class PinningError(RemoteIpfsError):
    """A pinning service answered with its Failure JSON {"error": {"reason", "details"}}."""

    def __init__(self, status: int, reason: str, details: str = "") -> None:
        super().__init__(f"{reason}: {details}" if details else reason, status)
        self.reason = reason
        self.details = details

    def __str__(self) -> str:
        return f"pinning service error (HTTP {self.status}): {self.message}"


class PinningBadRequest(PinningError):
    """HTTP 400: the request was malformed (for example an invalid CID)."""


class PinningUnauthorized(PinningError):
    """HTTP 401: the access token is missing or invalid. Generate a new token at the service."""


class PinNotFound(PinningError):
    """HTTP 404: no pin request with this requestid for this token."""


class InsufficientFunds(PinningError):
    """HTTP 409: the account behind the token cannot pay for more pins."""


class PinningRateLimited(PinningError):
    """HTTP 429: too many requests; `retry_after` (seconds) says when to try again, if the service said."""

    def __init__(self, status: int, reason: str, details: str = "", retry_after: float | None = None) -> None:
        super().__init__(status, reason, details)
        self.retry_after = retry_after


class PinFailed(IpfsError):
    """The pinning service gave up on the pin (status "failed"); its info may say why."""

    def __init__(self, requestid: str, cid: str, info: dict[str, str]) -> None:
        detail = f": {info['status_details']}" if "status_details" in info else ""
        super().__init__(f"pin request {requestid} for {cid} failed{detail}")
        self.requestid = requestid
        self.cid = cid
        self.info = info


class PinTimeout(IpfsError, TimeoutError):
    """The pin was not pinned before the deadline; it may still complete, poll it again later."""

    def __init__(self, requestid: str, status: str, timeout: float) -> None:
        super().__init__(f"pin request {requestid} still {status} after {timeout:g} s")
        self.requestid = requestid
        self.status = status


class ContentCredentialsError(Exception):
    """Content Credentials (C2PA) could not be signed into a file or read from it."""


class SigningIdentityError(ContentCredentialsError):
    """The configured signing certificate or key cannot sign Content Credentials (says why)."""
