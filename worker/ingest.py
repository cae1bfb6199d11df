"""From a stream entry to an ingestion row: parse the flat wire format, resolve the payload contract
(tenant catalog, then system catalog, then the code registry), validate the payload.

A *poison* entry (``PoisonEntry``) is one that cannot be recorded at all: no usable event id, tenant or
event type, or a ``payload_json`` that is not JSON. Everything else is recorded; a payload that does not
satisfy its contract is recorded with ``error`` set (and starts no run).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from outbox.catalog.resolve import EventTypeNotInCatalog, resolve_schema
from outbox.errors import OutboxError, PayloadValidationError
from outbox.schemas.registry import Registry
from outbox.wire import WireEvent


class PoisonEntry(Exception):
    """The entry cannot be ingested (no key, not JSON...): it is retried, then dead-lettered."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which contract validates a tenant's event type, and where that came from."""

    ref: str | None
    source: str | None  # tenant | system | registry | None (nothing found)
    schema: dict[str, Any] | None = None  # a tenant's inline JSON Schema (custom event types)


@dataclass(slots=True)
class Row:
    """One ``workflow_runtime_events`` row to insert."""

    event_id: uuid.UUID
    tenant_id: str
    event_type: str
    event_name: str | None
    correlation_key: str | None
    execution_id: str | None
    user_id: str | None
    from_state: str | None
    to_state: str | None
    occurred_at: datetime | None
    payload: str
    schema_ref: str | None
    schema_source: str | None
    stream_id: str
    error: str | None


COLUMNS: tuple[str, ...] = tuple(Row.__slots__)


def columns(rows: list[Row]) -> dict[str, list[Any]]:
    """Column arrays of ``rows`` for the ``unnest`` in ``sql.INGEST``."""
    return {c: [getattr(r, c) for r in rows] for c in COLUMNS}


class Resolver:
    """Tenant-first schema resolution with a small time-bounded cache per (tenant, event type).

    ``outbox.catalog.resolve.resolve_schema`` answers from the tenant's ``event_catalog`` row, else the
    ``system_event_catalog`` row; only when neither exists does the code registry's ref apply (an event type
    the database does not know yet, e.g. the catalog was not synced after a deploy).
    """

    def __init__(self, registry: Registry, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Resolution]] = {}

    def resolve(
        self, conn: Any, tenant_id: str, event_type: str, batch: dict[tuple[str, str], Resolution]
    ) -> Resolution:
        """The contract of ``event_type`` for ``tenant_id`` (``batch`` memoizes within one transaction)."""
        key = (tenant_id, event_type)
        hit = batch.get(key)
        if hit is not None:
            return hit
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            batch[key] = cached[1]
            return cached[1]
        res = self._lookup(conn, tenant_id, event_type)
        batch[key] = res
        if self.ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self.ttl, res)
        return res

    def _lookup(self, conn: Any, tenant_id: str, event_type: str) -> Resolution:
        return resolve_contract(conn, self.registry, tenant_id, event_type)


def resolve_contract(conn: Any, registry: Registry, tenant_id: str, event_type: str) -> Resolution:
    """The contract the worker applies to a tenant's event type (no cache); ``source`` None when there is none."""
    try:
        found = resolve_schema(conn, tenant_id, event_type)
    except EventTypeNotInCatalog:
        if registry.has_event_type(event_type):
            return Resolution(registry.event_type(event_type).ref, "registry")
        return Resolution(None, None)
    return Resolution(found.ref, found.source, found.schema)


def _text(v: str) -> str | None:
    return v or None


def _occurred_at(ts: str) -> datetime | None:
    if not ts:
        return None
    try:
        value = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def event_key(ev: WireEvent) -> uuid.UUID:
    """The event id of an entry, or ``PoisonEntry`` when the entry lacks what every record needs."""
    if not ev.event_id:
        raise PoisonEntry("entry has no event_id")
    try:
        key = uuid.UUID(ev.event_id)
    except ValueError:
        raise PoisonEntry(f"event_id {ev.event_id[:80]!r} is not a UUID") from None
    if not ev.tenant:
        raise PoisonEntry("entry has no tenant")
    if not ev.event_type:
        raise PoisonEntry("entry has no event_type")
    return key


def _describe(exc: Exception, ref: str | None) -> str:
    if isinstance(exc, PayloadValidationError):
        problems = "; ".join(str(e) for e in exc.errors[:10])
        more = f" (+{len(exc.errors) - 10} more)" if len(exc.errors) > 10 else ""
        return f"{type(exc).__name__} [{exc.schema_ref or ref}]: {problems}{more}"
    return f"{type(exc).__name__} [{ref}]: {exc}"


def _tenant_of(validated: Any) -> str | None:
    if isinstance(validated, BaseModel):
        value = getattr(validated, "tenantId", None)
    elif isinstance(validated, dict):
        value = validated.get("tenantId")
    else:
        value = None
    return None if value is None else str(value)


def _validate_inline(schema: dict[str, Any], payload_json: str) -> dict[str, Any] | str:
    """The payload (dict) when it satisfies the inline JSON Schema, else the error text."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is installed with the test/dev extras
        return "tenant inline JSON Schema: validation needs the jsonschema package"
    data = json.loads(payload_json)
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        parts = [f"{'.'.join(str(p) for p in e.absolute_path) or '<payload>'}: {e.message}" for e in errors[:10]]
        return "JSONSchemaValidationError [tenant inline schema]: " + "; ".join(parts)
    return data if isinstance(data, dict) else {}


def validate(registry: Registry, ev: WireEvent, res: Resolution) -> str | None:
    """``None`` when the payload satisfies its contract (and names the entry's tenant), else the reason."""
    if res.ref is None and res.schema is None:
        return (
            f"UnknownEventType: {ev.event_type} is in neither the tenant's catalog, the system catalog "
            "nor the schema registry"
        )
    try:
        if res.schema is not None:
            checked = _validate_inline(res.schema, ev.payload_json)
            if isinstance(checked, str):
                return checked
            validated: Any = checked
        else:
            assert res.ref is not None
            if registry.owner(res.ref) == ev.event_type:
                validated = registry.validate_json(ev.event_type, ev.payload_json, ref=res.ref)
            else:
                # A tenant's type (or a tenant's override) pointing at another type's registered contract.
                try:
                    model = registry.model(res.ref)
                except KeyError:
                    return f"UnknownSchemaRef: schema ref {res.ref!r} ({res.source} catalog) is not registered"
                try:
                    validated = model.model_validate_json(ev.payload_json)
                except ValidationError as exc:
                    first = exc.errors(include_url=False)[:10]
                    probs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<payload>'}: {e['msg']}" for e in first)
                    return f"PayloadValidationError [{res.ref}]: {probs}"
    except (OutboxError, ValueError) as exc:
        return _describe(exc, res.ref)
    tenant = _tenant_of(validated)
    if tenant is not None and tenant != ev.tenant:
        return f"TenantMismatch [{res.ref}]: payload tenantId {tenant!r} differs from the entry's tenant {ev.tenant!r}"
    return None


def is_json(text: str) -> bool:
    """Whether ``text`` is one JSON document."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def build_row(registry: Registry, ev: WireEvent, key: uuid.UUID, res: Resolution) -> Row:
    """The ingestion row of one entry; ``PoisonEntry`` when the payload is not JSON at all."""
    error = validate(registry, ev, res)
    if error is not None and not is_json(ev.payload_json):
        raise PoisonEntry(f"payload_json is not JSON ({len(ev.payload_json)} chars)")
    return Row(
        event_id=key,
        tenant_id=ev.tenant,
        event_type=ev.event_type,
        event_name=_text(ev.event_name),
        correlation_key=_text(ev.workflow_correlation_key),
        execution_id=_text(ev.execution_id),
        user_id=_text(ev.user_id),
        from_state=_text(ev.from_state),
        to_state=_text(ev.to_state),
        occurred_at=_occurred_at(ev.timestamp),
        payload=ev.payload_json,
        schema_ref=res.ref,
        schema_source=res.source,
        stream_id=ev.stream_id,
        error=error,
    )
