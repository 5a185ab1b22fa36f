"""Provenance of a finished job: pin input, output and metadata; prepare the chain record.

Runs in the worker thread right after the engine, before the job is marked succeeded:
the record that goes into the outbox (in the same transaction as the success) carries
the CIDs, so nothing on chain ever points at content we do not hold.

A published job's content goes into the public store, which the /ipfs gateway serves and
remote pinning copies. An unpublished job's content goes into a private store with the
same CIDs: the chain record and verification work the same, but nothing serves those bytes
to anyone (the result is released only to the job's credential, by the API).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from provenance.chain import RecordFields
from provenance.errors import IpfsError
from provenance.ipfs import LocalIpfsStore
from provenance.metadata import ProvenanceFacts, canonical_bytes, metadata_document, params_hash

from .jobs import Job
from .stages import StageRequest, trivial, weights_digest
from .store import OutboxEntry


def pipeline_parameters(stages: Sequence[StageRequest], weights: Sequence[str]) -> list[dict]:
    """Every stage as the metadata and the parameters hash name it: model, weights, parameters."""
    return [stage.to_dict() | {"weights_sha256": digest} for stage, digest in zip(stages, weights, strict=True)]


@dataclass(frozen=True)
class Pinned:
    facts: ProvenanceFacts
    metadata_cid: str

    def outbox_entry(self) -> OutboxEntry:
        facts = self.facts
        fields = RecordFields(
            payment_hash=facts.payment_hash,
            input_cid=facts.input_cid,
            output_cid=facts.output_cid,
            input_sha256=facts.input_sha256,
            output_sha256=facts.output_sha256,
            model=facts.model,
            weights_sha256=facts.weights_sha256,
            params_hash=facts.params_hash,
        )
        return OutboxEntry(payment_hash=facts.payment_hash, job_id=facts.job_id, payload=asdict(fields))


def _documented(stages: Sequence[StageRequest], weights: Sequence[str], settings: Sequence[dict] | None) -> list[dict]:
    described = pipeline_parameters(stages, weights)
    if settings is None:
        return described
    return [row | ({"settings": used} if used else {}) for row, used in zip(described, settings, strict=True)]


class Provenance:
    def __init__(
        self, ipfs: LocalIpfsStore, private: LocalIpfsStore, cid_version: int = 1, remote: bool = False
    ) -> None:
        """`ipfs`: the public store; `private`: unpublished jobs' content; `remote`: published
        copies also go to a remote IPFS node or pinning service (see remote_pins)."""
        self.ipfs = ipfs
        self.private = private
        self.cid_version = cid_version
        self.remote = remote

    def store_for(self, job: Job) -> LocalIpfsStore:
        return self.ipfs if job.publish else self.private

    def metadata(self, job: Job) -> dict | None:
        """The job's metadata document, from whichever store holds it."""
        if not job.metadata_cid:
            return None
        try:
            return json.loads(b"".join(self.store_for(job).cat(job.metadata_cid)))
        except (IpfsError, ValueError):
            return None

    def pin_job(
        self,
        job: Job,
        output: Path,
        output_sha256: str,
        weights: Sequence[str],
        width: int,
        height: int,
        fidelity: dict | None = None,
        settings: Sequence[dict] | None = None,
    ) -> Pinned:
        """Pin the job's input, output and metadata document (blocking). `weights`: each stage's
        weights sha256; `fidelity`: the consistency figures the metadata document carries;
        `settings`: each stage's engine options in force (the request's over the server's), which
        the document lists as they were (the parameters hash covers what the request chose)."""
        store = self.store_for(job)
        stages = job.stages
        weights_sha256 = weights_digest(stages, weights)
        described = None if trivial(stages) else pipeline_parameters(stages, weights)

        def pin_file(path: Path) -> str:
            return store.add_file(path, cid_version=self.cid_version, pin=True).cid

        facts = ProvenanceFacts(
            job_id=job.id,
            input_cid=pin_file(Path(job.input_path)),
            input_sha256=job.input_sha256,
            output_cid=pin_file(output),
            output_sha256=output_sha256,
            model=job.model,
            weights_sha256=weights_sha256,
            params_hash=params_hash(job.model, weights_sha256, job.scale, job.output_format, described),
            payment_hash=job.payment_hash,
            output_width=width,
            output_height=height,
            scale=job.scale,
            output_format=job.output_format,
        )
        document = canonical_bytes(
            metadata_document(facts, stages=_documented(stages, weights, settings), fidelity=fidelity)
        )
        metadata_cid = store.add_bytes(document, cid_version=self.cid_version, pin=True).cid
        return Pinned(facts, metadata_cid)
