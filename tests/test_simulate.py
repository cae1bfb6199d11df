"""``outbox.schemas.simulate`` and ``outbox simulate``: valid payloads for every event type, invalid variants
that fail on the field they name, dot-path overrides, determinism, and a record -> relay round trip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox import schemas
from outbox.errors import PayloadValidationError, UnknownEventType
from outbox.relay import Relay
from outbox.schemas import simulate as sim
from tests.conftest import ROOT, stream_entries

ALL_TYPES = [e.event_type for e in schemas.registry]
BUS_CATALOG_TYPES = [e.event_type for e in schemas.registry if e.kind != "legacy-bus"]
UNION_TYPES = [e.event_type for e in schemas.registry if e.legacy_model is not None]
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FACTS_FILE = Path(ROOT) / "tools" / "catalog-facts" / "events.json"
FACTS = {e["event_type"]: e for e in json.loads(FACTS_FILE.read_text())["events"]}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    base["PYTHONPATH"] = ROOT
    base["COLUMNS"] = "200"
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args], env=base, capture_output=True, text=True, timeout=timeout
    )


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}.{i}")]
    return [(path, value)]


# ---- valid examples ------------------------------------------------------------------------------------


def test_registry_has_every_catalog_type():
    assert len(ALL_TYPES) == 176
    assert len(BUS_CATALOG_TYPES) == 134


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_example_validates_and_round_trips_as_json(event_type):
    entry = schemas.registry.event_type(event_type)
    for optional in ("some", "all", "none"):
        for seed in (0, 1, 2, None):
            payload = sim.example(event_type, seed=seed, optional=optional)
            text = json.dumps(payload)
            model = schemas.validate_json(event_type, text)
            # union types produce the v2 shape; legacy-only types their (legacy) model
            assert type(model) is entry.model, (event_type, type(model))
            assert json.loads(text) == payload
            dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
            assert dumped == payload  # nothing coerced or dropped
            required = [f.alias or n for n, f in entry.model.model_fields.items() if f.is_required()]
            assert set(required) <= set(payload)
            if optional == "all":
                assert set(payload) == {f.alias or n for n, f in entry.model.model_fields.items()}
            if optional == "none":
                assert set(payload) == set(required)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_example_values_look_like_the_platform(event_type):
    payload = sim.example(event_type, seed=11, optional="all")
    schema = schemas.json_schema(schemas.registry.event_type(event_type).ref)
    facts = FACTS.get(event_type, {}).get("payload_fields", {})
    assert payload["tenantId"] == sim.DEFAULT_TENANT
    for name, spec in facts.items():
        if name not in payload:
            continue
        value = payload[name]
        if spec["type"] == "uuid":
            assert UUID_RE.match(value), (name, value)
        if spec["type"] == "datetime":
            assert value.endswith("Z") and "T" in value, (name, value)
        if "enum" in spec:
            assert value in spec["enum"], (name, value)
        if spec.get("format") == "email":
            assert re.match(r"^[^@\s]+@[^@\s]+\.[a-z]+$", value), (name, value)
        if spec["type"] == "array" and spec.get("minItems"):
            assert len(value) >= spec["minItems"]
    # money: decimal strings beside a currency
    if "currency" in payload:
        assert re.fullmatch(r"[A-Z]{3}", payload["currency"])
        money = [k for k in schema["properties"] if re.search(r"[Aa]mount|[Tt]otal|[Bb]alance", k)]
        for k in money:
            if k in payload and isinstance(payload[k], str):
                assert re.fullmatch(r"\d+\.\d{2}", payload[k]), (k, payload[k])
    # previousX / newX differ
    for k in payload:
        m = re.match(r"^(previous|old)([A-Z].*)$", k)
        if m and "new" + m.group(2) in payload:
            assert payload[k] != payload["new" + m.group(2)], k
    # changes keys are the updatedFields, and each change really changes something
    if isinstance(payload.get("changes"), dict) and "updatedFields" in payload:
        assert list(payload["changes"]) == payload["updatedFields"]
        for key, change in payload["changes"].items():
            assert re.fullmatch(r"[A-Za-z_]+(\.[A-Za-z_]+)*", key)
            if isinstance(change, dict) and "previous" in change and "new" in change:
                assert change["previous"] != change["new"], key
    # no placeholder text where a realistic value was expected
    for path, value in _leaves(payload):
        if isinstance(value, str):
            assert value.strip(), path
            assert "None" not in value and "null" not in value, (path, value)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_pairs_differ_and_ends_follow_starts_for_many_seeds(event_type):
    for seed in range(25):
        for optional in ("some", "all"):
            p = sim.example(event_type, seed=seed, optional=optional)
            for k in p:
                m = re.match(r"^(previous|old)([A-Z].*)$", k)
                if m and "new" + m.group(2) in p:
                    assert p[k] != p["new" + m.group(2)], (seed, k)
                m = re.match(r"^(.*)(start|Start)(At|Date|Time)?$", k)
                end = m and m.group(1) + ("end" if m.group(2) == "start" else "End") + (m.group(3) or "")
                if end and end in p:
                    assert p[end] > p[k], (seed, k, p[k], p[end])
            for key, change in (p.get("changes") or {}).items():
                if isinstance(change, dict) and "previous" in change:
                    assert change["previous"] != change.get("new"), (seed, key)
            if isinstance(p.get("changes"), dict) and "updatedFields" in p:
                assert list(p["changes"]) == p["updatedFields"]


def test_realistic_values_for_named_fields():
    ticket = sim.example("TICKET_CREATED", seed=3, optional="all")
    assert ticket["actorType"] == "USER"
    assert ticket["createdByUserId"] == ticket["actorUserId"]
    overdue = sim.example("INVOICE_OVERDUE", seed=3)
    assert re.fullmatch(r"\d+\.\d{2}", overdue["amountDue"]) and overdue["currency"] in {
        "USD",
        "EUR",
        "GBP",
        "CAD",
        "AUD",
    }
    assert overdue["dueDate"] < overdue["occurredAt"][:10]
    applied = sim.example("PAYMENT_APPLIED", seed=3)
    assert applied["applications"] and all(
        re.fullmatch(r"\d+\.\d{2}", a["amountApplied"]) for a in applied["applications"]
    )
    negative = sim.example("SURVEY_NEGATIVE_RESPONSE", seed=3, optional="all")
    assert re.fullmatch(r"T-\d{5}", negative["ticketNumber"])
    assert negative["rating"] <= 2
    resched = sim.example("APPOINTMENT_RESCHEDULED", seed=3, optional="all")
    assert resched["previousStartAt"] < resched["previousEndAt"] and resched["newStartAt"] < resched["newEndAt"]
    email = sim.example("INBOUND_EMAIL_RECEIVED", seed=3, optional="all")
    assert "@" in email["emailData"]["from"]["email"]
    assert set(email) >= {"tenantId", "occurredAt", "emailData", "providerId"}  # v2 shape of a union type


@pytest.mark.parametrize("event_type", ["TICKET_UPDATED", "CONTACT_UPDATED", "PROJECT_UPDATED", "ASSET_UPDATED"])
def test_changes_keys_match_updated_fields(event_type):
    for seed in range(20):
        p = sim.example(event_type, seed=seed)
        if "changes" in p and "updatedFields" in p:
            assert list(p["changes"]) == p["updatedFields"]
            assert 1 <= len(p["updatedFields"]) <= 2


def test_tenant_argument_and_default():
    assert sim.example("TICKET_CREATED", tenant_id="acme")["tenantId"] == "acme"
    t = uuid.uuid4()
    assert sim.example("PROJECT_CLOSED", tenant_id=t)["tenantId"] == str(t)
    # older bus-only types want a UUID tenant: a non-UUID one is refused, naming the field
    with pytest.raises(PayloadValidationError) as exc:
        sim.example("PROJECT_CLOSED", tenant_id="acme")
    assert exc.value.field == "tenantId"


def test_unknown_event_type():
    with pytest.raises(UnknownEventType):
        sim.example("NOT_AN_EVENT")
    with pytest.raises(UnknownEventType):
        sim.invalid_variants("NOT_AN_EVENT")


# ---- determinism ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["TICKET_CREATED", "PAYMENT_APPLIED", "INBOUND_EMAIL_RECEIVED", "RMM_SYNC_FAILED"]
)
def test_same_seed_same_payload_other_seed_other_payload(event_type):
    a = sim.example(event_type, seed=42)
    assert sim.example(event_type, seed=42) == a
    assert sim.example(event_type, seed=43) != a
    assert sim.example(event_type, seed=None) != sim.example(event_type, seed=None)
    va = [(v.description, v.payload) for v in sim.invalid_variants(event_type, seed=5)]
    assert [(v.description, v.payload) for v in sim.invalid_variants(event_type, seed=5)] == va


def test_one_seed_gives_each_type_its_own_ids():
    a = sim.example("TICKET_CREATED", seed=1)
    b = sim.example("TICKET_UPDATED", seed=1)
    assert a["ticketId"] != b["ticketId"]


def test_cli_seed_is_reproducible():
    a = run_cli("simulate", "TICKET_ASSIGNED", "--seed", "9")
    b = run_cli("simulate", "TICKET_ASSIGNED", "--seed", "9")
    assert a.returncode == 0 and a.stdout == b.stdout
    assert json.loads(a.stdout) == sim.example("TICKET_ASSIGNED", seed=9)


# ---- overrides -----------------------------------------------------------------------------------------


def test_override_values_are_json_else_strings():
    assert sim.parse_assignment("a=5") == ("a", 5)
    assert sim.parse_assignment("a=5.50") == ("a", 5.5)
    assert sim.parse_assignment('a="5.50"') == ("a", "5.50")
    assert sim.parse_assignment("a=true") == ("a", True)
    assert sim.parse_assignment("a=null") == ("a", None)
    assert sim.parse_assignment("a=closed") == ("a", "closed")
    assert sim.parse_assignment("a=x=y") == ("a", "x=y")
    assert sim.parse_assignment("a=") == ("a", "")
    assert sim.parse_assignment('a.b=["x", 1]') == ("a.b", ["x", 1])
    for bad in ("novalue", "=x", " =x"):
        with pytest.raises(sim.SimulationError):
            sim.parse_assignments([bad])
    for bad_path in (".a", "a..b", "a."):
        with pytest.raises(sim.SimulationError):
            sim.set_path({}, bad_path, 1)


def test_numbers_for_string_fields_keep_their_text_when_the_event_type_is_known():
    got = sim.parse_assignments(
        ["amountDue=250.00", "daysOverdue=12", 'currency="1"', "undeclared=1.50", "dueDate=null"], "INVOICE_OVERDUE"
    )
    assert got == {"amountDue": "250.00", "daysOverdue": 12, "currency": "1", "undeclared": 1.5, "dueDate": None}
    got = sim.parse_assignments(["applications.0.amountApplied=3", "applications.0.x=3"], "PAYMENT_APPLIED")
    assert got == {"applications.0.amountApplied": "3", "applications.0.x": 3}
    got = sim.parse_assignments(
        ["emailData.attachments.0.size=5", "emailData.attachments.0.id=5"], "INBOUND_EMAIL_RECEIVED"
    )
    assert got == {"emailData.attachments.0.size": 5, "emailData.attachments.0.id": "5"}
    assert sim.parse_assignments(["amountDue=250.00"]) == {"amountDue": 250.0}  # no event type: plain JSON
    schema = schemas.json_schema("payload.TicketUpdated.v1")
    assert sim.schema_at(schema, "changes.attributes.impact.new") == {"title": "New"}
    assert sim.schema_at(schema, "ticketId") == {"format": "uuid", "title": "Ticketid", "type": "string"}
    assert sim.schema_at(schema, "nope.deeper") is None


def test_overrides_with_dot_paths():
    p = sim.example("TICKET_UPDATED", seed=1, overrides={"changes.status.new": "closed"})
    assert p["changes"] == {"status": {"previous": p["changes"]["status"]["previous"], "new": "closed"}}
    assert p["changes"]["status"]["previous"] != "closed"
    assert p["updatedFields"] == ["status"]
    # keys of a changes map are dot paths themselves
    p = sim.example("TICKET_UPDATED", seed=1, overrides={"changes.attributes.impact.new": "company_wide"})
    assert p["changes"]["attributes.impact"]["new"] == "company_wide"
    assert p["updatedFields"] == ["attributes.impact"]
    assert "attributes" not in p["changes"]
    # lists by index, nested objects, top-level scalars
    p = sim.example(
        "PAYMENT_APPLIED",
        seed=1,
        overrides={"applications.0.amountApplied": "10.00", "currency": "EUR", "paymentId": str(uuid.UUID(int=7))},
    )
    assert p["applications"][0]["amountApplied"] == "10.00"
    assert p["currency"] == "EUR"  # undeclared keys are allowed and kept
    assert p["paymentId"] == str(uuid.UUID(int=7))
    p = sim.example("INBOUND_EMAIL_RECEIVED", seed=1, overrides={"emailData.from.email": "someone@example.org"})
    assert p["emailData"]["from"]["email"] == "someone@example.org"
    # one side of a previous/new pair set to the other's value: the other side moves
    base = sim.example("TICKET_STATUS_CHANGED", seed=1)
    p = sim.example("TICKET_STATUS_CHANGED", seed=1, overrides={"newStatusId": base["previousStatusId"]})
    assert p["newStatusId"] == base["previousStatusId"] and p["previousStatusId"] != p["newStatusId"]
    # the caller may set both sides equal on purpose
    p = sim.example("TICKET_STATUS_CHANGED", seed=1, overrides={"newStatusId": "x", "previousStatusId": "x"})
    assert p["newStatusId"] == p["previousStatusId"] == "x"


def test_override_that_breaks_the_contract_raises():
    with pytest.raises(PayloadValidationError) as exc:
        sim.example("TICKET_STATUS_CHANGED", seed=1, overrides={"ticketId": "nope"})
    assert exc.value.field == "ticketId"
    with pytest.raises(PayloadValidationError) as exc:
        sim.example("TICKET_STATUS_CHANGED", seed=1, overrides={"changedAt": None})
    assert exc.value.field == "changedAt" and "null" in exc.value.reason
    with pytest.raises(sim.SimulationError):
        sim.example("PAYMENT_APPLIED", seed=1, overrides={"applications.5.amountApplied": "1.00"})
    with pytest.raises(sim.SimulationError):
        sim.example("PAYMENT_APPLIED", seed=1, overrides={"applications.first": "1.00"})


def test_set_get_del_path():
    doc: dict[str, Any] = {"changes": {"a.b": {"new": 1}}, "items": [{"x": 1}]}
    sim.set_path(doc, "changes.a.b.new", 2)
    sim.set_path(doc, "changes.c.d.previous", 3)
    sim.set_path(doc, "items.1.x", 4)
    sim.set_path(doc, "new.list.0", "v")
    assert doc["changes"] == {"a.b": {"new": 2}, "c.d": {"previous": 3}}
    assert doc["items"] == [{"x": 1}, {"x": 4}]
    assert doc["new"] == {"list": ["v"]}
    assert sim.get_path(doc, "changes.a.b.new") == 2
    assert sim.get_path(doc, "items.1.x") == 4
    assert sim.get_path(doc, "items.7.x") is sim.MISSING
    sim.del_path(doc, "changes.a.b")
    sim.del_path(doc, "nothing.here")
    assert doc["changes"] == {"c.d": {"previous": 3}}


# ---- invalid variants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_invalid_variant_fails_on_the_field_it_names(event_type):
    entry = schemas.registry.event_type(event_type)
    schema = schemas.json_schema(entry.ref)
    variants = sim.invalid_variants(event_type, seed=3)
    assert variants
    for v in variants:
        for validate in (
            lambda p: schemas.validate(event_type, p),
            lambda p: schemas.validate_json(event_type, json.dumps(p)),
        ):
            with pytest.raises(PayloadValidationError) as exc:
                validate(v.payload)
            assert exc.value.field == v.expected_field, (v.description, exc.value.errors)
            assert v.expected_reason_substring in exc.value.reason, (v.description, exc.value.reason)
            assert exc.value.event_type == event_type
        assert v.check(event_type).field == v.expected_field
    descriptions = " | ".join(v.description for v in variants)
    fields = {v.expected_field for v in variants}
    # the kinds of breakage the brief asks for, wherever the contract allows them
    for name in schema["required"]:
        assert f"required field {name} is missing" in descriptions
    assert "wrong type" in descriptions
    assert "tenantId is empty" in descriptions
    props = schema["properties"]
    if any(p.get("format") == "uuid" and n != "tenantId" for n, p in props.items()):
        assert "is not a UUID" in descriptions
    if any(p.get("format") == "date-time" for p in props.values()):
        assert "+02:00 offset" in descriptions
    if any("enum" in p for p in props.values()):
        assert "is not one of" in descriptions
    if set(props) - set(schema["required"]):
        assert "is null (must be omitted instead)" in descriptions
    for n, p in props.items():
        if p.get("minItems"):
            assert n in fields and f"{n} has fewer than" in descriptions
    assert all(v.payload != sim.example(event_type, seed=3, optional="all") for v in variants)


@pytest.mark.parametrize("event_type", UNION_TYPES)
def test_union_types_variants_stay_invalid_under_the_older_shape_too(event_type):
    # with the caller's UUID tenant some v2 breakages are valid older-shape payloads: those are left out,
    # the rest still fail on the v2 field they name
    tenant = str(uuid.UUID(int=99))
    for v in sim.invalid_variants(event_type, seed=4, tenant_id=tenant):
        v.check(event_type)


def test_a_variant_that_does_not_fail_as_stated_is_reported():
    v = sim.InvalidVariant("nothing wrong", sim.example("TICKET_CREATED", seed=1), "ticketId", "x")
    with pytest.raises(AssertionError, match="accepted"):
        v.check("TICKET_CREATED")
    bad = dict(v.payload, ticketId="nope")
    with pytest.raises(AssertionError, match="expected 'occurredAt'"):
        sim.InvalidVariant("wrong field", bad, "occurredAt", "UUID").check("TICKET_CREATED")


# ---- record -> relay -> stream ----------------------------------------------------------------------------


def test_every_catalog_event_type_records_and_is_published_once(settings, rds, stream, db_url):
    assert len(BUS_CATALOG_TYPES) == 134
    payloads = {et: sim.example(et, seed=2024, tenant_id="tenant-sim") for et in BUS_CATALOG_TYPES}
    with psycopg.connect(db_url) as conn:
        ids = {et: str(outbox.record(conn, et, p, tenant_id="tenant-sim")) for et, p in payloads.items()}
        conn.commit()
    stats = Relay(settings).run(until_idle=True)
    assert stats.dead == 0 and stats.failed == 0
    entries = stream_entries(rds, stream)
    by_id: dict[str, list[dict[str, str]]] = {}
    for _sid, fields in entries:
        by_id.setdefault(fields["event_id"], []).append(fields)
    assert len(entries) == len(BUS_CATALOG_TYPES)
    for et, eid in ids.items():
        assert len(by_id.get(eid, [])) == 1, (et, eid)
        f = by_id[eid][0]
        assert f["event_type"] == et
        assert f["tenant"] == "tenant-sim"
        assert json.loads(f["payload_json"]) == payloads[et]
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT event_id::text, status FROM outbox_events").fetchall())
    assert rows == {eid: "published" for eid in ids.values()}


def test_record_many_of_simulated_payloads(settings, rds, stream, db_url):
    events = [outbox.Event(et, sim.example(et, seed=i)) for i, et in enumerate(BUS_CATALOG_TYPES[:40])]
    with psycopg.connect(db_url) as conn:
        ids = outbox.record_many(conn, events)
        conn.commit()
    Relay(settings).run(until_idle=True)
    published = [f["event_id"] for _sid, f in stream_entries(rds, stream)]
    assert sorted(published) == sorted(str(i) for i in ids)


# ---- CLI ------------------------------------------------------------------------------------------------


def test_cli_prints_a_valid_payload():
    res = run_cli("simulate", "TICKET_CREATED", "--tenant", "acme", "--seed", "1")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    schemas.validate("TICKET_CREATED", payload)
    assert payload["tenantId"] == "acme"
    res = run_cli("simulate", "PROJECT_CLOSED", "--optional", "all")
    assert res.returncode == 0, res.stderr
    schemas.validate_json("PROJECT_CLOSED", res.stdout)


def test_cli_set_overrides():
    res = run_cli(
        "simulate", "TICKET_UPDATED", "--seed", "3",
        "--set", "changes.status.new=closed", "--set", "changes.status.previous=open",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    p = json.loads(res.stdout)
    assert p["changes"] == {"status": {"previous": "open", "new": "closed"}} and p["updatedFields"] == ["status"]
    res = run_cli("simulate", "INVOICE_OVERDUE", "--set", "daysOverdue=12", "--set", "amountDue=250.00")
    p = json.loads(res.stdout)
    # 250.00 parses as a JSON number, but the contract wants a decimal string: the text is kept
    assert p["daysOverdue"] == 12 and p["amountDue"] == "250.00"
    # a value that breaks the contract: exit 1 naming the field
    res = run_cli("simulate", "TICKET_CREATED", "--set", "ticketId=nope")
    assert res.returncode == 1 and "ticketId" in res.stderr and not res.stdout
    res = run_cli("simulate", "TICKET_CREATED", "--set", "ticketId")
    assert res.returncode == 2 and "FIELD=VALUE" in res.stderr


def test_cli_invalid_lists_variants_with_their_errors():
    res = run_cli("simulate", "PAYMENT_APPLIED", "--invalid", "--seed", "2")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert len(report) == len(sim.invalid_variants("PAYMENT_APPLIED", seed=2))
    for item in report:
        assert item["error"] is not None, item["description"]
        assert item["error"]["field"] == item["expected"]["field"]
        assert item["expected"]["reason_contains"] in item["error"]["reason"]
        with pytest.raises(PayloadValidationError):
            schemas.validate("PAYMENT_APPLIED", item["payload"])
    assert any(i["expected"]["field"] == "applications" and "at least" in i["error"]["reason"] for i in report)
    assert run_cli("simulate", "PAYMENT_APPLIED", "--invalid", "--record").returncode == 2


def test_cli_unknown_event_type_exits_2():
    res = run_cli("simulate", "TICKET_CREATD")
    assert res.returncode == 2
    assert "unknown event type" in res.stderr and "TICKET_CREATED" in res.stderr
    assert not res.stdout
    assert run_cli("simulate", "NOPE", "--invalid").returncode == 2


def test_cli_record_inserts_a_row(db_url, settings, rds, stream):
    res = run_cli("simulate", "TICKET_ASSIGNED", "--record", "--seed", "5", env={"OUTBOX_DATABASE_URL": db_url})
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    event_id = res.stderr.strip().split()[-1]
    uuid.UUID(event_id)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT event_type, tenant_id, payload, status FROM outbox_events WHERE event_id = %s", (event_id,)
        ).fetchone()
    assert row is not None
    assert row[0] == "TICKET_ASSIGNED" and row[1] == payload["tenantId"] and row[3] == "pending"
    assert (row[2] if isinstance(row[2], dict) else json.loads(row[2])) == payload
    # the relay then publishes it
    Relay(settings).run(until_idle=True)
    [(_sid, fields)] = stream_entries(rds, stream)
    assert fields["event_id"] == event_id and json.loads(fields["payload_json"]) == payload
    # --database-url wins over nothing; a bad URL is a configuration error (exit 2)
    res = run_cli("simulate", "TICKET_ASSIGNED", "--record", "--database-url", "mysql://x/y")
    assert res.returncode == 2 and "OUTBOX_DATABASE_URL" in res.stderr
