"""The platform reader's envelope rules for one stream entry: what its workflow worker accepts.

A contract, like ``outbox.schemas``: pure, no database or broker. The relay checks every entry against it
before publishing (an entry that breaks a rule is dead-lettered with the rule), and the test suite
checks every entry the tests publish.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime

from outbox.errors import OutboxError

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# ISO-8601 date and time (extended format) with an explicit offset; the calendar is checked by
# ``datetime.fromisoformat`` (years 0001-9999, real month lengths).
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})")

# Field -> rule, as the reader words them (checked in this order).
RULES: dict[str, str] = {
    "event_id": "must be a UUID",
    "execution_id": "must be a UUID or empty",
    "user_id": "must be a UUID or empty",
    "tenant": "must not be empty",
    "event_type": "must not be empty",
    "timestamp": "must be an ISO-8601 date-time",
    "payload_json": "must be a JSON object",
}


class EnvelopeError(OutboxError):
    """An entry the platform's reader would reject: ``field`` broke ``rule``."""

    def __init__(self, field: str, rule: str, value: object) -> None:
        self.field, self.rule = field, rule
        shown = repr(value) if value is None or len(str(value)) <= 80 else repr(str(value)[:77] + "...")
        super().__init__(f"envelope field {field} {rule} (got {shown})")


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in the 8-4-4-4-12 hex form."""
    return len(value) == 36 and _UUID.fullmatch(value) is not None


def is_iso_datetime(value: str) -> bool:
    """Whether ``value`` is an ISO-8601 date-time with an offset (``Z`` or ``±hh:mm``) and a real date."""
    if _ISO.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_json_object(value: str) -> bool:
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def fields_violation(
    *,
    event_id: object,
    execution_id: object,
    user_id: object,
    tenant: object,
    event_type: object,
    timestamp: object,
    payload_json: object,
    payload_is_object: bool = False,
) -> EnvelopeError | None:
    """The first rule these field values break, or ``None`` (``violation`` for values at hand, no mapping).
    ``payload_is_object``: the caller has already parsed ``payload_json`` as a JSON object (the relay, whose
    contract validation did), so it is not parsed again."""
    if not (isinstance(event_id, str) and is_uuid(event_id)):
        return EnvelopeError("event_id", RULES["event_id"], event_id)
    if not (isinstance(execution_id, str) and (execution_id == "" or is_uuid(execution_id))):
        return EnvelopeError("execution_id", RULES["execution_id"], execution_id)
    if not (isinstance(user_id, str) and (user_id == "" or is_uuid(user_id))):
        return EnvelopeError("user_id", RULES["user_id"], user_id)
    if not (isinstance(tenant, str) and tenant):
        return EnvelopeError("tenant", RULES["tenant"], tenant)
    if not (isinstance(event_type, str) and event_type):
        return EnvelopeError("event_type", RULES["event_type"], event_type)
    if not (isinstance(timestamp, str) and is_iso_datetime(timestamp)):
        return EnvelopeError("timestamp", RULES["timestamp"], timestamp)
    if not (isinstance(payload_json, str) and (payload_is_object or _is_json_object(payload_json))):
        return EnvelopeError("payload_json", RULES["payload_json"], payload_json)
    return None


def violation(entry: Mapping[str, object], *, payload_is_object: bool = False) -> EnvelopeError | None:
    """The first rule ``entry`` (field -> value, as on the stream) breaks, or ``None``. A missing or
    non-string field breaks its rule."""
    get = entry.get
    return fields_violation(
        event_id=get("event_id"),
        execution_id=get("execution_id"),
        user_id=get("user_id"),
        tenant=get("tenant"),
        event_type=get("event_type"),
        timestamp=get("timestamp"),
        payload_json=get("payload_json"),
        payload_is_object=payload_is_object,
    )


def check(entry: Mapping[str, object], *, payload_is_object: bool = False) -> None:
    """Raise ``EnvelopeError`` for the first rule ``entry`` breaks (see ``violation``)."""
    err = violation(entry, payload_is_object=payload_is_object)
    if err is not None:
        raise err
