"""Workflow triggers: what a tenant attaches to its event types.

An event *matches* a trigger when all of these hold:

* ``trigger.tenant_id`` is the event's tenant (a trigger never sees another tenant's events);
* ``trigger.event_type`` is the event's type and the trigger is ``enabled``;
* the payload satisfied its contract (invalid events start nothing);
* ``payload_filter`` is NULL, or is contained in the payload -- Postgres jsonb containment,
  ``payload @> payload_filter``: every key of the filter must be in the payload with an equal value; nested
  objects are compared the same way, recursively; a filter array must be contained in the payload's array
  (its elements appear there, in any order); scalars compare by JSON equality (``1`` is not ``"1"``).
  ``{"priority": "high"}`` matches ``{"priority": "high", "title": "x"}``; ``{"tags": ["vip"]}`` matches
  ``{"tags": ["new", "vip"]}``; ``{}`` matches every object.

A matching trigger whose ``payload_schema_ref`` is set and differs from the event's resolved schema ref
(tenant catalog, then system catalog) starts no run: the pair is recorded in ``workflow_trigger_skips`` with
the reason, so a contract change never feeds a workflow a payload shape it was not written for. A trigger
with ``payload_schema_ref`` NULL accepts whichever contract the catalog resolves.

Every matching trigger gets one ``workflow_run_requests`` row per event, written in the transaction that
ingests the event; ``UNIQUE (trigger_id, event_id)`` plus the event-level ``ON CONFLICT`` make it once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from catalog.sync import driver_connection

_COLS = "id, tenant_id, event_type, payload_filter, workflow_name, payload_schema_ref, enabled, created_at"


@dataclass(frozen=True)
class Trigger:
    """One ``workflow_triggers`` row."""

    id: uuid.UUID
    tenant_id: str
    event_type: str
    payload_filter: dict[str, Any] | None
    workflow_name: str
    payload_schema_ref: str | None
    enabled: bool
    created_at: datetime


def add_trigger(
    conn: Any,
    tenant_id: str,
    event_type: str,
    workflow_name: str,
    *,
    payload_filter: dict[str, Any] | None = None,
    payload_schema_ref: str | None = None,
    enabled: bool = True,
) -> uuid.UUID:
    """Attach a trigger (psycopg or SQLAlchemy connection; the caller commits). Returns its id."""
    if not tenant_id or not event_type or not workflow_name:
        raise ValueError("tenant_id, event_type and workflow_name must not be empty")
    if payload_filter is not None and not isinstance(payload_filter, dict):
        raise ValueError("payload_filter must be a JSON object (dict) or None")
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            "INSERT INTO workflow_triggers (tenant_id, event_type, payload_filter, workflow_name, payload_schema_ref,"
            " enabled) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (tenant_id, event_type, Jsonb(payload_filter) if payload_filter is not None else None, workflow_name,
             payload_schema_ref, enabled),
        )  # fmt: skip
        row = cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def set_enabled(conn: Any, trigger_id: uuid.UUID | str, enabled: bool) -> bool:
    """Enable or disable a trigger; whether it exists. The caller commits."""
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute("UPDATE workflow_triggers SET enabled = %s WHERE id = %s", (enabled, str(trigger_id)))
        return cur.rowcount > 0


def list_triggers(conn: Any, tenant_id: str | None = None) -> list[Trigger]:
    """Triggers (of one tenant, or all), oldest first."""
    pg = driver_connection(conn)
    where, params = ("WHERE tenant_id = %s", (tenant_id,)) if tenant_id else ("", ())
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(f"SELECT {_COLS} FROM workflow_triggers {where} ORDER BY created_at, id", params)
        return [Trigger(*r) for r in cur.fetchall()]
