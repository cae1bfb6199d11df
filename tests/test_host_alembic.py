"""A host application puts the outbox tables under its own Alembic history (README: Tables and migrations).

The host is a throwaway project made by ``alembic init`` (default alembic.ini: ``prepend_sys_path = .``) that
has its own top-level ``schemas``, ``migrations``, ``domain``, ``worker``, ``relay`` and ``catalog`` packages.
Everything runs in subprocesses from the host's directory, as its developers would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox.migrate import _script
from outbox.settings import sqlalchemy_url
from tests.test_unmigrated import empty_db  # noqa: F401  (the fixture)

# The interpreter the host runs: this one, or (OUTBOX_TEST_PYTHON) the fresh venv where .ci/wheel-check
# installed the plain wheel, so the same test proves the shipped product.
PYTHON = os.environ.get("OUTBOX_TEST_PYTHON") or sys.executable
HOST_PACKAGES = ("schemas", "migrations", "domain", "worker", "relay", "catalog")

ENV_ADDITION = '''
from domain.models import metadata
from outbox.migrations import TABLES as OUTBOX_TABLES

target_metadata = metadata


def include_name(name, type_, parent_names):
    """Autogenerate leaves the outbox tables alone (they come from the outbox revisions)."""
    return not (type_ == "table" and name in OUTBOX_TABLES)
'''


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_") and k != "PYTHONPATH"}
    res = subprocess.run(cmd, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def make_host(root: Path, url: str, depends_on: str) -> Path:
    """``alembic init migrations`` plus the README's two alembic.ini lines, the host's packages and revision."""
    host = root / "host"
    host.mkdir()
    run([PYTHON, "-m", "alembic", "init", "migrations"], host)
    for pkg in HOST_PACKAGES:
        (host / pkg).mkdir(exist_ok=True)
        (host / pkg / "__init__.py").write_text(f'"""The host\'s own {pkg}."""\nHOST = {pkg!r}\n')
    (host / "domain" / "models.py").write_text(
        textwrap.dedent("""
        from sqlalchemy import Column, MetaData, Table, Text, Uuid

        metadata = MetaData()
        Table("tickets", metadata, Column("id", Uuid, primary_key=True), Column("title", Text))
    """)
    )
    ini = (host / "alembic.ini").read_text()
    assert "prepend_sys_path = .\n" in ini and "path_separator = os\n" in ini  # Alembic's defaults
    ini = ini.replace("path_separator = os\n", "path_separator = space\n")
    ini = ini.replace(
        "sqlalchemy.url = driver://user:pass@localhost/dbname\n",
        f"sqlalchemy.url = {sqlalchemy_url(url).replace('%', '%%')}\n"
        "version_locations = %(here)s/migrations/versions outbox:migrations/versions\n",
    )
    (host / "alembic.ini").write_text(ini)
    env_py = (host / "migrations" / "env.py").read_text()
    assert env_py.count("target_metadata=target_metadata") == 2
    env_py = env_py.replace("target_metadata = None\n", ENV_ADDITION)
    env_py = env_py.replace(
        "target_metadata=target_metadata", "target_metadata=target_metadata, include_name=include_name"
    )
    (host / "migrations" / "env.py").write_text(env_py)
    (host / "migrations" / "versions" / "h001_tickets.py").write_text(
        textwrap.dedent(f"""
        from alembic import op

        import schemas  # the host's own package, found through prepend_sys_path = .

        revision = "h001"
        down_revision = None
        branch_labels = ("host",)
        depends_on = {depends_on!r}

        def upgrade():
            assert schemas.HOST == "schemas"
            op.execute("CREATE TABLE tickets (id uuid PRIMARY KEY, title text)")

        def downgrade():
            op.execute("DROP TABLE tickets")
    """)
    )
    return host


def snapshot(url: str) -> dict[str, Any]:
    """The schema (columns, indexes, constraints), the version tables and the system catalog rows."""
    with psycopg.connect(url) as c:

        def rows(query: str) -> list[tuple[Any, ...]]:
            return c.execute(query).fetchall()

        return {
            "columns": rows(
                "SELECT table_name, column_name, data_type, column_default, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY 1, 2"
            ),
            "indexes": rows("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"),
            "constraints": rows(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
            ),
            "versions": rows("SELECT version_num FROM alembic_version ORDER BY 1"),
            "catalog": rows("SELECT event_type, id, updated_at FROM system_event_catalog ORDER BY 1"),
        }


HEAD = "outbox_0006"


@pytest.mark.parametrize("depends_on", ["outbox_0001", HEAD], ids=["on-first-revision", "on-head"])
def test_host_alembic_upgrade_then_outbox_migrate_changes_nothing(tmp_path, empty_db, depends_on):  # noqa: F811
    assert _script().get_current_head() == HEAD  # a new revision: keep this test's expectations in step
    host = make_host(tmp_path, empty_db, depends_on)
    outbox = [PYTHON, "-m", "outbox.cli"]
    run([PYTHON, "-m", "alembic", "upgrade", "heads"], host)
    run([PYTHON, "-m", "alembic", "check"], host)  # autogenerate sees no difference: ours are left alone
    run([*outbox, "catalog", "sync"], host, OUTBOX_DATABASE_URL=empty_db)  # the README's second step
    before = snapshot(empty_db)
    # Alembic records only heads: a host revision that depends on our head stands for it.
    assert before["versions"] == ([("h001",)] if depends_on == HEAD else [("h001",), (HEAD,)])
    assert len(before["catalog"]) == 134

    res = run([*outbox, "migrate"], host, OUTBOX_DATABASE_URL=empty_db)
    assert "managed by your Alembic history (public.alembic_version" in res.stderr
    assert "0 new, 0 updated" in res.stderr
    assert snapshot(empty_db) == before
    with psycopg.connect(empty_db) as c:
        assert c.execute("SELECT to_regclass('outbox_alembic_version')").fetchone() == (None,)

    record = textwrap.dedent("""
        import json, sys, uuid
        import psycopg
        import schemas
        import outbox
        assert schemas.HOST == "schemas", schemas  # the host's own package, beside ours
        payload = {"ticketId": str(uuid.uuid4()), "previousStatusId": "open", "newStatusId": "closed"}
        with psycopg.connect(sys.argv[1]) as conn:
            event_id = outbox.record(conn, "TICKET_STATUS_CHANGED", payload, tenant_id="host-tenant")
        print(json.dumps({"event_id": str(event_id), "schemas": schemas.__file__}))
    """)
    out = json.loads(run([PYTHON, "-c", record, empty_db], host).stdout)
    assert Path(out["schemas"]).parent == host / "schemas"
    with psycopg.connect(empty_db) as c:
        row = c.execute("SELECT tenant_id, status FROM outbox_events WHERE event_id = %s", (out["event_id"],))
        assert row.fetchone() == ("host-tenant", "pending")


def test_versions_path_is_the_directory_alembic_loads(tmp_path):
    res = run([PYTHON, "-m", "outbox.cli", "migrate", "--versions-path"], tmp_path)
    path = Path(res.stdout.strip())
    assert res.stdout.count("\n") == 1 and path.is_dir()
    assert {p.name for p in path.glob("*.py")} >= {"0001_outbox_tables.py", "0004_run_request_claims.py"}
    assert sorted(p.name for p in path.glob("*.py")) == sorted(p.name for p in Path(_script().versions).glob("*.py"))
