"""Settings: embedded defaults, then an optional TOML file, then SATSCALE_* environment variables.

`python app.py` needs none of it: the dev Lightning node, a data folder in the project
and the default weights. `SATSCALE_CONFIG=/path/satscale.toml` names a TOML file whose
keys are the field names below (e.g. `backend = "lnd"`, `[prices]`); environment
variables win over the file (`SATSCALE_BACKEND=lnd`, `SATSCALE_PORT=8080`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from sr_core import kinds
from sr_core.errors import ParameterError
from sr_core.weights import PROJECT_ROOT


def _flat_engine_names() -> list[tuple[str, str]]:
    return [(kind.id, option.name) for kind in kinds.kinds() for option in kind.settings]


class EngineEnvSource(PydanticBaseSettingsSource):
    """SATSCALE_<KIND>_<SETTING> environment variables, for every setting an engine kind declares."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        upper = {key.upper(): value for key, value in os.environ.items()}
        found: dict[str, dict[str, Any]] = {}
        for kind_id, name in _flat_engine_names():
            raw = upper.get(f"SATSCALE_{kind_id}_{name}".upper())
            if raw is not None:
                found.setdefault(kind_id, {})[name] = raw
        return {"engines": found} if found else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SATSCALE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 7860
    #: jobs database, stored inputs and outputs
    data_dir: Path = PROJECT_ROOT / "data"
    #: the public address links in job documents start with (e.g. https://upscale.example);
    #: default: relative links. Never taken from the request's Host header.
    public_url: str | None = None

    #: the job store: none is the embedded SQLite file in data_dir (one box); a PostgreSQL URL
    #: (postgresql://user@host:5432/db) makes it, and the job queue (procrastinate), shared by every
    #: API node and worker of a cluster (service.cluster)
    store_url: str | None = None
    #: what this process does: "all" serves and runs jobs (one box); "api" serves (HTTP, payments,
    #: and one API node at a time coordinates); "worker" runs jobs (`satscale worker`). api and worker
    #: need store_url
    role: Literal["all", "api", "worker"] = "all"
    #: a worker's pool (`satscale worker --queue gpu`) and how many jobs it runs at once
    worker_queue: str = Field(default="gpu", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    worker_concurrency: int = Field(default=1, ge=1, le=64)

    #: "dev" is an embedded simulated node (no real money); "lnd" talks to a real LND
    backend: Literal["dev", "lnd"] = "dev"
    lnd_host: str = "127.0.0.1"
    lnd_port: int = 10009
    lnd_tls_cert: Path | None = None
    lnd_macaroon: Path | None = None  # an invoice macaroon is enough
    lnd_network: str = "mainnet"

    #: how long a paid (held) job may take before the payment is returned
    hold_budget_seconds: int = 180
    invoice_expiry_seconds: int = 600
    token_validity_seconds: int = 24 * 3600

    #: price in msat per output megapixel, by the engine's price class ...
    price_per_megapixel_msat: dict[str, int] = Field(
        default_factory=lambda: {"light": 2_000, "standard": 10_000, "heavy": 50_000, "diffusion": 500_000}
    )
    #: price in msat per thing an engine finds and works on, by unit (a face stage: per face) ...
    price_per_unit_msat: dict[str, int] = Field(default_factory=lambda: {"face": 20_000})
    #: ... or per model name, which wins (per output megapixel, or per unit for a per-unit model)
    model_prices_msat: dict[str, int] = Field(default_factory=dict)
    minimum_price_msat: int = 10_000

    #: IPFS: CIDs of pinned files (1: base32 "bafy..." with raw leaves; 0: Kubo's default "Qm...")
    ipfs_cid_version: Literal[0, 1] = 1
    #: a Kubo node (RPC API, e.g. http://127.0.0.1:5001) that receives a copy of everything pinned
    ipfs_kubo_url: str | None = None
    ipfs_kubo_auth: str | None = None  # an Authorization header value, if the RPC API requires one
    #: an IPFS Pinning Service API endpoint and token: asked to pin every job's CIDs
    ipfs_pinning_endpoint: str | None = None
    ipfs_pinning_token: str | None = None
    #: EVM chain for provenance records; none: an embedded in-process chain (ephemeral, replayed on start)
    chain_rpc_url: str | None = None
    chain_id: int | None = None
    chain_private_key: str | None = None  # signs the records; needs the registry's recorder role
    chain_registry_address: str | None = None  # none: deploy one (its address is remembered)

    #: collection upgrades read token URIs written by anyone: fetches to loopback, private and
    #: link-local addresses are refused unless the host (or host:port) is listed here
    fetch_allow_private_hosts: list[str] = Field(default_factory=list)
    #: a PEM file of extra CAs those fetches trust (besides the public ones)
    fetch_ca_bundle: Path | None = None
    #: an IPFS HTTP gateway (e.g. https://ipfs.io) for token content neither the local store nor
    #: the Kubo node holds; none: only those two are asked
    ipfs_gateway_url: str | None = None
    #: where ar:// token URIs are read
    arweave_gateway_url: str = "https://arweave.net"
    #: collection upgrades: token reads and fetches in flight at once
    collection_concurrency: int = Field(default=8, ge=1, le=64)

    #: whether a job is published when the request does not say: True pins input, output and
    #: metadata on the public IPFS gateway (anyone holding the input finds the upscale); False
    #: records only the hashes on chain and serves the files only with the job's credential
    publish_default: bool = False
    #: what an output keeps of its input's metadata (sr_core.metadata): "auto" keeps EXIF and ICC
    #: and drops the location (GPS) of a published output; "keep" keeps all, location included;
    #: "strip" writes no EXIF and no XMP (the ICC profile stays). All but "strip" write the job's
    #: parameters (pipeline, models, weights sha256, version) as XMP
    metadata_policy: Literal["auto", "keep", "strip"] = "auto"
    #: Content Credentials (C2PA) are signed into every output with this PEM certificate chain
    #: (signing certificate first) and its PEM EC key; none: a local CA and signer made at first
    #: start under data_dir/signing (validators call it untrusted, which it is)
    signing_certificate: Path | None = None
    signing_key: Path | None = None
    #: PEM CA certificates whose signers this server's verifier reports as trusted
    trust_anchors: list[Path] = Field(default_factory=list)
    #: dev backend only, for a private test server: list each settled payment's preimage in
    #: GET /v1/dev/payments (with a job's macaroon, that is the credential for its result)
    dev_wallet_lists_preimages: bool = False

    max_upload_bytes: int = 50 * 1024 * 1024
    #: uploads stored for jobs that wait for payment, at most (past it: 503, nothing stored); an
    #: input is removed once every job made from it expired unpaid or failed
    max_pending_upload_bytes: int = 2 * 1024**3
    max_input_megapixels: float = 16.0
    #: the largest output a job may make, all stages together; None: one 4x of the largest input
    #: (max_input_megapixels x 16), so a one-model job is never refused for its output size
    max_output_megapixels: float | None = None

    @property
    def output_megapixels_limit(self) -> float:
        return self.max_output_megapixels or self.max_input_megapixels * 16

    device: str | None = None
    precision: str = "auto"

    #: how each engine kind's models run, by kind id: {"<kind>": {"<setting>": value}} (TOML
    #: `[engines.<kind>]`; the environment: SATSCALE_<KIND>_<SETTING>, e.g. SATSCALE_SUPIR_STEPS).
    #: `satscale models --settings` lists every kind's settings; unknown names are refused at start
    engines: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _engine_settings_by_flat_name(cls, values: Any) -> Any:
        """`<kind>_<setting>` keys (the TOML file's flat spelling) go into `engines`."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        engines = {k: dict(v) for k, v in (values.get("engines") or {}).items()}
        for kind_id, name in _flat_engine_names():
            flat = f"{kind_id}_{name}"
            if flat in values:
                engines.setdefault(kind_id, {})[name] = values.pop(flat)
        if engines:
            values["engines"] = engines
        return values

    @field_validator("engines")
    @classmethod
    def _check_engine_settings(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        try:
            return kinds.parse_settings(value)
        except ParameterError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, EngineEnvSource(settings_cls)]
        config_file = os.environ.get("SATSCALE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "satscale.sqlite3"

    @property
    def clustered(self) -> bool:
        """Several processes share the store and the queue (PostgreSQL)."""
        return self.store_url is not None

    @model_validator(mode="after")
    def _roles_need_a_shared_store(self) -> Settings:
        if self.store_url is not None and not self.store_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("store_url must be a PostgreSQL URL (postgresql://user@host:5432/db)")
        if self.role != "all" and self.store_url is None:
            raise ValueError(f"role {self.role!r} needs SATSCALE_STORE_URL (a PostgreSQL database every node shares)")
        if self.store_url is not None and self.chain_rpc_url is None:
            raise ValueError(
                "a shared store needs a shared chain: set SATSCALE_CHAIN_RPC_URL "
                "(the embedded chain lives inside one process)"
            )
        return self
