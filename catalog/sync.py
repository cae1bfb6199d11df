"""Keep ``system_event_catalog`` equal to the code registry: one idempotent upsert."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from outbox.catalog import sql
from outbox.schemas.registry import EventType


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: counts, plus the event types touched and the rows the registry no longer has."""

    inserted: int
    updated: int
    unchanged: int
    changed: tuple[str, ...] = ()  # event types inserted or updated, sorted
    stale: tuple[str, ...] = ()  # rows in the table with no registry entry (left in place, never deleted)

    @property
    def changes(self) -> int:
        """Rows inserted or updated."""
        return self.inserted + self.updated


def driver_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind ``conn`` (a psycopg connection, or a SQLAlchemy ``Connection``)."""
    if isinstance(conn, psycopg.Connection):
        return conn
    dbapi = getattr(conn, "connection", None)  # SQLAlchemy Connection -> pool proxy -> driver connection
    driver = getattr(dbapi, "driver_connection", None)
    if isinstance(driver, psycopg.Connection):
        return driver
    raise TypeError(f"expected a psycopg or SQLAlchemy (psycopg 3) connection, got {type(conn).__name__}")


def system_entries(registry: Iterable[EventType] | None = None) -> list[EventType]:
    """The registry entries that belong in the system catalog (``in_system_catalog``), by event type."""
    if registry is None:
        from outbox.schemas import registry as default

        registry = default
    return sorted((e for e in registry if e.in_system_catalog), key=lambda e: e.event_type)


def catalog_row(entry: EventType) -> dict[str, Any]:
    """The ``system_event_catalog`` column values of one registry entry."""
    return {
        "event_type": entry.event_type,
        "name": entry.name,
        "description": entry.description,
        "category": entry.category,
        "payload_schema_ref": entry.ref,
        "kind": entry.kind,
        "catalog_only": entry.catalog_only,
        "catalog_only_reason": entry.catalog_only_reason if entry.catalog_only else None,
        "legacy_of": list(entry.legacy_of),
        "legacy_overlaps": list(entry.legacy_overlaps),
        "superseded_by": list(entry.superseded_by),
    }


def rows_json(registry: Iterable[EventType] | None = None, columns: tuple[str, ...] = sql.SYSTEM_COLUMNS) -> str:
    """The system catalog rows of ``registry`` (only ``columns``) as the JSON array the upsert reads."""
    rows = [catalog_row(e) for e in system_entries(registry)]
    return json.dumps([{c: r[c] for c in columns} for r in rows], ensure_ascii=False)


def upsert_sql(placeholder: str, columns: tuple[str, ...] = sql.SYSTEM_COLUMNS) -> str:
    """The upsert statement of ``columns`` with ``placeholder`` where the JSON rows go (``%(rows)s``, ``:rows``)."""
    return sql.upsert_system(columns, placeholder)


def sync_system_catalog(
    conn: Any, registry: Iterable[EventType] | None = None, *, columns: tuple[str, ...] = sql.SYSTEM_COLUMNS
) -> SyncReport:
    """Upsert every system-catalog entry of ``registry`` (``outbox.schemas.registry``) in the caller's transaction.

    Idempotent: unchanged rows are not written; ids and ``created_at`` are kept; ``updated_at`` moves only on change.
    Does not commit (psycopg): the caller's transaction decides. ``columns`` (``event_type`` first) is for
    migrations, which must write the columns of their own revision, not those of the latest code.
    """
    pg = driver_connection(conn)
    rows = [catalog_row(e) for e in system_entries(registry)]
    payload = json.dumps([{c: r[c] for c in columns} for r in rows], ensure_ascii=False)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(upsert_sql("%(rows)s", columns), {"rows": payload})
        returned = [(str(r[0]), bool(r[1])) for r in cur.fetchall()]
        cur.execute(sql.SYSTEM_EVENT_TYPES)
        present = {str(r[0]) for r in cur.fetchall()}
    wanted = {row["event_type"] for row in rows}
    inserted = sum(1 for _, ins in returned if ins)
    return SyncReport(
        inserted=inserted,
        updated=len(returned) - inserted,
        unchanged=len(rows) - len(returned),
        changed=tuple(sorted(t for t, _ in returned)),
        stale=tuple(sorted(present - wanted)),
    )
