"""The ``outbox`` command line and configuration errors, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

import outbox
from outbox.errors import ConfigurationError
from outbox.settings import load_settings
from tests.conftest import ROOT, db_url_for


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    base["PYTHONPATH"] = ROOT
    base["COLUMNS"] = "200"
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args], env=base, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("OUTBOX_BATCH_SIZE", "lots", "OUTBOX_BATCH_SIZE"),
        ("OUTBOX_REDIS_URL", "http://nope", "OUTBOX_REDIS_URL"),
        ("OUTBOX_DATABASE_URL", "mysql://x/y", "OUTBOX_DATABASE_URL"),
        ("OUTBOX_WAKE", "sometimes", "OUTBOX_WAKE"),
    ],
)
def test_malformed_setting_names_the_variable(var, value, needle):
    with pytest.raises(ConfigurationError) as exc:
        load_settings(**{var.removeprefix("OUTBOX_").lower(): value})
    assert exc.value.variable == needle
    env = {"OUTBOX_DATABASE_URL": "postgresql://x/y", "OUTBOX_REDIS_URL": "redis://x", var: value}
    res = run_cli("relay", env=env)
    assert res.returncode == 2
    assert needle in res.stderr


def test_missing_settings_fail_at_start_naming_the_variable():
    res = subprocess.run(
        [sys.executable, "-m", "outbox.relay"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": ROOT},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "OUTBOX_DATABASE_URL" in res.stderr


def test_help_names_every_env_var():
    res = run_cli("relay", "--help")
    assert res.returncode == 0
    for var in ("OUTBOX_DATABASE_URL", "OUTBOX_REDIS_URL", "OUTBOX_STREAM", "OUTBOX_BATCH_SIZE", "OUTBOX_WAKE"):
        assert var in res.stdout


def test_migrate_status_dead_letters_replay_via_cli(pg_admin_url):
    name = f"outbox_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = db_url_for(pg_admin_url, name)
    env = {"OUTBOX_DATABASE_URL": url}
    try:
        assert run_cli("migrate", env=env).returncode == 0
        assert run_cli("migrate", env=env).returncode == 0  # idempotent
        with psycopg.connect(url) as conn:
            outbox.record(conn, "TICKET_STATUS_CHANGED",
                          {"ticketId": str(uuid.uuid4()), "previousStatusId": "a", "newStatusId": "b"},
                          tenant_id="t9")  # fmt: skip
            conn.execute(
                "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at, status,"
                " last_error) VALUES (gen_random_uuid(), 't9', 'TICKET_STATUS_CHANGED',"
                " 'payload.TicketStatusChanged.v1', '{}'::jsonb, now(), 'dead', 'broken on purpose')"
            )
            conn.commit()
        res = run_cli("status", "--json", "--by-tenant", env=env)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["pending"] == 1 and data["dead"] == 1
        assert data["tenants"][0]["tenant_id"] == "t9"
        res = run_cli("dead-letters", "--json", env=env)
        rows = json.loads(res.stdout)
        assert len(rows) == 1 and rows[0]["last_error"] == "broken on purpose"
        res = run_cli("replay", "--dry-run", "--json", env=env)
        report = json.loads(res.stdout)
        assert report["dry_run"] and report["matched"] == 1 and len(report["still_invalid"]) == 1
        res = run_cli("status", env=env)
        assert "pending" in res.stdout
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_database_down_is_a_clear_error():
    res = run_cli("status", env={"OUTBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nope"})
    assert res.returncode == 3
    assert "database unavailable" in res.stderr


def test_migrate_sql_prints_ddl_offline():
    res = run_cli("migrate", "--sql")
    assert res.returncode == 0, res.stderr
    assert "CREATE TABLE outbox_events" in res.stdout and "outbox_alembic_version" in res.stdout
