"""The schema registry: payload refs to pydantic models, event types to what validates them on the bus."""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from outbox.errors import FieldError, PayloadValidationError, UnknownEventType, UnknownSchemaRef

REF_RE = re.compile(r"^(payload|legacy)\.([A-Z][A-Za-z0-9]*)\.v([1-9][0-9]*)$")


def pascal_case(event_type: str) -> str:
    """``TICKET_STATUS_CHANGED`` -> ``TicketStatusChanged``."""
    return "".join(part.capitalize() for part in event_type.lower().split("_"))


def payload_ref(event_type: str, version: int = 1) -> str:
    """The registry ref of an event type's payload contract, e.g. ``payload.TicketCreated.v1``."""
    return f"payload.{pascal_case(event_type)}.v{version}"


@dataclass(frozen=True)
class EventType:
    """One event type on the bus: its contract ref, and what validates payloads published under it."""

    event_type: str
    ref: str
    model: type[BaseModel]
    name: str
    category: str | None
    module: str
    description: str
    kind: str  # domain-v2 | catalog-existing | legacy-bus
    in_system_catalog: bool = True
    catalog_only: bool = False
    catalog_only_reason: str | None = None
    legacy_model: type[BaseModel] | None = None  # older payload shape also accepted on the bus
    legacy_of: tuple[str, ...] = ()
    legacy_overlaps: tuple[str, ...] = ()
    superseded_by: tuple[str, ...] = ()
    _adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        target: Any = self.model
        if self.legacy_model is not None:
            # left_to_right: a payload valid for the current contract is accepted without also being
            # validated against the older shape (pydantic's "smart" mode validates every member).
            target = Annotated[self.model | self.legacy_model, Field(union_mode="left_to_right")]
        object.__setattr__(self, "_adapter", TypeAdapter(target))

    @property
    def bus_adapter(self) -> TypeAdapter[Any]:
        """Validator of bus payloads: the contract, or the union with the legacy shape."""
        return self._adapter


def _pattern_reasons() -> dict[str, str]:
    from outbox.schemas.base import _DECIMAL_RE, EMAIL_PATTERN, UTC_PATTERN, UUID_PATTERN

    return {
        UUID_PATTERN: "must be a UUID (8-4-4-4-12 hex digits)",
        UTC_PATTERN: "must be an ISO-8601 UTC timestamp of a real date and time, like 2026-01-31T12:00:00Z"
        " (ending in 'Z')",
        EMAIL_PATTERN: "must be an e-mail address",
        _DECIMAL_RE.pattern: 'must be a decimal number as a string, like "125.50"',
    }


_PATTERN_REASONS = _pattern_reasons()
# Errors that are about something other than the input's type (a null input to any other error means
# the key was present with null where the contract declares a type: see ``outbox.schemas.base.Opt``).
_NOT_TYPE_ERRORS = frozenset({"value_error", "assertion_error", "custom_error"})


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # Union validation prefixes the branch name (model class); drop it so the path is the payload's.
        if loc and loc[0][:1].isupper() and not loc[0].startswith("function"):
            loc = loc[1:]
        path = ".".join(loc)
        reason = err["msg"]
        if err["type"] == "missing":
            reason = "required field is missing"
        elif err.get("input", ...) is None and err["type"] not in _NOT_TYPE_ERRORS:
            reason = "must not be null (omit an optional key instead)"
        elif err["type"] == "string_pattern_mismatch":
            reason = _PATTERN_REASONS.get(str((err.get("ctx") or {}).get("pattern")), reason)
        elif err["type"] == "extra_forbidden":
            reason = "field is not allowed"
        if (path, reason) not in seen:
            seen.add((path, reason))
            out.append(FieldError(path, reason.removeprefix("Value error, ")))
    return out or [FieldError("", str(exc))]


class _ContractJsonSchema(GenerateJsonSchema):
    """JSON Schema as the contract reads: optional-but-not-null keys show their plain type, no null default."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


class Registry:
    """Maps refs to models and event types to ``EventType`` entries. Read-mostly.

    ``index`` (event type -> module whose ``EVENTS`` list holds it) makes the registry lazy: an event
    type's module is imported the first time that type is looked up; iterating, listing refs or looking
    up an unknown ref loads every indexed module.
    """

    def __init__(self, index: Mapping[str, str] | None = None) -> None:
        self._by_ref: dict[str, type[BaseModel]] = {}
        self._ref_owner: dict[str, str] = {}
        self._by_type: dict[str, EventType] = {}
        self._index: dict[str, str] = dict(index or {})
        self._unloaded: set[str] = set(self._index.values())
        self._lock = threading.RLock()  # writer threads may look up their first event types concurrently

    def _load(self, modules: Iterable[str]) -> None:
        with self._lock:
            for name in sorted(set(modules) & self._unloaded):
                for entry in importlib.import_module(name).EVENTS:
                    self._add(entry)
                self._unloaded.discard(name)

    def _load_all(self) -> None:
        if self._unloaded:
            self._load(self._unloaded)

    def add(self, entry: EventType) -> EventType:
        """Register an event type (and its ref). Refs and event types are unique."""
        self._load_all()
        return self._add(entry)

    def _add(self, entry: EventType) -> EventType:
        if not REF_RE.match(entry.ref):
            raise ValueError(f"malformed schema ref {entry.ref!r}")
        if entry.event_type in self._by_type:
            raise ValueError(f"event type {entry.event_type} registered twice")
        owner = self._ref_owner.get(entry.ref)
        if owner is not None and owner != entry.event_type:
            raise ValueError(f"ref {entry.ref} already belongs to {owner}")
        self._by_type[entry.event_type] = entry
        self._by_ref[entry.ref] = entry.model
        self._ref_owner[entry.ref] = entry.event_type
        return entry

    def add_version(self, event_type: str, ref: str, model: type[BaseModel]) -> None:
        """Register a further version (``.v2``...) of an event type's contract."""
        self._load_all()
        if event_type not in self._by_type:
            raise UnknownEventType(event_type)
        if not REF_RE.match(ref):
            raise ValueError(f"malformed schema ref {ref!r}")
        self._by_ref[ref] = model
        self._ref_owner[ref] = event_type

    def event_type(self, event_type: str) -> EventType:
        """The entry of an event type; ``UnknownEventType`` if it is not on the bus list."""
        entry = self._by_type.get(event_type)
        if entry is None:
            module = self._index.get(event_type)
            if module is not None:
                self._load((module,))
                entry = self._by_type.get(event_type)
            if entry is None:
                raise UnknownEventType(event_type)
        return entry

    def has_event_type(self, event_type: str) -> bool:
        """Whether the event type is on the bus list."""
        return event_type in self._by_type or event_type in self._index

    def entry_of_model(self, model: type[BaseModel]) -> EventType | None:
        """The event type whose contract (or older shape) is ``model``, or None."""
        self._load((model.__module__,))
        for _ in range(2):
            for entry in list(self._by_type.values()):
                if entry.model is model or entry.legacy_model is model:
                    return entry
            self._load_all()
        return None

    def model(self, ref: str) -> type[BaseModel]:
        """The pydantic model of a ref; ``KeyError`` if unknown."""
        if ref not in self._by_ref:
            self._load_all()
        return self._by_ref[ref]

    def owner(self, ref: str) -> str | None:
        """The event type a ref belongs to."""
        if ref not in self._ref_owner:
            self._load_all()
        return self._ref_owner.get(ref)

    def refs(self) -> list[str]:
        """Every registered ref, sorted."""
        self._load_all()
        return sorted(self._by_ref)

    def event_types(self) -> list[EventType]:
        """Every event type, sorted by name."""
        self._load_all()
        return [self._by_type[k] for k in sorted(self._by_type)]

    def __iter__(self) -> Iterator[EventType]:
        return iter(self.event_types())

    def __len__(self) -> int:
        self._load_all()
        return len(self._by_type)

    def json_schema(self, ref: str) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of a ref."""
        schema = self._by_ref[ref].model_json_schema(mode="validation", schema_generator=_ContractJsonSchema)
        schema["$id"] = ref
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        return schema

    def _resolve(self, event_type: str, ref: str | None) -> tuple[EventType, TypeAdapter[Any] | type[BaseModel]]:
        entry = self.event_type(event_type)
        if ref is None or ref == entry.ref:
            return entry, entry.bus_adapter
        if self._ref_owner.get(ref) != event_type:
            raise UnknownSchemaRef(event_type, ref)
        return entry, self._by_ref[ref]

    def validate(self, event_type: str, payload: dict[str, Any], ref: str | None = None) -> Any:
        """Validated payload (model instance) for the event type's bus schema, or ``PayloadValidationError``."""
        entry, validator = self._resolve(event_type, ref)
        try:
            if isinstance(validator, TypeAdapter):
                return validator.validate_python(payload, strict=None)
            return validator.model_validate(payload)
        except ValidationError as exc:
            raise self._error(entry, ref, exc, lambda: entry.model.model_validate(payload)) from None

    def validate_json(self, event_type: str, payload_json: str | bytes, ref: str | None = None) -> Any:
        """Like ``validate`` for a JSON document (the fast path used by ``record`` and the relay)."""
        entry, validator = self._resolve(event_type, ref)
        try:
            if isinstance(validator, TypeAdapter):
                return validator.validate_json(payload_json)
            return validator.model_validate_json(payload_json)
        except ValidationError as exc:
            raise self._error(entry, ref, exc, lambda: entry.model.model_validate_json(payload_json)) from None

    @staticmethod
    def _error(entry: EventType, ref: str | None, exc: ValidationError, current: Any) -> PayloadValidationError:
        """For a union (current | older shape), report the current contract's errors, not a mix of both."""
        if entry.legacy_model is not None and (ref is None or ref == entry.ref):
            try:
                current()
            except ValidationError as cur:
                errors = _field_errors(cur)
                errors.append(FieldError("", f"(not a valid older {entry.event_type} payload either)"))
                return PayloadValidationError(entry.event_type, entry.ref, errors)
        return PayloadValidationError(entry.event_type, ref or entry.ref, _field_errors(exc))


def register_all(registry: Registry, entries: Iterable[EventType]) -> None:
    """Add many entries."""
    for e in entries:
        registry.add(e)
