"""ERC-721 metadata documents for upscaled images, with the provenance fields added.

The document follows the ERC-721 metadata JSON convention (name, description, image,
attributes) so marketplaces show it as is; `properties.provenance` carries what a
verifier needs to rebuild the chain of custody. Serialisation is canonical (sorted
keys, no spaces), so the same job always yields the same bytes and the same CID.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ProvenanceFacts:
    """Everything the on-chain record holds about one job, before it is sent."""

    job_id: str
    input_cid: str
    input_sha256: str
    output_cid: str
    output_sha256: str
    model: str
    weights_sha256: str
    params_hash: str
    payment_hash: str
    output_width: int
    output_height: int
    scale: int
    output_format: str


def params_hash(
    model: str, weights_sha256: str, scale: int, output_format: str, pipeline: list[dict] | None = None
) -> str:
    """sha256 of the canonical JSON of everything besides the input that shaped the output
    (`pipeline`: every stage's model, weights and parameters, for a job of several stages or
    with engine options; absent otherwise, so a one-model job hashes as before)."""
    fields: dict = {"model": model, "weights_sha256": weights_sha256, "scale": scale, "format": output_format}
    if pipeline is not None:
        fields["pipeline"] = pipeline
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def metadata_document(
    facts: ProvenanceFacts, name: str | None = None, stages: list[dict] | None = None, fidelity: dict | None = None
) -> dict:
    """`stages`: every stage (model, weights sha256, parameters); `fidelity`: how faithful the
    output is to the input (PSNR/SSIM of the output area-averaged back to the input's size)."""
    provenance: dict = {**asdict(facts), "input": f"ipfs://{facts.input_cid}"}
    if stages is not None:
        provenance["stages"] = stages
    attributes: list[dict] = [
        {"trait_type": "Model", "value": facts.model},
        {"trait_type": "Scale", "value": facts.scale},
        {"trait_type": "Width", "value": facts.output_width},
        {"trait_type": "Height", "value": facts.output_height},
    ]
    if fidelity is not None:
        provenance["fidelity"] = fidelity
        overall = fidelity.get("overall") or {}
        if overall.get("ssim") is not None:  # what a marketplace shows: how faithful to the original
            attributes.append({"trait_type": "Consistency (SSIM)", "value": overall["ssim"]})
    return {
        "name": name or f"Satscale upscale {facts.job_id}",
        "description": (
            f"Upscaled x{facts.scale} with {facts.model} by Satscale, paid over Lightning. "
            "The input, the model weights and the payment are recorded on chain."
        ),
        "image": f"ipfs://{facts.output_cid}",
        "attributes": attributes,
        "properties": {"provenance": provenance},
    }


def canonical_bytes(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def upgraded_token_document(original: dict, image_uri: str, provenance: dict) -> dict:
    """A collection token's metadata after its upgrade: every original field and attribute kept
    as it was (in its order), `image` pointing at the upscaled image, `original_image` at the
    one it came from (kept as it is when an earlier upgrade already set it: the first image
    stays the original), and `properties.provenance` with the chain of custody of this
    upgrade (its input image among it)."""
    document = dict(original)
    document.setdefault("original_image", original.get("image") or original.get("image_url"))
    document["image"] = image_uri
    properties = document.get("properties")
    if isinstance(properties, dict):
        document["properties"] = {**properties, "provenance": provenance}
    elif properties is None:
        document["properties"] = {"provenance": provenance}
    else:  # a collection's own non-object "properties" stays untouched
        document["satscale_provenance"] = provenance
    return document


def document_bytes(document: dict) -> bytes:
    """A token's document as published: the collection's key order kept, UTF-8, indented
    like most collections' files (the same document always gives the same bytes and CID)."""
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()
