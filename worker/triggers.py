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

The filter grammar (``check_filter`` / ``parse_filter``; ``add_trigger`` applies it): a JSON *object* whose
values are any JSON (objects, arrays, strings, numbers, true/false/null), with no duplicate keys, no
``NaN``/``Infinity`` and no ``\\u0000`` in any key or string (jsonb refuses them). A text filter that is not
JSON, or JSON that is not such an object, raises ``InvalidTriggerFilter`` (field ``payload_filter``).

An event type is accepted when the worker could resolve a contract for it for the trigger's tenant
(``outbox.worker.ingest.resolve_contract``: the tenant's catalog, the system catalog, then the schema registry);
otherwise ``UnknownTriggerEventType`` (field ``event_type``) -- such a trigger could never start a run.

Every matching trigger gets one ``workflow_run_requests`` row per event, written in the transaction that
ingests the event; ``UNIQUE (trigger_id, event_id)`` plus the event-level ``ON CONFLICT`` make it once.
A trigger with run requests cannot be removed (``TriggerInUse``: disable it); removing one deletes its skip
records.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from outbox.catalog.sync import driver_connection
from outbox.schemas.registry import Registry
from outbox.worker import sql
from outbox.worker.errors import (
    InvalidTrigger,
    InvalidTriggerFilter,
    TriggerInUse,
    TriggerNotFound,
    UnknownTriggerEventType,
)
from outbox.worker.ingest import Resolution, resolve_contract


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``outbox worker triggers list --json`` prints)."""
        return {
            "id": str(self.id),
            "tenant_id": self.tenant_id,
            "event_type": self.event_type,
            "payload_filter": self.payload_filter,
            "workflow_name": self.workflow_name,
            "payload_schema_ref": self.payload_schema_ref,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
        }


# ---- the filter grammar ------------------------------------------------------------------------------------


def _check_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTriggerFilter(f"{path}: {value} is not a JSON number (NaN/Infinity cannot be stored)")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidTriggerFilter(f"{path}: strings must not contain \\u0000 (jsonb refuses it)")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidTriggerFilter(f"{path}: key {k!r} is not a string")
            if "\x00" in k:
                raise InvalidTriggerFilter(f"{path}: keys must not contain \\u0000 (jsonb refuses it)")
            _check_value(v, f"{path}.{k}")
        return
    raise InvalidTriggerFilter(f"{path}: {type(value).__name__} is not a JSON value")


def check_filter(value: Any) -> dict[str, Any]:
    """``value`` if it is a valid trigger filter (a JSON object jsonb can hold), else ``InvalidTriggerFilter``."""
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list | tuple) else type(value).__name__
        raise InvalidTriggerFilter(f"must be a JSON object (matched by containment: payload @> filter), got {kind}")
    _check_value(value, "$")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise InvalidTriggerFilter(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise InvalidTriggerFilter(f"{name} is not JSON")


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter given as JSON text (CLI ``--filter``); ``InvalidTriggerFilter`` says what is wrong."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidTriggerFilter(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return check_filter(value)


# ---- validation ------------------------------------------------------------------------------------------


def _require(field: str, value: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidTrigger(field, "must not be empty")
    if "\x00" in value:
        raise InvalidTrigger(field, "must not contain NUL characters")
    return value


def check_event_type(conn: Any, tenant_id: str, event_type: str, registry: Registry | None = None) -> Resolution:
    """The contract the worker resolves for the tenant's event type; ``UnknownTriggerEventType`` if none."""
    if registry is None:
        from outbox.schemas import registry as default_registry

        registry = default_registry
    res = resolve_contract(conn, registry, tenant_id, event_type)
    if res.ref is None and res.schema is None:
        raise UnknownTriggerEventType(tenant_id, event_type)
    return res


def _trigger_id(trigger_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(trigger_id, uuid.UUID):
        return trigger_id
    try:
        return uuid.UUID(str(trigger_id).strip())
    except ValueError:
        raise TriggerNotFound(str(trigger_id)) from None


# ---- the operations --------------------------------------------------------------------------------------


def add_trigger(
    conn: Any,
    tenant_id: str,
    event_type: str,
    workflow_name: str,
    *,
    payload_filter: dict[str, Any] | str | None = None,
    payload_schema_ref: str | None = None,
    enabled: bool = True,
    registry: Registry | None = None,
) -> uuid.UUID:
    """Attach a validated trigger (psycopg or SQLAlchemy connection; the caller commits). Returns its id."""
    return create_trigger(
        conn, tenant_id, event_type, workflow_name, payload_filter=payload_filter,
        payload_schema_ref=payload_schema_ref, enabled=enabled, registry=registry,
    ).id  # fmt: skip


def create_trigger(
    conn: Any,
    tenant_id: str,
    event_type: str,
    workflow_name: str,
    *,
    payload_filter: dict[str, Any] | str | None = None,
    payload_schema_ref: str | None = None,
    enabled: bool = True,
    registry: Registry | None = None,
) -> Trigger:
    """Like ``add_trigger`` but returns the stored row. Typed errors (``InvalidTrigger`` family) name the field."""
    _require("tenant_id", tenant_id)
    _require("event_type", event_type)
    _require("workflow_name", workflow_name)
    if payload_schema_ref is not None:
        _require("payload_schema_ref", payload_schema_ref)
    flt = parse_filter(payload_filter) if isinstance(payload_filter, str) else payload_filter
    if flt is not None:
        check_filter(flt)
    check_event_type(conn, tenant_id, event_type, registry)
    pg = driver_connection(conn)
    params = {
        "tenant_id": tenant_id,
        "event_type": event_type,
        "payload_filter": Jsonb(flt) if flt is not None else None,
        "workflow_name": workflow_name,
        "payload_schema_ref": payload_schema_ref,
        "enabled": enabled,
    }
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.TRIGGER_INSERT, params)
        row = cur.fetchone()
    assert row is not None
    return Trigger(*row)


def get_trigger(conn: Any, trigger_id: uuid.UUID | str) -> Trigger:
    """One trigger by id; ``TriggerNotFound`` if there is none."""
    tid = _trigger_id(trigger_id)
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.TRIGGER_GET, {"id": tid})
        row = cur.fetchone()
    if row is None:
        raise TriggerNotFound(str(trigger_id))
    return Trigger(*row)


def set_enabled(conn: Any, trigger_id: uuid.UUID | str, enabled: bool) -> bool:
    """Enable or disable a trigger; whether it exists. The caller commits."""
    try:
        _set(conn, trigger_id, enabled)
    except TriggerNotFound:
        return False
    return True


def _set(conn: Any, trigger_id: uuid.UUID | str, enabled: bool) -> Trigger:
    tid = _trigger_id(trigger_id)
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.TRIGGER_SET_ENABLED, {"id": tid, "enabled": enabled})
        row = cur.fetchone()
    if row is None:
        raise TriggerNotFound(str(trigger_id))
    return Trigger(*row)


def enable_trigger(conn: Any, trigger_id: uuid.UUID | str) -> Trigger:
    """Enable a trigger (it matches events ingested from the commit on); ``TriggerNotFound``. The caller commits."""
    return _set(conn, trigger_id, True)


def disable_trigger(conn: Any, trigger_id: uuid.UUID | str) -> Trigger:
    """Disable a trigger (no run from events ingested after the commit); ``TriggerNotFound``. The caller commits."""
    return _set(conn, trigger_id, False)


def remove_trigger(conn: Any, trigger_id: uuid.UUID | str) -> Trigger:
    """Delete a trigger without run requests (and its skip records); ``TriggerNotFound``, ``TriggerInUse``."""
    tid = _trigger_id(trigger_id)
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.TRIGGER_LOCK, {"id": tid})
        row = cur.fetchone()
        if row is None:
            raise TriggerNotFound(str(trigger_id))
        cur.execute(sql.TRIGGER_REQUESTS, {"id": tid})
        counted = cur.fetchone()
        requests = int(counted[0]) if counted else 0
        if requests:
            raise TriggerInUse(str(tid), requests)
        cur.execute(sql.TRIGGER_DELETE_SKIPS, {"id": tid})
        cur.execute(sql.TRIGGER_DELETE, {"id": tid})
    return Trigger(*row)


def list_triggers(conn: Any, tenant_id: str | None = None) -> list[Trigger]:
    """Triggers (of one tenant, or all), oldest first."""
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.TRIGGER_LIST, {"tenant_id": tenant_id or None})
        return [Trigger(*r) for r in cur.fetchall()]
