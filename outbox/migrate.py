"""Run the outbox migrations standalone, or defer to a host application's Alembic history that holds them.

Two ways to own the outbox tables, never both:

- standalone: ``outbox migrate`` applies the revisions and records them in ``outbox_alembic_version``;
- host: the host's alembic.ini lists our versions directory (``outbox:migrations/versions``) and its
  ``alembic upgrade heads`` applies them, recorded in the host's own version table. ``upgrade`` then changes
  no schema: it sees the outbox branch in that table and only checks that it is not behind this release.

Either way ``upgrade`` ends with the system-catalog sync: those rows are data of the installed release, not
migration history (the frozen revisions cannot know them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text

from outbox import migrations
from outbox.errors import OutboxError
from outbox.settings import sqlalchemy_url

if TYPE_CHECKING:
    from outbox.catalog.sync import SyncReport


class HostHistoryBehind(OutboxError):
    """A host's Alembic history holds the outbox tables and lacks revisions this release needs."""

    def __init__(self, table: str, recorded: tuple[str, ...], heads: tuple[str, ...]) -> None:
        self.table = table
        super().__init__(
            f"the outbox tables are managed by the Alembic history in {table} (at {', '.join(recorded)}); "
            f"this release needs {', '.join(heads)}: run your `alembic upgrade heads`"
        )


@dataclass(frozen=True)
class Migrated:
    """What ``upgrade`` did: outbox revisions before and after (ours), or the host table that owns them."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    host_table: str | None = None
    catalog: SyncReport | None = None


# Tables shaped like an Alembic version table (one ``version_num`` column), other than ours.
_VERSION_TABLES = """
SELECT format('%I.%I', table_schema, table_name)
FROM information_schema.columns
WHERE column_name = 'version_num' AND table_name <> :ours
  AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def alembic_config(database_url: str) -> Config:
    """An Alembic ``Config`` for the outbox migrations against ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", migrations.SCRIPT_LOCATION)
    cfg.set_main_option("version_table", migrations.VERSION_TABLE)
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return cfg


def _script() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", migrations.SCRIPT_LOCATION)
    return ScriptDirectory.from_config(cfg)


def _ours(conn: Connection) -> tuple[str, ...]:
    ctx = MigrationContext.configure(conn, opts={"version_table": migrations.VERSION_TABLE})
    return tuple(sorted(ctx.get_current_heads()))


def host_owner(conn: Connection) -> tuple[str, tuple[str, ...]] | None:
    """The host version table that holds the outbox branch, with the outbox revisions it names (none when a
    host revision ``depends_on`` our head: Alembic then records only the host revision); ``None``: standalone.

    A table naming an outbox revision wins. Without one, the outbox tables existing with no row of ours
    while a host version table exists means the host applied them.
    """
    script = _script()
    known = {s.revision for s in script.walk_revisions()}
    tables = [str(r[0]) for r in conn.execute(text(_VERSION_TABLES), {"ours": migrations.VERSION_TABLE})]
    for table in tables:
        named = {str(r[0]) for r in conn.execute(text(f"SELECT version_num FROM {table}"))} & known
        if named:
            return table, tuple(sorted(named))
    present = conn.execute(text("SELECT to_regclass('outbox_events') IS NOT NULL")).scalar()
    if tables and present and not _ours(conn):
        return tables[0], ()
    return None


def upgrade(database_url: str, revision: str = "heads") -> Migrated:
    """Apply the outbox migrations up to ``revision`` and sync the system catalog (at ``heads``). Idempotent.

    When a host's Alembic history holds the outbox tables, no schema is changed: raises ``HostHistoryBehind``
    if it lacks this release's head, else only syncs the catalog.
    """
    from outbox.catalog.sync import sync_system_catalog

    cfg = alembic_config(database_url)
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            host = host_owner(conn)
            if host is not None:
                table, recorded = host
                heads = tuple(sorted(_script().get_heads()))
                if recorded and not set(heads) <= set(recorded):
                    raise HostHistoryBehind(table, recorded, heads)
                catalog = sync_system_catalog(conn) if revision == "heads" else None
                return Migrated(recorded, recorded, table, catalog)
            before = _ours(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            catalog = sync_system_catalog(conn) if revision == "heads" else None
            return Migrated(before, _ours(conn), None, catalog)
    finally:
        engine.dispose()


def sql(revision: str = "heads") -> None:
    """Print the migration SQL (offline mode) and, at ``heads``, the system-catalog upsert, for DBAs who apply
    DDL themselves."""
    command.upgrade(alembic_config("postgresql://"), revision, sql=True)
    if revision != "heads":
        return
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    from outbox.catalog.sync import rows_json, upsert_sql

    rows = sa.bindparam("rows", rows_json(), type_=sa.Text)
    stmt = sa.text(upsert_sql(":rows")).bindparams(rows)
    rendered = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    print("\n-- The system catalog of this release (`outbox catalog sync` does the same online)\n")
    print(f"{str(rendered).strip()};\n")
