"""Shared pieces of the reference domain: the action context, errors, change sets, event emission."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import MetaData, Table, func
from sqlalchemy.engine import Connection

import outbox
from outbox.errors import OutboxError
from outbox.wire import iso_utc

metadata = MetaData()

# event type -> the actions that emit it ("module.function"); filled by @emits, read by the coverage test
EMITTERS: dict[str, list[str]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def emits(*event_types: str) -> Callable[[F], F]:
    """Declare which event types an action records (checked by the coverage test)."""

    def deco(fn: F) -> F:
        for et in event_types:
            EMITTERS.setdefault(et, []).append(f"{fn.__module__}.{fn.__qualname__}")
        return fn

    return deco


class DomainError(OutboxError):
    """A business action refused its input; nothing was changed or emitted."""


class NotFound(DomainError):
    """The entity does not exist (for this tenant)."""

    def __init__(self, kind: str, entity_id: Any) -> None:
        super().__init__(f"{kind} {entity_id} not found")


class WrongTenant(DomainError):
    """The entity belongs to another tenant."""

    def __init__(self, kind: str, entity_id: Any) -> None:
        super().__init__(f"{kind} {entity_id} belongs to another tenant")


class InvalidTransition(DomainError):
    """The requested state change is not allowed from the current state."""

    def __init__(self, kind: str, current: Any, wanted: Any) -> None:
        super().__init__(f"{kind} cannot go from {current!r} to {wanted!r}")


class InvalidInput(DomainError):
    """An argument of the action is malformed."""


@dataclass
class Ctx:
    """Who acts, for which tenant, inside which transaction (a SQLAlchemy Connection; the caller commits)."""

    conn: Connection
    tenant_id: str
    user_id: str | None = None
    contact_id: str | None = None
    emitted: list[tuple[str, uuid.UUID]] = field(default_factory=list)

    @property
    def actor(self) -> outbox.Actor:
        """The outbox actor of this context."""
        if self.user_id:
            return outbox.Actor(user_id=self.user_id, type="USER")
        if self.contact_id:
            return outbox.Actor(contact_id=self.contact_id, type="CONTACT")
        return outbox.Actor.system()


def new_id() -> str:
    """A fresh entity id."""
    return str(uuid.uuid4())


def uuid_arg(name: str, value: Any) -> str:
    """``value`` as a canonical UUID string; ``InvalidInput`` naming the argument otherwise."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidInput(f"{name} must be a UUID, got {value!r}") from None


def opt_uuid_arg(name: str, value: Any) -> str | None:
    """``uuid_arg`` that lets ``None`` through."""
    return None if value is None else uuid_arg(name, value)


def text_arg(name: str, value: Any) -> str:
    """``value`` stripped; ``InvalidInput`` naming the argument unless it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    return value.strip()


def opt_text_arg(name: str, value: Any) -> str | None:
    """``text_arg`` that lets ``None`` through."""
    return None if value is None else text_arg(name, value)


def aware_arg(name: str, value: Any) -> datetime:
    """``value`` if it is a timezone-aware datetime; ``InvalidInput`` naming the argument otherwise."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInput(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def opt_aware_arg(name: str, value: Any) -> datetime | None:
    """``aware_arg`` that lets ``None`` through."""
    return None if value is None else aware_arg(name, value)


def when_arg(name: str, value: Any) -> datetime:
    """``aware_arg``, or the current time when ``value`` is ``None``."""
    return now() if value is None else aware_arg(name, value)


def opt_str(value: Any) -> str | None:
    """``str(value)``, ``None`` kept (uuids and ids as events show them)."""
    return None if value is None else str(value)


#: A plausible e-mail address (one @, a dot in the domain, no spaces).
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def legacy_tenant(ctx: Ctx, what: str = "legacy bus event") -> None:
    """Refuse a non-UUID tenant up front (``what`` names the action): legacy bus payloads need a UUID ``tenantId``."""
    try:
        uuid.UUID(ctx.tenant_id)
    except ValueError:
        raise InvalidInput(f"{what}: tenant {ctx.tenant_id!r} is not a uuid, which legacy bus payloads need") from None


def legacy_user(ctx: Ctx, what: str) -> str:
    """The acting user for a legacy bus event (those payloads need a uuid tenant and ``userId``)."""
    legacy_tenant(ctx, what)
    if not ctx.user_id:
        raise InvalidInput(f"{what} needs an acting user: the legacy event carries its userId")
    return ctx.user_id


def update_row(ctx: Ctx, table: Table, row: Mapping[str, Any], **values: Any) -> None:
    """Update an entity's row (by ``row["id"]``) with ``values`` and ``updated_at = now()``."""
    ctx.conn.execute(table.update().where(table.c.id == row["id"]).values(**values, updated_at=func.now()))


def now() -> datetime:
    """Current time, UTC."""
    return datetime.now(UTC)


def iso(ts: datetime | None = None) -> str:
    """ISO-8601 UTC with ``Z`` (milliseconds)."""
    return iso_utc(ts or now())


def emit(
    ctx: Ctx,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    aggregate: str,
    from_state: str | None = None,
    to_state: str | None = None,
    actor: bool = True,
) -> uuid.UUID:
    """Record one event of this action in the caller's transaction (tenant and actor filled)."""
    eid = outbox.record(
        ctx.conn,
        event_type,
        {k: v for k, v in payload.items() if v is not None},
        tenant_id=ctx.tenant_id,
        actor=ctx.actor if actor else None,
        aggregate=aggregate,
        from_state=from_state,
        to_state=to_state,
    )
    ctx.emitted.append((event_type, eid))
    return eid


def diff(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> tuple[list[str], dict[str, Any]]:
    """``updatedFields`` (dot paths) and ``changes`` ({path: {previous, new}}) between two states."""
    fields: list[str] = []
    changes: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            f, c = diff(old, new, path + ".")
            fields += f
            changes.update(c)
        elif old != new:
            fields.append(path)
            # an empty side is left out: the contracts allow absent previous/new, not null
            changes[path] = {k: _json(v) for k, v in (("previous", old), ("new", new)) if v is not None}
    return fields, changes


def _json(v: Any) -> Any:
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def fetch(ctx: Ctx, table: Table, kind: str, entity_id: Any, *, for_update: bool = True) -> dict[str, Any]:
    """The row of an entity of this tenant (locked for update); ``NotFound``/``WrongTenant`` otherwise."""
    try:
        key = uuid.UUID(str(entity_id))
    except ValueError:
        raise NotFound(kind, entity_id) from None
    stmt = table.select().where(table.c.id == key)
    if for_update:
        stmt = stmt.with_for_update()
    row = ctx.conn.execute(stmt).mappings().first()
    if row is None:
        raise NotFound(kind, entity_id)
    if row["tenant_id"] != ctx.tenant_id:
        raise WrongTenant(kind, entity_id)
    return dict(row)
