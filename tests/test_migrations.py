"""Migrations: standalone (idempotent) and from a host application's own Alembic history."""

from __future__ import annotations

import textwrap
import uuid

import psycopg
from alembic import command
from alembic.config import Config
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
        migrate.upgrade(url)
        migrate.upgrade(url)
        with psycopg.connect(url) as c:
            tables = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert {"outbox_events", "outbox_relay", "outbox_alembic_version"} <= tables
            assert c.execute("SELECT count(*) FROM outbox_relay").fetchone()[0] == 1
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


def test_host_application_alembic_history_includes_outbox_branch(pg_admin_url, tmp_path):
    """A host app adds our versions directory to its version_locations and upgrades to heads."""
    name, url = _fresh(pg_admin_url)
    host = tmp_path / "host_migrations"
    (host / "versions").mkdir(parents=True)
    (host / "env.py").write_text(
        textwrap.dedent("""
        from alembic import context
        connection = context.config.attributes["connection"]
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    """)
    )
    (host / "script.py.mako").write_text("")
    (host / "versions" / "h001_tickets.py").write_text(
        textwrap.dedent("""
        from alembic import op
        revision = "h001"
        down_revision = None
        branch_labels = ("host",)
        depends_on = "outbox_0001"   # the host's tables may reference the outbox's
        def upgrade():
            op.execute("CREATE TABLE tickets (id uuid PRIMARY KEY, title text)")
        def downgrade():
            op.execute("DROP TABLE tickets")
    """)
    )
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(host))
        cfg.set_main_option("path_separator", "space")
        cfg.set_main_option("version_locations", f"{host / 'versions'} {migrations.VERSIONS}")
        engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        with psycopg.connect(url) as c:
            assert c.execute("SELECT to_regclass('outbox_events')").fetchone()[0] == "outbox_events"
            assert c.execute("SELECT to_regclass('tickets')").fetchone()[0] == "tickets"
            heads = {r[0] for r in c.execute("SELECT version_num FROM alembic_version")}
        outbox_head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
        # h001 depends on outbox_0001; the outbox branch goes on to its own head
        assert heads == {"h001", outbox_head} or (outbox_head == "outbox_0001" and heads == {"h001"})
    finally:
        _drop(pg_admin_url, name)
