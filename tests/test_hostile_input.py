"""Hostile input on the write side (issue 8, findings 1, 2 and the record side of 8), against real servers.

Every refusal must be a typed ``RecordError`` naming the field, with nothing inserted and the caller's
transaction still usable; whatever ``record`` accepts, the relay publishes (one size rule), and the
stream entry passes the platform reader's envelope rules.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import outbox
from outbox import PayloadTooLarge, PayloadValidationError, RecordError, schemas
from outbox.errors import InvalidArgument, NestingTooDeep, UnrepresentableValue
from outbox.relay.loop import Relay
from outbox.schemas import simulate
from outbox.settings import sqlalchemy_url
from outbox.write import DEFAULT_MAX_DEPTH, DEFAULT_MAX_PAYLOAD_BYTES
from tests.conftest import make_settings, stream_entries

TENANT = "tenant-a"
TICKET = "a8f5f167-0f3c-4b5e-8d9a-1c2b3e4f5a6b"
USER = "6f1c1d7e-3a52-4c1b-9a43-0d6f3c1f2a11"
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def status_payload(**extra: Any) -> dict[str, Any]:
    return {"ticketId": TICKET, "previousStatusId": "open", "newStatusId": "closed", **extra}


def count(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM outbox_events").fetchone()
    return int(row[0])


def deep(levels: int) -> Any:
    """``levels`` nested one-key objects (built without recursion)."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@contextmanager
def limits(**kw: Any) -> Iterator[None]:
    try:
        outbox.configure(**kw)
        yield
    finally:
        outbox.configure(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES, max_depth=DEFAULT_MAX_DEPTH)


def refused(db_url: str, exc_type: type[RecordError], *args: Any, **kwargs: Any) -> RecordError:
    """``record`` raises ``exc_type``; the same transaction then writes a row of its own and commits."""
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS business (n int)")
        with pytest.raises(exc_type) as info:
            outbox.record(conn, *args, **kwargs)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert count(conn) == 0
        conn.execute("INSERT INTO business VALUES (1)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM business").fetchone() == (1,)
    return info.value


# ---- finding 1: hostile payload keys and values ----------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(status_payload(meta={"k\x00": 1}), "meta.k\\x00", id="nul-in-nested-key"),
        pytest.param(status_payload(meta=[{"x": {"k\x00y": True}}]), "meta.0.x.k\\x00y", id="nul-in-key-in-list"),
        pytest.param(status_payload(meta={"k": ["ok", "a\x00"]}), "meta.k.1", id="nul-in-nested-list-value"),
        pytest.param(status_payload(meta={"k\ud800": 1}), "meta.k\\ud800", id="surrogate-in-nested-key"),
        pytest.param(status_payload(reason="x\udfff"), "reason", id="surrogate-in-declared-value"),
        pytest.param(status_payload(meta={"a": {"b": "\ud83d"}}), "meta.a.b", id="surrogate-deep-value"),
        pytest.param(status_payload(meta={1: "int key"}), "meta.1", id="non-string-key"),
        pytest.param(status_payload(meta={"n": 10**5000}), "meta.n", id="integer-too-large-for-json"),
        pytest.param(status_payload(meta=[math.nan]), "meta.0", id="nan-in-list"),
    ],
)
def test_hostile_payload_is_refused_naming_the_field_and_the_transaction_stays_usable(db_url, payload, field):
    err = refused(db_url, UnrepresentableValue, "TICKET_STATUS_CHANGED", payload, tenant_id=TENANT)
    assert isinstance(err, InvalidArgument)
    assert err.field == field, str(err)
    str(err).encode()  # the message itself is printable (no lone surrogate in it)


@pytest.mark.parametrize("levels", [DEFAULT_MAX_DEPTH, 10_000, 100_000])
def test_deep_nesting_is_refused_without_recursion(db_url, levels):
    err = refused(db_url, NestingTooDeep, "TICKET_STATUS_CHANGED", status_payload(meta=deep(levels)), tenant_id=TENANT)
    assert err.field == "meta" + ".a" * (DEFAULT_MAX_DEPTH - 1)
    assert str(DEFAULT_MAX_DEPTH) in err.reason


def test_nesting_limit_is_inclusive_and_configurable(db_url):
    ok = status_payload(meta=deep(DEFAULT_MAX_DEPTH - 1))  # the payload, then meta and 62 more: 64 levels
    with psycopg.connect(db_url) as conn:
        outbox.record(conn, "TICKET_STATUS_CHANGED", ok, tenant_id=TENANT)
        with limits(max_depth=3):
            with pytest.raises(NestingTooDeep):
                outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(meta={"a": {"b": []}}), tenant_id=TENANT)
            outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(meta={"a": {"b": 1}}), tenant_id=TENANT)
        conn.commit()
        assert count(conn) == 2
    for bad in (0, -1, 10_000):
        with pytest.raises(ValueError, match="max_depth"):
            outbox.configure(max_depth=bad)


# ---- finding 1: hostile arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"aggregate": "order:\x00"}, "aggregate", id="nul-aggregate"),
        pytest.param({"aggregate": "order:\ud800"}, "aggregate", id="surrogate-aggregate"),
        pytest.param({"correlation": "c\x00"}, "correlation", id="nul-correlation"),
        pytest.param({"correlation": "c\udc80"}, "correlation", id="surrogate-correlation"),
        pytest.param({"from_state": "open\x00"}, "from_state", id="nul-from-state"),
        pytest.param({"to_state": "\ud800"}, "to_state", id="surrogate-to-state"),
        pytest.param({"event_name": "n\x00"}, "event_name", id="nul-event-name"),
        pytest.param({"tenant_id": "t\x00"}, "tenant_id", id="nul-tenant"),
        pytest.param({"tenant_id": "t\ud800"}, "tenant_id", id="surrogate-tenant"),
        pytest.param({"aggregate": "a" * 1025}, "aggregate", id="aggregate-too-long"),
        pytest.param({"tenant_id": "é" * 513}, "tenant_id", id="tenant-too-many-bytes"),
    ],
)
def test_hostile_text_argument_is_refused_naming_it(db_url, kwargs, field):
    kwargs = {"tenant_id": TENANT, **kwargs}
    err = refused(db_url, InvalidArgument, "TICKET_STATUS_CHANGED", status_payload(), **kwargs)
    assert err.field == field, str(err)
    str(err).encode()


def test_tenantId_in_the_payload_follows_the_tenant_rules(db_url):
    err = refused(db_url, InvalidArgument, "TICKET_STATUS_CHANGED", status_payload(tenantId="t" * 1025))
    assert err.field == "tenantId"


# ---- finding 8 (record side): execution_id is a UUID -----------------------------------------------


@pytest.mark.parametrize("value", ["exec-123", "", "12345678-1234-1234-1234-12345678901"])
def test_execution_id_must_be_a_uuid(db_url, value):
    err = refused(
        db_url, InvalidArgument, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, execution_id=value
    )
    assert err.field == "execution_id" and "UUID" in err.reason


def test_execution_id_is_stored_in_canonical_form(db_url):
    given = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, execution_id=given.hex.upper())
        conn.commit()
        assert conn.execute("SELECT execution_id FROM outbox_events").fetchone() == (str(given),)


# ---- timestamps the wire carries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "when", [datetime(1, 1, 1, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)], ids=str
)
def test_early_years_are_written_as_four_digit_iso_8601(db_url, when):
    with psycopg.connect(db_url) as conn:
        outbox.record(conn, "TICKET_STATUS_CHANGED", status_payload(), tenant_id=TENANT, occurred_at=when)
        conn.commit()
        payload, occurred = conn.execute("SELECT payload, occurred_at FROM outbox_events").fetchone()
    assert payload["occurredAt"] == f"{when.year:04d}-{when:%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"
    assert occurred == when.replace(microsecond=when.microsecond // 1000 * 1000)


# ---- finding 8: legacy contracts declare occurredAt ------------------------------------------------

LEGACY_WITH_OCCURRED_AT = [
    "APPOINTMENT_REQUEST_APPROVED",
    "APPOINTMENT_REQUEST_CANCELLED",
    "APPOINTMENT_REQUEST_CREATED",
    "APPOINTMENT_REQUEST_DECLINED",
    "PROJECT_ASSIGNED",
    "PROJECT_CLOSED",
    "PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED",
    "SCHEDULE_ENTRY_CREATED",
    "SCHEDULE_ENTRY_DELETED",
    "SCHEDULE_ENTRY_UPDATED",
    "TASK_COMMENT_ADDED",
    "TASK_COMMENT_UPDATED",
    "TICKET_ADDITIONAL_AGENT_ASSIGNED",
    "TICKET_COMMENT_ADDED",
    "TIME_ENTRY_APPROVED",
    "TIME_ENTRY_SUBMITTED",
]


@pytest.mark.parametrize("event_type", LEGACY_WITH_OCCURRED_AT)
def test_legacy_contracts_declare_occurredAt(event_type):
    entry = schemas.registry.event_type(event_type)
    assert entry.kind == "legacy-bus"
    schema = schemas.registry.json_schema(entry.ref)
    assert schema["properties"]["occurredAt"]["format"] == "date-time"
    # optional in .v1 (requiring it would break the published ref); record always fills it
    assert "occurredAt" not in schema["required"]
    with pytest.raises(PayloadValidationError) as err:
        schemas.validate(event_type, {**simulate.example(event_type, seed=1), "occurredAt": "2024-05-06 07:08"})
    assert any(e.field == "occurredAt" for e in err.value.errors)


def test_other_legacy_contracts_are_unchanged():
    others = [e for e in schemas.registry if e.kind == "legacy-bus" and e.event_type not in LEGACY_WITH_OCCURRED_AT]
    assert others
    for e in others:
        assert "occurredAt" not in schemas.registry.json_schema(e.ref).get("required", []), e.event_type


def test_record_fills_occurredAt_of_a_legacy_type(db_url):
    payload = simulate.example("TICKET_COMMENT_ADDED", tenant_id=uuid.uuid4(), seed=1)
    payload.pop("occurredAt", None)
    with psycopg.connect(db_url) as conn:
        outbox.record(conn, "TICKET_COMMENT_ADDED", payload, occurred_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
        conn.commit()
        (stored,) = conn.execute("SELECT payload FROM outbox_events").fetchone()
    assert stored["occurredAt"] == "2024-05-06T07:08:09.000Z"


# ---- finding 2: one size rule (and the wire envelope) ----------------------------------------------


def jsonb_size(conn: Any, payload_json: str) -> int:
    """The size Postgres gives the payload on the wire: octet_length of its jsonb text."""
    return int(conn.execute("SELECT octet_length(%s::jsonb::text)", (payload_json,)).fetchone()[0])


def full_payload(**extra: Any) -> dict[str, Any]:
    return status_payload(tenantId=TENANT, occurredAt="2024-01-01T00:00:00.000Z", **extra)


EXPANDING = {
    "floats-1e300": lambda n: full_payload(meta=[1e300] * n),
    "tiny-floats": lambda n: full_payload(meta=[5e-324, -1.5e-7, -0.0] * n),
    "many-short-keys": lambda n: full_payload(meta={f"k{i}": [i, {}] for i in range(n)}),
}


def relay_once(db_url: str, redis_url: str, stream: str, limit: int) -> Relay:
    relay = Relay(make_settings(db_url, redis_url, stream, max_payload_bytes=limit))
    relay.run(until_idle=True)
    return relay


@pytest.mark.parametrize("shape", sorted(EXPANDING))
def test_record_measures_what_the_relay_publishes(db_url, redis_url, stream, rds, shape):
    """At the limit: a payload jsonb renders at exactly ``limit`` bytes is accepted by record and published by
    the relay; one byte more is refused by record (it used to pass record and be dead-lettered at the relay)."""
    make = EXPANDING[shape]
    compact = json.dumps(make(20), separators=(",", ":"))
    with psycopg.connect(db_url) as conn:
        limit = jsonb_size(conn, compact)
        assert limit > len(compact) + 20  # the case of finding 2: jsonb renders it larger than compact JSON
        with limits(max_payload_bytes=limit - 1):
            err = refused(db_url, PayloadTooLarge, "TICKET_STATUS_CHANGED", make(20))
            assert err.size == limit  # the exact wire size, not the compact one
        with limits(max_payload_bytes=limit):
            eid = outbox.record(conn, "TICKET_STATUS_CHANGED", make(20))
        conn.commit()
    stats = relay_once(db_url, redis_url, stream, limit).stats
    assert (stats.published, stats.dead) == (1, 0)
    ((_sid, entry),) = stream_entries(rds, stream)
    assert entry["event_id"] == str(eid)
    assert len(entry["payload_json"].encode()) == limit


# ---- finding 8: user_id on the wire is a UUID or empty ---------------------------------------------


def test_wire_user_id_is_a_uuid_or_empty(db_url, redis_url, stream, rds):
    tenant = str(uuid.uuid4())  # the legacy contracts want a UUID tenant
    cases = [
        ("CUSTOM_EVENT", {"tenantId": tenant, "userId": "bob the builder"}, ""),
        ("UNKNOWN", {"tenantId": tenant, "userId": "not-a-uuid"}, ""),
        ("TICKET_STATUS_CHANGED", status_payload(tenantId=TENANT, userId="free text"), ""),
        ("CUSTOM_EVENT", {"tenantId": tenant, "userId": USER}, USER),
        ("TICKET_STATUS_CHANGED", status_payload(tenantId=TENANT, actorUserId=USER), USER),
        ("TICKET_STATUS_CHANGED", status_payload(tenantId=TENANT, actorUserId=USER, userId="x"), USER),
    ]
    with psycopg.connect(db_url) as conn:
        ids = [outbox.record(conn, t, p) for t, p, _ in cases]
        conn.commit()
    relay_once(db_url, redis_url, stream, DEFAULT_MAX_PAYLOAD_BYTES)
    got = {e["event_id"]: e["user_id"] for _sid, e in stream_entries(rds, stream)}
    assert [got[str(i)] for i in ids] == [want for _t, _p, want in cases]


# ---- property: one row inserted, or a typed error with the transaction usable ----------------------

SPECIAL = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "\ud83d\ude00", "é", "\u2028", "\t", '"', "\\", "\\u0000", "\x7f"]
)
HOSTILE_TEXT = st.lists(st.one_of(st.text(max_size=4), SPECIAL), max_size=4).map("".join)
NUMBERS = st.one_of(
    st.integers(),
    st.floats(),  # NaN and infinities included
    st.sampled_from([1e300, -1e300, 5e-324, -0.0, 1.5e-7, 123.0, 10**30, 2**63]),
    st.integers(min_value=4000, max_value=5000).map(lambda digits: -(10**digits)),  # past str()'s digit limit
)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(HOSTILE_TEXT, inner, max_size=4)),
    max_leaves=25,
)
DEEP = st.integers(min_value=1, max_value=12_000).map(deep)
ARG = st.one_of(st.none(), HOSTILE_TEXT, st.just("a" * 2000))
ARGS = st.fixed_dictionaries(
    {},
    optional={
        "aggregate": ARG,
        "correlation": ARG,
        "from_state": ARG,
        "to_state": ARG,
        "event_name": ARG,
        "tenant_id": st.one_of(st.just(TENANT), HOSTILE_TEXT),
        "execution_id": st.one_of(st.none(), st.uuids().map(str), HOSTILE_TEXT),
    },
)
PAYLOADS = st.one_of(
    st.dictionaries(HOSTILE_TEXT, st.one_of(JSON, DEEP), max_size=3).map(lambda extra: {**extra, **status_payload()}),
    st.builds(lambda meta, reason: status_payload(meta=meta, reason=reason), st.one_of(JSON, DEEP), HOSTILE_TEXT),
)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_invariant(conn: Any, write: Any, before: int) -> None:
    """One row more, or a typed RecordError with no row and a usable transaction."""
    try:
        write()
    except RecordError as exc:
        event(type(exc).__name__)
        str(exc).encode()
        assert count(conn) == before
    else:
        event("inserted")
        assert count(conn) == before + 1


@PROPERTY
@given(payload=PAYLOADS, kwargs=ARGS)
def test_property_psycopg(db_url, payload, kwargs):
    kwargs = {"tenant_id": TENANT, **kwargs}
    with psycopg.connect(db_url) as conn:
        before = count(conn)
        check_invariant(conn, lambda: outbox.record(conn, "TICKET_STATUS_CHANGED", payload, **kwargs), before)
        conn.execute("SELECT 1")
        conn.commit()
        after = count(conn)
        assert after in (before, before + 1)
        if after > before:  # what was accepted measures, on the wire, what record measured
            (wire_json,) = conn.execute("SELECT payload::text FROM outbox_events ORDER BY id DESC LIMIT 1").fetchone()
            size = len(wire_json.encode())
            with limits(max_payload_bytes=size - 1), pytest.raises(PayloadTooLarge) as info:
                outbox.record(conn, "TICKET_STATUS_CHANGED", payload, **kwargs)  # occurredAt: same length
            assert info.value.size == size


@pytest.fixture
def engine(db_url):
    eng = create_engine(sqlalchemy_url(db_url))
    yield eng
    eng.dispose()


@PROPERTY
@given(payload=PAYLOADS, kwargs=ARGS)
def test_property_sqlalchemy(engine, payload, kwargs):
    kwargs = {"tenant_id": TENANT, **kwargs}
    with engine.connect() as conn:
        with conn.begin():
            before = conn.execute(text("SELECT count(*) FROM outbox_events")).scalar_one()
            try:
                outbox.record(conn, "TICKET_STATUS_CHANGED", payload, **kwargs)
            except RecordError as exc:
                event(type(exc).__name__)
                str(exc).encode()
                want = before
            else:
                event("inserted")
                want = before + 1
            assert conn.execute(text("SELECT count(*) FROM outbox_events")).scalar_one() == want
        # committed: the next transaction sees the same count
        assert conn.execute(text("SELECT count(*) FROM outbox_events")).scalar_one() == want
