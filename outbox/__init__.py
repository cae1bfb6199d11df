"""Transactional outbox: record domain events in the business transaction; the relay publishes them.

``outbox.record(conn, "TICKET_CREATED", payload, tenant_id=..., actor=...)`` inside your transaction.

The write API (``record`` and the rest from ``outbox.write``) is imported on first use (PEP 562), so
``import outbox.errors`` or ``import outbox.schemas`` never loads the database side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from outbox import errors
from outbox.errors import (
    ConfigurationError,
    DuplicateEvent,
    InvalidArgument,
    NestingTooDeep,
    NonUtcTimestamp,
    NotInTransaction,
    OutboxError,
    PayloadTooLarge,
    PayloadValidationError,
    RecordError,
    TenantMismatch,
    UnknownEventType,
    UnrepresentableValue,
)

if TYPE_CHECKING:
    from outbox.write import (
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

_WRITE_API = frozenset(
    {"Actor", "Event", "arecord", "arecord_many", "arecord_typed", "configure", "record", "record_many", "record_typed"}
)

__all__ = [
    "Actor",
    "ConfigurationError",
    "DuplicateEvent",
    "Event",
    "InvalidArgument",
    "NestingTooDeep",
    "NonUtcTimestamp",
    "NotInTransaction",
    "OutboxError",
    "PayloadTooLarge",
    "PayloadValidationError",
    "RecordError",
    "TenantMismatch",
    "UnknownEventType",
    "UnrepresentableValue",
    "arecord",
    "arecord_many",
    "arecord_typed",
    "configure",
    "errors",
    "record",
    "record_many",
    "record_typed",
]


def __getattr__(name: str) -> Any:
    if name not in _WRITE_API:
        raise AttributeError(f"module 'outbox' has no attribute {name!r}")
    value = getattr(importlib.import_module("outbox.write"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _WRITE_API)
