"""What a job's output says about itself: its metadata (the policy, the parameters as XMP) and its
signed Content Credentials, which point at the on-chain record.

The runner asks for the metadata rule before the engine runs (the final stage writes it) and
signs the finished file right after, before it is hashed and pinned: the output's sha256, its
CID and the chain record are all of the signed file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cryptography import x509

from provenance.cid import hash_file
from provenance.content_credentials import (
    Claim,
    ContentCredentialsSigner,
    Credentials,
    RecordKey,
    StageAction,
    read_credentials,
)
from provenance.errors import SigningIdentityError
from provenance.signing_identity import SigningIdentity, load_identity, local_identity
from sr_core.imageio import sniff_format
from sr_core.metadata import MetadataPolicy, MetadataRule, StageParameters

from .config import Settings
from .jobs import Job

log = logging.getLogger("satscale.credentials")

#: where a server without an operator's certificate keeps its local signer
SIGNING_DIR = "signing"


def software() -> tuple[str, str]:
    """("Satscale 0.12.0", "0.12.0")."""
    release = version("satscale")
    return f"Satscale {release}", release


@dataclass(frozen=True)
class ChainIdentity:
    registry: str
    chain_id: int


def signing_identity(settings: Settings) -> SigningIdentity:
    """The operator's certificate and key when both are set, else this server's local signer."""
    if (settings.signing_certificate is None) != (settings.signing_key is None):
        raise SigningIdentityError("set both SATSCALE_SIGNING_CERTIFICATE and SATSCALE_SIGNING_KEY, or neither")
    if settings.signing_certificate is not None and settings.signing_key is not None:
        identity = load_identity(settings.signing_certificate, settings.signing_key)
        ContentCredentialsSigner(identity).check()  # refused now, not after a paid job ran
        return identity
    return local_identity(settings.data_dir / SIGNING_DIR)


def trust_anchors(settings: Settings) -> list[bytes]:
    """The PEM CA certificates a verifier on this server counts as trusted."""
    anchors = []
    for path in settings.trust_anchors:
        try:
            pem = path.read_bytes()
            x509.load_pem_x509_certificates(pem)
            pem.decode("ascii")
        except OSError as exc:
            raise SigningIdentityError(f"trust anchor {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # (UnicodeDecodeError is one)
            raise SigningIdentityError(f"trust anchor {path}: not PEM CA certificates: {exc}") from None
        anchors.append(pem)
    return anchors


def metadata_rule(policy: MetadataPolicy, job: Job, stages: Sequence[StageParameters]) -> MetadataRule:
    """How the job's output keeps its input's metadata: a published job's output is public, and
    so is a collection token's (its run publishes it once the batch is paid)."""
    return MetadataRule.writing(policy, job.publish or job.collection_run is not None, software()[0], stages)


class OutputCredentials:
    def __init__(
        self,
        identity: SigningIdentity,
        chain: Callable[[], ChainIdentity | None],
        cid_version: int = 1,
        anchors: Sequence[bytes] = (),
    ) -> None:
        """`chain()`: the registry and chain id records go to (None while unknown: the
        assertion then leaves them out, and a verifier says so)."""
        self.signer = ContentCredentialsSigner(identity)
        self.identity = identity
        self.chain = chain
        self.cid_version = cid_version
        self.anchors = list(anchors)

    def sign(
        self, job: Job, output: Path, fmt: str, stages: Sequence[StageParameters], rule: MetadataRule
    ) -> Credentials:
        """Sign the job's finished output in place; returns the credentials read back from it
        (blocking: in the engine's thread). `rule`: the output's metadata rule, which decides
        whether the input's own manifest travels. Raises ContentCredentialsError."""
        where = self._chain()
        name, release = software()
        input_path = Path(job.input_path)
        with input_path.open("rb") as handle:
            input_format = sniff_format(handle.read(16)) or "png"  # (inputs were validated: never None)
        claim = Claim(
            software=name,
            version=release,
            title=output.name,
            input_title=input_path.name,
            stages=tuple(StageAction(s.model, s.weights_sha256, s.scale) for s in stages),
            record=RecordKey(
                payment_hash=job.payment_hash,
                input_cid=hash_file(input_path, cid_version=self.cid_version).cid,
                input_sha256=job.input_sha256,
                registry=where.registry if where else None,
                chain_id=where.chain_id if where else None,
            ),  # (no job id: an unpublished job's output found by its hash must not name its job)
        )
        self.signer.sign(output, fmt, claim, input_path, input_format, carry_input=rule.keeps_input_metadata)
        return self.read(output, fmt)

    def read(self, data: bytes | Path, fmt: str) -> Credentials:
        return read_credentials(data, fmt, self.anchors)

    def _chain(self) -> ChainIdentity | None:
        try:
            return self.chain()
        except Exception as exc:  # the chain is briefly unreachable: the record key still holds
            log.warning("the chain's identity is unknown (%s); the credentials name the payment hash only", exc)
            return None
