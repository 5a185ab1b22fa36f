"""A data folder written by the previous release opens with this one: its jobs are kept, and
(since publication was not a choice then) they count as published."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.jobs import JobState
from service.store import SCHEMA, SqliteJobStore

NEW_COLUMNS = ("publish", "owner_key_sha256", "estimated_seconds")


def old_schema() -> str:
    lines = [line for line in SCHEMA.splitlines() if not line.strip().startswith(NEW_COLUMNS)]
    text = "\n".join(lines)
    return text.replace("precision TEXT NOT NULL DEFAULT 'auto',\n);", "precision TEXT NOT NULL DEFAULT 'auto'\n);")


def test_an_older_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "satscale.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(old_schema())
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    assert not columns & set(NEW_COLUMNS)
    db.execute(
        "INSERT INTO jobs (id, state, created_at, updated_at, model, scale, output_format, input_sha256, input_path, "
        "input_width, input_height, request_hash, payment_hash, hold, amount_msat, invoice_status, "
        "token_valid_until) VALUES ('job_old', 'succeeded', 1, 1, 'realesrgan-x4plus', 4, 'png', 'aa', '/x', 2, 2, "
        "'rh', 'ph', 1, 10000, 'settled', 9)"
    )
    db.commit()
    db.close()

    store = SqliteJobStore(path)
    job = store.get("job_old")
    assert job is not None and job.state is JobState.SUCCEEDED and job.charged
    assert job.publish is True and job.owner_key_sha256 is None and job.estimated_seconds is None
    store.close()
    SqliteJobStore(path).close()  # opening again changes nothing
