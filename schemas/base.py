"""Field types and the base model shared by every payload contract.

Payloads travel as JSON and are stored, relayed and consumed as JSON, so the contract types keep
JSON-native values (uuids and timestamps stay strings) and only *check* them. Validation is strict
(no "1" -> 1 coercion); undeclared keys are allowed and kept, because the platform's consumers
tolerate and keep them (see docs in README, "Undeclared keys").
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, WithJsonSchema

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must not be null (omit the key instead)")
    return value


_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def _check_utc(value: str) -> str:
    if not _UTC_RE.match(value):
        raise ValueError("must be an ISO-8601 UTC timestamp like 2026-01-31T12:00:00Z (ending in 'Z')")
    try:
        datetime.fromisoformat(value[:-1][:26] + "+00:00")  # Python parses up to microseconds
    except ValueError:
        raise ValueError("must be a valid ISO-8601 UTC timestamp (no such date or time)") from None
    return value


def _check_email(value: str) -> str:
    if not _EMAIL_RE.match(value):
        raise ValueError("must be an e-mail address")
    return value


T = TypeVar("T")

# An optional key that must not be null when present: absent -> None (defaults are not validated),
# explicit null -> "must not be null". The JSON Schema shows the plain type (see registry).
Opt = Annotated[T | None, AfterValidator(_not_null)]
NOT_NULL = _not_null

# The pattern runs inside pydantic-core (no Python call per value); registry._field_errors turns its
# "should match pattern" error into "must be a UUID".
UUID_PATTERN = _UUID_RE.pattern
Uuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN), WithJsonSchema({"type": "string", "format": "uuid"})]
UtcDateTime = Annotated[
    str,
    AfterValidator(_check_utc),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": "Z$"}),
]
Email = Annotated[str, AfterValidator(_check_email), WithJsonSchema({"type": "string", "format": "email"})]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
DecimalStr = Annotated[str, StringConstraints(pattern=_DECIMAL_RE.pattern)]


class Payload(BaseModel):
    """Base of every payload contract: strict types, camelCase keys as declared, extra keys kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, validate_default=False)


class Shape(BaseModel):
    """Base of nested object shapes inside payloads (same rules as ``Payload``)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, validate_default=False)


JsonObject = dict[str, Any]
