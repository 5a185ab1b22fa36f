"""The paid job flow, composed of its parts:

    intake      decode, validate, price and admit an upload (service.intake)
    checkout    job row, hold invoice, L402 token (service.checkout)
    watcher     invoice held -> queued; expiry and hold-budget timers; reconcile (service.watcher)
    queue       which held job runs when and where: this process's, or a cluster's (service.queue)
    runner      the engine runs; settle on success, cancel on failure (service.runner)
    settlement  the backend's settle/cancel calls and its availability (service.settlement)

Each state is persisted before its side effect (settle, cancel, engine run), and every side
effect is safe to repeat, so a kill -9 anywhere resumes without losing a paid job or
charging twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from payments.backend import LightningBackend, PaymentError
from sr_core.metadata import MetadataPolicy
from sr_core.registry import ModelRegistry

from .capacity import ThroughputMeter
from .checkout import Checkout
from .config import Settings
from .credentials import OutputCredentials
from .engines import Engines
from .inputs import Inputs
from .intake import Intake, upload_limits
from .jobs import Job
from .provenance import Provenance
from .queue import EmbeddedQueue, JobQueue
from .runner import JobRunner
from .settlement import Settlement
from .store import JobStore
from .watcher import PaymentWatcher


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: LightningBackend,
        registry: ModelRegistry,
        clock: Callable[[], float] = time.time,
        provenance: Provenance | None = None,
        on_record: Callable[[], None] | None = None,
        queue: Callable[[JobRunner], JobQueue] | None = None,
        sole: bool = True,
        workers: Callable[[set[str]], int] | None = None,
        credentials: OutputCredentials | None = None,
    ) -> None:
        """`provenance` pins each finished job and queues its chain record; `on_record` is
        told when a record was queued (the chain sender wakes up). `queue` makes the job queue
        around the runner (default: this process's own). `sole`: this is the only node, so it
        also keeps the clocks and reconciles at start (in a cluster one node at a time does,
        service.cluster.coordinator). `workers(models)`: how many jobs needing these models can
        run at once (a cluster's live workers; one here). `credentials` signs Content Credentials into
        every output (service.credentials)."""
        self.settings = settings
        self.store = store
        self.backend = backend
        self.clock = clock
        self.inputs_dir = settings.data_dir / "inputs"
        self.engines = Engines(registry, settings.device, settings.precision)
        self.sole = sole
        self.meter = ThroughputMeter(store)
        self.settlement = Settlement(store, backend)
        self.inputs = Inputs(self.inputs_dir, store, settings.max_pending_upload_bytes)
        self.runner = JobRunner(
            store,
            self.engines,
            self.meter,
            self.settlement,
            self.inputs,
            upload_limits(settings),
            settings.data_dir / "outputs",
            clock,
            provenance,
            on_record,
            credentials,
            MetadataPolicy(settings.metadata_policy),
        )
        self.queue: JobQueue = (queue or (lambda runner: EmbeddedQueue(store, runner)))(self.runner)
        self.watcher = PaymentWatcher(
            settings, store, backend, self.settlement, self.inputs, self.queue, self.runner.fail, clock
        )
        if sole:  # in a cluster the coordinator's sweep finishes what an outage left
            self.settlement.on_reconnect = self.watcher.reconcile
        self.checkout = Checkout(settings, store, backend, self.settlement, self.inputs, clock, self.watcher.watch)
        self.intake = Intake(
            settings, self.engines, self.meter, backlog=self.runner.backlog, workers=workers or (lambda models: 1)
        )

    @property
    def backend_available(self) -> bool:
        return self.settlement.available

    async def start(self) -> None:
        self.inputs.start(sole=self.sole)
        await self.queue.start()
        if self.sole:
            self.watcher.start()
        try:
            await self.backend.start()
            if self.sole:
                await self.watcher.reconcile()
        except PaymentError as exc:  # unreachable or misconfigured: serve anyway, answer 503, keep trying
            self.settlement.lost(exc)

    async def stop(self) -> None:
        await self.queue.stop()
        await self.watcher.stop()
        await self.settlement.stop()
        await self.backend.close()

    async def fail(self, job_id: str, reason: str) -> Job | None:
        return await self.runner.fail(job_id, reason)
