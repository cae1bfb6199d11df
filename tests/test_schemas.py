"""The registry against the catalog facts (../shared/catalog/events.json) and the generated modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import schemas
from outbox.errors import PayloadValidationError, UnknownEventType
from schemas.registry import payload_ref
from tests.conftest import ROOT

FACTS = Path(ROOT).parent / "shared" / "catalog" / "events.json"
EVENTS = json.loads(FACTS.read_text())["events"] if FACTS.exists() else []


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


def test_generated_modules_are_fresh():
    res = subprocess.run(
        [sys.executable, str(Path(ROOT) / "tools" / "gen_schemas.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
