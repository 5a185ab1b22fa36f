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


def params_hash(model: str, weights_sha256: str, scale: int, output_format: str) -> str:
    """sha256 of the canonical JSON of everything besides the input that shaped the output."""
    canonical = json.dumps(
        {"model": model, "weights_sha256": weights_sha256, "scale": scale, "format": output_format},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def metadata_document(facts: ProvenanceFacts, name: str | None = None) -> dict:
    return {
        "name": name or f"Satscale upscale {facts.job_id}",
        "description": (
            f"Upscaled x{facts.scale} with {facts.model} by Satscale, paid over Lightning. "
            "The input, the model weights and the payment are recorded on chain."
        ),
        "image": f"ipfs://{facts.output_cid}",
        "attributes": [
            {"trait_type": "Model", "value": facts.model},
            {"trait_type": "Scale", "value": facts.scale},
            {"trait_type": "Width", "value": facts.output_width},
            {"trait_type": "Height", "value": facts.output_height},
        ],
        "properties": {"provenance": {**asdict(facts), "input": f"ipfs://{facts.input_cid}"}},
    }


def canonical_bytes(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
