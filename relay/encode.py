"""The validation step shared by every capture source: an event's stream entry, or the reason it is dead."""

from __future__ import annotations

from typing import Protocol

from outbox import envelope, wire
from outbox.errors import TenantMismatch
from outbox.schemas.registry import Registry


class Captured(Protocol):
    """What a capture source hands over per event (an outbox_events row, or a WAL message)."""

    @property
    def event_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def schema_ref(self) -> str: ...
    @property
    def payload(self) -> str: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def execution_id(self) -> str | None: ...
    @property
    def event_name(self) -> str | None: ...
    @property
    def from_state(self) -> str | None: ...
    @property
    def to_state(self) -> str | None: ...
    @property
    def correlation_key(self) -> str | None: ...


def encode(r: Captured, registry: Registry, max_payload_bytes: int) -> list[str]:
    """The stream entry of one event, checked by the reader's envelope rules; raises whatever is wrong with it."""
    column_ts = wire.column_timestamp(r.timestamp)  # WireError: infinite, BC, after 9999
    model = registry.validate_json(r.event_type, r.payload, ref=r.schema_ref)
    tenant = str(wire.field(model, "tenantId") or "")
    if tenant != r.tenant_id:
        raise TenantMismatch(r.event_type, tenant, r.tenant_id)
    wire.check_payload_json(r.event_type, r.payload, max_payload_bytes)  # same rule as record
    timestamp = wire.timestamp(wire.field(model, "occurredAt"), column_ts)  # WireError
    user_id = wire.user_id_of(model)
    # The contract validation above parsed payload_json as a JSON object (every contract is an object).
    err = envelope.fields_violation(
        event_id=r.event_id, execution_id=r.execution_id or "", user_id=user_id, tenant=tenant,
        event_type=r.event_type, timestamp=timestamp, payload_json=r.payload, payload_is_object=True,
    )  # fmt: skip
    if err is not None:
        raise err
    return wire.values(
        event_id=r.event_id,
        event_type=r.event_type,
        tenant=tenant,
        timestamp=timestamp,
        payload_json=r.payload,
        user_id=user_id,
        execution_id=r.execution_id,
        event_name=r.event_name,
        from_state=r.from_state,
        to_state=r.to_state,
        correlation_key=r.correlation_key,
    )


def reason(r: Captured, exc: Exception) -> str:
    """One line for last_error: the error's type, the event's schema ref, the message (bounded)."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__} [{r.schema_ref}] {text[:1000]}"
