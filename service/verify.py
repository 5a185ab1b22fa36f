"""Verify an image's chain of custody: input -> model -> output -> payment.

Given an image's sha256 or a CID, find its record on chain (as an output, else as an
input), then check every link against the bytes themselves: the content behind each
CID is re-read from the store and re-hashed (sha256 and CID), the model's weights are
compared with the weights this server runs, the parameters hash is recomputed, and the
payment is matched with its job. Each check says precisely what does not match.

A job that was not published keeps its content out of the public store; its bytes are still
checked here (from the private store), but a lookup by its *input* hash never names the
output: holding a public low-resolution image must not lead anyone to its paid upscale.
The job's owner (who may see the output anyway) gets the whole record.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provenance.chain import OnChainRecord, ProvenanceChain, RecordFields
from provenance.cid import Cid, hash_bytes
from provenance.content_credentials import Credentials
from provenance.errors import IpfsError
from provenance.ipfs import LocalIpfsStore
from provenance.metadata import params_hash
from sr_core.errors import SatscaleError
from sr_core.imageio import sniff_format

from .jobs import Job
from .provenance import pipeline_parameters
from .stages import StageRequest, trivial, weights_digest
from .store import JobStore

SHA256 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class NothingToVerify(Exception):
    """No record on chain mentions this content (or the content itself is unknown)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


#: records one lookup checks (the newest): each re-hashes its content
MAX_RECORDS = 16


@dataclass(frozen=True)
class RecordReport:
    payment_hash: str | None  # None where the record is withheld
    role: str  # what the queried image is in this record: "output" or "input"
    custody: dict
    chain: dict
    checks: list[Check] = field(default_factory=list)
    #: the job's output was not published: this report leaves it out
    withheld: bool = False
    #: the Content Credentials inside the output (Credentials.to_dict; None: none, or withheld)
    credentials: dict | None = None

    @property
    def verified(self) -> bool:
        return all(check.ok for check in self.checks)


@dataclass(frozen=True)
class Report:
    query: str
    sha256: str
    records: list[RecordReport]
    #: older records this lookup did not check (MAX_RECORDS)
    not_checked: int = 0

    @property
    def verified(self) -> bool:
        return bool(self.records) and all(record.verified for record in self.records)

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "sha256": self.sha256,
            "verified": self.verified,
            "not_checked": self.not_checked,
            "records": [{**asdict(record), "verified": record.verified} for record in self.records],
        }


def _content(stores: tuple[LocalIpfsStore, ...], cid: str) -> bytes | None:
    for store in stores:
        try:
            return b"".join(store.cat(cid))
        except IpfsError:
            continue
    return None


def _check_content(
    stores: tuple[LocalIpfsStore, ...], label: str, cid: str, sha256: str
) -> tuple[list[Check], bytes | None]:
    """The bytes behind `cid` hash to `sha256`, and rebuilding the CID from them gives `cid`
    (with the bytes, for the checks that read them)."""
    data = _content(stores, cid)
    if data is None:
        return [Check(f"{label} content", False, f"{cid} is not held by this node (or a block is corrupt)")], None
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
    return checks, data


Disclose = Callable[[str], bool]
ReadCredentials = Callable[[bytes, str], Credentials]


def _format_of(data: bytes, job: Job | None) -> str:
    return sniff_format(data[:16]) or (job.output_format if job is not None else "png")


def credential_checks(
    judged: Credentials, fields: RecordFields, chain: ProvenanceChain, job: Job | None
) -> list[Check]:
    """The output's Content Credentials: intact, and saying what the chain record says (the
    payment, the input, the registry and chain, the models and their weights)."""
    if not judged.present:
        if job is not None and job.credentials:
            return [Check("content credentials", False, "the output was signed, but this file carries no manifest")]
        return []  # made before outputs carried Content Credentials
    signer = judged.signer.get("common_name") or "an unnamed signer"
    trust = (
        "a signer this server trusts"
        if judged.state == "trusted"
        else f"{signer} (issued by {judged.signer.get('issuer')}), not an authority this server trusts"
    )
    if "signingCredential.expired" in judged.signer.get("notes", ()):
        trust += " (its certificate has expired since; the file carries no timestamp)"
    if judged.intact:
        intact = Check(
            "content credentials", True, f"the manifest is intact and bound to these bytes; signed by {trust}"
        )
    else:
        failed = "; ".join(f"{code}: {text}" for code, text in judged.failures) or "the manifest does not validate"
        intact = Check("content credentials", False, f"the manifest does not validate ({failed})")
    claimed = judged.record or {}
    expected = {
        "payment_hash": fields.payment_hash,
        "input_cid": fields.input_cid,
        "input_sha256": fields.input_sha256,
        "registry": chain.address,
        "chain_id": chain.chain_id,
    }
    ingredient = judged.ingredient or {}
    wrong = [f"{key} {claimed[key]!r}, the record's is {want!r}" for key, want in expected.items()
             if key in claimed and str(claimed[key]).lower() != str(want).lower()]  # fmt: skip
    for key in ("payment_hash", "input_sha256"):  # the record's key: a manifest must name it
        if key not in claimed:
            wrong.append(f"the manifest names no {key}")
    if ingredient.get("sha256") != fields.input_sha256:
        wrong.append(f"the parent ingredient is {ingredient.get('sha256')!r}, the record's input {fields.input_sha256}")
    # the chain was unreachable when the file was signed: it names the record, not where it went
    unnamed = [key for key in ("registry", "chain_id") if key not in claimed]
    detail = "the manifest names this record's payment, input" + (
        ", registry and chain" if not unnamed else f" (not the {' or '.join(unnamed)}: unknown when it was signed)"
    )
    agrees = Check("credentials match the record", not wrong, detail if not wrong else "; ".join(wrong))
    stages = [a for a in judged.actions if a.get("model")]
    signed = [str(a.get("weights_sha256")) for a in stages]
    requests = job.stages if job is not None else ()
    if requests and len(requests) == len(stages):
        digest = weights_digest(requests, signed)
    else:
        digest = signed[0] if len(signed) == 1 else ""
    models = ", ".join(str(a["model"]) for a in stages) or "none"
    actions = Check(
        "credentials name the models",
        digest == fields.weights_sha256,
        f"the manifest's actions ran {models}"
        + (
            ""
            if digest == fields.weights_sha256
            else f": their weights do not digest to the record's {fields.weights_sha256}"
        ),
    )
    return [intact, agrees, actions]


def _stage_shown(stage: StageRequest, disclosed: bool) -> dict:
    return stage.to_dict() if disclosed else {"model": stage.model, "scale": stage.scale}


class Verifier:
    def __init__(
        self,
        chain: ProvenanceChain,
        public: LocalIpfsStore,
        private: LocalIpfsStore,
        jobs: JobStore,
        weights: Callable[[str], tuple[Path, str]],
        credentials: ReadCredentials | None = None,
    ) -> None:
        """`weights(model)`: the file this server runs for a model and its sha256;
        `credentials(data, format)`: the Content Credentials inside an image, judged against this
        server's trust anchors."""
        self.credentials = credentials
        self.chain = chain
        self.public = public
        self.stores = (public, private)
        self.jobs = jobs
        self.weights = weights

    def resolve(self, query: str) -> str:
        """The sha256 the query stands for: given directly, or of the content behind a CID."""
        if SHA256.match(query):
            return query.lower().removeprefix("0x")
        try:
            Cid.parse(query)
        except IpfsError:
            raise NothingToVerify(f"{query!r} is neither a sha256 (64 hex digits) nor a CID") from None
        data = _content((self.public,), query)  # by CID: only what this node publishes
        if data is None:
            raise NothingToVerify(f"{query} is not held by this node; verify by the image's sha256 instead")
        return hashlib.sha256(data).hexdigest()

    def verify(self, query: str, disclose: Disclose = lambda _payment_hash: False) -> Report:
        """`disclose(payment_hash)`: the caller may see that job's output even if unpublished."""
        sha256 = self.resolve(query)
        found = [(h, "output") for h in self.chain.records_for_output(sha256)]
        found += [(h, "input") for h in self.chain.records_for_input(sha256)]
        if not found:
            raise NothingToVerify(f"no provenance record on chain names an image with sha256 {sha256}")
        reports = []
        # each record re-reads and re-hashes its content: a lookup checks the newest few only
        skipped = max(0, len(found) - MAX_RECORDS)
        found = found[-MAX_RECORDS:]
        for payment_hash, role in found:
            record = self.chain.record_of(payment_hash)
            if record is not None:
                job = self.jobs.by_payment_hash(record.fields.payment_hash)
                disclosed = job is not None and (job.publish or disclose(payment_hash))
                withheld = role == "input" and job is not None and not disclosed
                reports.append(self._verify_record(record, role, job, withheld, disclosed))
        return Report(query, sha256, reports, skipped)

    def _verify_record(
        self, record: OnChainRecord, role: str, job: Job | None, withheld: bool, disclosed: bool = False
    ) -> RecordReport:
        """`disclosed`: the job is published or the caller holds it, so its stages' own options (a
        prompt describes the image) may be shown; otherwise each stage's model and scale only."""
        fields = record.fields
        checks, _ = _check_content(self.stores, "input", fields.input_cid, fields.input_sha256)
        output: bytes | None = None
        if not withheld:
            found, output = _check_content(self.stores, "output", fields.output_cid, fields.output_sha256)
            checks += found
        stages = job.stages if job is not None else ()
        several = bool(stages) and not trivial(stages)
        if several:
            checks.append(self._check_stages(stages, fields.weights_sha256))
        else:
            checks.append(self._check_model(fields.model, fields.weights_sha256))
        if job is None:
            checks.append(Check("payment", False, f"no job on this server was paid with {fields.payment_hash}"))
        else:
            named = "a job on this server" if withheld else f"job {job.id}"
            described = pipeline_parameters(stages, self._stage_weights(stages)) if several else None
            expected = params_hash(job.model, fields.weights_sha256, job.scale, job.output_format, described)
            checks.append(
                Check(
                    "parameters",
                    expected == fields.params_hash,
                    f"{named}: {job.model} x{job.scale} to {job.output_format} hashes to {expected}"
                    + ("" if expected == fields.params_hash else f", the record says {fields.params_hash}"),
                )
            )
            checks.append(
                Check(
                    "payment",
                    job.charged,
                    f"{named} was paid over Lightning (invoice {job.invoice_status.value})",
                )
            )
        credentials = None
        if output is not None and self.credentials is not None:
            judged = self.credentials(output, _format_of(output, job))
            credentials = judged.to_dict() if judged.present else None
            checks += credential_checks(judged, fields, self.chain, job)
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
            "model": {"id": fields.model, "weights_sha256": fields.weights_sha256, "params_hash": fields.params_hash}
            | ({"stages": [_stage_shown(stage, disclosed) for stage in stages]} if several else {}),
            "output": {"published": False} if withheld else {"cid": fields.output_cid, "sha256": fields.output_sha256},
            "payment": {"hash": None if withheld else fields.payment_hash},
        }
        if withheld:  # the transaction's calldata names the output; the payment hash is the holder's
            chain.pop("tx", None)
            chain.pop("block", None)
        return RecordReport(
            None if withheld else fields.payment_hash, role, custody, chain, checks, withheld, credentials
        )

    def _stage_weights(self, stages: Sequence[StageRequest]) -> list[str]:
        found = []
        for stage in stages:
            try:
                found.append(self.weights(stage.model)[1])
            except SatscaleError:
                found.append("unavailable")
        return found

    def _check_stages(self, stages: Sequence[StageRequest], weights_sha256: str) -> Check:
        """Every stage's weights on this server, as one digest, against the record's."""
        weights = self._stage_weights(stages)
        missing = [s.model for s, digest in zip(stages, weights, strict=True) if digest == "unavailable"]
        if missing:
            return Check("model weights", False, f"{', '.join(missing)} not available here to compare")
        digest = weights_digest(stages, weights)
        listed = "; ".join(f"{s.model} {w[:12]}" for s, w in zip(stages, weights, strict=True))
        return Check(
            "model weights",
            digest == weights_sha256,
            f"{len(stages)} stage{'s' if len(stages) > 1 else ''} on this server ({listed}) digest to {digest}"
            + ("" if digest == weights_sha256 else f", the record says {weights_sha256}"),
        )

    def _check_model(self, model: str, weights_sha256: str) -> Check:
        try:
            path, digest = self.weights(model)
        except SatscaleError as exc:
            return Check("model weights", False, f"{model} is not available here to compare: {exc}")
        return Check(
            "model weights",
            digest == weights_sha256,
            f"{model} on this server is {path.name} with sha256 {digest}"
            + ("" if digest == weights_sha256 else f", the record says {weights_sha256}"),
        )
