"""Who may see what of a job: the one authorisation both doors (the API and the web app) call.

Every caller gets a `Grant` for a job, at one of three levels:

  PUBLIC  anyone with the job id: its state, progress, price and parameters; nothing of the
          input or the output (a job id is not a secret: it travels in URLs).
  HOLDER  the holder of the job's L402 token (the status-only credential `L402 <macaroon>`):
          also the invoice while it is unpaid, the payment hash and the input's facts.
  OWNER   proof of payment (`L402 <macaroon>:<preimage>`), the web app's per-job key (kept by
          the browser that created the job, stored here only as its sha256), or a signed,
          expiring download link: also the output, its hashes and CIDs, the provenance record
          and the result file.

The macaroon is handed only to the request that created the job (the 402 challenge), and
nothing here is derivable from public data: the owner key is 256 random bits and a link is
an HMAC under a server secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlencode

from payments import l402

from .jobs import Job
from .store import JobStore, RootKeys

#: what a caller is told when a job's output needs more than it presented
PROOF_NEEDED = "proof of payment needed: send `L402 <macaroon>:<preimage hex>` for this job"
#: how long a signed download link stays valid
LINK_SECONDS = 3600
LINK_KEY_META = "download_link_key"


class Level(IntEnum):
    PUBLIC = 0
    HOLDER = 1
    OWNER = 2


class UnknownJob(Exception):
    """No job has this id (404)."""


class AccessDenied(Exception):
    """The proof was presented but does not open this job, or opens less than is needed (401)."""


@dataclass(frozen=True)
class LinkSignature:
    expires: int
    signature: str


@dataclass(frozen=True)
class Proof:
    """What a caller presents for a job; any one of these."""

    l402: l402.Credential | None = None
    owner_key: str | None = None
    link: LinkSignature | None = None

    @classmethod
    def from_authorization(cls, header: str | None) -> Proof | None:
        """An `Authorization: L402 ...` header (LSAT too); a malformed one raises L402Error (401)."""
        if not header:
            return None
        return cls(l402=l402.parse_authorization(header))


@dataclass(frozen=True)
class Grant:
    job: Job
    level: Level

    @property
    def owner(self) -> bool:
        return self.level is Level.OWNER


def new_owner_key() -> tuple[str, str]:
    """A per-job key for the browser that creates the job: (the key, its sha256 to store)."""
    key = secrets.token_urlsafe(32)
    return key, _digest(key)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Gatekeeper:
    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.root_keys = RootKeys(store)
        self.clock = clock
        self._link_key = self._load_link_key()

    def _load_link_key(self) -> bytes:
        stored = self.store.get_meta(LINK_KEY_META)
        if stored is None:
            self.store.set_meta(LINK_KEY_META, secrets.token_hex(32))
            stored = self.store.get_meta(LINK_KEY_META)
        return bytes.fromhex(stored or "")

    # ------------------------------------------------------------ the rule

    def grant(self, job_id: str, proof: Proof | None) -> Grant:
        """The access `proof` gives to the job `job_id`. No proof: PUBLIC. A proof that does not
        belong to this job is refused (AccessDenied), never silently downgraded."""
        job = self.store.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise UnknownJob(f"there is no job {job_id!r}")
        if proof is None:
            return Grant(job, Level.PUBLIC)
        if proof.owner_key is not None:
            if not isinstance(proof.owner_key, str) or job.owner_key_sha256 is None:
                raise AccessDenied("this key does not belong to this job")
            if not hmac.compare_digest(_digest(proof.owner_key), job.owner_key_sha256):
                raise AccessDenied("this key does not belong to this job")
            return Grant(job, Level.OWNER)
        if proof.link is not None:
            self._check_link(job, proof.link)
            return Grant(job, Level.OWNER)
        if proof.l402 is not None:
            self._check_token(job, proof.l402, job.request_hash)
            return Grant(job, Level.OWNER if proof.l402.preimage is not None else Level.HOLDER)
        return Grant(job, Level.PUBLIC)

    def require(self, job_id: str, proof: Proof | None, level: Level) -> Grant:
        grant = self.grant(job_id, proof)
        if grant.level < level:
            if level is Level.OWNER:
                raise AccessDenied(PROOF_NEEDED)
            raise AccessDenied("send this job's L402 credential")
        return grant

    def by_token(self, credential: l402.Credential, binding: str | None = None) -> Grant:
        """The job a token was minted for. `binding`: a request repeated with its credential must
        be the request the token is bound to (same input bytes, same parameters)."""
        token = self._verify(credential, binding)
        job = self.store.by_payment_hash(token.payment_hash.hex())
        if job is None or token.request_binding != job.request_hash:
            raise AccessDenied("this token does not belong to any job here")
        return Grant(job, Level.OWNER if credential.preimage is not None else Level.HOLDER)

    # ------------------------------------------------------------ proofs

    def _verify(self, credential: l402.Credential, binding: str | None) -> l402.VerifiedToken:
        return l402.verify(
            credential, self.root_keys, now=int(self.clock()), request_binding=binding, require_preimage=False
        )

    def _check_token(self, job: Job, credential: l402.Credential, binding: str) -> None:
        token = self._verify(credential, binding)
        if token.payment_hash.hex() != job.payment_hash:
            raise AccessDenied("this token does not belong to this job")

    def _link_signature(self, job_id: str, expires: int) -> str:
        message = f"satscale-result:{job_id}:{expires}".encode()
        return hmac.new(self._link_key, message, hashlib.sha256).hexdigest()

    def _check_link(self, job: Job, link: LinkSignature) -> None:
        if not isinstance(link.expires, int) or not isinstance(link.signature, str):
            raise AccessDenied("this download link is malformed")
        if link.expires < self.clock():
            raise AccessDenied("this download link has expired: open the job again for a fresh one")
        if not hmac.compare_digest(self._link_signature(job.id, link.expires), link.signature):
            raise AccessDenied("this download link does not belong to this job")

    def download_query(self, grant: Grant, seconds: int = LINK_SECONDS) -> str:
        """A query string that opens this job's result for `seconds` (for the owner only)."""
        if not grant.owner:
            raise AccessDenied("only the job's owner gets a download link")
        expires = int(self.clock()) + seconds
        return urlencode({"expires": expires, "signature": self._link_signature(grant.job.id, expires)})
