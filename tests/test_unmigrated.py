"""An unmigrated database: every command prints one line and exits 4; the relay and the worker stop the same
way (``SchemaNotInstalled``) instead of retrying as if the database were down."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis

from outbox.errors import EXIT_TABLES_MISSING, SchemaNotInstalled
from outbox.ops import missing_tables
from outbox.relay import Relay
from outbox.worker import Worker
from tests.conftest import ROOT, db_url_for, make_settings, wait_for
from tests.test_worker import entry, status_payload, wsettings

MESSAGE = "outbox tables are missing: run `outbox migrate`"


@pytest.fixture
def empty_db(pg_admin_url: str) -> Iterator[str]:
    """A fresh database without the outbox tables."""
    name = f"outbox_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield db_url_for(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(*args: str, db: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(OUTBOX_DATABASE_URL=db, OUTBOX_REDIS_URL=redis_url, OUTBOX_STREAM=f"test:{uuid.uuid4().hex[:8]}")
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("dead-letters",),
        ("replay",),
        ("catalog", "sync"),
        ("simulate", "TICKET_CREATED", "--record"),
        ("worker", "status"),
        ("worker", "triggers", "list"),
        ("worker", "triggers", "disable", str(uuid.UUID(int=1))),
        ("worker", "runs"),
    ],
    ids=" ".join,
)
def test_command_on_unmigrated_database_prints_one_line_and_exits_4(args, empty_db, redis_base_url):
    res = cli(*args, db=empty_db, redis_url=redis_base_url)
    assert res.returncode == EXIT_TABLES_MISSING == 4, res.stderr
    assert res.stderr.strip() == MESSAGE  # one line, no traceback, no second message


def test_daemons_on_unmigrated_database_exit_4(empty_db, redis_base_url):
    relay = cli("relay", "--once", db=empty_db, redis_url=redis_base_url)
    worker = cli("worker", "--once", db=empty_db, redis_url=redis_base_url)
    for res in (relay, worker):
        assert res.returncode == EXIT_TABLES_MISSING, res.stderr
        assert MESSAGE in res.stderr and "Traceback" not in res.stderr
        assert "unavailable" not in res.stderr


def test_missing_tables_names_only_outbox_tables():
    class Err(Exception):
        def __init__(self, sqlstate: str, text: str) -> None:
            super().__init__(text)
            self.sqlstate = sqlstate

    assert missing_tables(Err("42P01", 'relation "workflow_triggers" does not exist')) is not None
    assert missing_tables(Err("42703", 'column "status" does not exist')) is not None
    assert missing_tables(Err("42P01", 'relation "tickets" does not exist')) is None  # the host's own table
    assert missing_tables(Err("08006", 'relation "outbox_events" does not exist')) is None


def test_relay_run_raises_at_start_without_retrying(empty_db, redis_base_url):
    relay = Relay(make_settings(empty_db, redis_base_url, f"test:{uuid.uuid4().hex[:8]}"))
    with pytest.raises(SchemaNotInstalled, match="run `outbox migrate`") as info:
        relay.run()
    assert "outbox_relay" in info.value.detail
    assert relay.stats.db_errors == 0  # not taken for an outage


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, errors


def drop(db_url: str, *tables: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("SET lock_timeout = '10s'")
        c.execute(f"DROP TABLE {', '.join(tables)} CASCADE")


def test_relay_run_raises_when_the_tables_disappear(settings, db_url):
    relay = Relay(settings)
    t, errors = run_in_thread(relay.run)
    try:
        wait_for(lambda: relay.epoch is not None, what="the relay to lead")
        drop(db_url, "outbox_events", "outbox_batches", "outbox_relay")
        t.join(30)
        assert not t.is_alive(), "the relay kept running without its tables"
    finally:
        relay.stop()
        t.join(15)
    assert len(errors) == 1 and isinstance(errors[0], SchemaNotInstalled), errors
    assert relay.stats.db_errors == 0


def test_worker_run_raises_at_start(empty_db, redis_url, stream, rds):
    worker = Worker(wsettings(empty_db, redis_url, stream))
    with pytest.raises(SchemaNotInstalled) as info:
        worker.run()
    assert "does not exist" in info.value.detail
    assert worker.stats.db_errors == 0


def test_worker_run_raises_when_the_tables_disappear(db_url, redis_url, stream, rds: redis.Redis):
    settings = wsettings(db_url, redis_url, stream)
    worker = Worker(settings)
    t, errors = run_in_thread(worker.run)
    try:
        wait_for(lambda: rds.exists(stream) and rds.xinfo_consumers(stream, settings.group), what="the worker to read")
        drop(db_url, "workflow_trigger_skips", "workflow_run_requests", "workflow_runtime_events")
        rds.xadd(stream, entry("tenant-a", status_payload("tenant-a")))  # type: ignore[arg-type]
        t.join(30)
        assert not t.is_alive(), "the worker kept running without its tables"
    finally:
        worker.stop()
        t.join(15)
    assert len(errors) == 1 and isinstance(errors[0], SchemaNotInstalled), errors
    assert worker.stats.db_errors == 0 and worker.stats.ingested == 0
    assert rds.xpending(stream, settings.group)["pending"] == 1  # the entry stays for after `outbox migrate`
