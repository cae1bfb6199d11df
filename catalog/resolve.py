"""Which payload contract applies to a tenant's event type: the tenant's catalog first, then the system catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from outbox.catalog import sql
from outbox.catalog.sync import driver_connection


class EventTypeNotInCatalog(LookupError):
    """Neither the tenant's catalog nor the system catalog has the event type."""

    def __init__(self, tenant_id: str, event_type: str) -> None:
        self.tenant_id = tenant_id
        self.event_type = event_type
        super().__init__(f"{event_type}: not in the event catalog of tenant {tenant_id!r} nor the system catalog")


@dataclass(frozen=True)
class Resolved:
    """The contract of an event type for a tenant: a registry ``ref`` or an inline JSON ``schema`` (one is set)."""

    event_type: str
    source: Literal["tenant", "system"]
    name: str
    category: str | None
    ref: str | None = None
    schema: dict[str, Any] | None = None

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema itself: the inline schema, or the registry's schema of ``ref`` (``KeyError`` if unknown)."""
        if self.schema is not None:
            return self.schema
        assert self.ref is not None
        from outbox.schemas import registry

        return registry.json_schema(self.ref)


def resolve_schema(conn: Any, tenant_id: str, event_type: str) -> Resolved:
    """The tenant's entry for ``event_type``, else the system catalog's; ``EventTypeNotInCatalog`` if neither."""
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RESOLVE, {"tenant_id": tenant_id, "event_type": event_type})
        row = cur.fetchone()
    if row is None:
        raise EventTypeNotInCatalog(tenant_id, event_type)
    source, name, category, ref, schema = row
    return Resolved(event_type=event_type, source=source, name=name, category=category, ref=ref, schema=schema)


def register_tenant_event(
    conn: Any,
    tenant_id: str,
    event_type: str,
    *,
    name: str,
    ref: str | None = None,
    schema: dict[str, Any] | None = None,
    description: str = "",
    category: str | None = None,
) -> str:
    """Add or replace a tenant's entry (exactly one of ``ref`` / inline ``schema``); returns its id. No commit."""
    if (ref is None) == (schema is None):
        raise ValueError("give exactly one of ref= (a payload schema ref) or schema= (an inline JSON Schema)")
    if schema is not None and not isinstance(schema, dict):
        raise ValueError("schema= must be a JSON Schema object (a dict)")
    if ref is not None and not ref.strip():
        raise ValueError("ref= must not be empty")
    if not tenant_id or not event_type or not name:
        raise ValueError("tenant_id, event_type and name must not be empty")
    pg = driver_connection(conn)
    params = {
        "tenant_id": tenant_id,
        "event_type": event_type,
        "name": name,
        "description": description,
        "category": category,
        "ref": ref,
        "schema": Jsonb(schema) if schema is not None else None,
    }
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.REGISTER_TENANT, params)
        row = cur.fetchone()
    assert row is not None
    return str(row[0])


def unregister_tenant_event(conn: Any, tenant_id: str, event_type: str) -> bool:
    """Remove a tenant's catalog entry (the system entry, if any, applies again); whether one was removed. No commit."""
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.UNREGISTER_TENANT, {"tenant_id": tenant_id, "event_type": event_type})
        return cur.rowcount > 0
