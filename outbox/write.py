"""The write API: ``record`` an event inside the caller's transaction. Never commits."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, LiteralString

import uuid_utils.compat as uuid_utils
from pydantic import BaseModel

from outbox import schemas, sql
from outbox.errors import (
    DuplicateEvent,
    FieldError,
    InvalidArgument,
    NonUtcTimestamp,
    NotInTransaction,
    PayloadTooLarge,
    RecordError,
    TenantMismatch,
    UnsupportedConnection,
)
from outbox.wire import iso_utc

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from typing_extensions import TypeIs

ActorType = Literal["USER", "CONTACT", "SYSTEM"]
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
_limits = {"max_payload_bytes": DEFAULT_MAX_PAYLOAD_BYTES}


def configure(*, max_payload_bytes: int | None = None) -> None:
    """Set process-wide write-side limits (default payload limit: 256 KiB)."""
    if max_payload_bytes is not None:
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        _limits["max_payload_bytes"] = max_payload_bytes


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performed the action; fills ``actorUserId``/``actorContactId``/``actorType`` when absent."""

    user_id: str | uuid.UUID | None = None
    contact_id: str | uuid.UUID | None = None
    type: ActorType | None = None

    @classmethod
    def system(cls) -> Actor:
        """An action performed by the platform itself."""
        return cls(type="SYSTEM")


@dataclass(frozen=True, slots=True)
class Event:
    """One event for ``record_many`` (same meaning as ``record``'s arguments)."""

    event_type: str
    payload: Mapping[str, Any] | BaseModel
    tenant_id: str | uuid.UUID | None = None
    actor: Actor | str | uuid.UUID | None = None
    aggregate: str | None = None
    correlation: str | None = None
    execution_id: str | None = None
    event_name: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    event_id: uuid.UUID | str | None = None
    occurred_at: datetime | None = None


class _NonUtc(Exception):
    pass


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        off = o.utcoffset()
        if off is None or off != timedelta(0):
            raise _NonUtc(o)
        return o.replace(tzinfo=None).isoformat() + "Z"
    if isinstance(o, uuid.UUID | Decimal):
        return str(o)
    if isinstance(o, date):
        return o.isoformat()
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json", by_alias=True, exclude_unset=True)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


# Built once: json.dumps with any non-default option constructs a new encoder on every call.
_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _is_bad(value: Any) -> bool:
    if isinstance(value, datetime):
        off = value.utcoffset()
        return off is None or off != timedelta(0)
    return False


def _find(value: Any, bad: Any, path: str = "") -> str | None:
    """Dot path of the first value for which ``bad(value)`` holds, or None."""
    if bad(value):
        return path
    items: Any = (
        value.items() if isinstance(value, Mapping) else (enumerate(value) if isinstance(value, list | tuple) else ())
    )
    for k, v in items:
        found = _find(v, bad, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


@cache
def _declared(event_type: str) -> frozenset[str]:
    entry = schemas.registry.event_type(event_type)
    keys: set[str] = set()
    for model in (entry.model, entry.legacy_model):
        if model is not None:
            keys.update(f.alias or n for n, f in model.model_fields.items())
    return frozenset(keys)


def _text(event_type: str, name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | uuid.UUID | int):
        s = str(value)
        if s:
            return s
    raise InvalidArgument(event_type, name, f"must be a non-empty string, got {value!r}")


def _event_id(event_type: str, value: uuid.UUID | str | None) -> uuid.UUID:
    if value is None:
        return uuid_utils.uuid7()
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise InvalidArgument(event_type, "event_id", f"must be a UUID, got {value!r}") from None


def _fill_actor(event_type: str, data: dict[str, Any], actor: Actor | str | uuid.UUID | None) -> None:
    if actor is None:
        return
    if not isinstance(actor, Actor):
        actor = Actor(user_id=actor, type="USER")
    declared = _declared(event_type)
    wanted: dict[str, Any] = {}
    if actor.user_id is not None:
        wanted["actorUserId" if "actorUserId" in declared else "userId"] = str(actor.user_id)
    if actor.contact_id is not None:
        wanted["actorContactId"] = str(actor.contact_id)
    kind = actor.type or ("USER" if actor.user_id else "CONTACT" if actor.contact_id else None)
    if kind is not None and "actorType" in declared:
        wanted["actorType"] = kind
    for key, val in wanted.items():
        if key not in declared:
            continue
        have = data.get(key)
        if have is None:
            data[key] = val
        elif str(have) != val:
            raise InvalidArgument(event_type, key, f"payload has {have!r} but actor gives {val!r}")


def prepare(
    event_type: str,
    payload: Mapping[str, Any] | BaseModel,
    *,
    tenant_id: str | uuid.UUID | None = None,
    actor: Actor | str | uuid.UUID | None = None,
    aggregate: str | None = None,
    correlation: str | None = None,
    execution_id: str | None = None,
    event_name: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    event_id: uuid.UUID | str | None = None,
    occurred_at: datetime | None = None,
) -> tuple[Any, ...]:
    """Validate one event and return the INSERT parameters; raises a ``RecordError`` subclass. Pure."""
    entry = schemas.registry.event_type(event_type)  # UnknownEventType
    if isinstance(payload, BaseModel):
        data = payload.model_dump(mode="json", by_alias=True, exclude_unset=True)
    elif isinstance(payload, Mapping):
        data = dict(payload)
    else:
        raise InvalidArgument(event_type, "payload", f"must be a mapping or payload model, got {type(payload)}")

    tenant = _text(event_type, "tenant_id", tenant_id)
    have_tenant = data.get("tenantId")
    if tenant is not None:
        if have_tenant is None:
            data["tenantId"] = tenant
        elif str(have_tenant) != tenant:
            raise TenantMismatch(event_type, str(have_tenant), tenant)

    declared = _declared(event_type)
    if occurred_at is not None:
        if not isinstance(occurred_at, datetime):
            raise InvalidArgument(
                event_type, "occurred_at", f"must be a timezone-aware UTC datetime, got {occurred_at!r}"
            )
        off = occurred_at.utcoffset()
        if off is None or off != timedelta(0):
            raise NonUtcTimestamp(event_type, entry.ref, [FieldError("occurred_at", "must be timezone-aware UTC")])
    # occurred_at only fills a missing occurredAt; the payload's own value wins
    if ("occurredAt" in declared or "occurredAt" in data) and data.get("occurredAt") is None:
        data["occurredAt"] = iso_utc(occurred_at or datetime.now(UTC))
    _fill_actor(event_type, data, actor)

    try:
        text = _ENCODER.encode(data)
    except _NonUtc:
        path = _find(data, _is_bad) or ""
        raise NonUtcTimestamp(
            event_type, entry.ref, [FieldError(path, "datetime must be timezone-aware UTC")]
        ) from None
    except ValueError as exc:  # NaN / Infinity: JSON (and jsonb) cannot carry them
        where = _find(data, lambda v: (isinstance(v, float) and v != v) or v in (float("inf"), float("-inf")))
        raise InvalidArgument(event_type, where or "payload", f"not representable in JSON: {exc}") from None
    except TypeError as exc:
        raise InvalidArgument(event_type, "payload", f"not JSON-serialisable: {exc}") from None
    if "\\u0000" in text:  # jsonb cannot store U+0000 (json.dumps escapes it as \u0000)
        where = _find(data, _has_nul) or ("<key>" if any(_has_nul(k) for k in data) else None)
        if where is not None:
            raise InvalidArgument(event_type, where, "contains U+0000 (NUL), which Postgres jsonb cannot store")
    limit = _limits["max_payload_bytes"]
    if len(text) * 4 > limit:
        size = len(text.encode())
        if size > limit:
            raise PayloadTooLarge(event_type, size, limit)

    model = schemas.registry.validate_json(event_type, text)  # PayloadValidationError
    tenant_final = str(getattr(model, "tenantId", "") or "")
    if not tenant_final:
        raise RecordError(event_type, "tenantId", "required field is missing")
    occurred = getattr(model, "occurredAt", None)
    if occurred:
        occurred_ts: datetime = datetime.fromisoformat(occurred[:-1] + "+00:00")
    else:
        occurred_ts = occurred_at or datetime.now(UTC)
    return (
        _event_id(event_type, event_id),
        tenant_final,
        event_type,
        entry.ref,
        text,
        occurred_ts,
        _text(event_type, "aggregate", aggregate),
        _text(event_type, "execution_id", execution_id),
        _text(event_type, "event_name", event_name),
        _text(event_type, "from_state", from_state),
        _text(event_type, "to_state", to_state),
        _text(event_type, "correlation", correlation),
    )


def _many_params(events: Sequence[Event]) -> tuple[list[Any], list[uuid.UUID]]:
    rows = [
        prepare(
            e.event_type,
            e.payload,
            tenant_id=e.tenant_id,
            actor=e.actor,
            aggregate=e.aggregate,
            correlation=e.correlation,
            execution_id=e.execution_id,
            event_name=e.event_name,
            from_state=e.from_state,
            to_state=e.to_state,
            event_id=e.event_id,
            occurred_at=e.occurred_at,
        )
        for e in events
    ]
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DuplicateEvent(str(dup))
    columns = [list(col) for col in zip(*rows, strict=True)]
    return columns, ids


# ---- connection plumbing -------------------------------------------------------------------------
# The drivers are never imported here: a connection object can only be an instance of a class whose
# module is already loaded, so the checks look in sys.modules (no psycopg/SQLAlchemy cost at import,
# and no greenlet needed unless the caller itself uses SQLAlchemy's asyncio extension).


def _instance(obj: Any, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    return mod is not None and isinstance(obj, getattr(mod, name))


def _is_psycopg(conn: Any) -> TypeIs[psycopg.Connection[Any]]:
    return _instance(conn, "psycopg", "Connection")


def _is_apsycopg(conn: Any) -> TypeIs[psycopg.AsyncConnection[Any]]:
    return _instance(conn, "psycopg", "AsyncConnection")


def _in_transaction(conn: Any) -> Any:
    """``conn`` (a psycopg connection) unless it is in autocommit mode outside a transaction."""
    if conn.autocommit and conn.info.transaction_status == sys.modules["psycopg"].pq.TransactionStatus.IDLE:
        raise NotInTransaction()
    return conn


def _sync_driver(conn: Any) -> psycopg.Connection[Any] | SAConnection:
    """The psycopg connection that carries the caller's transaction (or an SA connection to go through)."""
    if _is_psycopg(conn):
        return _in_transaction(conn)
    if _instance(conn, "sqlalchemy.orm", "Session"):
        conn = conn.connection()  # joins (or begins) the session's transaction
    if _instance(conn, "sqlalchemy.engine", "Connection"):
        if not conn.in_transaction():
            conn.begin()
        driver = conn.connection.driver_connection
        if _is_psycopg(driver):
            return _in_transaction(driver)
        return conn  # another DBAPI driver: go through SQLAlchemy
    raise UnsupportedConnection(
        f"record() needs a SQLAlchemy Connection/Session or a psycopg.Connection, got {type(conn).__name__}"
    )


async def _async_driver(conn: Any) -> psycopg.AsyncConnection[Any] | SAAsyncConnection:
    if _is_apsycopg(conn):
        return _in_transaction(conn)
    if _instance(conn, "sqlalchemy.ext.asyncio", "AsyncSession"):
        conn = await conn.connection()
    if _instance(conn, "sqlalchemy.ext.asyncio", "AsyncConnection"):
        if not conn.in_transaction():
            await conn.begin()
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if _is_apsycopg(driver):
            return _in_transaction(driver)
        return conn
    raise UnsupportedConnection(
        "arecord() needs a SQLAlchemy AsyncConnection/AsyncSession or a psycopg.AsyncConnection, "
        f"got {type(conn).__name__}"
    )


# ---- one body for sync and async (sans-IO) --------------------------------------------------------
# A write is a generator: it yields (statement, params, fetch), receives the statement's first row
# (None when fetch is false) and returns the result. _run and _arun only execute. ``fetch`` is explicit
# because in psycopg's pipeline mode a cursor does not know whether rows will come until it fetches.

Row = tuple[Any, ...] | None
Write = Generator[tuple[LiteralString, Sequence[Any], bool], Row, Any]


def _write_one(params: tuple[Any, ...]) -> Write:
    row = yield sql.RECORD_ONE, params, True
    if not row or row[0] != 1:
        raise DuplicateEvent(str(params[0]))
    return params[0]


def _write_many(columns: list[Any], ids: list[uuid.UUID]) -> Write:
    row = yield sql.RECORD_MANY, tuple(columns), True
    inserted = list(row[0]) if row else []
    if len(inserted) != len(ids):
        yield sql.UNDO_MANY, (inserted,), False  # keep the caller's transaction free of a partial batch
        dup = next(i for i in ids if i not in set(inserted))
        raise DuplicateEvent(str(dup))
    return ids


def _run(conn: Any, write: Write) -> Any:
    """Execute a write on a sync connection."""
    target = _sync_driver(conn)
    if _is_psycopg(target):
        from psycopg.rows import tuple_row  # already loaded with psycopg

        with target.cursor(row_factory=tuple_row) as cur:
            try:
                statement, params, fetch = next(write)
                while True:
                    cur.execute(statement, params)
                    statement, params, fetch = write.send(cur.fetchone() if fetch else None)
            except StopIteration as done:
                return done.value
    try:
        statement, params, fetch = next(write)
        while True:
            result = target.exec_driver_sql(statement, tuple(params))
            statement, params, fetch = write.send(result.fetchone() if fetch else None)
    except StopIteration as done:
        return done.value


async def _arun(conn: Any, write: Write) -> Any:
    """Execute a write on an async connection."""
    target = await _async_driver(conn)
    if _is_apsycopg(target):
        from psycopg.rows import tuple_row

        async with target.cursor(row_factory=tuple_row) as cur:
            try:
                statement, params, fetch = next(write)
                while True:
                    await cur.execute(statement, params)
                    statement, params, fetch = write.send(await cur.fetchone() if fetch else None)
            except StopIteration as done:
                return done.value
    try:
        statement, params, fetch = next(write)
        while True:
            result = await target.exec_driver_sql(statement, tuple(params))
            statement, params, fetch = write.send(result.fetchone() if fetch else None)
    except StopIteration as done:
        return done.value


def record(
    conn: Any,
    event_type: str,
    payload: Mapping[str, Any] | BaseModel,
    *,
    tenant_id: str | uuid.UUID | None = None,
    actor: Actor | str | uuid.UUID | None = None,
    aggregate: str | None = None,
    correlation: str | None = None,
    execution_id: str | None = None,
    event_name: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    event_id: uuid.UUID | str | None = None,
    occurred_at: datetime | None = None,
) -> uuid.UUID:
    """Write one event in the caller's transaction and return its event id. Validates first; never commits."""
    params = prepare(
        event_type,
        payload,
        tenant_id=tenant_id,
        actor=actor,
        aggregate=aggregate,
        correlation=correlation,
        execution_id=execution_id,
        event_name=event_name,
        from_state=from_state,
        to_state=to_state,
        event_id=event_id,
        occurred_at=occurred_at,
    )
    return _run(conn, _write_one(params))


def record_many(conn: Any, events: Sequence[Event]) -> list[uuid.UUID]:
    """Write many events in one statement in the caller's transaction; all or none. Never commits."""
    if not events:
        return []
    return _run(conn, _write_many(*_many_params(events)))


async def arecord(
    conn: Any,
    event_type: str,
    payload: Mapping[str, Any] | BaseModel,
    *,
    tenant_id: str | uuid.UUID | None = None,
    actor: Actor | str | uuid.UUID | None = None,
    aggregate: str | None = None,
    correlation: str | None = None,
    execution_id: str | None = None,
    event_name: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    event_id: uuid.UUID | str | None = None,
    occurred_at: datetime | None = None,
) -> uuid.UUID:
    """Async ``record``: one event in the caller's transaction. Never commits."""
    params = prepare(
        event_type,
        payload,
        tenant_id=tenant_id,
        actor=actor,
        aggregate=aggregate,
        correlation=correlation,
        execution_id=execution_id,
        event_name=event_name,
        from_state=from_state,
        to_state=to_state,
        event_id=event_id,
        occurred_at=occurred_at,
    )
    return await _arun(conn, _write_one(params))


async def arecord_many(conn: Any, events: Sequence[Event]) -> list[uuid.UUID]:
    """Async ``record_many``. Never commits."""
    if not events:
        return []
    write = _write_many(*_many_params(events))  # validate before touching the connection
    return await _arun(conn, write)


def record_typed(conn: Any, payload: BaseModel, **kwargs: Any) -> uuid.UUID:
    """``record`` a payload model instance; the event type comes from the model's registry entry."""
    return record(conn, event_type_of(payload), payload, **kwargs)


async def arecord_typed(conn: Any, payload: BaseModel, **kwargs: Any) -> uuid.UUID:
    """Async ``record_typed``."""
    return await arecord(conn, event_type_of(payload), payload, **kwargs)


@cache
def _model_owner(model: type[BaseModel]) -> str:
    entry = schemas.registry.entry_of_model(model)
    if entry is None:
        raise InvalidArgument(model.__name__, "payload", "model is not a registered payload contract")
    return entry.event_type


def event_type_of(payload: BaseModel) -> str:
    """The event type a payload model instance belongs to."""
    return _model_owner(type(payload))
