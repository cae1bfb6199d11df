"""Fixtures for the WAL capture mode: a Postgres server with ``wal_level=logical``, a database per test.

``OUTBOX_TEST_LOGICAL_DATABASE_URL`` (a ``wal_level=logical`` server where we may CREATE DATABASE and create
replication slots) when set; otherwise the session starts its own server on a free port. The shared server on
5432 runs ``wal_level=replica`` and is never touched. Loaded by tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
import pytest

from outbox.embedded import PostgresServer
from outbox.relay import walstream

#: What the session's own server runs with.
LOGICAL_SETTINGS = {"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20"}


@pytest.fixture(scope="session")
def logical_pg_url() -> Iterator[str]:
    """URL of a ``wal_level=logical`` Postgres server the tests may create databases and slots on."""
    url = os.environ.get("OUTBOX_TEST_LOGICAL_DATABASE_URL")
    if url:
        with psycopg.connect(url, autocommit=True) as conn:
            walstream.require_logical(conn)
        yield url
        return
    with PostgresServer(settings=LOGICAL_SETTINGS) as server:
        yield server.url("postgres")


@dataclass(frozen=True)
class LogicalDb:
    """A database of its own on the logical server, and slot/publication names nobody else uses."""

    url: str
    name: str
    slot: str
    publication: str


def _with_db(url: str, dbname: str) -> str:
    return urlsplit(url)._replace(path="/" + dbname).geturl()


def drop_slots_of(admin_url: str, dbname: str, timeout: float = 30.0) -> None:
    """Drop every replication slot of ``dbname``, ending the walsenders that hold them first."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = %s", [dbname]
            ).fetchall()
            if not rows:
                return
            for name, pid in rows:
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                    continue
                # Dropped meanwhile, or taken again: the next round sees.
                with contextlib.suppress(psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [name])
            if time.monotonic() > deadline:
                raise AssertionError(f"replication slots of {dbname} still there after {timeout}s: {rows}")
            time.sleep(0.02)


@pytest.fixture
def logical_db(logical_pg_url: str) -> Iterator[LogicalDb]:
    """A fresh database on the logical server; its slots are dropped and it is dropped afterwards."""
    tag = uuid.uuid4().hex[:12]
    name = f"outbox_wal_{tag}"
    with psycopg.connect(logical_pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield LogicalDb(_with_db(logical_pg_url, name), name, f"outbox_s_{tag}", f"outbox_p_{tag}")
    finally:
        drop_slots_of(logical_pg_url, name)  # a leftover slot pins WAL, and blocks DROP DATABASE
        with psycopg.connect(logical_pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
