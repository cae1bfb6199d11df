"""The registry against the catalog facts (tools/catalog-facts/events.json) and the generated modules."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from outbox import schemas
from outbox.errors import PayloadValidationError, UnknownEventType
from outbox.schemas.base import UTC_PATTERN
from outbox.schemas.registry import payload_ref
from tests.conftest import ROOT

FACTS = Path(ROOT) / "tools" / "catalog-facts" / "events.json"
EVENTS = json.loads(FACTS.read_text())["events"]


def test_facts_file_is_present():
    assert FACTS.exists(), f"catalog facts not found at {FACTS}"
    assert len(EVENTS) == 176


def test_every_event_type_is_registered_with_its_category_and_ref():
    assert {e["event_type"] for e in EVENTS} == {e.event_type for e in schemas.registry}
    for fact in EVENTS:
        entry = schemas.for_event_type(fact["event_type"])
        assert entry.category == fact["category"]
        assert entry.kind == fact["kind"]
        assert entry.catalog_only == fact["catalog_only"]
        if fact["payload_schema_ref"]:
            assert entry.ref == fact["payload_schema_ref"] == payload_ref(fact["event_type"])
            assert schemas.get(entry.ref) is entry.model
        assert entry.description and entry.description != fact["summary"]


def _check_fields(model_schema: dict, defs: dict, fields: dict, where: str) -> None:
    props = model_schema.get("properties", {})
    required = set(model_schema.get("required", []))
    for name, spec in fields.items():
        assert name in props, f"{where}: {name} missing"
        assert (name in required) == bool(spec.get("required")), f"{where}.{name}: required flag"
        prop = props[name]
        if "$ref" in prop:
            prop = defs[prop["$ref"].split("/")[-1]]
        if spec.get("nullable") and "anyOf" in prop:
            prop = next(p for p in prop["anyOf"] if p.get("type") != "null")
            if "$ref" in prop:
                prop = defs[prop["$ref"].split("/")[-1]]
        t = spec["type"]
        expect = {"string": "string", "uuid": "string", "datetime": "string", "boolean": "boolean",
                  "array": "array", "object": "object"}.get(t)  # fmt: skip
        if t == "number":
            expect = "integer" if spec.get("integer") else "number"
        if expect:
            assert prop.get("type") == expect, f"{where}.{name}: {prop} is not {expect}"
        if t == "uuid":
            assert prop.get("format") == "uuid", f"{where}.{name}"
        if t == "datetime":
            assert prop.get("format") == "date-time", f"{where}.{name}"
        if spec.get("enum"):
            assert prop.get("enum") == spec["enum"], f"{where}.{name}: enum"
        if t == "object" and "properties" in spec:
            _check_fields(prop, defs, spec["properties"], f"{where}.{name}")


@pytest.mark.parametrize("fact", EVENTS, ids=lambda f: f["event_type"])
def test_payload_fields_match_the_facts(fact):
    entry = schemas.for_event_type(fact["event_type"])
    js = schemas.json_schema(entry.ref)
    _check_fields(js, js.get("$defs", {}), fact["payload_fields"], fact["event_type"])
    assert js["additionalProperties"] is True  # undeclared keys are tolerated and kept
    if fact.get("legacy_payload_fields"):
        assert entry.legacy_model is not None


def test_unknown_event_type_and_field_errors_name_the_field():
    with pytest.raises(UnknownEventType):
        schemas.validate("TICKET_FROBNICATED", {})
    with pytest.raises(PayloadValidationError) as exc:
        schemas.validate(
            "TICKET_STATUS_CHANGED",
            {"tenantId": "t", "occurredAt": "2026-01-01T00:00:00Z", "ticketId": "x",
             "previousStatusId": "a", "newStatusId": "b"},
        )  # fmt: skip
    assert exc.value.field == "ticketId" and "UUID" in exc.value.reason
    with pytest.raises(PayloadValidationError) as exc:
        schemas.validate("TICKET_STATUS_CHANGED", {"tenantId": "t", "occurredAt": "2026-01-01T00:00:00+02:00",
                                                   "ticketId": "6f1c1c52-3d5e-4bde-9b0e-0d1a9d1f2a11",
                                                   "previousStatusId": "a", "newStatusId": "b"})  # fmt: skip
    assert exc.value.field == "occurredAt"


def _status_changed(**extra: object) -> dict[str, object]:
    return {"tenantId": "t", "occurredAt": "2026-01-01T00:00:00Z", "ticketId": "6f1c1c52-3d5e-4bde-9b0e-0d1a9d1f2a11",
            "previousStatusId": "a", "newStatusId": "b", **extra}  # fmt: skip


def _utc_reference(value: str) -> bool:
    """What the UTC pattern must agree with: ends in Z and datetime.fromisoformat accepts the date and time."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z", value):
        return False
    try:
        datetime.fromisoformat(value[:-1][:26] + "+00:00")
    except ValueError:
        return False
    return True


UTC_CASES = [
    "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.5Z", "2026-01-31T12:00:00.123456789Z", "2026-12-31T23:59:59Z",
    "2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "1600-02-29T00:00:00Z", "0004-02-29T00:00:00Z",
    "2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-02-28T00:00:00Z",
    "2026-04-31T00:00:00Z", "2026-04-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z",
    "2026-01-00T00:00:00Z", "2026-01-32T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z",
    "2026-01-01T23:59:60Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00.Z",
    "2026-01-01T00:00:00.1234567890Z", "2026-1-01T00:00:00Z", "2026-01-01T00:00:00z",
]  # fmt: skip


@pytest.mark.parametrize("value", UTC_CASES)
def test_utc_timestamps_are_checked_for_a_real_date_and_a_z(value):
    """The pattern-only check (no Python callback) accepts exactly what a parse would."""
    if _utc_reference(value):
        assert schemas.validate("TICKET_STATUS_CHANGED", _status_changed(occurredAt=value))
    else:
        with pytest.raises(PayloadValidationError) as exc:
            schemas.validate("TICKET_STATUS_CHANGED", _status_changed(occurredAt=value))
        assert exc.value.field == "occurredAt" and "real date and time" in exc.value.reason


def test_utc_pattern_agrees_with_a_parse_on_random_timestamps():
    rng = random.Random(20261130)
    pattern = re.compile(UTC_PATTERN)
    for _ in range(50_000):
        y = rng.choice([rng.randint(0, 9999), rng.choice([0, 4, 100, 400, 1900, 2000, 2023, 2024, 2100])])
        v = (f"{y:04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}T{rng.randint(0, 25):02d}:"
             f"{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d}{rng.choice(['', '.5', '.1234567'])}Z")  # fmt: skip
        assert bool(pattern.match(v)) == _utc_reference(v), v


def test_explicit_null_in_an_optional_key_is_refused_and_absence_is_fine():
    assert schemas.validate("TICKET_STATUS_CHANGED", _status_changed())
    with pytest.raises(PayloadValidationError) as exc:
        schemas.validate("TICKET_STATUS_CHANGED", _status_changed(actorUserId=None))
    assert exc.value.field == "actorUserId" and "must not be null" in exc.value.reason


def test_generated_modules_are_fresh():
    res = subprocess.run(
        [sys.executable, str(Path(ROOT) / "tools" / "gen_schemas.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
