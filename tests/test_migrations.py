"""Migrations: standalone (idempotent) and from a host application's own Alembic history."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from outbox import migrate, migrations
from outbox.settings import sqlalchemy_url
from tests.conftest import db_url_for


def _fresh(pg_admin_url: str) -> tuple[str, str]:
    name = f"outbox_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, db_url_for(pg_admin_url, name)


def _drop(pg_admin_url: str, name: str) -> None:
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_standalone_upgrade_is_idempotent_and_downgrade_removes_tables(pg_admin_url):
    name, url = _fresh(pg_admin_url)
    try:
        first, second = migrate.upgrade(url), migrate.upgrade(url)
        assert (first.before, first.after, first.host_table) == ((), ("outbox_0006",), None)
        assert first.catalog is not None and first.catalog.inserted == 134
        assert second.before == second.after and second.catalog is not None and second.catalog.changes == 0
        with psycopg.connect(url) as c:
            tables = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert {"outbox_events", "outbox_relay", "outbox_alembic_version"} <= tables
            assert c.execute("SELECT count(*) FROM outbox_relay").fetchone()[0] == 2  # default (poll) and wal
            idx = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'outbox_events'")}
            assert "outbox_events_pending_idx" in idx
        engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
        cfg = migrate.alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        with psycopg.connect(url) as c:
            assert c.execute("SELECT to_regclass('outbox_events')").fetchone()[0] is None
    finally:
        _drop(pg_admin_url, name)


def test_revisions_and_env_import_only_alembic_and_sqlalchemy():
    """Frozen history: no revision (nor env.py) imports live code, so releases never rewrite it and a host's
    Alembic can load it beside its own packages."""
    files = [Path(migrations.SCRIPT_LOCATION) / "env.py", *Path(migrations.VERSIONS).glob("*.py")]
    assert len(files) >= 5
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in {"__future__", "alembic", "sqlalchemy"}, f"{f.name} imports {name}"


def test_migrated_schema_has_what_the_code_needs(db_url):
    """The tables, columns, keys and indexes the relay, the worker, the catalog and the CLI rely on."""
    with psycopg.connect(db_url) as c:
        cols = {
            (t, col): (typ, nullable)
            for t, col, typ, nullable in c.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
        idx = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        version = c.execute("SELECT version_num FROM outbox_alembic_version").fetchall()
        relay_rows = c.execute("SELECT name FROM outbox_relay").fetchall()
    assert {t for t, _ in cols} == {*migrations.TABLES, migrations.VERSION_TABLE}
    assert cols["outbox_events", "xid"] == ("xid8", "NO")
    assert cols["outbox_events", "payload"] == ("jsonb", "NO")
    for col in ("event_id", "status", "publish_seq", "attempts", "last_error", "published_at", "stream_id", "dead_at"):
        assert ("outbox_events", col) in cols
    for col in ("epoch", "last_seq", "leader", "lease_until", "notify_until", "instance_id", "wal_confirmed_lsn"):
        assert ("outbox_relay", col) in cols
    assert cols["outbox_batches", "event_ids"] == ("ARRAY", "NO")
    for col in ("status", "claimed_at", "claimed_by", "attempts", "finished_at", "error"):
        assert ("workflow_run_requests", col) in cols
    assert cols["event_catalog", "payload_schema"] == ("jsonb", "YES")
    assert cols["system_event_catalog", "legacy_overlaps"] == ("ARRAY", "NO")
    assert {
        "outbox_events_event_id_key", "outbox_events_pending_idx", "outbox_events_published_idx",
        "outbox_events_failed_idx", "outbox_events_dead_at_idx", "system_event_catalog_event_type_key",
        "event_catalog_tenant_event_type_key",
        "workflow_triggers_match_idx", "workflow_run_requests_trigger_event_key", "workflow_run_requests_claim_idx",
        "workflow_run_requests_claimed_idx", "workflow_trigger_skips_event_idx",
    } <= idx  # fmt: skip
    assert version == [(ScriptDirectory.from_config(migrate.alembic_config(db_url)).get_current_head(),)]
    assert sorted(relay_rows) == [("default",), ("wal",)]


def _host_history(url: str, outbox_revision: str) -> None:
    """As a host whose alembic.ini lists our versions: our revisions recorded in its alembic_version."""
    cfg = migrate.alembic_config(url)
    cfg.set_main_option("version_table", "alembic_version")
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, outbox_revision)
    engine.dispose()
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO alembic_version VALUES ('h001')")  # the host's own head


def test_host_history_at_head_is_left_alone_and_the_catalog_synced(pg_admin_url):
    name, url = _fresh(pg_admin_url)
    try:
        _host_history(url, "heads")
        done = migrate.upgrade(url)
        assert done.host_table == "public.alembic_version" and done.after == ("outbox_0006",)
        assert done.catalog is not None and done.catalog.inserted == 134  # 0002 is schema only
        with psycopg.connect(url) as c:
            assert c.execute("SELECT to_regclass('outbox_alembic_version')").fetchone() == (None,)
    finally:
        _drop(pg_admin_url, name)


def test_host_history_behind_this_release_is_refused_not_migrated_twice(pg_admin_url):
    name, url = _fresh(pg_admin_url)
    try:
        _host_history(url, "outbox_0003")
        with pytest.raises(migrate.HostHistoryBehind, match=r"public.alembic_version \(at outbox_0003\).*outbox_0006"):
            migrate.upgrade(url)
        with psycopg.connect(url) as c:
            assert c.execute("SELECT to_regclass('outbox_alembic_version')").fetchone() == (None,)
            cols = {r[0] for r in c.execute("SELECT column_name FROM information_schema.columns"
                                            " WHERE table_name = 'workflow_run_requests'")}  # fmt: skip
            assert "claimed_by" not in cols
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}, "OUTBOX_DATABASE_URL": url}
        res = subprocess.run([sys.executable, "-m", "outbox.cli", "migrate"], env=env, capture_output=True, text=True)
        assert res.returncode == 1 and "run your `alembic upgrade heads`" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        _drop(pg_admin_url, name)


def test_host_history_without_our_tables_gets_them_standalone(pg_admin_url):
    """A host with its own Alembic history that does not list our versions: `outbox migrate` as usual."""
    name, url = _fresh(pg_admin_url)
    try:
        with psycopg.connect(url) as c:
            c.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            c.execute("INSERT INTO alembic_version VALUES ('h001')")
        done = migrate.upgrade(url)
        assert done.host_table is None and done.before == () and done.after == ("outbox_0006",)
        with psycopg.connect(url) as c:
            assert c.execute("SELECT version_num FROM alembic_version").fetchall() == [("h001",)]
    finally:
        _drop(pg_admin_url, name)
