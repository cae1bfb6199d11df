"""Field types and the base model shared by every payload contract.

Payloads travel as JSON and are stored, relayed and consumed as JSON, so the contract types keep
JSON-native values (uuids and timestamps stay strings) and only *check* them. Validation is strict
(no "1" -> 1 coercion); undeclared keys are allowed and kept, because the platform's consumers
tolerate and keep them (see docs in README, "Undeclared keys").
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, StringConstraints, WithJsonSchema
from pydantic_core import CoreSchema

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")


# A real UTC date and time ending in "Z", checked entirely by the pattern (inside pydantic-core, with no
# Python call per value): month lengths and leap years included, year 0001-9999, 0-9 fraction digits.
# Equivalent to "matches ...Z$ and datetime.fromisoformat() accepts it" (checked over 400k random
# strings when it was written; tests/test_schemas.py keeps a table of edge cases).
_YEAR = r"(?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])"
_LEAP_YEAR = r"(?:\d{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    rf"|02-(?:0[1-9]|1\d|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
UTC_PATTERN = rf"^{_DATE}T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{{1,9}})?Z$"


T = TypeVar("T")


class _NotNull:
    """Annotation marker: validate ``T | None`` as plain ``T``, so an explicit null fails in pydantic-core.

    An optional key is absent -> the default ``None`` (defaults are not validated); present -> it must
    be a ``T``. Done on the core schema rather than with an AfterValidator so that validation never calls
    back into Python (the relay validates every event). ``registry._field_errors`` words the type error
    for a null input as "must not be null", and the JSON Schema shows the plain type.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler(source)
        return schema["schema"] if schema["type"] == "nullable" else schema


# An optional key that must not be null when present.
Opt = Annotated[T | None, _NotNull()]

# The pattern runs inside pydantic-core (no Python call per value); registry._field_errors turns its
# "should match pattern" error into "must be a UUID".
UUID_PATTERN = _UUID_RE.pattern
Uuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN), WithJsonSchema({"type": "string", "format": "uuid"})]
UtcDateTime = Annotated[
    str,
    StringConstraints(pattern=UTC_PATTERN),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": "Z$"}),
]
EMAIL_PATTERN = _EMAIL_RE.pattern
Email = Annotated[str, StringConstraints(pattern=EMAIL_PATTERN), WithJsonSchema({"type": "string", "format": "email"})]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
DecimalStr = Annotated[str, StringConstraints(pattern=_DECIMAL_RE.pattern)]


class Payload(BaseModel):
    """Base of every payload contract: strict types, camelCase keys as declared, extra keys kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, validate_default=False)


class Shape(BaseModel):
    """Base of nested object shapes inside payloads (same rules as ``Payload``)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, validate_default=False)


JsonObject = dict[str, Any]
