"""Custom events: a tenant defines its own event names and emits them with free-form data (reference actions).

``emit_custom_event`` records the occurrence and emits CUSTOM_EVENT when the tenant has defined the name, UNKNOWN
(the catch-all) when it has not. Both are legacy bus types with a loose payload: ``eventName``, ``userId`` (the
acting user, filled by the outbox), ``customEventId`` and the caller's keys. They need a UUID tenant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, String, Table, Text, UniqueConstraint, Uuid, select

from domain.base import Ctx, InvalidInput, emit, emits, iso, legacy_tenant, metadata, new_id, now

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,99}$")
RESERVED = frozenset(
    {
        "tenantId",
        "occurredAt",
        "userId",
        "eventName",
        "customEventId",
        "recordedAt",
        "actorUserId",
        "actorContactId",
        "actorType",
    }
)

custom_event_types = Table(
    "ref_custom_event_types",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("name", String, nullable=False),
    Column("description", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "name"),
)

custom_event_log = Table(
    "ref_custom_event_log",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", String, nullable=False),
    Column("known", Boolean, nullable=False),
    Column("data", JSON, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)


def _name(event_name: Any) -> str:
    if not isinstance(event_name, str) or not NAME_RE.match(event_name):
        raise InvalidInput(
            f"event name must be 1-100 chars of letters, digits, _ . : - (letter first), got {event_name!r}"
        )
    return event_name


def _defined(ctx: Ctx, name: str) -> bool:
    stmt = select(custom_event_types.c.id).where(
        custom_event_types.c.tenant_id == ctx.tenant_id, custom_event_types.c.name == name
    )
    return ctx.conn.execute(stmt).first() is not None


@emits()
def define_custom_event(ctx: Ctx, event_name: str, *, description: str | None = None) -> str:
    """Define a custom event name for this tenant (InvalidInput if already defined); emits nothing."""
    name = _name(event_name)
    if _defined(ctx, name):
        raise InvalidInput(f"custom event {name!r} is already defined")
    did = new_id()
    ctx.conn.execute(
        custom_event_types.insert().values(
            id=did, tenant_id=ctx.tenant_id, name=name, description=description, created_at=now()
        )
    )
    return did


@emits("CUSTOM_EVENT", "UNKNOWN")
def emit_custom_event(ctx: Ctx, event_name: str, data: Mapping[str, Any] | None = None) -> str:
    """Record a custom event with JSON data; emits CUSTOM_EVENT if the tenant defined the name, else UNKNOWN."""
    name = _name(event_name)
    data = dict(data or {})
    if not all(isinstance(k, str) and k for k in data):
        raise InvalidInput("data keys must be non-empty strings")
    clash = sorted(RESERVED & set(data))
    if clash:
        raise InvalidInput(f"data must not set reserved keys {clash}")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"data must be plain JSON: {exc}") from None
    legacy_tenant(ctx)
    known = _defined(ctx, name)
    lid, at = new_id(), now()
    ctx.conn.execute(
        custom_event_log.insert().values(
            id=lid, tenant_id=ctx.tenant_id, name=name, known=known, data=data, recorded_at=at
        )
    )
    emit(ctx, "CUSTOM_EVENT" if known else "UNKNOWN",
         {**data, "eventName": name, "customEventId": lid, "recordedAt": iso(at)},
         aggregate=f"custom_event:{name}")  # fmt: skip
    return lid
