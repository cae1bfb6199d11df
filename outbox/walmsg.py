"""The WAL capture mode's message: one event as the content of a logical decoding message. Pure, no I/O.

Content = one line of header JSON, ``\\n``, then the payload JSON text exactly as ``record`` encoded and
validated it. The payload is never re-encoded: the relay validates and publishes that text as it is (the
encoder writes compact JSON, which holds no raw newline, so the first newline ends the header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json

#: The prefix of every outbox message (``pg_logical_emit_message(true, PREFIX, content)``).
PREFIX = "outbox"
VERSION = 1


@dataclass(frozen=True, slots=True)
class WalEvent:
    """One event read back from a message: the same fields as an outbox_events row."""

    event_id: str
    tenant_id: str
    event_type: str
    schema_ref: str
    payload: str
    timestamp: str  # occurred_at in the relay's column format ("...T..:..:..mmmZ AD", see relay/sql.py)
    aggregate: str | None = None
    execution_id: str | None = None
    event_name: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    correlation_key: str | None = None


def column_text(ts: datetime) -> str:
    """``occurred_at`` in the same text form the poll relay reads from Postgres (millisecond UTC, era)."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z AD"


_KEYS = ("aggregate", "executionId", "eventName", "fromState", "toState", "correlation")


def encode(params: tuple[Any, ...]) -> str:
    """The message content of one prepared event (``outbox.write.prepare``'s tuple)."""
    event_id, tenant, event_type, ref, payload, occurred, *rest = params
    head: dict[str, Any] = {"v": VERSION, "id": str(event_id), "tenant": tenant, "type": event_type, "schema": ref,
                            "at": column_text(occurred)}  # fmt: skip
    for key, value in zip(_KEYS, rest, strict=True):
        if value is not None:
            head[key] = str(value)
    return json.dumps(head, separators=(",", ":"), ensure_ascii=False) + "\n" + payload


class MessageError(ValueError):
    """A message with the outbox prefix that is not an outbox event (its reason names what is wrong)."""


def decode(content: bytes) -> WalEvent:
    """The event in one message's content; ``MessageError`` says what is wrong with a malformed one."""
    nl = content.find(b"\n")
    if nl < 0:
        raise MessageError("no header line")
    try:
        head = from_json(content[:nl])  # pydantic-core's parser: a quarter of json.loads' time on this hot path
        payload = content[nl + 1 :].decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"content is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(head, dict):
        raise MessageError("header is not a JSON object")
    if head.get("v") != VERSION:
        raise MessageError(f"unknown message version {head.get('v')!r} (this relay reads {VERSION})")
    event_id, tenant, event_type, ref, at = (head.get(k) for k in ("id", "tenant", "type", "schema", "at"))
    for key, value in (("id", event_id), ("tenant", tenant), ("type", event_type), ("schema", ref), ("at", at)):
        if not isinstance(value, str) or not value:
            raise MessageError(f"header field {key!r} is missing or not a string")
    extra = [head.get(k) for k in _KEYS]
    for key, value in zip(_KEYS, extra, strict=True):
        if value is not None and not isinstance(value, str):
            raise MessageError(f"header field {key!r} is not a string")
    agg, execution, name, from_state, to_state, correlation = extra
    return WalEvent(event_id, tenant, event_type, ref, payload, at, agg, execution, name,  # type: ignore[arg-type]
                    from_state, to_state, correlation)  # fmt: skip
