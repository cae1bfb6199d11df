"""The flat wire format of the global workflow stream (what the platform's workflow worker reads).

Every value is a string; an absent value is the empty string.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


def iso_utc(ts: datetime) -> str:
    """``2026-11-25T18:42:13.123Z``: millisecond ISO-8601 in UTC, as JavaScript's ``toISOString``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def user_id_of(payload: Any) -> str:
    """``actorUserId``, else ``userId``, else ``""`` from a validated payload model or a dict."""
    get = payload.get if isinstance(payload, dict) else (lambda k: getattr(payload, k, None))
    value = get("actorUserId") or get("userId")
    return str(value) if value else ""


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


def decode(stream_id: str | bytes, fields: dict[Any, Any]) -> WireEvent:
    """Parse a stream entry (bytes or str keys/values); missing fields become ``""``."""

    def s(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    data = {s(k): s(v) for k, v in fields.items()}
    return WireEvent(stream_id=s(stream_id), **{f: data.get(f, "") for f in FIELDS})
