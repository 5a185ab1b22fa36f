"""The compiled Satscale contracts, read from the artifacts committed in contracts/artifacts/.

The artifacts are built by ``node contracts/compile.mjs`` and checked by ``node contracts/compile.mjs --check``;
nothing here needs node or a Solidity compiler at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "contracts" / "artifacts"

CONTRACT_NAMES = ("ProvenanceRegistry", "SatscaleCollection")

#: Test fixtures (contracts/fixtures/): collections written the way third parties write them. Satscale never deploys
#: them; they load only from this folder, never from ARTIFACTS_DIR.
FIXTURES_DIR = ARTIFACTS_DIR / "fixtures"
FIXTURE_NAMES = ("BaseURICollection", "URIStorageCollection")


@dataclass(frozen=True)
class Artifact:
    """One compiled contract: what web3's ``w3.eth.contract(abi=..., bytecode=...)`` needs, and how it was built."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    evm_version: str


def load_artifact(name: str, artifacts_dir: Path = ARTIFACTS_DIR) -> Artifact:
    """Load the artifact of contract ``name`` (e.g. ``"ProvenanceRegistry"``; a fixture with ``FIXTURES_DIR``).

    Raises ``ValueError`` for an unknown contract name and ``FileNotFoundError`` when the artifact is missing.
    """
    known = FIXTURE_NAMES if Path(artifacts_dir).resolve() == FIXTURES_DIR else CONTRACT_NAMES
    if name not in known:
        raise ValueError(f"unknown contract {name!r}; expected one of {', '.join(known)}")
    path = artifacts_dir / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `npm ci && node compile.mjs` in contracts/")
    data = json.loads(path.read_text(encoding="utf-8"))
    bytecode = data["bytecode"]
    if data.get("contractName") != name or not bytecode.startswith("0x") or len(bytecode) <= 2:
        raise ValueError(f"{path} is not a compiled {name} artifact")
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=bytecode,
        deployed_bytecode=data["deployedBytecode"],
        compiler_version=data["compiler"]["version"],
        evm_version=data["compiler"]["settings"]["evmVersion"],
    )
