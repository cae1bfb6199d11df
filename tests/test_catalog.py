"""The event catalog: system rows from the migration, idempotent sync, tenant resolution, CLI and AsyncAPI export."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg.rows import dict_row
from sqlalchemy import create_engine, pool

from outbox import migrate, schemas
from outbox.catalog import (
    EventTypeNotInCatalog,
    asyncapi_document,
    register_tenant_event,
    resolve_schema,
    sync_system_catalog,
    unregister_tenant_event,
)
from outbox.catalog.asyncapi import hoist_defs
from outbox.schemas.registry import Registry
from outbox.settings import sqlalchemy_url
from tests.conftest import ROOT, db_url_for
from tests.test_cli_config import run_cli

FACTS = Path(ROOT) / "tools" / "catalog-facts" / "events.json"


def _facts() -> list[dict[str, Any]]:
    return json.loads(FACTS.read_text())["events"]


def _catalog_facts() -> dict[str, dict[str, Any]]:
    return {f["event_type"]: f for f in _facts() if f["in_system_catalog"]}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _snapshot(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as c:
        return {r["event_type"]: r for r in c.execute("SELECT * FROM system_event_catalog ORDER BY event_type")}


def _sync(url: str, registry: Any = None) -> Any:
    with psycopg.connect(url) as c:
        return sync_system_catalog(c, registry)


# ---- the system catalog ------------------------------------------------------------------------------------


def test_migration_fills_the_system_catalog_from_the_facts(db_url):
    facts = _catalog_facts()
    assert len(facts) == 134
    rows = _snapshot(db_url)
    assert set(rows) == set(facts)
    for event_type, fact in facts.items():
        row = rows[event_type]
        assert row["name"] == fact["name"], event_type
        assert row["category"] == fact["category"], event_type
        assert row["payload_schema_ref"] == fact["payload_schema_ref"], event_type
        assert row["kind"] == fact["kind"], event_type
        assert row["catalog_only"] is fact["catalog_only"], event_type
        assert row["catalog_only_reason"] == (fact.get("catalog_only_reason") if fact["catalog_only"] else None)
        assert row["legacy_of"] == _as_list(fact.get("legacy_of")), event_type
        assert row["legacy_overlaps"] == _as_list(fact.get("legacy_overlaps")), event_type
        assert row["superseded_by"] == _as_list(fact.get("superseded_by")), event_type
        assert row["description"] == schemas.registry.event_type(event_type).description
        assert row["id"] is not None and row["created_at"] == row["updated_at"]
    catalog_only = {t for t, r in rows.items() if r["catalog_only"]}
    assert len(catalog_only) == 11
    assert all(rows[t]["catalog_only_reason"] for t in catalog_only)
    assert "TICKET_COMMENT_ADDED" not in rows  # bus-only legacy types have no catalog row
    assert rows["TICKET_MESSAGE_ADDED"]["legacy_overlaps"] == ["TICKET_COMMENT_ADDED"]


def test_sync_twice_changes_nothing(db_url):
    before = _snapshot(db_url)
    first = _sync(db_url)
    second = _sync(db_url)
    for report in (first, second):
        assert (report.inserted, report.updated, report.unchanged) == (0, 0, 134)
        assert report.changed == () and report.stale == ()
    assert _snapshot(db_url) == before  # ids, created_at and updated_at included


def test_changed_description_updates_only_that_row(db_url):
    before = _snapshot(db_url)
    modified = Registry()
    for entry in schemas.registry:
        if entry.event_type == "TICKET_CREATED":
            entry = dataclasses.replace(entry, description="A ticket was opened (edited description).")
        modified.add(entry)
    report = _sync(db_url, modified)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 133)
    assert report.changed == ("TICKET_CREATED",)
    after = _snapshot(db_url)
    for event_type, row in after.items():
        old = before[event_type]
        if event_type != "TICKET_CREATED":
            assert row == old, event_type
            continue
        assert row["description"] == "A ticket was opened (edited description)."
        assert row["id"] == old["id"] and row["created_at"] == old["created_at"]
        assert row["updated_at"] > old["updated_at"]
    back = _sync(db_url)  # the code registry wins again
    assert back.changed == ("TICKET_CREATED",)
    assert _snapshot(db_url)["TICKET_CREATED"]["description"] == before["TICKET_CREATED"]["description"]


def test_moving_a_type_to_v2_changes_only_its_ref(db_url):
    """docs/catalog.md, "Adding a .v2": the entry's ref moves to .v2, .v1 stays registered."""
    before = _snapshot(db_url)
    v1 = schemas.registry.event_type("TICKET_UNASSIGNED")
    moved = Registry()
    for entry in schemas.registry:
        moved.add(dataclasses.replace(entry, ref="payload.TicketUnassigned.v2") if entry is v1 else entry)
    moved.add_version("TICKET_UNASSIGNED", "payload.TicketUnassigned.v1", v1.model)
    assert moved.owner("payload.TicketUnassigned.v1") == "TICKET_UNASSIGNED"
    report = _sync(db_url, moved)
    assert report.changed == ("TICKET_UNASSIGNED",) and report.updated == 1
    row, old = _snapshot(db_url)["TICKET_UNASSIGNED"], before["TICKET_UNASSIGNED"]
    assert row["payload_schema_ref"] == "payload.TicketUnassigned.v2"
    assert {k: v for k, v in row.items() if k not in ("payload_schema_ref", "updated_at")} == {
        k: v for k, v in old.items() if k not in ("payload_schema_ref", "updated_at")
    }


def test_sync_inserts_missing_rows_and_reports_stale_ones(db_url):
    with psycopg.connect(db_url) as c:
        c.execute("DELETE FROM system_event_catalog WHERE event_type = 'TICKET_CLOSED'")
        c.execute(
            "INSERT INTO system_event_catalog (event_type, name, payload_schema_ref)"
            " VALUES ('RETIRED_THING', 'Retired', 'payload.RetiredThing.v1')"
        )
    report = _sync(db_url)
    assert (report.inserted, report.updated, report.unchanged) == (1, 0, 133)
    assert report.changed == ("TICKET_CLOSED",) and report.stale == ("RETIRED_THING",)
    assert "RETIRED_THING" in _snapshot(db_url)  # never deleted by a sync


def test_sync_accepts_sqlalchemy_and_dict_row_connections(db_url):
    engine = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        assert sync_system_catalog(conn).unchanged == 134
    engine.dispose()
    with psycopg.connect(db_url, row_factory=dict_row) as c:
        assert sync_system_catalog(c).unchanged == 134
        assert resolve_schema(c, "t1", "TICKET_CREATED").ref == "payload.TicketCreated.v1"


def test_downgrade_drops_the_catalog_and_upgrade_refills_it(db_url):
    engine = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    cfg = migrate.alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "outbox_0001")
    engine.dispose()
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('system_event_catalog'), to_regclass('event_catalog')").fetchone() == (
            None,
            None,
        )
        assert c.execute("SELECT to_regclass('outbox_events')").fetchone()[0] == "outbox_events"
    migrate.upgrade(db_url)
    assert len(_snapshot(db_url)) == 134


def test_offline_sql_creates_and_fills_the_catalog(pg_admin_url):
    res = run_cli("migrate", "--sql")
    assert res.returncode == 0, res.stderr
    assert "INSERT INTO system_event_catalog" in res.stdout and "payload.TicketCreated.v1" in res.stdout
    name = f"outbox_cat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        url = db_url_for(pg_admin_url, name)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(res.stdout.encode())  # the DBA path: the printed script, as is
        assert _snapshot(url).keys() == _catalog_facts().keys()
        assert _sync(url).changes == 0  # online and offline write the same rows
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- tenant catalogs and resolution --------------------------------------------------------------------------


def test_tenant_entry_wins_over_the_system_catalog_for_that_tenant_only(db_url):
    with psycopg.connect(db_url) as c:
        system = resolve_schema(c, "acme", "TICKET_CREATED")
        assert (system.source, system.ref, system.schema) == ("system", "payload.TicketCreated.v1", None)
        assert system.name == "Ticket Created" and system.category == "Tickets"
        assert system.json_schema() == schemas.registry.json_schema("payload.TicketCreated.v1")
        register_tenant_event(c, "acme", "TICKET_CREATED", name="Ticket Created (ACME)", ref="payload.TicketCreated.v2")
        c.commit()
        mine = resolve_schema(c, "acme", "TICKET_CREATED")
        assert (mine.source, mine.ref, mine.name) == ("tenant", "payload.TicketCreated.v2", "Ticket Created (ACME)")
        other = resolve_schema(c, "globex", "TICKET_CREATED")
        assert (other.source, other.ref) == ("system", "payload.TicketCreated.v1")
        # registering again replaces the entry (same id)
        first_id = c.execute("SELECT id FROM event_catalog WHERE tenant_id = 'acme'").fetchone()[0]
        again = register_tenant_event(c, "acme", "TICKET_CREATED", name="Renamed", ref="payload.TicketCreated.v3")
        assert again == str(first_id)
        assert resolve_schema(c, "acme", "TICKET_CREATED").ref == "payload.TicketCreated.v3"
        assert unregister_tenant_event(c, "acme", "TICKET_CREATED") is True
        assert resolve_schema(c, "acme", "TICKET_CREATED").source == "system"
        assert unregister_tenant_event(c, "acme", "TICKET_CREATED") is False


def test_inline_schema_tenant_event_resolves(db_url):
    schema = {
        "type": "object",
        "properties": {"widgetId": {"type": "string"}, "shine": {"type": "integer", "minimum": 0}},
        "required": ["widgetId"],
    }
    with psycopg.connect(db_url) as c:
        register_tenant_event(
            c, "acme", "ACME_WIDGET_POLISHED", name="Widget Polished", schema=schema, category="Custom",
            description="A widget was polished.",
        )  # fmt: skip
        c.commit()
    with psycopg.connect(db_url) as c:
        got = resolve_schema(c, "acme", "ACME_WIDGET_POLISHED")
        assert (got.source, got.ref, got.schema, got.category) == ("tenant", None, schema, "Custom")
        assert got.json_schema() == schema
        with pytest.raises(EventTypeNotInCatalog) as exc:
            resolve_schema(c, "globex", "ACME_WIDGET_POLISHED")
        assert exc.value.event_type == "ACME_WIDGET_POLISHED" and "globex" in str(exc.value)


def test_tenant_entry_needs_exactly_one_of_ref_or_schema(db_url):
    with psycopg.connect(db_url) as c:
        with pytest.raises(ValueError, match="exactly one"):
            register_tenant_event(c, "acme", "X_HAPPENED", name="X")
        with pytest.raises(ValueError, match="exactly one"):
            register_tenant_event(c, "acme", "X_HAPPENED", name="X", ref="payload.X.v1", schema={"type": "object"})
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute("INSERT INTO event_catalog (tenant_id, event_type, name) VALUES ('acme', 'X_HAPPENED', 'X')")
        c.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute(
                "INSERT INTO event_catalog (tenant_id, event_type, name, payload_schema)"
                " VALUES ('acme', 'X_HAPPENED', 'X', '[1]'::jsonb)"
            )


# ---- CLI ---------------------------------------------------------------------------------------------------


def test_cli_list_json_and_category_filter():
    res = run_cli("catalog", "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["event_type"]: r for r in json.loads(res.stdout)}
    facts = _catalog_facts()
    assert set(rows) == set(facts)
    for t, fact in facts.items():
        assert rows[t]["category"] == fact["category"]
        assert rows[t]["payload_schema_ref"] == fact["payload_schema_ref"]
        assert rows[t]["catalog_only"] is fact["catalog_only"]
    res = run_cli("catalog", "list", "--json", "--category", "tickets")
    tickets = json.loads(res.stdout)
    assert len(tickets) == sum(f["category"] == "Tickets" for f in facts.values()) and tickets
    res = run_cli("catalog", "list", "--json", "--all")
    assert len(json.loads(res.stdout)) == len(_facts()) == 176
    res = run_cli("catalog", "list", "--category", "Tags")
    assert res.returncode == 0 and "TAG_APPLIED" in res.stdout


def test_cli_show():
    res = run_cli("catalog", "show", "TICKET_APPROVAL_GRANTED", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["catalog_only"] is True and "approval" in data["catalog_only_reason"]
    fields = {f["field"]: f for f in data["fields"]}
    assert fields["approvalRequestId"] == {
        "field": "approvalRequestId", "type": "string (uuid)", "required": True, "enum": None
    }  # fmt: skip
    assert fields["actorType"]["enum"] == ["USER", "CONTACT", "SYSTEM"]
    if data["example"] is not None:  # present when outbox.schemas.simulate is installed
        schemas.validate("TICKET_APPROVAL_GRANTED", data["example"])
    res = run_cli("catalog", "show", "TICKET_MESSAGE_ADDED")
    assert res.returncode == 0, res.stderr
    assert "TICKET_COMMENT_ADDED" in res.stdout and "payload.TicketMessageAdded.v1" in res.stdout
    legacy = json.loads(run_cli("catalog", "show", "schedule_entry_updated", "--json").stdout)
    assert legacy["in_system_catalog"] is False and "APPOINTMENT_RESCHEDULED" in legacy["superseded_by"]
    res = run_cli("catalog", "show", "TICKT_CREATED")
    assert res.returncode == 1 and "TICKET_CREATED" in res.stderr


def test_cli_sync(db_url):
    res = run_cli("catalog", "sync", "--json", env={"OUTBOX_DATABASE_URL": db_url})
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["inserted"], report["updated"], report["unchanged"]) == (0, 0, 134)
    with psycopg.connect(db_url) as c:
        c.execute("UPDATE system_event_catalog SET name = 'x' WHERE event_type = 'TICKET_CREATED'")
    res = run_cli("catalog", "sync", "--dry-run", "--database-url", db_url)
    assert res.returncode == 0 and "1 would be updated" in res.stdout
    assert _snapshot(db_url)["TICKET_CREATED"]["name"] == "x"
    res = run_cli("catalog", "sync", "--database-url", db_url)
    assert res.returncode == 0 and "TICKET_CREATED" in res.stdout
    assert _snapshot(db_url)["TICKET_CREATED"]["name"] == "Ticket Created"


# ---- AsyncAPI --------------------------------------------------------------------------------------------------


def _pointer(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def check_asyncapi_3_structure(doc: dict[str, Any]) -> None:
    """The rules of AsyncAPI 3.0.0 this export relies on, checked without the official JSON Schema."""
    import jsonschema

    key = r"^[\w\d\.\-_]+$"
    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(doc["info"])
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations",
                        "components"}  # fmt: skip
    for name, channel in doc["channels"].items():
        assert jsonschema.Draft7Validator({"pattern": key}).is_valid(name)
        assert isinstance(channel["address"], str) and channel["messages"]
        for m in channel["messages"].values():
            assert set(m) == {"$ref"} and m["$ref"].startswith("#/components/messages/")
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")
        assert set(op["channel"]) == {"$ref"} and op["channel"]["$ref"].startswith("#/channels/")
        channel_ref = op["channel"]["$ref"]
        for m in op["messages"]:  # a subset of the channel's messages, by reference
            assert set(m) == {"$ref"} and m["$ref"].startswith(channel_ref + "/messages/")
    message_keys = {"contentType", "headers", "payload", "correlationId", "tags", "summary", "name", "title",
                    "description", "externalDocs", "deprecated", "examples", "bindings", "traits"}  # fmt: skip
    for name, msg in doc["components"]["messages"].items():
        assert jsonschema.Draft7Validator({"pattern": key}).is_valid(name)
        assert all(k in message_keys or k.startswith("x-") for k in msg), name
        jsonschema.Draft7Validator.check_schema(msg["payload"])
        assert "$defs" not in json.dumps(msg["payload"]), name
        names = [t["name"] for t in msg.get("tags", [])]
        assert len(names) == len(set(names))
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema.Draft7Validator({"pattern": key}).is_valid(name)
        jsonschema.Draft7Validator.check_schema(schema)
    for ref in _refs(doc):
        _pointer(doc, ref)


def _official_asyncapi_schema() -> dict[str, Any] | None:
    """The official AsyncAPI 3.0.0 JSON Schema (npm package @asyncapi/specs), if it is on this machine."""
    candidates = [os.environ.get("ASYNCAPI_3_0_0_SCHEMA", ""), str(Path(ROOT) / "tests/data/asyncapi-3.0.0.json")]
    for base in (Path(ROOT), Path(ROOT).parent):
        candidates.append(str(base / "node_modules/@asyncapi/specs/schemas/3.0.0.json"))
    for path in candidates:
        if path and Path(path).is_file():
            return json.loads(Path(path).read_text())
    return None


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("asyncapi") / "events.asyncapi.json"
    res = run_cli("catalog", "export", "--format", "asyncapi", "--output", str(out))
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_asyncapi_export_has_one_message_per_event_type(exported):
    messages = exported["components"]["messages"]
    assert set(messages) == {e.event_type for e in schemas.registry}
    (channel,) = exported["channels"].values()
    assert channel["address"] == "workflow:events:global"
    assert set(channel["messages"]) == set(messages)
    (op,) = exported["operations"].values()
    assert op["action"] == "send" and len(op["messages"]) == len(messages)
    created = messages["TICKET_CREATED"]
    assert created["title"] == "Ticket Created" and created["x-schema-ref"] == "payload.TicketCreated.v1"
    assert created["payload"]["required"] == schemas.registry.json_schema("payload.TicketCreated.v1")["required"]
    assert "Catalog only" in messages["DOCUMENT_SIGNED"]["description"]
    # $defs moved to components/schemas and referenced from there
    email = json.dumps(messages["INBOUND_EMAIL_RECEIVED"]["payload"])
    assert "#/components/schemas/InboundEmailReceivedV1EmailData" in email
    assert "InboundEmailReceivedV1EmailData" in exported["components"]["schemas"]


def test_asyncapi_export_is_structurally_valid_and_examples_match_payloads(exported):
    import jsonschema

    check_asyncapi_3_structure(exported)
    checked = 0
    for msg in exported["components"]["messages"].values():
        for example in msg.get("examples", []):
            # payload refs point at #/components/...: give the validator that root
            jsonschema.Draft7Validator({**msg["payload"], "components": exported["components"]}).validate(
                example["payload"]
            )
            checked += 1
    assert checked in (0, len(exported["components"]["messages"]))


def test_asyncapi_export_validates_against_the_official_3_0_0_schema(exported):
    import jsonschema

    spec = _official_asyncapi_schema()
    assert spec is not None, "tests/data/asyncapi-3.0.0.json (the official AsyncAPI 3.0.0 schema) is missing"
    assert spec["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    validator = jsonschema.Draft7Validator(spec)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(exported)]
    assert errors == []
    broken = json.loads(json.dumps(exported))
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording: rejected
    assert not validator.is_valid(broken)


def test_asyncapi_stream_address_follows_outbox_stream(tmp_path):
    res = run_cli("catalog", "export", "--format", "asyncapi", "--system-only", "--no-examples",
                  env={"OUTBOX_STREAM": "tenant-x:events"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert next(iter(doc["channels"].values()))["address"] == "tenant-x:events"
    assert len(doc["components"]["messages"]) == 134
    assert not any("examples" in m for m in doc["components"]["messages"].values())
    assert run_cli("catalog", "export", "--format", "openapi").returncode == 2


def test_hoisted_defs_do_not_collide():
    components: dict[str, Any] = {}
    a = {"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": {"type": "string"}}}
    b = {"type": "object", "properties": {"y": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": {"type": "integer"}}}
    same = {"type": "object", "properties": {"z": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": {"type": "string"}}}
    assert hoist_defs(a, components, "A")["properties"]["x"] == {"$ref": "#/components/schemas/Item"}
    assert hoist_defs(b, components, "B")["properties"]["y"] == {"$ref": "#/components/schemas/B_Item"}
    assert hoist_defs(same, components, "C")["properties"]["z"] == {"$ref": "#/components/schemas/Item"}
    assert components == {"Item": {"type": "string"}, "B_Item": {"type": "integer"}}


def test_document_builder_accepts_a_plain_iterable_of_entries():
    entries = [schemas.registry.event_type("TICKET_CREATED"), schemas.registry.event_type("TICKET_COMMENT_ADDED")]
    doc = asyncapi_document(entries, stream="s", examples=False)
    assert set(doc["components"]["messages"]) == {"TICKET_CREATED", "TICKET_COMMENT_ADDED"}
    check_asyncapi_3_structure(doc)
