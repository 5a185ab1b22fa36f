"""What the two doors (the HTTP API and the web app) call: the same intake, the same
authorisation, the same views. Neither door reads the job store, the root keys, the
Lightning backend or the model registry itself, so every rule lives here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from payments import l402
from payments.dev import DevNode, DevPaymentError
from provenance.chain import ProvenanceChain
from sr_core.engines import EngineInfo, Faces
from sr_core.imageio import FORMAT_EXTENSIONS, ImageInfo
from sr_core.kinds import Preset
from sr_core.registry import ModelDescription

from .access import PROOF_NEEDED, AccessDenied, Gatekeeper, Grant, Level, Proof, new_owner_key
from .checkout import Created
from .intake import JobOptions, Priced
from .jobs import Job
from .provenance import Provenance
from .verify import Report, Verifier
from .views import JobView, view
from .worker import JobService

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff"}
PREVIEW_SIDE = 1600


class NotReady(Exception):
    """The job has no result to release (yet, or ever: it failed)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"the job is {job.state.value}: there is no result to download")
        self.job = job


class DevWalletMissing(Exception):
    """The simulated wallet exists only with the dev backend."""


@dataclass(frozen=True)
class ResultFile:
    path: Path
    media_type: str
    filename: str
    sha256: str


class UnknownIntermediate(LookupError):
    """No such intermediate image (a one-stage job, or a stage number it does not have)."""


@dataclass(frozen=True)
class BrowserJob:
    """A job made from the web app: the browser keeps `owner_key`, the server only its hash."""

    created: Created
    owner_key: str


def make_preview(source: Path, target: Path) -> Path:
    """A browser-sized 8-bit PNG copy (written once; atomically, so a reader never sees half)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    image = pyvips.Image.thumbnail(str(source), PREVIEW_SIDE, height=PREVIEW_SIDE, size="down")
    if image.format == "ushort":
        image = image.colourspace("srgb" if image.bands >= 3 else "b-w")
    partial = target.with_name(f".{target.name}.partial")
    image.pngsave(str(partial))
    partial.replace(target)
    return target


class FrontDoor:
    def __init__(
        self,
        service: JobService,
        gate: Gatekeeper,
        provenance: Provenance,
        chain: Callable[[], ProvenanceChain],
        chain_description: Callable[[], dict | None],
    ) -> None:
        """`chain()` connects to the chain (it may raise ChainUnavailable); `chain_description()`
        says where records go, without connecting."""
        self.service = service
        self.settings = service.settings
        self.gate = gate
        self.provenance = provenance
        self._chain = chain
        self._chain_description = chain_description
        backend = service.backend
        self.dev_node: DevNode | None = backend if isinstance(backend, DevNode) else None

    # ------------------------------------------------------------ models and prices

    def models(self) -> list[ModelDescription]:
        return self.service.engines.listing()

    def presets(self) -> list[Preset]:
        """Pipelines users would otherwise build by hand, offered only when their models load."""
        return self.service.engines.presets()

    def model_names(self) -> list[str]:
        """The models an upscale pass may use (face models are offered as the face stage)."""
        faces = set(self.face_model_names())
        return [name for name in self.service.engines.names() if name not in faces]

    def face_model_names(self) -> list[str]:
        """The models that restore faces (their description says so), for the face stage."""
        return [entry.name for entry in self.service.engines.registry.entries() if entry.faces is Faces.RESTORES]

    def default_model(self) -> str:
        return self.service.engines.default_model()

    async def model_info(self, model: str) -> EngineInfo:
        return (await asyncio.to_thread(self.service.engines.get, model)).info

    async def inspect(self, data: bytes) -> ImageInfo:
        return await self.service.intake.inspect(data)

    async def quote(self, options: JobOptions, width: int, height: int) -> Priced:
        return await self.service.intake.price(options, width, height)

    async def quote_upload(self, data: bytes, options: JobOptions) -> Priced:
        """The price of this very image: what a stage priced per face finds in it counted."""
        return await self.service.intake.price_upload(data, options)

    # ------------------------------------------------------------ creating jobs

    async def create(self, data: bytes, options: JobOptions, idempotency_key: str | None = None) -> Created:
        """An API job: refused before any invoice if it is bad or cannot be delivered in time."""
        admission = await self.service.intake.admit(data, options)
        return await self.service.checkout.create(admission, idempotency_key)

    async def create_for_browser(self, data: bytes, options: JobOptions) -> BrowserJob:
        """A web app job: the browser that made it gets a per-job key (its proof of ownership)."""
        admission = await self.service.intake.admit(data, options)
        key, digest = new_owner_key()
        created = await self.service.checkout.create(admission, owner_key_sha256=digest)
        return BrowserJob(created, key)

    async def repeat(self, data: bytes, options: JobOptions, credential: l402.Credential) -> Grant:
        """A creating request repeated with its credential: the job that token pays for."""
        return self.gate.by_token(credential, await self.service.intake.binding(data, options))

    # ------------------------------------------------------------ jobs

    def grant(self, job_id: str, proof: Proof | None) -> Grant:
        return self.gate.grant(job_id, proof)

    def owner_grant(self, job_id: str, proof: Proof | None) -> Grant:
        return self.gate.require(job_id, proof, Level.OWNER)

    def view(self, grant: Grant) -> JobView:
        return view(grant, grant.job.progress)  # written by whichever worker runs it

    def chain_description(self) -> dict | None:
        return self._chain_description()

    def result(self, grant: Grant) -> ResultFile:
        job = self._releasable(grant)
        return ResultFile(
            Path(job.output_path or ""),
            MEDIA_TYPES[job.output_format],
            f"{job.id}{FORMAT_EXTENSIONS[job.output_format]}",
            job.output_sha256 or "",
        )

    def intermediate(self, grant: Grant, stage: int) -> ResultFile:
        """A multi-stage job's image after `stage` (lossless TIFF), for the result's owner."""
        job = self._releasable(grant)
        row = next((r for r in job.kept_intermediates if r["stage"] == stage), None)
        if row is None:
            raise UnknownIntermediate(f"job {job.id} has no intermediate image after stage {stage}")
        return ResultFile(Path(row["path"]), "image/tiff", f"{job.id}.stage{stage}.tif", row["sha256"])

    def download_link(self, grant: Grant) -> str:
        """A relative, expiring link to the result for its owner (a browser cannot send a header)."""
        self._releasable(grant)
        return f"/v1/upscales/{grant.job.id}/result?{self.gate.download_query(grant)}"

    def intermediate_links(self, grant: Grant) -> list[tuple[int, str, str]]:
        """(stage, model, expiring link) of each intermediate image, for the result's owner."""
        job = self._releasable(grant)
        query = self.gate.download_query(grant)
        return [
            (r["stage"], r["model"], f"/v1/upscales/{job.id}/stages/{r['stage']}?{query}")
            for r in job.kept_intermediates
        ]

    async def previews(self, grant: Grant, folder: Path) -> tuple[Path, Path]:
        """Before/after previews for the owner, made once into `folder` (the web app's cache)."""
        job = self._releasable(grant)
        return await asyncio.to_thread(
            lambda: (
                make_preview(Path(job.input_path), folder / "before.png"),
                make_preview(Path(job.output_path or ""), folder / "after.png"),
            )
        )

    def metadata(self, grant: Grant) -> dict[str, Any] | None:
        if not grant.owner:
            raise AccessDenied("the metadata document names the output: proof of payment needed")
        return self.provenance.metadata(grant.job)

    def _releasable(self, grant: Grant) -> Job:
        if not grant.owner:
            raise AccessDenied(PROOF_NEEDED)
        if not grant.job.releasable or not grant.job.output_path:
            raise NotReady(grant.job)
        return grant.job

    async def dev_pay(self, grant: Grant) -> None:
        """Pay the job's invoice from the simulated wallet (dev backend only; not real money)."""
        if self.dev_node is None:
            raise DevWalletMissing("there is no dev wallet: this server takes real Lightning payments")
        if grant.level < Level.HOLDER:
            raise AccessDenied("only the job's owner pays from this page")
        if grant.job.payment_request is None:
            raise DevPaymentError("this job has no invoice to pay")
        await self.dev_node.pay(grant.job.payment_request)

    # ------------------------------------------------------------ provenance

    def _verifier(self) -> Verifier:
        return Verifier(
            self._chain(),
            self.provenance.ipfs,
            self.provenance.private,
            self.service.store,
            self.service.engines.weights,
            self.service.runner.credentials.read if self.service.runner.credentials else None,
        )

    async def verify(self, query: str, proof: Proof | None = None) -> Report:
        """An image's chain of custody by sha256 or CID. With the L402 proof of payment of one of
        its jobs, that job's unpublished output is shown too."""
        owner: Grant | None = None
        if proof is not None and proof.l402 is not None:
            owner = self.gate.by_token(proof.l402)
            if not owner.owner:
                raise AccessDenied("proof of payment needed to see an unpublished job's record")
        return await self._verify_for(query, owner)

    async def verify_job(self, grant: Grant) -> Report:
        """The owner's check of their own job's record (the web app's Verify button)."""
        job = self._releasable(grant)
        return await self._verify_for(job.output_sha256 or "", grant)

    async def _verify_for(self, query: str, owner: Grant | None) -> Report:
        def disclose(payment_hash: str) -> bool:
            return owner is not None and owner.job.payment_hash == payment_hash

        return await asyncio.to_thread(lambda: self._verifier().verify(query, disclose))
