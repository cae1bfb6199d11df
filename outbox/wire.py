"""The flat wire format of the global workflow stream (what the platform's workflow worker reads).

Every value is a string; an absent value is the empty string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from outbox.envelope import is_iso_datetime, is_uuid
from outbox.errors import OutboxError, PayloadTooLarge

FIELDS = (
    "event_id",
    "execution_id",
    "event_name",
    "event_type",
    "tenant",
    "timestamp",
    "user_id",
    "from_state",
    "to_state",
    "payload_json",
    "workflow_correlation_key",
)


class WireError(OutboxError):
    """A value the wire format cannot carry (the relay dead-letters the row with this reason)."""


def iso_utc(ts: datetime) -> str:
    """``2026-11-25T18:42:13.123Z``: millisecond ISO-8601 in UTC, as JavaScript's ``toISOString``."""
    u = ts.astimezone(UTC)
    # Not strftime: its %Y does not zero-pad years before 1000 on glibc.
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}."
        f"{u.microsecond // 1000:03d}Z"
    )


_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def column_timestamp(rendered: str | None) -> str:
    """The relay's rendering of the ``occurred_at`` column (``outbox.relay.sql.OCCURRED_AT``: millisecond UTC text
    plus the era, ``... AD``) as wire text; ``WireError`` when the wire cannot carry it: infinite, BC, or
    after year 9999."""
    if rendered is None:  # to_char of infinity / -infinity
        raise WireError("occurred_at is infinite (infinity or -infinity); the wire carries years 0001-9999")
    text, _, era = rendered.rpartition(" ")
    if era != "AD":
        raise WireError(f"occurred_at {text} {era} is before year 1 (BC); the wire carries years 0001-9999")
    if len(text) != 24 or _CANONICAL.fullmatch(text) is None:
        raise WireError(f"occurred_at {text} is after year 9999; the wire carries years 0001-9999")
    return text


def timestamp(occurred_at: Any, column: str) -> str:
    """The wire ``timestamp``: the payload's ``occurredAt`` (normalised to ``iso_utc``), or the
    ``occurred_at`` column (``column_timestamp``) only when the payload has none. ``WireError`` when the
    payload's value is not an ISO-8601 date-time with an offset."""
    if occurred_at is None:
        return column
    if isinstance(occurred_at, str):
        if len(occurred_at) == 24 and _CANONICAL.fullmatch(occurred_at) is not None:
            return occurred_at  # what record writes: nothing to normalise
        if is_iso_datetime(occurred_at):
            try:
                return iso_utc(datetime.fromisoformat(occurred_at))
            except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
                pass
    shown = repr(occurred_at)[:80]
    raise WireError(f"payload occurredAt {shown} is not an ISO-8601 date-time (years 0001-9999, with an offset)")


def field(payload: Any, key: str) -> Any:
    """A validated payload's value for ``key`` (a declared field or an extra one), else None.

    Same answer as ``getattr(model, key, None)`` without its cost for an absent key: pydantic's ``__getattr__``
    raises and catches an AttributeError inside, about 5 us per miss, paid per event on the relay's hot path.
    """
    if isinstance(payload, dict):
        return payload.get(key)
    value = payload.__dict__.get(key)
    if value is None:
        extra = getattr(payload, "__pydantic_extra__", None)
        if extra:
            return extra.get(key)
    return value


def user_id_of(payload: Any) -> str:
    """The wire ``user_id``: ``actorUserId``, else ``userId``, whichever first holds a UUID; else ``""``.

    The platform's reader accepts a UUID or nothing, so free text (``CUSTOM_EVENT``'s loose ``userId``, an
    undeclared key) never reaches the envelope; it stays in ``payload_json``.
    """
    for key in ("actorUserId", "userId"):
        value = field(payload, key)
        if isinstance(value, str) and is_uuid(value):
            return value
    return ""


# ---- the size rule ---------------------------------------------------------------------------------
# One rule for ``record`` and the relay: a payload's size is the UTF-8 length of its ``payload_json`` on
# the wire, which is Postgres' text rendering of the stored jsonb (``payload::text``). That rendering is
# not compact JSON: ", " and ": " separators, numbers written out in full as numeric prints them (1e300
# is 301 digits). ``record`` predicts it exactly (``jsonb_number_extra``); the relay measures it.


def check_payload_size(event_type: str, size: int, limit: int) -> None:
    """Raise ``PayloadTooLarge`` when ``size`` (UTF-8 bytes of the wire ``payload_json``) is over ``limit``."""
    if size > limit:
        raise PayloadTooLarge(event_type, size, limit)


def check_payload_json(event_type: str, payload_json: str, limit: int) -> None:
    """The relay's side of the size rule, on the ``payload_json`` it is about to publish."""
    if len(payload_json) * 4 > limit:  # at most 4 bytes per character: encode only when it may matter
        check_payload_size(event_type, len(payload_json.encode()), limit)


def jsonb_number_extra(number_json: str) -> int:
    """How many more characters jsonb's text gives the JSON number ``number_json`` (may be negative).

    jsonb keeps numbers as ``numeric``, printed without an exponent (``1e+300`` -> 1 and 300 zeros,
    ``1.5e-07`` -> ``0.00000015``) and without the sign of a zero (``-0.0`` -> ``0.0``).
    """
    if "e" not in number_json and "E" not in number_json and not number_json.startswith("-0"):
        return 0
    value = Decimal(number_json)
    text = format(value, "f")
    if not value and text.startswith("-"):
        text = text[1:]
    return len(text) - len(number_json)


def values(
    *,
    event_id: str,
    event_type: str,
    tenant: str,
    timestamp: str,
    payload_json: str,
    user_id: str = "",
    execution_id: str | None = None,
    event_name: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    correlation_key: str | None = None,
) -> list[str]:
    """The values of one stream entry in ``FIELDS`` order (``timestamp`` from ``iso_utc``).

    ``dict(zip(FIELDS, values(...)))`` is the entry as a field -> value mapping (for ``XADD``).
    """
    return [
        event_id, execution_id or "", event_name or event_type, event_type, tenant, timestamp, user_id,
        from_state or "", to_state or "", payload_json, correlation_key or "",
    ]  # fmt: skip


@dataclass(frozen=True)
class WireEvent:
    """One decoded stream entry."""

    stream_id: str
    event_id: str
    execution_id: str
    event_name: str
    event_type: str
    tenant: str
    timestamp: str
    user_id: str
    from_state: str
    to_state: str
    payload_json: str
    workflow_correlation_key: str


def text_of(v: Any) -> str:
    """A Redis reply value as text: bytes are decoded (UTF-8), anything else goes through ``str``."""
    return v.decode() if isinstance(v, bytes) else str(v)


def decode(stream_id: str | bytes, fields: dict[Any, Any]) -> WireEvent:
    """Parse a stream entry (bytes or str keys/values); missing fields become ``""``."""
    data = {text_of(k): text_of(v) for k, v in fields.items()}
    return WireEvent(stream_id=text_of(stream_id), **{f: data.get(f, "") for f in FIELDS})
