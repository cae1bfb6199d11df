"""An AsyncAPI 3.0.0 document of the global workflow stream: one message per event type, the relay sends them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from outbox.schemas.registry import EventType, Registry

ASYNCAPI_VERSION = "3.0.0"
DEFAULT_STREAM = "workflow:events:global"
CHANNEL = "workflowEvents"
OPERATION = "publishWorkflowEvent"
HEADERS_SCHEMA = "StreamEntryFields"

_STREAM_FIELDS: dict[str, str] = {
    "event_id": "Event id (UUID), unique per event: the consumer's idempotency key.",
    "execution_id": "Workflow execution id, or empty.",
    "event_name": "Event name (defaults to event_type).",
    "event_type": "The event type (SCREAMING_SNAKE_CASE); selects the message of this channel.",
    "tenant": "Tenant id.",
    "timestamp": "When the event occurred: ISO-8601 UTC with milliseconds, ending in Z.",
    "user_id": "actorUserId or userId of the payload, or empty.",
    "from_state": "Previous state for state-machine events, or empty.",
    "to_state": "New state for state-machine events, or empty.",
    "payload_json": "The payload (this message's payload) as a JSON document.",
    "workflow_correlation_key": "Correlation key for waiting workflows, or empty.",
}


def _rewrite_refs(node: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``node`` with every ``#/$defs/X`` ``$ref`` pointed at ``#/components/schemas/mapping[X]``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/components/schemas/" + mapping[value.removeprefix("#/$defs/")]
            else:
                out[key] = _rewrite_refs(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, mapping) for v in node]
    return node


def hoist_defs(schema: dict[str, Any], components: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``schema`` as an AsyncAPI payload: ``$defs`` moved into ``components`` (shared when identical, else
    prefixed with ``prefix``), ``$ref`` rewritten to ``#/components/schemas/...``, ``$id``/``$schema`` dropped."""
    body = {k: v for k, v in schema.items() if k not in ("$defs", "$id", "$schema")}
    defs: dict[str, Any] = schema.get("$defs", {})
    if not defs:
        return body
    for mapping in ({n: n for n in defs}, {n: f"{prefix}_{n}" for n in defs}):
        moved = {mapping[n]: _rewrite_refs(d, mapping) for n, d in defs.items()}
        if all(components.get(k, v) == v for k, v in moved.items()):
            components.update(moved)
            return _rewrite_refs(body, mapping)
    raise ValueError(f"cannot place the $defs of {prefix} in components/schemas: names taken")


def example_payload(event_type: str, registry: Registry | None = None) -> dict[str, Any] | None:
    """A reproducible example payload of ``event_type`` from ``outbox.schemas.simulate`` (optional), else ``None``."""
    try:
        import importlib

        simulate = importlib.import_module("outbox.schemas.simulate")
    except ImportError:
        return None
    build: Callable[..., Any] | None = getattr(simulate, "example", None)
    if not callable(build):
        return None
    try:
        try:
            value = build(event_type, seed=0, **({"registry": registry} if registry is not None else {}))
        except TypeError:  # an older signature without seed/registry
            value = build(event_type)
    except Exception:  # an example is a nicety; never fail an export or a `show` because of it
        return None
    return value if isinstance(value, dict) else None


def _message(entry: EventType, payload: dict[str, Any], example: dict[str, Any] | None) -> dict[str, Any]:
    description = entry.description
    notes = []
    if entry.legacy_overlaps:
        notes.append(f"Overlaps older types {', '.join(entry.legacy_overlaps)} (both valid, no aliasing).")
    if entry.superseded_by:
        notes.append(f"Canonical for workflows: {', '.join(entry.superseded_by)}; this type is kept for back-compat.")
    if entry.catalog_only:
        notes.append(f"Catalog only: {entry.catalog_only_reason}.")
    if entry.legacy_model is not None:
        notes.append("The bus also accepts this type's older payload shape.")
    if notes:
        description = description + "\n\n" + " ".join(notes)
    tags = [{"name": entry.category}] if entry.category else []
    tags.append({"name": entry.kind})
    if entry.catalog_only:
        tags.append({"name": "catalog-only"})
    message: dict[str, Any] = {
        "name": entry.event_type,
        "title": entry.name,
        "summary": entry.description.split(". ")[0].rstrip(".") + ".",
        "description": description,
        "contentType": "application/json",
        "headers": {"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"},
        "payload": payload,
        "tags": tags,
        "x-schema-ref": entry.ref,
        "x-catalog-only": entry.catalog_only,
        "x-in-system-catalog": entry.in_system_catalog,
    }
    if entry.legacy_overlaps:
        message["x-legacy-overlaps"] = list(entry.legacy_overlaps)
    if entry.superseded_by:
        message["x-superseded-by"] = list(entry.superseded_by)
    if example is not None:
        message["examples"] = [
            {"name": "example", "summary": f"A valid {entry.event_type} payload", "payload": example}
        ]
    return message


def _headers_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The flat fields of one stream entry (all strings, absent values are empty); "
        "payload_json carries the message payload.",
        "properties": {k: {"type": "string", "description": v} for k, v in _STREAM_FIELDS.items()},
        "required": list(_STREAM_FIELDS),
        "additionalProperties": False,
    }


def asyncapi_document(
    registry: Iterable[EventType] | None = None,
    *,
    stream: str = DEFAULT_STREAM,
    system_only: bool = False,
    examples: bool = True,
    version: str = "2.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (a JSON-able dict) of ``stream``: every event type of ``registry``
    (default ``outbox.schemas.registry``; ``system_only`` keeps the system-catalog types), sent by the relay."""
    if registry is None:
        from outbox.schemas import registry as default

        registry = default
    entries = sorted(
        (e for e in registry if e.in_system_catalog or not system_only), key=lambda e: (e.category or "~", e.event_type)
    )
    json_schema = registry.json_schema if isinstance(registry, Registry) else _schema_of
    simulate_registry = registry if isinstance(registry, Registry) else None
    components_schemas: dict[str, Any] = {HEADERS_SCHEMA: _headers_schema()}
    messages: dict[str, Any] = {}
    for entry in entries:
        payload = hoist_defs(copy.deepcopy(json_schema(entry.ref)), components_schemas, prefix=entry.event_type)
        example = example_payload(entry.event_type, simulate_registry) if examples else None
        messages[entry.event_type] = _message(entry, payload, example)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Workflow events",
            "version": version,
            "description": "Workflow Event Catalog v2: the events the outbox relay publishes, exactly once and in "
            "commit order, to the global workflow stream (a Redis stream). Each stream entry is flat string fields; "
            "`event_type` selects the message, `payload_json` holds its payload.",
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": stream,
                "title": "Global workflow stream",
                "description": "Redis stream every tenant's workflow events are appended to (XADD by the relay).",
                "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in messages},
            }
        },
        "operations": {
            OPERATION: {
                "action": "send",
                "title": "Relay publishes",
                "summary": "The outbox relay appends each committed outbox row to the stream.",
                "channel": {"$ref": f"#/channels/{CHANNEL}"},
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{t}"} for t in messages],
            }
        },
        "components": {"schemas": components_schemas, "messages": messages},
    }


def _schema_of(ref: str) -> dict[str, Any]:
    from outbox.schemas import json_schema

    return json_schema(ref)
