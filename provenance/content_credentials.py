"""Content Credentials (C2PA) inside the file: signed, read back, judged.

An output's manifest says what was done to what: the input as the parent ingredient (with its
own manifest, if it had one, so a chain of edits survives), the actions (`c2pa.opened`, then one
`c2pa.resized` or `c2pa.edited` per pipeline stage, naming the model and its weights sha256, as
trainedAlgorithmicMedia), and a Satscale assertion holding the key of the on-chain record (the
payment hash) with the input's CID, the registry contract and the chain id. The output's own CID
cannot be in it (it is the hash of the file the manifest is part of): the chain record and the
CID are of the signed file.

Signing reads the finished file and writes a new one beside it, which replaces it atomically:
the pixels are never decoded (c2pa-rs copies the encoded bytes; benchmarks/content_credentials.py
measures its memory), and thumbnails, which would decode the image, are off.

Reading reports the validation state c2pa gives: "Trusted" (the signer chains to a trust
anchor), "Valid" (intact, signer not known to be trusted) or "Invalid" (a failure such as
`assertion.dataHash.mismatch`: the bytes changed after signing).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import c2pa

from .errors import ContentCredentialsError, SigningIdentityError
from .signing_identity import SigningIdentity

log = logging.getLogger("satscale.content_credentials")

#: the label of Satscale's own assertion
SATSCALE_ASSERTION = "org.satscale.provenance"
#: IPTC's term for what an AI model made (the C2PA actions' digitalSourceType)
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff"}
#: validation codes about the signer (not known, or its certificate ran out since), not about
#: whether anything was altered
SIGNER_CODES = frozenset({"signingCredential.untrusted", "signingCredential.expired"})
_INGREDIENT_LABEL = "input"


@dataclass(frozen=True)
class StageAction:
    """One pipeline stage as a C2PA action."""

    model: str
    weights_sha256: str
    scale: int

    @property
    def action(self) -> str:
        return "c2pa.resized" if self.scale > 1 else "c2pa.edited"


@dataclass(frozen=True)
class RecordKey:
    """What ties the file to its on-chain record (the Satscale assertion)."""

    payment_hash: str
    input_cid: str
    input_sha256: str
    registry: str | None
    chain_id: int | None


@dataclass(frozen=True)
class Claim:
    software: str  # e.g. "Satscale 0.12.0"
    version: str
    title: str  # the output's file name
    input_title: str
    stages: tuple[StageAction, ...]
    record: RecordKey


@dataclass(frozen=True)
class Credentials:
    """A file's Content Credentials as a verifier reads them."""

    #: "trusted", "valid" (intact, signer not a trust anchor's) or "invalid"; "none": no manifest
    state: str
    #: validation failures other than an unknown signer: (code, explanation)
    failures: tuple[tuple[str, str], ...] = ()
    signer: dict = field(default_factory=dict)  # issuer, common_name, serial, time
    claim_generator: str | None = None
    actions: tuple[dict, ...] = ()
    ingredient: dict | None = None  # title, instance_id, sha256, cid, has_credentials
    record: dict | None = None  # the Satscale assertion

    @property
    def present(self) -> bool:
        return self.state != "none"

    @property
    def intact(self) -> bool:
        return self.state in ("trusted", "valid")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["failures"] = [{"code": code, "explanation": text} for code, text in self.failures]
        data["intact"] = self.intact
        return data


def _context(settings: dict) -> c2pa.Context:
    return c2pa.Context(c2pa.Settings.from_dict(settings))


class ContentCredentialsSigner:
    def __init__(self, identity: SigningIdentity) -> None:
        self.identity = identity

    def _signer(self) -> c2pa.Signer:
        info = c2pa.C2paSignerInfo(
            alg=self.identity.algorithm.encode(),
            sign_cert=self.identity.certificate_chain,
            private_key=self.identity.private_key,
            ta_url=None,  # offline: no timestamp authority is reachable
        )
        return c2pa.Signer.from_info(info)

    def manifest(self, claim: Claim, mime: str, ingredient: dict | None = None) -> dict:
        actions: list[dict[str, Any]] = [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": [_INGREDIENT_LABEL]}},
        ]
        for number, stage in enumerate(claim.stages, start=1):
            actions.append(
                {
                    "action": stage.action,
                    "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                    "softwareAgent": {"name": claim.software, "version": claim.version},
                    "description": f"stage {number}: {stage.model}" + (f" x{stage.scale}" if stage.scale > 1 else ""),
                    "parameters": {"model": stage.model, "weights_sha256": stage.weights_sha256, "scale": stage.scale},
                }
            )
        return {
            "claim_generator_info": [{"name": "Satscale", "version": claim.version}],
            "title": claim.title,
            "format": mime,
            **({"ingredients": [ingredient]} if ingredient else {}),
            "assertions": [
                {"label": "c2pa.actions.v2", "data": {"actions": actions}},
                {"label": SATSCALE_ASSERTION, "data": {k: v for k, v in asdict(claim.record).items() if v is not None}},
            ],
        }

    def check(self) -> None:
        """Sign a tiny image in memory: a certificate c2pa would refuse is found at start, not
        after a paid job's engine ran. Raises SigningIdentityError."""
        import pyvips

        image = (pyvips.Image.black(2, 2) + 128).cast("uchar").pngsave_buffer()
        claim = Claim("Satscale", "0", "check.png", "check.png", (), RecordKey("00" * 32, "", "00" * 32, None, None))
        try:
            with _context({"builder": {"thumbnail": {"enabled": False}}}) as context:
                builder = c2pa.Builder(self.manifest(claim, "image/png", self._ingredient(claim, "image/png")), context)
                with self._signer() as signer:
                    builder.sign(signer, "image/png", io.BytesIO(image), io.BytesIO())
                builder.close()
        except c2pa.C2paError as exc:
            raise SigningIdentityError(f"this certificate cannot sign Content Credentials: {exc}") from None

    @staticmethod
    def _ingredient(claim: Claim, mime: str | None = None) -> dict:
        """The input as parent ingredient; `mime`: described here (no stream: its own manifest,
        if any, is not carried)."""
        described = {
            "title": claim.input_title,
            "relationship": "parentOf",
            "label": _INGREDIENT_LABEL,
            "instance_id": f"satscale:sha256:{claim.record.input_sha256}",
            "metadata": {"satscale:sha256": claim.record.input_sha256, "satscale:cid": claim.record.input_cid},
        }
        return described | ({"format": mime} if mime else {})

    def _builder(
        self, claim: Claim, mime: str, input_path: Path, input_format: str, carry: bool, context: c2pa.Context
    ) -> c2pa.Builder:
        input_mime = MIME_TYPES[input_format]
        if carry:  # the input's own manifest travels (a chain of edits), read from its bytes
            builder = c2pa.Builder(self.manifest(claim, mime), context)
            try:
                with input_path.open("rb") as source:
                    builder.add_ingredient(self._ingredient(claim), input_mime, source)
                return builder
            except c2pa.C2paError as exc:  # a damaged manifest in an upload: described without it
                log.warning("the input's own Content Credentials cannot be read (%s); not carried", exc)
                builder.close()
        return c2pa.Builder(self.manifest(claim, mime, self._ingredient(claim, input_mime)), context)

    def sign(
        self, path: Path, fmt: str, claim: Claim, input_path: Path, input_format: str, carry_input: bool = True
    ) -> None:
        """Sign `path` in place (atomically: a reader sees the unsigned or the signed file, never a
        half-written one; a failure leaves the unsigned file and raises ContentCredentialsError).
        `carry_input`: the input's own manifest, if it has one, goes into the ingredient (off
        where the metadata policy drops the input's metadata: a camera's manifest may hold a
        location)."""
        mime = MIME_TYPES[fmt]
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(fd)
        try:
            with _context({"builder": {"thumbnail": {"enabled": False}}}) as context:
                builder = self._builder(claim, mime, input_path, input_format, carry_input, context)
                with self._signer() as signer, path.open("rb") as source, open(temp, "wb") as target:
                    builder.sign(signer, mime, source, target)
                    target.flush()
                    os.fsync(target.fileno())
                builder.close()
            os.replace(temp, path)
        except c2pa.C2paError as exc:
            Path(temp).unlink(missing_ok=True)
            raise ContentCredentialsError(f"signing Content Credentials failed: {exc}") from None
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _trust_settings(anchors: Sequence[bytes]) -> dict:
    if not anchors:
        return {"verify": {"verify_trust": True}}
    pem = b"".join(anchor if anchor.endswith(b"\n") else anchor + b"\n" for anchor in anchors)
    return {"trust": {"trust_anchors": pem.decode("ascii")}, "verify": {"verify_trust": True}}


def read_credentials(data: bytes | Path, fmt: str, trust_anchors: Sequence[bytes] = ()) -> Credentials:
    """The file's Content Credentials, judged against `trust_anchors` (PEM CA certificates)."""
    mime = MIME_TYPES.get(fmt)
    if mime is None:
        return Credentials("none")
    stream = io.BytesIO(data) if isinstance(data, bytes) else data.open("rb")
    try:
        with _context(_trust_settings(trust_anchors)) as context:
            reader = c2pa.Reader(mime, stream, context=context)
            with reader:
                document = json.loads(reader.json())
                state = (reader.get_validation_state() or "Invalid").lower()
    except (c2pa.C2paError, ValueError) as exc:  # (ValueError: JSON we cannot parse, UnicodeError too)
        if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in str(exc):
            return Credentials("none")
        return Credentials("invalid", failures=(("manifest.unreadable", str(exc)[:300]),))
    finally:
        stream.close()
    return _judged(document, state)


def _judged(document: dict, state: str) -> Credentials:
    active = document.get("manifests", {}).get(document.get("active_manifest") or "", {})
    results = document.get("validation_results", {}).get("activeManifest", {})
    failed: list[tuple[str, str]] = []
    signer_notes: list[str] = []  # about the signer, not the bytes
    for item in results.get("failure", []):
        code = item.get("code", "")
        if code in SIGNER_CODES:
            signer_notes.append(code)
        else:
            failed.append((code, item.get("explanation", "")))
    failures = tuple(failed)
    if failures:
        state = "invalid"
    elif state == "invalid":  # only the signer's certificate is in question: the bytes are intact
        state = "valid"
    signature = active.get("signature_info") or {}
    signer = {
        "issuer": signature.get("issuer"),
        "common_name": signature.get("common_name"),
        "serial": signature.get("cert_serial_number"),
        "time": signature.get("time"),
        "notes": signer_notes,
    }
    actions: list[dict] = []
    record = None
    for assertion in active.get("assertions", []):
        label = assertion.get("label", "")
        if label.startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                parameters = action.get("parameters") or {}
                actions.append(
                    {
                        "action": action.get("action"),
                        "model": parameters.get("model"),
                        "weights_sha256": parameters.get("weights_sha256"),
                        "description": action.get("description"),
                        "digital_source_type": action.get("digitalSourceType"),
                    }
                )
        elif label == SATSCALE_ASSERTION:
            record = assertion.get("data")
    ingredient = None
    parents = [i for i in active.get("ingredients", []) if i.get("relationship") == "parentOf"]
    if parents:
        parent = parents[0]
        metadata = parent.get("metadata") or {}
        ingredient = {
            "title": parent.get("title"),
            "format": parent.get("format"),
            "instance_id": parent.get("instance_id"),
            "sha256": metadata.get("satscale:sha256"),
            "cid": metadata.get("satscale:cid"),
            "has_credentials": bool(parent.get("active_manifest")),
        }
    generator = active.get("claim_generator_info") or [{}]
    name = " ".join(str(generator[0].get(key, "")) for key in ("name", "version")).strip() or None
    return Credentials(state, failures, signer, name, tuple(actions), ingredient, record)
