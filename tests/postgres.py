"""A fresh PostgreSQL database per test, on the server the machine runs (127.0.0.1:5432, trust
auth; SATSCALE_TEST_POSTGRES names another). Tests that need one fail, never skip, when the
server is not there: it is part of this project's machine, and CI's."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_URL = os.environ.get("SATSCALE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _url_for(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create a database of its own, yield its URL, drop it (with whatever still connects)."""
    name = f"satscale_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} (this machine starts it): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
