"""The write API: ``record`` an event inside the caller's transaction. Never commits."""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, LiteralString, TypedDict, Unpack

import uuid_utils.compat as uuid_utils
from pydantic import BaseModel

from outbox import schemas, sql, walmsg, wire
from outbox.errors import (
    CaptureUnavailable,
    ConfigurationError,
    DuplicateEvent,
    FieldError,
    InvalidArgument,
    NestingTooDeep,
    NonUtcTimestamp,
    NotInTransaction,
    RecordError,
    TenantMismatch,
    UnrepresentableValue,
    UnsupportedConnection,
)

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from typing_extensions import TypeIs

ActorType = Literal["USER", "CONTACT", "SYSTEM"]
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_MAX_DEPTH = 64
# The contract validator (pydantic-core's JSON parser) stops at 200 levels; stay well below it.
MAX_DEPTH_LIMIT = 128
# Text arguments (tenant, aggregate, states, names, correlation): long enough for any key, short enough
# for a btree index entry on the reader's side (Postgres refuses index rows over ~2.7 kB).
MAX_TEXT_BYTES = 1024
_limits = {"max_payload_bytes": DEFAULT_MAX_PAYLOAD_BYTES, "max_depth": DEFAULT_MAX_DEPTH}
Capture = Literal["poll", "wal"]
# How events reach the relay: None until configure() or the first write reads OUTBOX_CAPTURE / OUTBOX_WAL_SLOT.
_capture: dict[str, str] = {}


def _capture_mode() -> tuple[str, str]:
    """(mode, slot): configure()'s, else OUTBOX_CAPTURE (poll|wal, default poll) and OUTBOX_WAL_SLOT (outbox)."""
    if not _capture:
        mode = os.environ.get("OUTBOX_CAPTURE", "poll").strip().lower() or "poll"
        if mode not in ("poll", "wal"):
            raise ConfigurationError("OUTBOX_CAPTURE", f"must be 'poll' or 'wal', got {mode!r}")
        _capture.update(mode=mode, slot=os.environ.get("OUTBOX_WAL_SLOT", "").strip() or walmsg.PREFIX)
    return _capture["mode"], _capture["slot"]


def configure(
    *,
    max_payload_bytes: int | None = None,
    max_depth: int | None = None,
    capture: Capture | None = None,
    wal_slot: str | None = None,
) -> None:
    """Set process-wide write-side options: limits (payload 256 KiB of wire JSON, nesting 64 levels) and the
    capture mode (``poll``: an outbox_events row; ``wal``: a logical decoding message for slot ``wal_slot``)."""
    if capture is not None and capture not in ("poll", "wal"):
        raise ValueError("capture must be 'poll' or 'wal'")
    if wal_slot is not None and not wal_slot:
        raise ValueError("wal_slot must not be empty")
    if max_payload_bytes is not None and max_payload_bytes <= 0:
        raise ValueError("max_payload_bytes must be positive")
    if max_depth is not None and not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_LIMIT}")
    if max_payload_bytes is not None:
        _limits["max_payload_bytes"] = max_payload_bytes
    if max_depth is not None:
        _limits["max_depth"] = max_depth
    if capture is not None or wal_slot is not None:
        mode, slot = _capture_mode()
        _capture.update(mode=capture or mode, slot=wal_slot or slot)


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


def _json_default(o: Any) -> Any:
    """What the encoder writes for a non-JSON value (``_inspect`` has already refused the bad ones)."""
    if isinstance(o, datetime):
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

# numeric (jsonb's number type) holds at most 131072 digits before the decimal point
_MAX_INT_DIGITS = 131072
_Path = tuple[Any, Any] | None  # (parent path, key): built per container, turned into text only on error


def _show(key: Any) -> str:
    text = str(key)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _path(where: _Path) -> str:
    keys: list[str] = []
    while where is not None:
        where, key = where
        keys.append(_show(key))
    return ".".join(reversed(keys))


def _bad_text(value: str) -> str | None:
    """Why Postgres or the stream cannot carry ``value``, or None."""
    if "\x00" in value:
        return "contains U+0000 (NUL), which Postgres cannot store"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid UTF-8)"
    return None


def _inspect(event_type: str, ref: str, data: dict[str, Any], max_depth: int) -> int:
    """Refuse what Postgres, JSON or the wire cannot carry, naming its dot path; return how many more bytes
    jsonb's text has than the compact encoding (separators, numbers written out). Iterative: no recursion."""
    extra = 0
    stack: list[tuple[Any, int, _Path]] = [(data, 1, None)]
    while stack:
        container, depth, where = stack.pop()
        if isinstance(container, dict):
            items: Any = container.items()
            extra += 2 * len(container) - 1 if container else 0  # ": " per key, ", " between entries
        else:
            items = enumerate(container)
            extra += len(container) - 1 if container else 0
        for key, value in items:
            here = (where, key)
            if isinstance(container, dict):
                if not isinstance(key, str):
                    raise UnrepresentableValue(event_type, _path(here), f"object keys must be strings, got {key!r}")
                if why := _bad_text(key):
                    raise UnrepresentableValue(event_type, _path(here), "key " + why)
            while True:  # Enum and model values are inspected as what they are written as
                if isinstance(value, str):
                    if why := _bad_text(value):
                        raise UnrepresentableValue(event_type, _path(here), why)
                elif isinstance(value, bool) or value is None:
                    pass
                elif isinstance(value, int):
                    if value.bit_length() > 64:
                        try:
                            digits = len(int.__repr__(value))
                        except ValueError:  # over sys.get_int_max_str_digits()
                            digits = _MAX_INT_DIGITS + 1
                        if digits > _MAX_INT_DIGITS:
                            raise UnrepresentableValue(event_type, _path(here), "integer too large for JSON")
                elif isinstance(value, float):
                    if not math.isfinite(value):
                        raise UnrepresentableValue(event_type, _path(here), f"{value} is not representable in JSON")
                    extra += wire.jsonb_number_extra(float.__repr__(value))
                elif isinstance(value, dict | list | tuple):
                    if depth >= max_depth:
                        raise NestingTooDeep(event_type, _path(here), max_depth)
                    stack.append((value, depth + 1, here))
                elif isinstance(value, datetime):
                    off = value.utcoffset()
                    if off is None or off != timedelta(0):
                        raise NonUtcTimestamp(
                            event_type, ref, [FieldError(_path(here), "datetime must be timezone-aware UTC")]
                        )
                elif isinstance(value, Enum | BaseModel):
                    value = _json_default(value)
                    continue
                elif not isinstance(value, uuid.UUID | Decimal | date):
                    raise InvalidArgument(
                        event_type,
                        _path(here),
                        f"not JSON-serialisable: {type(value).__name__} is not JSON serializable",
                    )
                break
    return extra


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
    if isinstance(value, str | uuid.UUID | int) and not isinstance(value, bool):
        s = str(value)
        if s:
            if why := _bad_text(s):
                raise UnrepresentableValue(event_type, name, why)
            if len(s) * 4 > MAX_TEXT_BYTES and len(s.encode()) > MAX_TEXT_BYTES:
                raise InvalidArgument(event_type, name, f"longer than {MAX_TEXT_BYTES} bytes (UTF-8)")
            return s
    raise InvalidArgument(event_type, name, f"must be a non-empty string, got {value!r}")


def _uuid_text(event_type: str, name: str, value: Any) -> str | None:
    """A UUID argument in canonical form (the platform's reader accepts a UUID or nothing)."""
    if value is None or isinstance(value, uuid.UUID):
        return None if value is None else str(value)
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else str(uuid.UUID(str(_text(event_type, name, value))))
    except ValueError:
        raise InvalidArgument(event_type, name, f"must be a UUID, got {value!r}") from None


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


class RecordOptions(TypedDict, total=False):
    """The keyword options of ``record``/``arecord`` (and their ``_typed`` forms), as ``prepare`` takes them."""

    tenant_id: str | uuid.UUID | None
    actor: Actor | str | uuid.UUID | None
    aggregate: str | None
    correlation: str | None
    execution_id: str | None
    event_name: str | None
    from_state: str | None
    to_state: str | None
    event_id: uuid.UUID | str | None
    occurred_at: datetime | None


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
        data["occurredAt"] = wire.iso_utc(occurred_at or datetime.now(UTC))
    _fill_actor(event_type, data, actor)

    # Everything Postgres, JSON or the wire cannot carry is refused here, before the encoder and the
    # INSERT see it: a NUL or lone surrogate reaching Postgres would abort the caller's transaction.
    extra = _inspect(event_type, entry.ref, data, _limits["max_depth"])
    try:
        text = _ENCODER.encode(data)
    except (ValueError, TypeError, RecursionError) as exc:  # a value _inspect does not know changed under it
        raise InvalidArgument(event_type, "payload", f"not JSON-serialisable: {exc}") from None
    limit = _limits["max_payload_bytes"]
    if (len(text) + extra) * 4 > limit:  # the size rule (outbox.wire): bytes of jsonb's text on the wire
        wire.check_payload_size(event_type, len(text.encode()) + extra, limit)

    model = schemas.registry.validate_json(event_type, text)  # PayloadValidationError
    tenant_final = str(getattr(model, "tenantId", "") or "")
    if not tenant_final:
        raise RecordError(event_type, "tenantId", "required field is missing")
    if tenant is None:
        _text(event_type, "tenantId", tenant_final)  # the payload's tenant obeys the argument's rules
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
        _uuid_text(event_type, "execution_id", execution_id),
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


def _emit_one(params: tuple[Any, ...], slot: str) -> Write:
    row = yield sql.EMIT_ONE, (walmsg.PREFIX, walmsg.encode(params), slot), True
    if row is None:
        raise CaptureUnavailable(slot)
    return params[0]


def _emit_many(columns: list[Any], ids: list[uuid.UUID], slot: str) -> Write:
    contents = [walmsg.encode(params) for params in zip(*columns, strict=True)]
    row = yield sql.EMIT_MANY, (walmsg.PREFIX, contents, slot), True
    if not row or row[0] != len(ids):
        raise CaptureUnavailable(slot)
    return ids


def _one(params: tuple[Any, ...]) -> Write:
    mode, slot = _capture_mode()
    return _emit_one(params, slot) if mode == "wal" else _write_one(params)


def _many(columns: list[Any], ids: list[uuid.UUID]) -> Write:
    mode, slot = _capture_mode()
    return _emit_many(columns, ids, slot) if mode == "wal" else _write_many(columns, ids)


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
    conn: Any, event_type: str, payload: Mapping[str, Any] | BaseModel, **options: Unpack[RecordOptions]
) -> uuid.UUID:
    """Write one event in the caller's transaction and return its event id. Validates first; never commits."""
    return _run(conn, _one(prepare(event_type, payload, **options)))


def record_many(conn: Any, events: Sequence[Event]) -> list[uuid.UUID]:
    """Write many events in one statement in the caller's transaction; all or none. Never commits."""
    if not events:
        return []
    return _run(conn, _many(*_many_params(events)))


async def arecord(
    conn: Any, event_type: str, payload: Mapping[str, Any] | BaseModel, **options: Unpack[RecordOptions]
) -> uuid.UUID:
    """Async ``record``: one event in the caller's transaction. Never commits."""
    return await _arun(conn, _one(prepare(event_type, payload, **options)))


async def arecord_many(conn: Any, events: Sequence[Event]) -> list[uuid.UUID]:
    """Async ``record_many``. Never commits."""
    if not events:
        return []
    write = _many(*_many_params(events))  # validate before touching the connection
    return await _arun(conn, write)


def record_typed(conn: Any, payload: BaseModel, **options: Unpack[RecordOptions]) -> uuid.UUID:
    """``record`` a payload model instance; the event type comes from the model's registry entry."""
    return record(conn, event_type_of(payload), payload, **options)


async def arecord_typed(conn: Any, payload: BaseModel, **options: Unpack[RecordOptions]) -> uuid.UUID:
    """Async ``record_typed``."""
    return await arecord(conn, event_type_of(payload), payload, **options)


@cache
def _model_owner(model: type[BaseModel]) -> str:
    entry = schemas.registry.entry_of_model(model)
    if entry is None:
        raise InvalidArgument(model.__name__, "payload", "model is not a registered payload contract")
    return entry.event_type


def event_type_of(payload: BaseModel) -> str:
    """The event type a payload model instance belongs to."""
    return _model_owner(type(payload))
