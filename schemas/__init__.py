"""Payload contracts and the schema registry.

``outbox.schemas.validate(event_type, payload)`` is what ``outbox.record`` and the relay use; ``registry``
holds every event type of the Workflow Event Catalog v2 and the older bus-only types.
"""

from __future__ import annotations

from typing import Any

from outbox.schemas._modules import EVENT_MODULES
from outbox.schemas.registry import EventType, Registry, pascal_case, payload_ref

# Lazy: a contract module is imported the first time one of its event types is used (see Registry).
registry = Registry({event_type: f"outbox.schemas.{module}" for event_type, module in EVENT_MODULES.items()})


def validate(event_type: str, payload: dict[str, Any], ref: str | None = None) -> Any:
    """Validated payload of ``event_type`` (model instance); raises ``PayloadValidationError`` naming the field."""
    return registry.validate(event_type, payload, ref)


def validate_json(event_type: str, payload_json: str | bytes, ref: str | None = None) -> Any:
    """``validate`` for a JSON document."""
    return registry.validate_json(event_type, payload_json, ref)


def get(ref: str) -> type[Any]:
    """The pydantic model of a payload ref."""
    return registry.model(ref)


def for_event_type(event_type: str) -> EventType:
    """The registry entry of an event type (``UnknownEventType`` if not on the bus list)."""
    return registry.event_type(event_type)


def refs() -> list[str]:
    """Every registered payload ref."""
    return registry.refs()


def json_schema(ref: str) -> dict[str, Any]:
    """JSON Schema of a payload ref."""
    return registry.json_schema(ref)


__all__ = [
    "EventType",
    "Registry",
    "for_event_type",
    "get",
    "json_schema",
    "pascal_case",
    "payload_ref",
    "refs",
    "registry",
    "validate",
    "validate_json",
]
