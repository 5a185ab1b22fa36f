"""Verify an image's chain of custody: input -> model -> output -> payment.

Given an image's sha256 or a CID, find its record on chain (as an output, else as an
input), then check every link against the bytes themselves: the content behind each
CID is re-read from the store and re-hashed (sha256 and CID), the model's weights are
compared with the weights this server runs, the parameters hash is recomputed, and the
payment is matched with its job. Each check says precisely what does not match.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

from provenance.chain import OnChainRecord, ProvenanceChain
from provenance.cid import Cid, hash_bytes
from provenance.errors import IpfsError
from provenance.ipfs import LocalIpfsStore
from provenance.metadata import params_hash
from sr_core.errors import SatscaleError
from sr_core.registry import ModelRegistry

from .store import JobStore

SHA256 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class NothingToVerify(Exception):
    """No record on chain mentions this content (or the content itself is unknown)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class RecordReport:
    payment_hash: str
    role: str  # what the queried image is in this record: "output" or "input"
    custody: dict
    chain: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(check.ok for check in self.checks)


@dataclass(frozen=True)
class Report:
    query: str
    sha256: str
    records: list[RecordReport]

    @property
    def verified(self) -> bool:
        return bool(self.records) and all(record.verified for record in self.records)

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "sha256": self.sha256,
            "verified": self.verified,
            "records": [{**asdict(record), "verified": record.verified} for record in self.records],
        }


def _content(store: LocalIpfsStore, cid: str) -> bytes | None:
    try:
        return b"".join(store.cat(cid))
    except IpfsError:
        return None


def _check_content(store: LocalIpfsStore, label: str, cid: str, sha256: str) -> list[Check]:
    """The bytes behind `cid` hash to `sha256`, and rebuilding the CID from them gives `cid`."""
    data = _content(store, cid)
    if data is None:
        return [Check(f"{label} content", False, f"{cid} is not held by this node (or a block is corrupt)")]
    actual = hashlib.sha256(data).hexdigest()
    checks = [
        Check(
            f"{label} sha256",
            actual == sha256,
            f"the bytes behind {cid} hash to {actual}" + ("" if actual == sha256 else f", the record says {sha256}"),
        )
    ]
    parsed = Cid.parse(cid)
    rebuilt = hash_bytes(data, cid_version=parsed.version).cid
    checks.append(
        Check(
            f"{label} CID",
            rebuilt == str(parsed),
            f"rebuilding the CID from the bytes gives {rebuilt}" + ("" if rebuilt == str(parsed) else f", not {cid}"),
        )
    )
    return checks


class Verifier:
    def __init__(self, chain: ProvenanceChain, store: LocalIpfsStore, jobs: JobStore, registry: ModelRegistry) -> None:
        self.chain = chain
        self.store = store
        self.jobs = jobs
        self.registry = registry

    def resolve(self, query: str) -> str:
        """The sha256 the query stands for: given directly, or of the content behind a CID."""
        if SHA256.match(query):
            return query.lower().removeprefix("0x")
        try:
            Cid.parse(query)
        except IpfsError:
            raise NothingToVerify(f"{query!r} is neither a sha256 (64 hex digits) nor a CID") from None
        data = _content(self.store, query)
        if data is None:
            raise NothingToVerify(f"{query} is not held by this node; verify by the image's sha256 instead")
        return hashlib.sha256(data).hexdigest()

    def verify(self, query: str) -> Report:
        sha256 = self.resolve(query)
        found = [(h, "output") for h in self.chain.records_for_output(sha256)]
        found += [(h, "input") for h in self.chain.records_for_input(sha256)]
        if not found:
            raise NothingToVerify(f"no provenance record on chain names an image with sha256 {sha256}")
        reports = []
        for payment_hash, role in found:
            record = self.chain.record_of(payment_hash)
            if record is not None:
                reports.append(self._verify_record(record, role))
        return Report(query, sha256, reports)

    def _verify_record(self, record: OnChainRecord, role: str) -> RecordReport:
        fields = record.fields
        checks = _check_content(self.store, "input", fields.input_cid, fields.input_sha256)
        checks += _check_content(self.store, "output", fields.output_cid, fields.output_sha256)
        checks.append(self._check_model(fields.model, fields.weights_sha256))
        job = self.jobs.by_payment_hash(fields.payment_hash)
        if job is None:
            checks.append(Check("payment", False, f"no job on this server was paid with {fields.payment_hash}"))
        else:
            expected = params_hash(job.model, fields.weights_sha256, job.scale, job.output_format)
            checks.append(
                Check(
                    "parameters",
                    expected == fields.params_hash,
                    f"job {job.id}: {job.model} x{job.scale} to {job.output_format} hashes to {expected}"
                    + ("" if expected == fields.params_hash else f", the record says {fields.params_hash}"),
                )
            )
            checks.append(
                Check(
                    "payment",
                    job.charged,
                    f"job {job.id} was paid over Lightning (invoice {job.invoice_status.value})",
                )
            )
        tx = self.chain.find_record_tx(fields.payment_hash)
        chain = {
            "chain_id": self.chain.chain_id,
            "registry": self.chain.address,
            "tx": tx[0] if tx else None,
            "block": tx[1] if tx else None,
            "recorder": record.recorder,
            "recorded_at": record.recorded_at,
        }
        custody = {
            "input": {"cid": fields.input_cid, "sha256": fields.input_sha256},
            "model": {"id": fields.model, "weights_sha256": fields.weights_sha256, "params_hash": fields.params_hash},
            "output": {"cid": fields.output_cid, "sha256": fields.output_sha256},
            "payment": {"hash": fields.payment_hash},
        }
        return RecordReport(fields.payment_hash, role, custody, chain, checks)

    def _check_model(self, model: str, weights_sha256: str) -> Check:
        try:
            path, digest = self.registry.weights_file(self.registry.get(model))
        except SatscaleError as exc:
            return Check("model weights", False, f"{model} is not available here to compare: {exc}")
        return Check(
            "model weights",
            digest == weights_sha256,
            f"{model} on this server is {path.name} with sha256 {digest}"
            + ("" if digest == weights_sha256 else f", the record says {weights_sha256}"),
        )
