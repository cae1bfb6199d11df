"""The write side: ``outbox.record`` and friends, against a real Postgres (one fresh database per test).

Every test checks what actually landed in ``outbox_events`` (read back over a separate connection
after the writer's transaction ended) and, where an error is expected, that nothing was written and
that the caller's transaction is still usable afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

import outbox
from outbox import (
    Actor,
    DuplicateEvent,
    Event,
    NonUtcTimestamp,
    NotInTransaction,
    OutboxError,
    PayloadTooLarge,
    PayloadValidationError,
    RecordError,
    TenantMismatch,
    UnknownEventType,
    schemas,
)
from outbox.errors import InvalidArgument, UnsupportedConnection
from outbox.schemas.tickets import TicketCreatedLegacy, TicketCreatedV1, TicketStatusChangedV1
from outbox.settings import sqlalchemy_url
from outbox.sql import NOTIFY_CHANNEL
from outbox.write import DEFAULT_MAX_PAYLOAD_BYTES

TENANT = "tenant-a"
USER = "6f1c1d7e-3a52-4c1b-9a43-0d6f3c1f2a11"
OTHER_USER = "0b8e4d7a-9d1e-4f6c-8a52-7c3e2b1d4f90"
CONTACT = "2d9a7f30-5b6e-4c8d-9e1f-a3b4c5d6e7f8"
TICKET = "a8f5f167-0f3c-4b5e-8d9a-1c2b3e4f5a6b"
TICKET_2 = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"
INVOICE = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
EXECUTION = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
FIXED = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
FIXED_ISO = "2024-05-06T07:08:09.123Z"

ISO_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"


# ---- helpers -------------------------------------------------------------------------------------


def make_tickets_table(db_url: str) -> None:
    """The business table the tests write next to the outbox."""
    with psycopg.connect(db_url) as c:
        c.execute("CREATE TABLE tickets (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text NOT NULL)")


def insert_ticket(conn: psycopg.Connection[Any], ticket_id: str = TICKET, title: str = "printer on fire") -> None:
    conn.execute("INSERT INTO tickets (id, tenant_id, title) VALUES (%s, %s, %s)", (ticket_id, TENANT, title))


INSERT_TICKET_SQL = text("INSERT INTO tickets (id, tenant_id, title) VALUES (:id, :tenant, :title)")


def ticket_params(ticket_id: str = TICKET) -> dict[str, str]:
    return {"id": ticket_id, "tenant": TENANT, "title": "printer on fire"}


def events(db_url: str) -> list[dict[str, Any]]:
    """Every outbox row, in insertion (id) order, read over a fresh connection."""
    with psycopg.connect(db_url, row_factory=dict_row) as c:
        return c.execute("SELECT *, xid::text AS xid_text FROM outbox_events ORDER BY id").fetchall()


def count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as c:
        row = c.execute(f"SELECT count(*) FROM {table}").fetchone()  # table names are test constants
        assert row is not None
        return int(row[0])


def ticket_ids(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as c:
        return {str(r[0]) for r in c.execute("SELECT id FROM tickets").fetchall()}


def status_payload(**extra: Any) -> dict[str, Any]:
    """A valid TICKET_STATUS_CHANGED payload (no legacy shape: errors name a single contract)."""
    return {"ticketId": TICKET, "previousStatusId": "open", "newStatusId": "closed", **extra}


def stored_payload(db_url: str) -> dict[str, Any]:
    rows = events(db_url)
    assert len(rows) == 1, rows
    return rows[0]["payload"]


def record_one_committed(db_url: str, event_type: str, payload: Any, **kw: Any) -> uuid.UUID:
    with psycopg.connect(db_url) as conn:
        eid = outbox.record(conn, event_type, payload, **kw)
        conn.commit()
    return eid


def parse_z(ts: str) -> datetime:
    assert ts.endswith("Z"), ts
    return datetime.fromisoformat(ts[:-1] + "+00:00")


# ---- 1. atomicity with the business write ---------------------------------------------------------


def test_rollback_leaves_no_event_and_no_business_row(db_url):
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        eid = outbox.record(conn, "TICKET_CREATED", {"ticketId": TICKET}, tenant_id=TENANT, actor=USER)
        assert isinstance(eid, uuid.UUID)
        # visible inside the writer's transaction...
        assert conn.execute("SELECT count(*) FROM outbox_events").fetchone() == (1,)
        # ...but not to anybody else before commit
        assert count(db_url, "outbox_events") == 0
        conn.rollback()
    assert count(db_url, "outbox_events") == 0
    assert count(db_url, "tickets") == 0


def test_commit_writes_exactly_one_row_with_every_column(db_url):
    make_tickets_table(db_url)
    given = {"ticketId": TICKET, "createdByUserId": USER, "updatedFields": ["title"]}
    before = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        eid = outbox.record(
            conn,
            "TICKET_CREATED",
            given,
            tenant_id=TENANT,
            actor=USER,
            aggregate=f"ticket:{TICKET}",
            correlation="corr-42",
            execution_id=EXECUTION,
            event_name="ticket.created",
            from_state="none",
            to_state="open",
        )
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        writer_xid = row[0]
        conn.commit()
    after = datetime.now(UTC)

    assert given == {"ticketId": TICKET, "createdByUserId": USER, "updatedFields": ["title"]}, "input mutated"
    assert count(db_url, "tickets") == 1
    rows = events(db_url)
    assert len(rows) == 1
    r = rows[0]
    assert r["event_id"] == eid
    assert eid.version == 7  # time-ordered ids by default
    assert r["tenant_id"] == TENANT
    assert r["event_type"] == "TICKET_CREATED"
    assert r["schema_ref"] == "payload.TicketCreated.v1"
    assert r["aggregate"] == f"ticket:{TICKET}"
    assert r["correlation_key"] == "corr-42"
    assert r["execution_id"] == EXECUTION
    assert r["event_name"] == "ticket.created"
    assert (r["from_state"], r["to_state"]) == ("none", "open")
    assert r["status"] == "pending"
    assert r["attempts"] == 0
    # relay bookkeeping starts empty (only the columns this schema version has)
    for col in ("publish_seq", "published_at", "stream_id", "last_error", "next_attempt_at"):
        if col in r:
            assert r[col] is None, col
    assert r["xid_text"] == writer_xid
    assert r["recorded_at"] is not None

    payload = r["payload"]
    occurred = payload.pop("occurredAt")
    assert payload == {**given, "tenantId": TENANT, "actorUserId": USER, "actorType": "USER"}
    assert occurred.endswith("Z")
    ts = parse_z(occurred)
    assert before - timedelta(milliseconds=1) <= ts <= after
    assert r["occurred_at"] == ts


def test_optional_columns_default_to_null(db_url):
    eid = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
    (r,) = events(db_url)
    assert r["event_id"] == eid
    for col in ("aggregate", "correlation_key", "execution_id", "event_name", "from_state", "to_state"):
        assert r[col] is None, col
    assert "actorUserId" not in r["payload"] and "actorType" not in r["payload"]


# ---- 2. bad input: typed error, nothing written, transaction still usable --------------------------

BAD_INPUTS = [
    pytest.param(
        "TICKET_EXPLODED", status_payload(), {}, UnknownEventType, "event_type", "unknown event type",
        id="unknown-event-type",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", {"previousStatusId": "a", "newStatusId": "b"}, {},
        PayloadValidationError, "ticketId", "required field is missing", id="missing-required",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(newStatusId=5), {},
        PayloadValidationError, "newStatusId", "valid string", id="wrong-type-int-for-str",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(ticketId="not-a-uuid"), {},
        PayloadValidationError, "ticketId", "UUID", id="bad-uuid",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(actorType="ROBOT"), {},
        PayloadValidationError, "actorType", "USER", id="bad-enum",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(reason=None), {},
        PayloadValidationError, "reason", "must not be null", id="explicit-null-optional",
    ),
    pytest.param(
        "ASSET_UPDATED", {"assetId": TICKET, "changes": {"status": "not-an-object"}}, {},
        PayloadValidationError, "changes.status", "object", id="nested-dict-value",
    ),
    pytest.param(
        "PAYMENT_APPLIED",
        {
            "paymentId": TICKET,
            "applications": [
                {"invoiceId": INVOICE, "amountApplied": "10.00"},
                {"invoiceId": "nope", "amountApplied": "5.00"},
            ],
        },
        {}, PayloadValidationError, "applications.1.invoiceId", "UUID", id="items-path",
    ),
    pytest.param(
        "DOCUMENT_SIGNATURE_REQUESTED",
        {"documentId": TICKET, "requestId": TICKET_2, "signers": [{"email": "not-an-email"}]},
        {}, PayloadValidationError, "signers.0.email", "e-mail", id="items-path-email",
    ),
    pytest.param(
        "PAYMENT_APPLIED", {"paymentId": TICKET, "applications": []}, {},
        PayloadValidationError, "applications", "at least 1", id="empty-list-min-length",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(tenantId="tenant-b"), {},
        TenantMismatch, "tenantId", "tenant-b", id="tenant-mismatch",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"tenant_id": None},
        PayloadValidationError, "tenantId", "required field is missing", id="no-tenant-at-all",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"tenant_id": ""},
        InvalidArgument, "tenant_id", "non-empty", id="empty-tenant-argument",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(changedAt=datetime(2024, 1, 1, 12, 0)), {},
        NonUtcTimestamp, "changedAt", "UTC", id="naive-datetime-in-payload",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED",
        status_payload(changedAt=datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))),
        {}, NonUtcTimestamp, "changedAt", "UTC", id="plus-two-datetime-in-payload",
    ),
    pytest.param(
        "TICKET_CREATED",
        {"ticketId": TICKET, "changes": {"dueAt": {"previous": datetime(2024, 1, 1, 12, 0)}}},
        {}, NonUtcTimestamp, "changes.dueAt.previous", "UTC", id="naive-datetime-nested",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(history=[{"at": datetime(2024, 1, 1)}]), {},
        NonUtcTimestamp, "history.0.at", "UTC", id="naive-datetime-in-list",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(occurredAt=datetime(2024, 1, 1, 12, 0)), {},
        NonUtcTimestamp, "occurredAt", "UTC", id="naive-occurredAt-datetime",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(occurredAt="2024-01-01T12:00:00+01:00"), {},
        PayloadValidationError, "occurredAt", "UTC", id="occurredAt-string-plus-one",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(occurredAt="yesterday"), {},
        PayloadValidationError, "occurredAt", "ISO-8601", id="occurredAt-garbage",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"occurred_at": datetime(2024, 1, 1, 12, 0)},
        NonUtcTimestamp, "occurred_at", "UTC", id="naive-occurred_at-argument",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(),
        {"occurred_at": datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))},
        NonUtcTimestamp, "occurred_at", "UTC", id="minus-five-occurred_at-argument",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"event_id": "not-a-uuid"},
        InvalidArgument, "event_id", "UUID", id="malformed-event-id",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"aggregate": ""},
        InvalidArgument, "aggregate", "non-empty", id="empty-aggregate",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"correlation": 1.5},
        InvalidArgument, "correlation", "string", id="float-correlation",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", [("ticketId", TICKET)], {},
        InvalidArgument, "payload", "mapping", id="payload-not-a-mapping",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(blob=object()), {},
        InvalidArgument, "blob", "JSON", id="payload-not-serialisable",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(actorUserId=OTHER_USER), {"actor": USER},
        InvalidArgument, "actorUserId", OTHER_USER, id="actor-conflicts-with-payload-user",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(actorType="SYSTEM"), {"actor": USER},
        InvalidArgument, "actorType", "SYSTEM", id="actor-conflicts-with-payload-type",
    ),
    pytest.param(
        "TICKET_STATUS_CHANGED", status_payload(), {"actor": "not-a-uuid"},
        PayloadValidationError, "actorUserId", "UUID", id="actor-not-a-uuid",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("event_type", "payload", "kwargs", "exc_type", "field", "reason_part"), BAD_INPUTS)
def test_bad_input_raises_typed_error_and_writes_nothing(
    db_url, event_type, payload, kwargs, exc_type, field, reason_part
):
    make_tickets_table(db_url)
    kwargs = {"tenant_id": TENANT, **kwargs}
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn, TICKET)
        with pytest.raises(exc_type) as info:
            outbox.record(conn, event_type, payload, **kwargs)
        err = info.value
        assert isinstance(err, RecordError) and isinstance(err, OutboxError)
        assert err.field == field, str(err)
        assert reason_part.lower() in err.reason.lower(), err.reason
        assert err.event_type == event_type
        if isinstance(err, PayloadValidationError):
            assert err.errors and err.errors[0].field == field
            assert err.schema_ref == schemas.registry.event_type(event_type).ref
        # the caller's transaction is untouched and still usable
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        insert_ticket(conn, TICKET_2, "after the error")
        conn.commit()
    assert ticket_ids(db_url) == {TICKET, TICKET_2}
    assert count(db_url, "outbox_events") == 0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"score": float("nan")}, id="nan"),
        pytest.param({"score": float("inf")}, id="infinity"),
        pytest.param({"reason": "before\x00after"}, id="nul-in-declared-string"),
        pytest.param({"note": {"text": "a\x00b"}}, id="nul-in-nested-extra-string"),
        pytest.param({"bad\x00key": "v"}, id="nul-in-key"),
    ],
)
def test_values_postgres_jsonb_cannot_store_raise_typed_error_and_keep_transaction_usable(db_url, extra):
    """NaN/Infinity and U+0000 are not storable in jsonb: they must be refused before the INSERT."""
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        with pytest.raises(RecordError):
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(**extra), tenant_id=TENANT)
        insert_ticket(conn, TICKET_2)
        conn.commit()
    assert ticket_ids(db_url) == {TICKET, TICKET_2}
    assert count(db_url, "outbox_events") == 0


@pytest.mark.parametrize(
    "occurred_at",
    [pytest.param("2024-01-01T00:00:00Z", id="string"), pytest.param(date(2024, 1, 1), id="date")],
)
def test_occurred_at_argument_of_the_wrong_type_is_a_typed_error(db_url, occurred_at):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(RecordError) as info:
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, occurred_at=occurred_at)
        assert info.value.field == "occurred_at"
        conn.commit()
    assert count(db_url, "outbox_events") == 0


def test_date_only_occurredAt_is_not_a_timestamp(db_url):
    # the published JSON Schema says format: date-time (RFC 3339), which needs a time part
    assert schemas.json_schema("payload.TicketStatusChanged.v1")["properties"]["occurredAt"]["format"] == "date-time"
    with psycopg.connect(db_url) as conn:
        with pytest.raises(PayloadValidationError) as info:
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(occurredAt="2024-01-01Z"), tenant_id=TENANT)
        assert info.value.field == "occurredAt"
        conn.commit()
    assert count(db_url, "outbox_events") == 0


def test_validation_error_lists_every_field_problem(db_url):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(PayloadValidationError) as info:
            outbox.record(conn, "TICKET_STATUS_CHANGED", {"ticketId": "x", "newStatusId": 3}, tenant_id=TENANT)
        conn.commit()
    err = info.value
    assert err.schema_ref == "payload.TicketStatusChanged.v1"
    fields = {e.field for e in err.errors}
    assert {"ticketId", "previousStatusId", "newStatusId"} <= fields
    assert f"(+{len(err.errors) - 1} more)" in err.reason
    assert count(db_url, "outbox_events") == 0


@pytest.mark.parametrize(
    ("payload", "bad_path"),
    [
        pytest.param(
            status_payload(
                changedAt=datetime(2024, 1, 1, tzinfo=UTC),
                changes={"due": {"new": datetime(2024, 1, 2, 9, 0)}},
            ),
            "changes.due.new",
            id="utc-datetime-before-naive-one",
        ),
        pytest.param(
            status_payload(history=[datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2)]),
            "history.1",
            id="utc-list-item-before-naive-one",
        ),
    ],
)
def test_non_utc_error_names_the_offending_key_not_the_first_datetime(db_url, payload, bad_path):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(NonUtcTimestamp) as info:
            outbox.record(conn, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
        conn.commit()
    assert info.value.field == bad_path, f"error names {info.value.field!r}, the naive datetime is at {bad_path!r}"
    assert count(db_url, "outbox_events") == 0


def test_payload_too_large(db_url):
    make_tickets_table(db_url)
    try:
        outbox.configure(max_payload_bytes=2048)
        with psycopg.connect(db_url) as conn:
            insert_ticket(conn)
            with pytest.raises(PayloadTooLarge) as info:
                outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(reason="x" * 4096), tenant_id=TENANT)
            assert info.value.limit == 2048
            assert info.value.size > 2048
            assert info.value.field == ""
            assert isinstance(info.value, RecordError)
            # a small one still fits in the same transaction
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(reason="short"), tenant_id=TENANT)
            conn.commit()
    finally:
        outbox.configure(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    assert count(db_url, "tickets") == 1
    assert [r["event_id"] for r in events(db_url)] == [eid]


def test_payload_limit_counts_utf8_bytes_and_is_inclusive(db_url):
    # every key given, so the serialised text is exactly what we compute here; the size rule measures the
    # wire payload_json, which is jsonb's text: ", " and ": " separators (json.dumps' default ones)
    payload = status_payload(tenantId=TENANT, occurredAt=FIXED_ISO, reason="é" * 300)  # 300 characters, 600 bytes
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    chars = len(json.dumps(payload, ensure_ascii=False))
    assert size > chars
    try:
        outbox.configure(max_payload_bytes=size - 1)
        with psycopg.connect(db_url) as conn:
            with pytest.raises(PayloadTooLarge) as info:
                outbox.record(conn, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
            assert info.value.size == size
            # a limit between the character count and the byte count must still refuse it
            outbox.configure(max_payload_bytes=chars + 1)
            with pytest.raises(PayloadTooLarge):
                outbox.record(conn, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
            outbox.configure(max_payload_bytes=size)
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
            conn.commit()
    finally:
        outbox.configure(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    (r,) = events(db_url)
    assert r["event_id"] == eid and r["payload"]["reason"] == "é" * 300


def test_configure_rejects_non_positive_limit_and_keeps_the_old_one(db_url):
    with pytest.raises(ValueError):
        outbox.configure(max_payload_bytes=0)
    # the default is still in force: a 100 KiB payload is accepted
    eid = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(reason="y" * 100_000), tenant_id=TENANT)
    assert [r["event_id"] for r in events(db_url)] == [eid]


def test_duplicate_event_id_keeps_the_transaction_usable(db_url):
    make_tickets_table(db_url)
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        first = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=eid)
        assert first == eid
        with pytest.raises(DuplicateEvent) as info:
            outbox.record(
                conn, "TICKET_STATUS_CHANGED", status_payload(newStatusId="other"), tenant_id=TENANT, event_id=str(eid)
            )
        assert info.value.event_id == str(eid)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        insert_ticket(conn, TICKET_2)
        conn.commit()
    assert ticket_ids(db_url) == {TICKET, TICKET_2}
    (r,) = events(db_url)
    assert r["event_id"] == eid and r["payload"]["newStatusId"] == "closed"


def test_duplicate_event_id_against_a_committed_row(db_url):
    eid = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
    with psycopg.connect(db_url) as conn:
        with pytest.raises(DuplicateEvent):
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=eid)
        other = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == [eid, other]


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-rolls-back"])
def test_concurrent_writers_with_the_same_event_id(db_url, first_commits):
    """The second writer waits for the first; it gets DuplicateEvent only if the first one commits."""
    eid = uuid.uuid4()
    outcome: list[object] = []
    with psycopg.connect(db_url) as first:
        outbox.record(first, "TICKET_STATUS_CHANGED", status_payload(reason="first"), tenant_id=TENANT, event_id=eid)

        def second_writer() -> None:
            with psycopg.connect(db_url) as second:
                try:
                    outbox.record(
                        second,
                        "TICKET_STATUS_CHANGED",
                        status_payload(reason="second"),
                        tenant_id=TENANT,
                        event_id=eid,
                    )
                    outcome.append("inserted")
                except DuplicateEvent as exc:
                    outcome.append(exc)
                second.commit()

        t = threading.Thread(target=second_writer)
        t.start()
        t.join(0.5)
        assert t.is_alive(), "second writer should wait on the first writer's uncommitted row"
        first.commit() if first_commits else first.rollback()
        t.join(10)
        assert not t.is_alive()
    (r,) = events(db_url)
    assert r["event_id"] == eid
    if first_commits:
        assert len(outcome) == 1 and isinstance(outcome[0], DuplicateEvent)
        assert r["payload"]["reason"] == "first"
    else:
        assert outcome == ["inserted"]
        assert r["payload"]["reason"] == "second"


def test_event_id_argument_is_used_in_any_uuid_spelling(db_url):
    eid = uuid.uuid4()
    got = record_one_committed(
        db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=str(eid).upper()
    )
    assert got == eid and isinstance(got, uuid.UUID)
    assert events(db_url)[0]["event_id"] == eid


# ---- 3. filling ------------------------------------------------------------------------------------


def test_occurred_at_filled_when_absent(db_url):
    before = datetime.now(UTC)
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
    after = datetime.now(UTC)
    (r,) = events(db_url)
    occurred = r["payload"]["occurredAt"]
    assert isinstance(occurred, str) and re.match(ISO_Z, occurred), occurred
    ts = parse_z(occurred)
    assert before - timedelta(milliseconds=1) <= ts <= after
    assert r["occurred_at"] == ts


def test_occurred_at_argument_fills_missing_occurredAt(db_url):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, occurred_at=FIXED)
    (r,) = events(db_url)
    assert r["payload"]["occurredAt"] == FIXED_ISO
    assert r["occurred_at"] == FIXED


def test_occurred_at_argument_in_another_zero_offset_zone_is_accepted(db_url):
    ts = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(0), "GMT"))
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, occurred_at=ts)
    (r,) = events(db_url)
    assert r["payload"]["occurredAt"] == "2024-01-02T03:04:05.000Z"
    assert r["occurred_at"] == ts


def test_payload_occurredAt_wins_over_argument(db_url):
    record_one_committed(
        db_url,
        "TICKET_STATUS_CHANGED",
        status_payload(occurredAt="2023-12-31T23:59:59Z"),
        tenant_id=TENANT,
        occurred_at=FIXED,
    )
    (r,) = events(db_url)
    assert r["payload"]["occurredAt"] == "2023-12-31T23:59:59Z"
    assert r["occurred_at"] == datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_payload_occurredAt_as_aware_utc_datetime(db_url):
    ts = datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(occurredAt=ts), tenant_id=TENANT)
    (r,) = events(db_url)
    assert parse_z(r["payload"]["occurredAt"]) == ts
    assert r["occurred_at"] == ts


@pytest.mark.parametrize("actor", [USER, uuid.UUID(USER), Actor(user_id=USER)], ids=["str", "uuid", "Actor"])
def test_actor_user_fills_actorUserId_and_type(db_url, actor):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, actor=actor)
    p = stored_payload(db_url)
    assert p["actorUserId"] == USER
    assert p["actorType"] == "USER"
    assert "actorContactId" not in p


def test_actor_contact_fills_actorContactId(db_url):
    record_one_committed(
        db_url,
        "TICKET_STATUS_CHANGED",
        status_payload(),
        tenant_id=TENANT,
        actor=Actor(contact_id=CONTACT, type="CONTACT"),
    )
    p = stored_payload(db_url)
    assert p["actorContactId"] == CONTACT
    assert p["actorType"] == "CONTACT"
    assert "actorUserId" not in p


def test_actor_contact_without_explicit_type(db_url):
    record_one_committed(
        db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, actor=Actor(contact_id=uuid.UUID(CONTACT))
    )
    p = stored_payload(db_url)
    assert (p["actorContactId"], p["actorType"]) == (CONTACT, "CONTACT")


def test_actor_system(db_url):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, actor=Actor.system())
    p = stored_payload(db_url)
    assert p["actorType"] == "SYSTEM"
    assert "actorUserId" not in p and "actorContactId" not in p


def test_actor_agreeing_with_payload_is_fine(db_url):
    record_one_committed(
        db_url,
        "TICKET_STATUS_CHANGED",
        status_payload(actorUserId=USER, actorType="USER"),
        tenant_id=TENANT,
        actor=USER,
    )
    p = stored_payload(db_url)
    assert (p["actorUserId"], p["actorType"]) == (USER, "USER")


def test_actor_fills_explicit_null_actor_keys(db_url):
    record_one_committed(
        db_url, "TICKET_STATUS_CHANGED", status_payload(actorUserId=None), tenant_id=TENANT, actor=USER
    )
    assert stored_payload(db_url)["actorUserId"] == USER


def test_legacy_shape_actor_fills_userId(db_url):
    # TICKET_COMMENT_ADDED is a bus-only legacy type: its contract has userId (no actorUserId) and, as the
    # platform's runtime contract, a required occurredAt that record fills
    tenant = str(uuid.UUID(CONTACT))  # the legacy contract wants a UUID tenant
    payload = {"ticketId": TICKET, "comment": {"id": TICKET_2, "content": "hi", "author": "me"}}
    record_one_committed(db_url, "TICKET_COMMENT_ADDED", payload, tenant_id=tenant, actor=USER, occurred_at=FIXED)
    (r,) = events(db_url)
    assert r["schema_ref"] == "legacy.TicketCommentAdded.v1"
    assert r["payload"] == {**payload, "tenantId": tenant, "userId": USER, "occurredAt": FIXED_ISO}
    assert r["occurred_at"] == FIXED


@pytest.mark.parametrize("tenant", ["tenant-a", uuid.UUID(USER)], ids=["str", "uuid"])
def test_tenant_id_fills_tenantId(db_url, tenant):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=tenant)
    (r,) = events(db_url)
    assert r["payload"]["tenantId"] == str(tenant)
    assert r["tenant_id"] == str(tenant)


def test_tenantId_in_payload_only(db_url):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(tenantId="tenant-z"))
    (r,) = events(db_url)
    assert r["tenant_id"] == "tenant-z" and r["payload"]["tenantId"] == "tenant-z"


def test_tenantId_agreeing_with_tenant_id_is_fine(db_url):
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(tenantId=TENANT), tenant_id=TENANT)
    assert events(db_url)[0]["tenant_id"] == TENANT


class Colour(Enum):
    RED = "red"


def test_python_values_serialise_to_json_strings(db_url):
    changed = datetime(2024, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    payload = {
        "ticketId": uuid.UUID(TICKET),
        "previousStatusId": "open",
        "newStatusId": "closed",
        "changedAt": changed,
        "amount": Decimal("12.50"),
        "tiny": Decimal("0.000001"),
        "ref": uuid.UUID(TICKET_2),
        "dueDate": date(2024, 2, 29),
        "colour": Colour.RED,
        "nested": {"at": datetime(2024, 1, 1, tzinfo=UTC), "ids": [uuid.UUID(USER)]},
    }
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
    p = stored_payload(db_url)
    assert p["ticketId"] == TICKET
    assert p["changedAt"] == "2024-03-04T05:06:07.891011Z"
    assert parse_z(p["changedAt"]) == changed
    assert p["amount"] == "12.50"  # a string: no float rounding
    assert p["tiny"] == str(Decimal("0.000001"))
    assert p["ref"] == TICKET_2
    assert p["dueDate"] == "2024-02-29"
    assert p["colour"] == "red"
    assert p["nested"] == {"at": "2024-01-01T00:00:00Z", "ids": [USER]}


def test_undeclared_extra_keys_are_kept(db_url):
    extra = {"customerTier": "gold", "meta": {"source": "email", "tags": [1, 2, {"deep": None}]}, "flag": False}
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(**extra), tenant_id=TENANT)
    p = stored_payload(db_url)
    for k, v in extra.items():
        assert p[k] == v


def test_pydantic_model_payload_via_record(db_url):
    model = TicketStatusChangedV1(
        tenantId=TENANT, occurredAt=FIXED_ISO, ticketId=TICKET, previousStatusId="a", newStatusId="b"
    )
    record_one_committed(db_url, "TICKET_STATUS_CHANGED", model, actor=USER)
    p = stored_payload(db_url)
    assert p == {
        "tenantId": TENANT,
        "occurredAt": FIXED_ISO,
        "ticketId": TICKET,
        "previousStatusId": "a",
        "newStatusId": "b",
        "actorUserId": USER,
        "actorType": "USER",
    }


# ---- 4. connection kinds ----------------------------------------------------------------------------


def _check_outcome(db_url: str, commit: bool, eid: uuid.UUID) -> None:
    if commit:
        assert [r["event_id"] for r in events(db_url)] == [eid]
        assert ticket_ids(db_url) == {TICKET}
    else:
        assert count(db_url, "outbox_events") == 0
        assert count(db_url, "tickets") == 0


COMMIT_OR_ROLLBACK = pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])


@COMMIT_OR_ROLLBACK
def test_psycopg_connection(db_url, commit):
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        conn.commit() if commit else conn.rollback()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_psycopg_connection_record_first_then_business_write(db_url, commit):
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        insert_ticket(conn)
        conn.commit() if commit else conn.rollback()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_psycopg_autocommit_inside_explicit_transaction(db_url, commit):
    make_tickets_table(db_url)

    class Rollback(Exception):
        pass

    eid = None
    with psycopg.connect(db_url, autocommit=True) as conn:
        try:
            with conn.transaction():
                insert_ticket(conn)
                eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                if not commit:
                    raise Rollback
        except Rollback:
            pass
    assert eid is not None
    _check_outcome(db_url, commit, eid)


def test_psycopg_connection_with_dict_rows(db_url):
    """Applications often open connections with row_factory=dict_row; record must not depend on tuple rows."""
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == [eid]


def test_psycopg_connection_with_dict_rows_record_many(db_url):
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        ids = outbox.record_many(conn, _three_events())
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == ids


def test_psycopg_async_connection_with_dict_rows(db_url):
    async def main() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as conn:
            eid = await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            await conn.commit()
            return eid

    eid = asyncio.run(main())
    assert [r["event_id"] for r in events(db_url)] == [eid]


def test_psycopg_client_cursor_and_pipeline_mode(db_url):
    with psycopg.connect(db_url, cursor_factory=psycopg.ClientCursor) as conn:
        a = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        many = outbox.record_many(conn, _three_events())
        conn.commit()
    with psycopg.connect(db_url) as conn:
        with conn.pipeline():
            b = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            more = outbox.record_many(conn, _three_events())
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == [a, *many, b, *more]


def test_many_records_on_one_connection_survive_statement_preparation(db_url):
    # psycopg prepares a statement server-side after a few executions; results must not change
    with psycopg.connect(db_url) as conn:
        ids = [
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(reason=str(i)), tenant_id=TENANT)
            for i in range(20)
        ]
        with pytest.raises(DuplicateEvent):
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=ids[3])
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == ids


def test_psycopg_autocommit_without_transaction_is_refused(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(NotInTransaction):
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        with pytest.raises(NotInTransaction):
            outbox.record_many(conn, [Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)])
    assert count(db_url, "outbox_events") == 0


def test_psycopg_nested_savepoint_rollback_discards_only_the_inner_event(db_url):
    with psycopg.connect(db_url) as conn:
        outer = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        try:
            with conn.transaction():
                outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(reason="inner"), tenant_id=TENANT)
                raise RuntimeError("inner failure")
        except RuntimeError:
            pass
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == [outer]


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_connection(db_url, commit):
    make_tickets_table(db_url)
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with engine.connect() as conn:
            conn.execute(INSERT_TICKET_SQL, ticket_params())
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            conn.commit() if commit else conn.rollback()
    finally:
        engine.dispose()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_connection_record_before_any_statement(db_url, commit):
    make_tickets_table(db_url)
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with engine.connect() as conn:
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            conn.execute(INSERT_TICKET_SQL, ticket_params())
            conn.commit() if commit else conn.rollback()
    finally:
        engine.dispose()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_engine_begin_block(db_url, commit):
    make_tickets_table(db_url)
    engine = create_engine(sqlalchemy_url(db_url))
    eid = None
    try:
        with engine.begin() as conn:
            conn.execute(INSERT_TICKET_SQL, ticket_params())
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            if not commit:
                raise LookupError("roll back")
    except LookupError:
        pass
    finally:
        engine.dispose()
    assert eid is not None
    _check_outcome(db_url, commit, eid)


def test_sqlalchemy_autocommit_engine_is_refused(db_url):
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn, pytest.raises(NotInTransaction):
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
    finally:
        engine.dispose()
    assert count(db_url, "outbox_events") == 0


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_session(db_url, commit):
    make_tickets_table(db_url)
    engine = create_engine(sqlalchemy_url(db_url))
    factory = sessionmaker(bind=engine)
    try:
        with factory() as session:
            session.execute(INSERT_TICKET_SQL, ticket_params())
            eid = outbox.record(session, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            session.commit() if commit else session.rollback()
    finally:
        engine.dispose()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_session_record_first(db_url, commit):
    make_tickets_table(db_url)
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with sessionmaker(bind=engine)() as session:
            eid = outbox.record(session, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            session.execute(INSERT_TICKET_SQL, ticket_params())
            session.commit() if commit else session.rollback()
    finally:
        engine.dispose()
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_async_connection(db_url, commit):
    make_tickets_table(db_url)

    async def main() -> uuid.UUID:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True))
        try:
            async with engine.connect() as conn:
                await conn.execute(INSERT_TICKET_SQL, ticket_params())
                eid = await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                await (conn.commit() if commit else conn.rollback())
                return eid
        finally:
            await engine.dispose()

    eid = asyncio.run(main())
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_async_connection_record_first(db_url, commit):
    make_tickets_table(db_url)

    async def main() -> uuid.UUID:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True))
        try:
            async with engine.connect() as conn:
                eid = await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                await conn.execute(INSERT_TICKET_SQL, ticket_params())
                await (conn.commit() if commit else conn.rollback())
                return eid
        finally:
            await engine.dispose()

    eid = asyncio.run(main())
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_sqlalchemy_async_session(db_url, commit):
    make_tickets_table(db_url)

    async def main() -> uuid.UUID:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True))
        try:
            async with async_sessionmaker(engine)() as session:
                await session.execute(INSERT_TICKET_SQL, ticket_params())
                eid = await outbox.arecord(session, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                await (session.commit() if commit else session.rollback())
                return eid
        finally:
            await engine.dispose()

    eid = asyncio.run(main())
    _check_outcome(db_url, commit, eid)


@COMMIT_OR_ROLLBACK
def test_psycopg_async_connection(db_url, commit):
    make_tickets_table(db_url)

    async def main() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await conn.execute(
                "INSERT INTO tickets (id, tenant_id, title) VALUES (%s, %s, %s)", (TICKET, TENANT, "printer on fire")
            )
            eid = await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            await (conn.commit() if commit else conn.rollback())
            return eid

    eid = asyncio.run(main())
    _check_outcome(db_url, commit, eid)


def test_sqlalchemy_async_autocommit_engine_is_refused(db_url):
    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                with pytest.raises(NotInTransaction):
                    await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert count(db_url, "outbox_events") == 0


def test_psycopg_async_autocommit(db_url):
    async def main() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            with pytest.raises(NotInTransaction):
                await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            assert await outbox.arecord_many(conn, []) == []
            async with conn.transaction():
                return await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)

    eid = asyncio.run(main())
    assert [r["event_id"] for r in events(db_url)] == [eid]


def test_async_validation_error_writes_nothing(db_url):
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            with pytest.raises(PayloadValidationError) as info:
                await outbox.arecord(conn, "TICKET_STATUS_CHANGED", {"ticketId": TICKET}, tenant_id=TENANT)
            assert info.value.field == "previousStatusId"
            with pytest.raises(TenantMismatch):
                await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(tenantId="x"), tenant_id=TENANT)
            await conn.commit()

    asyncio.run(main())
    assert count(db_url, "outbox_events") == 0


def test_wrong_connection_objects_are_refused(db_url):
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with pytest.raises(UnsupportedConnection):
            outbox.record(engine, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        with pytest.raises(UnsupportedConnection):
            outbox.record(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        with psycopg.connect(db_url) as sync_conn, pytest.raises(UnsupportedConnection):
            asyncio.run(outbox.arecord(sync_conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT))
    finally:
        engine.dispose()

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            with pytest.raises(UnsupportedConnection):
                outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)

    asyncio.run(main())
    assert count(db_url, "outbox_events") == 0


# ---- 5. record_many ----------------------------------------------------------------------------------


def _three_events() -> list[Event]:
    return [
        Event("TICKET_CREATED", {"ticketId": TICKET}, tenant_id=TENANT, actor=USER, aggregate="t1"),
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, from_state="open", to_state="closed"),
        Event(
            "TICKET_STATUS_CHANGED",
            status_payload(ticketId=TICKET_2),
            tenant_id="tenant-b",
            correlation="c-3",
            occurred_at=FIXED,
        ),
    ]


def test_record_many_inserts_all_in_order(db_url):
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        ids = outbox.record_many(conn, _three_events())
        conn.commit()
    assert len(ids) == 3 and len(set(ids)) == 3
    assert all(isinstance(i, uuid.UUID) for i in ids)
    rows = events(db_url)
    assert [r["event_id"] for r in rows] == ids
    assert [r["event_type"] for r in rows] == ["TICKET_CREATED", "TICKET_STATUS_CHANGED", "TICKET_STATUS_CHANGED"]
    assert [r["schema_ref"] for r in rows] == [
        "payload.TicketCreated.v1",
        "payload.TicketStatusChanged.v1",
        "payload.TicketStatusChanged.v1",
    ]
    assert [r["tenant_id"] for r in rows] == [TENANT, TENANT, "tenant-b"]
    assert rows[0]["aggregate"] == "t1" and rows[0]["payload"]["actorUserId"] == USER
    assert (rows[1]["from_state"], rows[1]["to_state"]) == ("open", "closed")
    assert rows[2]["correlation_key"] == "c-3"
    assert rows[2]["occurred_at"] == FIXED and rows[2]["payload"]["occurredAt"] == FIXED_ISO
    assert rows[2]["payload"]["ticketId"] == TICKET_2
    assert len({r["xid_text"] for r in rows}) == 1
    assert all(r["status"] == "pending" for r in rows)
    assert count(db_url, "tickets") == 1


def test_record_many_with_explicit_event_ids_returns_them_in_order(db_url):
    given = [uuid.uuid4() for _ in range(5)]
    evs = [Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=g) for g in given]
    with psycopg.connect(db_url) as conn:
        assert outbox.record_many(conn, evs) == given
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == given


def test_record_many_large_batch_keeps_order(db_url):
    evs = [
        Event("TICKET_STATUS_CHANGED", status_payload(reason=f"n{i}"), tenant_id=f"t{i % 7}", aggregate=str(i))
        for i in range(500)
    ]
    with psycopg.connect(db_url) as conn:
        ids = outbox.record_many(conn, evs)
        conn.commit()
    rows = events(db_url)
    assert [r["event_id"] for r in rows] == ids
    assert [r["payload"]["reason"] for r in rows] == [f"n{i}" for i in range(500)]
    assert [r["aggregate"] for r in rows] == [str(i) for i in range(500)]
    assert [r["tenant_id"] for r in rows] == [f"t{i % 7}" for i in range(500)]


def test_record_many_rollback_leaves_nothing(db_url):
    make_tickets_table(db_url)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        outbox.record_many(conn, _three_events())
        conn.rollback()
    assert count(db_url, "outbox_events") == 0
    assert count(db_url, "tickets") == 0


def test_record_many_empty_list(db_url):
    with psycopg.connect(db_url) as conn:
        assert outbox.record_many(conn, []) == []
        conn.commit()
    assert count(db_url, "outbox_events") == 0


@pytest.mark.parametrize("position", [0, 1, 2])
def test_record_many_invalid_event_anywhere_writes_nothing(db_url, position):
    make_tickets_table(db_url)
    evs = _three_events()
    evs[position] = Event("TICKET_STATUS_CHANGED", status_payload(ticketId="bad"), tenant_id=TENANT)
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        with pytest.raises(PayloadValidationError) as info:
            outbox.record_many(conn, evs)
        assert info.value.field == "ticketId"
        insert_ticket(conn, TICKET_2)
        conn.commit()
    assert count(db_url, "outbox_events") == 0
    assert ticket_ids(db_url) == {TICKET, TICKET_2}


def test_record_many_unknown_type_writes_nothing(db_url):
    evs = [*_three_events(), Event("NOPE_HAPPENED", {}, tenant_id=TENANT)]
    with psycopg.connect(db_url) as conn:
        with pytest.raises(UnknownEventType):
            outbox.record_many(conn, evs)
        conn.commit()
    assert count(db_url, "outbox_events") == 0


def test_record_many_duplicate_within_the_list(db_url):
    make_tickets_table(db_url)
    dup = uuid.uuid4()
    evs = [
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=dup),
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=str(dup)),
    ]
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        with pytest.raises(DuplicateEvent) as info:
            outbox.record_many(conn, evs)
        assert info.value.event_id == str(dup)
        insert_ticket(conn, TICKET_2)
        conn.commit()
    assert count(db_url, "outbox_events") == 0
    assert ticket_ids(db_url) == {TICKET, TICKET_2}


def test_record_many_duplicate_against_committed_row_leaves_nothing_from_the_call(db_url):
    make_tickets_table(db_url)
    existing = record_one_committed(
        db_url, "TICKET_STATUS_CHANGED", status_payload(reason="original"), tenant_id=TENANT
    )
    new1, new2 = uuid.uuid4(), uuid.uuid4()
    evs = [
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=new1),
        Event("TICKET_STATUS_CHANGED", status_payload(reason="copy"), tenant_id=TENANT, event_id=existing),
        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=new2),
    ]
    with psycopg.connect(db_url) as conn:
        insert_ticket(conn)
        with pytest.raises(DuplicateEvent) as info:
            outbox.record_many(conn, evs)
        assert info.value.event_id == str(existing)
        # nothing from that call is visible even inside the transaction
        rows = conn.execute("SELECT event_id FROM outbox_events ORDER BY id").fetchall()
        assert rows == [(existing,)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        insert_ticket(conn, TICKET_2)
        conn.commit()
    rows = events(db_url)
    assert [r["event_id"] for r in rows] == [existing]
    assert rows[0]["payload"]["reason"] == "original"
    assert ticket_ids(db_url) == {TICKET, TICKET_2}


def test_record_many_duplicate_of_an_event_recorded_earlier_in_the_same_transaction(db_url):
    with psycopg.connect(db_url) as conn:
        first = outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
        with pytest.raises(DuplicateEvent):
            outbox.record_many(
                conn,
                [
                    Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
                    Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=first),
                ],
            )
        conn.commit()
    assert [r["event_id"] for r in events(db_url)] == [first]


def test_record_many_via_sqlalchemy_session(db_url):
    make_tickets_table(db_url)
    existing = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with sessionmaker(bind=engine)() as session:
            session.execute(INSERT_TICKET_SQL, ticket_params())
            ids = outbox.record_many(session, _three_events())
            with pytest.raises(DuplicateEvent):
                outbox.record_many(
                    session,
                    [
                        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
                        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=existing),
                    ],
                )
            session.commit()
    finally:
        engine.dispose()
    assert [r["event_id"] for r in events(db_url)] == [existing, *ids]
    assert ticket_ids(db_url) == {TICKET}


def test_arecord_many_psycopg_async(db_url):
    existing = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)

    async def main() -> list[uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            ids = await outbox.arecord_many(conn, _three_events())
            with pytest.raises(DuplicateEvent) as info:
                await outbox.arecord_many(
                    conn,
                    [
                        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
                        Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=existing),
                    ],
                )
            assert info.value.event_id == str(existing)
            with pytest.raises(PayloadValidationError):
                await outbox.arecord_many(conn, [Event("TICKET_STATUS_CHANGED", {"ticketId": TICKET})])
            await conn.commit()
            return ids

    ids = asyncio.run(main())
    assert len(ids) == 3
    assert [r["event_id"] for r in events(db_url)] == [existing, *ids]


@COMMIT_OR_ROLLBACK
def test_arecord_many_sqlalchemy_async_session(db_url, commit):
    make_tickets_table(db_url)

    async def main() -> list[uuid.UUID]:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True))
        try:
            async with async_sessionmaker(engine)() as session:
                await session.execute(INSERT_TICKET_SQL, ticket_params())
                ids = await outbox.arecord_many(session, _three_events())
                await (session.commit() if commit else session.rollback())
                return ids
        finally:
            await engine.dispose()

    ids = asyncio.run(main())
    if commit:
        assert [r["event_id"] for r in events(db_url)] == ids
        assert ticket_ids(db_url) == {TICKET}
    else:
        assert count(db_url, "outbox_events") == 0
        assert count(db_url, "tickets") == 0


def test_arecord_many_sqlalchemy_async_connection_duplicate(db_url):
    existing = record_one_committed(db_url, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)

    async def main() -> uuid.UUID:
        engine = create_async_engine(sqlalchemy_url(db_url, async_=True))
        try:
            async with engine.connect() as conn:
                with pytest.raises(DuplicateEvent):
                    await outbox.arecord_many(
                        conn,
                        [
                            Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
                            Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, event_id=existing),
                            Event("TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT),
                        ],
                    )
                eid = await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                await conn.commit()
                return eid
        finally:
            await engine.dispose()

    eid = asyncio.run(main())
    assert [r["event_id"] for r in events(db_url)] == [existing, eid]


# ---- 6. record_typed ---------------------------------------------------------------------------------


def test_record_typed_infers_event_type(db_url):
    model = TicketCreatedV1(tenantId=TENANT, occurredAt=FIXED_ISO, ticketId=TICKET, createdByUserId=USER)
    with psycopg.connect(db_url) as conn:
        eid = outbox.record_typed(conn, model, actor=USER, aggregate="t")
        conn.commit()
    (r,) = events(db_url)
    assert r["event_id"] == eid
    assert r["event_type"] == "TICKET_CREATED"
    assert r["schema_ref"] == "payload.TicketCreated.v1"
    assert r["aggregate"] == "t"
    assert r["occurred_at"] == FIXED
    assert r["payload"] == {
        "tenantId": TENANT,
        "occurredAt": FIXED_ISO,
        "ticketId": TICKET,
        "createdByUserId": USER,
        "actorUserId": USER,
        "actorType": "USER",
    }


def test_record_typed_other_models(db_url):
    status = TicketStatusChangedV1(
        tenantId=TENANT, occurredAt=FIXED_ISO, ticketId=TICKET, previousStatusId="a", newStatusId="b"
    )
    legacy = TicketCreatedLegacy(tenantId=USER, ticketId=TICKET, userId=USER)
    with psycopg.connect(db_url) as conn:
        outbox.record_typed(conn, status)
        outbox.record_typed(conn, legacy)
        conn.commit()
    rows = events(db_url)
    assert [r["event_type"] for r in rows] == ["TICKET_STATUS_CHANGED", "TICKET_CREATED"]
    assert rows[1]["tenant_id"] == USER


def test_record_typed_rejects_tenant_mismatch_and_unregistered_models(db_url):
    from pydantic import BaseModel

    class NotAContract(BaseModel):
        tenantId: str

    model = TicketCreatedV1(tenantId=TENANT, occurredAt=FIXED_ISO, ticketId=TICKET)
    with psycopg.connect(db_url) as conn:
        with pytest.raises(TenantMismatch):
            outbox.record_typed(conn, model, tenant_id="tenant-b")
        with pytest.raises(InvalidArgument) as info:
            outbox.record_typed(conn, NotAContract(tenantId=TENANT))
        assert info.value.field == "payload"
        conn.commit()
    assert count(db_url, "outbox_events") == 0


def test_arecord_typed(db_url):
    model = TicketCreatedV1(tenantId=TENANT, occurredAt=FIXED_ISO, ticketId=TICKET)

    async def main() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            eid = await outbox.arecord_typed(conn, model)
            await conn.commit()
            return eid

    eid = asyncio.run(main())
    (r,) = events(db_url)
    assert r["event_id"] == eid and r["event_type"] == "TICKET_CREATED"


# ---- 7. NOTIFY piggyback -----------------------------------------------------------------------------


def _listener(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def _set_notify_until(db_url: str, expr: str) -> None:
    with psycopg.connect(db_url) as c:
        c.execute(f"UPDATE outbox_relay SET notify_until = {expr}")  # expr is a test constant
        c.commit()


def _drain(listener: psycopg.Connection[Any], timeout: float) -> list[psycopg.Notify]:
    return list(listener.notifies(timeout=timeout, stop_after=1))


def _assert_listener_alive(db_url: str, listener: psycopg.Connection[Any]) -> None:
    """A manual NOTIFY does arrive, so a silent listener above really means 'no notification'."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'probe'")
    got = _drain(listener, 5.0)
    assert [n.payload for n in got] == ["probe"]


def test_notify_sent_on_commit_when_relay_is_idle(db_url):
    _set_notify_until(db_url, "now() + interval '1 minute'")
    with _listener(db_url) as listener:
        with psycopg.connect(db_url) as conn:
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            # not before commit
            assert _drain(listener, 0.2) == []
            conn.commit()
        got = _drain(listener, 5.0)
        assert len(got) == 1
        assert got[0].channel == NOTIFY_CHANNEL
        assert got[0].payload == ""


def test_notify_sent_once_for_record_many(db_url):
    _set_notify_until(db_url, "now() + interval '1 minute'")
    with _listener(db_url) as listener:
        with psycopg.connect(db_url) as conn:
            outbox.record_many(conn, _three_events())
            conn.commit()
        # Wait generously for the first notification (delivery is asynchronous and a loaded machine may
        # take a while), then check that no second one follows: all NOTIFYs of a transaction are
        # delivered together at its commit, so a short extra window is enough to see a duplicate.
        got = _drain(listener, 5.0)
        got += list(listener.notifies(timeout=0.3))
        assert len(got) == 1 and got[0].channel == NOTIFY_CHANNEL


def test_notify_sent_from_async_connection(db_url):
    _set_notify_until(db_url, "now() + interval '1 minute'")
    with _listener(db_url) as listener:

        async def main() -> None:
            async with await psycopg.AsyncConnection.connect(db_url) as conn:
                await outbox.arecord(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
                await conn.commit()

        asyncio.run(main())
        assert len(_drain(listener, 5.0)) == 1


@pytest.mark.parametrize("notify_until", ["NULL", "now() - interval '1 second'"], ids=["null", "past"])
def test_no_notify_when_relay_is_not_listening(db_url, notify_until):
    _set_notify_until(db_url, notify_until)
    with _listener(db_url) as listener:
        with psycopg.connect(db_url) as conn:
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            outbox.record_many(conn, _three_events())
            conn.commit()
        assert _drain(listener, 0.3) == []
        _assert_listener_alive(db_url, listener)
    assert count(db_url, "outbox_events") == 4


def test_no_notify_when_the_writer_rolls_back(db_url):
    _set_notify_until(db_url, "now() + interval '1 minute'")
    with _listener(db_url) as listener:
        with psycopg.connect(db_url) as conn:
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT)
            conn.rollback()
        assert _drain(listener, 0.3) == []
        _assert_listener_alive(db_url, listener)


# ---- misc ---------------------------------------------------------------------------------------------


def test_error_hierarchy():
    for cls in (UnknownEventType, PayloadValidationError, NonUtcTimestamp, TenantMismatch, PayloadTooLarge):
        assert issubclass(cls, RecordError)
    assert issubclass(NonUtcTimestamp, PayloadValidationError)
    for cls in (RecordError, DuplicateEvent, NotInTransaction, UnsupportedConnection):
        assert issubclass(cls, OutboxError)
