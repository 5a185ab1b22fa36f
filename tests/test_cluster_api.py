"""An API node of a cluster (`--role api`, in process) on the real PostgreSQL: it sells only
what a live worker can run, it answers a lost database with a problem document, and a role
that needs a shared store or chain is refused at start."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from app import create_app
from service.cluster.roster import Roster
from service.config import Settings
from service.postgres_store import PostgresJobStore

from .anvil import ANVIL_KEY_0, running_anvil
from .cluster_world import MODEL, photo
from .postgres import ADMIN_URL

pytestmark = [pytest.mark.postgres, pytest.mark.chain]


def test_an_api_node_sells_only_what_a_live_worker_runs(tmp_path: Path, registry, postgres_url: str) -> None:
    with running_anvil() as (_, port):
        settings = Settings(
            data_dir=tmp_path / "data", role="api", store_url=postgres_url,
            chain_rpc_url=f"http://127.0.0.1:{port}", chain_private_key=ANVIL_KEY_0,
        )  # fmt: skip
        with TestClient(create_app(settings, registry), raise_server_exceptions=False) as client:
            health = client.get("/healthz").json()
            assert health["role"] == "api"
            form = {"model": MODEL}
            files = {"image": ("photo.png", photo(1), "image/png")}

            refused = client.post("/v1/upscales", files=files, data=form)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert MODEL in refused.json()["detail"] and "nothing was charged" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) > 0
            assert not list((tmp_path / "data" / "inputs").glob("*"))  # nothing stored for it

            # a worker with the model says it is alive: the same request gets its invoice
            store = PostgresJobStore(postgres_url)
            Roster(store).advertise("gpu-box-1", "gpu", [MODEL], 1, time.time())
            offered = client.post("/v1/upscales", files=files, data=form)
            assert offered.status_code == 402, offered.text
            job_id = offered.json()["job_id"]
            assert store.get(job_id) is not None
            # the other models are still not sold: no worker has them
            other = client.post("/v1/upscales", files=files, data={"model": "realesrgan-x4plus"})
            assert other.status_code == 503

            # the database goes away: a clear 503, not a crash, and the node answers again after
            store.close()
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                name = postgres_url.rsplit("/", 1)[1]
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                lost = client.get(f"/v1/upscales/{job_id}")
                assert lost.status_code == 503, lost.text
                assert lost.json()["type"].endswith(":store-unavailable")
            finally:
                with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                    admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            deadline = time.monotonic() + 10
            while (again := client.get(f"/v1/upscales/{job_id}")).status_code == 503:
                assert time.monotonic() < deadline, f"the node did not reconnect: {again.text}"
                time.sleep(0.2)
            assert again.json()["job_id"] == job_id and again.json()["status"] == "awaiting_payment"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"role": "api"}, "needs SATSCALE_STORE_URL"),
        ({"role": "worker"}, "needs SATSCALE_STORE_URL"),
        ({"store_url": "postgresql://x@127.0.0.1/db"}, "needs a shared chain"),
        ({"store_url": "mysql://x@127.0.0.1/db", "chain_rpc_url": "http://127.0.0.1:1"}, "PostgreSQL URL"),
        ({"worker_queue": "gpu; DROP TABLE jobs"}, "worker_queue"),
    ],
)
def test_roles_that_need_a_shared_store_or_chain_are_refused_at_start(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**settings)
