"""Transactional outbox: record domain events in the business transaction; the relay publishes them.

``outbox.record(conn, "TICKET_CREATED", payload, tenant_id=..., actor=...)`` inside your transaction.
"""

from __future__ import annotations

from outbox import errors
from outbox.errors import (
    ConfigurationError,
    DuplicateEvent,
    NonUtcTimestamp,
    NotInTransaction,
    OutboxError,
    PayloadTooLarge,
    PayloadValidationError,
    RecordError,
    TenantMismatch,
    UnknownEventType,
)
from outbox.record import (
    Actor,
    Event,
    arecord,
    arecord_many,
    arecord_typed,
    configure,
    record,
    record_many,
    record_typed,
)

__all__ = [
    "Actor",
    "ConfigurationError",
    "DuplicateEvent",
    "Event",
    "NonUtcTimestamp",
    "NotInTransaction",
    "OutboxError",
    "PayloadTooLarge",
    "PayloadValidationError",
    "RecordError",
    "TenantMismatch",
    "UnknownEventType",
    "arecord",
    "arecord_many",
    "arecord_typed",
    "configure",
    "errors",
    "record",
    "record_many",
    "record_typed",
]
