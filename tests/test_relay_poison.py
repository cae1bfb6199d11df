"""One row never stops the relay (issue 8, finding 3).

A row written by SQL that bypassed ``record`` (an ``infinity`` or BC ``occurred_at``, a value the reader
rejects, ...) is dead-lettered with its reason and the rest of its batch is published. A row that still
kills relays (a crash no ``except`` catches) is isolated by splitting its batch on recovery: only that
row collects attempts and ends ``failed``; the ~1,000 rows that shared its batch are published.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox.relay import Relay
from tests.conftest import make_settings, relay_env, relay_thread, status_counts, stream_entries, wait_for

TENANT = "t1"
EVENT_TYPE = "TICKET_STATUS_CHANGED"
SCHEMA_REF = "payload.TicketStatusChanged.v1"
OCCURRED = "2026-03-04T05:06:07.089Z"


def ticket_event() -> outbox.Event:
    payload = {"ticketId": str(uuid.uuid4()), "previousStatusId": "open", "newStatusId": "closed"}
    return outbox.Event(EVENT_TYPE, payload, tenant_id=TENANT)


def write_valid(db_url: str, n: int) -> list[str]:
    """Commit ``n`` valid events through ``record_many``; their event ids."""
    with psycopg.connect(db_url) as conn:
        ids = [str(i) for i in outbox.record_many(conn, [ticket_event() for _ in range(n)])]
        conn.commit()
    return ids


def ticket_payload(**extra: Any) -> dict[str, Any]:
    """A valid TICKET_STATUS_CHANGED payload (its contract declares and requires occurredAt)."""
    return {
        "tenantId": TENANT, "occurredAt": OCCURRED, "ticketId": str(uuid.uuid4()), "previousStatusId": "a",
        "newStatusId": "b", **extra,
    }  # fmt: skip


# A type whose contract has no occurredAt: the occurred_at column is then the wire timestamp's source.
CALENDAR = ("CALENDAR_SYNC_STARTED", "legacy.CalendarSyncStarted.v1")
CAL_TENANT = str(uuid.uuid4())


def calendar_payload() -> dict[str, Any]:
    return {"tenantId": CAL_TENANT, "calendarProviderId": str(uuid.uuid4()), "syncDirection": "to_external"}


def insert_raw(
    db_url: str,
    occurred_at: str,
    *,
    payload: dict[str, Any] | None = None,
    kind: tuple[str, str] = (EVENT_TYPE, SCHEMA_REF),
    **cols: Any,
) -> str:
    """One row written by plain SQL (no ``record``): ``occurred_at`` is a Postgres timestamptz literal."""
    eid = str(uuid.uuid4())
    body = payload if payload is not None else ticket_payload()
    tenant = str(body.get("tenantId", TENANT))
    names = ", ".join(cols)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at"
            + (", " + names if cols else "")
            + ") VALUES (%s, %s, %s, %s, %s::jsonb, %s::timestamptz"
            + ", %s" * len(cols)
            + ")",
            (eid, tenant, *kind, json.dumps(body), occurred_at, *cols.values()),
        )
        conn.commit()
    return eid


def row(db_url: str, eid: str) -> tuple[str, str | None, int]:
    with psycopg.connect(db_url) as conn:
        r = conn.execute(
            "SELECT status, last_error, attempts FROM outbox_events WHERE event_id = %s", (eid,)
        ).fetchone()
    assert r is not None
    return r[0], r[1], r[2]


def run_relay_repeatedly(settings: Any, times: int) -> list[BaseException]:
    """Run the relay until idle ``times`` times (as a process supervisor restarts it); the exceptions."""
    crashes: list[BaseException] = []
    for _ in range(times):
        try:
            Relay(settings).run(until_idle=True)
        except Exception as exc:  # a relay that crashes on a row: the supervisor restarts it
            crashes.append(exc)
    return crashes


# ---- rows the relay cannot put on the wire are dead-lettered, the batch goes on --------------------


@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [
        ("infinity", "infinite"),
        ("-infinity", "infinite"),
        ("0044-03-15 12:00:00+00 BC", "BC"),
        ("12026-01-01 00:00:00+00", "9999"),
    ],
)
def test_unrepresentable_occurred_at_is_dead_lettered_and_its_batch_published(
    db_url, redis_url, stream, rds, occurred_at, reason
):
    settings = make_settings(db_url, redis_url, stream, max_attempts=2)
    before = write_valid(db_url, 499)
    # The bad column is refused even when the payload's occurredAt (the wire timestamp) is fine.
    bad = insert_raw(db_url, occurred_at, payload=calendar_payload(), kind=CALENDAR)
    also_bad = insert_raw(db_url, occurred_at)
    after = write_valid(db_url, 499)  # all 1,000 rows fit one batch
    crashes = run_relay_repeatedly(settings, settings.max_attempts + 2)
    assert crashes == [], f"the relay crashed on the row: {crashes[0]!r}"
    on_stream = [f["event_id"] for _, f in stream_entries(rds, stream)]
    assert on_stream == before + after, "the valid rows of the batch were not all published, in order"
    for eid in (bad, also_bad):
        status, error, _ = row(db_url, eid)
        assert status == "dead", (status, error)
        assert reason in (error or ""), error
    assert status_counts(db_url) == {"published": 998, "dead": 2}


def test_wire_timestamp_is_the_payload_occurred_at(db_url, redis_url, stream, rds):
    """One documented source: the payload's occurredAt (normalised to milliseconds), else the column."""
    settings = make_settings(db_url, redis_url, stream)
    differs = insert_raw(db_url, "2020-01-01 00:00:00+00")
    short = insert_raw(db_url, "2020-01-01 00:00:00+00", payload=ticket_payload(occurredAt="2026-03-04T05:06:07.1Z"))
    nanos = insert_raw(
        db_url, "2020-01-01 00:00:00+00", payload=ticket_payload(occurredAt="2026-03-04T05:06:07.123456789Z")
    )
    absent = insert_raw(db_url, "2021-02-03 04:05:06.789123+00", payload=calendar_payload(), kind=CALENDAR)
    Relay(settings).run(until_idle=True)
    wire = {f["event_id"]: f["timestamp"] for _, f in stream_entries(rds, stream)}
    assert wire == {
        differs: OCCURRED,
        short: "2026-03-04T05:06:07.100Z",
        nanos: "2026-03-04T05:06:07.123Z",
        absent: "2021-02-03T04:05:06.789Z",
    }


def test_a_row_breaking_the_readers_envelope_rules_is_dead_lettered(db_url, redis_url, stream, rds):
    settings = make_settings(db_url, redis_url, stream)
    good = write_valid(db_url, 3)
    bad_exec = insert_raw(db_url, "2026-01-01 00:00:00+00", execution_id="exec-123")
    Relay(settings).run(until_idle=True)
    assert [f["event_id"] for _, f in stream_entries(rds, stream)] == good
    status, error, _ = row(db_url, bad_exec)
    assert status == "dead" and "execution_id" in (error or "") and "UUID" in (error or ""), (status, error)


def test_any_exception_while_encoding_one_row_dead_letters_only_that_row(db_url, redis_url, stream, rds):
    """A bug or an unforeseen value: the exception is the row's reason, not the relay's death."""
    settings = make_settings(db_url, redis_url, stream)
    good = write_valid(db_url, 5)
    bad = insert_raw(db_url, "2026-01-01 00:00:00+00")

    class Boom(Exception):
        pass

    relay = Relay(settings)
    encode = relay._encode

    def flaky(r: Any) -> list[str]:
        if r.event_id == bad:
            raise Boom("unforeseen")
        return encode(r)

    relay._encode = flaky  # type: ignore[method-assign]
    relay.run(until_idle=True)
    assert [f["event_id"] for _, f in stream_entries(rds, stream)] == good
    status, error, _ = row(db_url, bad)
    assert status == "dead" and "Boom" in (error or "") and "unforeseen" in (error or ""), (status, error)


# ---- a row that kills the relay process: only that row is blamed ---------------------------------

# The relay process the harness starts: the normal entry point, plus one fault-injection wrapper around
# Relay._encode that SIGKILLs the process when it is handed the poison row (as a segfault in a C
# extension or the OOM killer would). Nothing in the shipped code knows about it.
_KILLER = """
import os, signal, sys
from outbox.relay import loop

POISON = {poison!r}
_encode = loop.Relay._encode


def _killing_encode(self, r):
    if r.event_id == POISON:
        os.kill(os.getpid(), signal.SIGKILL)
    return _encode(self, r)


loop.Relay._encode = _killing_encode
sys.argv = ["outbox.relay"]
import runpy
runpy.run_module("outbox.relay", run_name="__main__")
"""


@pytest.mark.fault
def test_a_row_that_kills_relays_is_isolated_and_only_it_fails(db_url, redis_url, stream, rds, tmp_path: Path):
    max_attempts = 3
    settings = make_settings(db_url, redis_url, stream, max_attempts=max_attempts, lease_ttl=1.0)
    before = write_valid(db_url, 500)
    poison = insert_raw(db_url, "2026-01-01 00:00:00+00")
    after = write_valid(db_url, 499)
    script = tmp_path / "killing_relay.py"
    script.write_text(textwrap.dedent(_KILLER.format(poison=poison)))

    def settled() -> bool:
        with psycopg.connect(db_url) as conn:
            pending = conn.execute("SELECT count(*) FROM outbox_events WHERE status = 'pending'").fetchone()
            open_batches = conn.execute("SELECT count(*) FROM outbox_batches").fetchone()
        return pending == (0,) and open_batches == (0,)

    kills = 0
    for _spawn in range(12):
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=relay_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for(lambda p=proc: p.poll() is not None or settled(), timeout=60, what="a kill or a settled outbox")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            continue
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        break
    else:
        pytest.fail(f"the outbox did not settle after {kills} relay kills: {status_counts(db_url)}")

    status, error, attempts = row(db_url, poison)
    assert status == "failed" and "interrupted relay batches" in (error or ""), (status, error)
    assert attempts > max_attempts
    on_stream = [f["event_id"] for _, f in stream_entries(rds, stream)]
    assert sorted(on_stream) == sorted(before + after), "the rows that shared the poison row's batch were not published"
    assert len(on_stream) == len(set(on_stream)) == 999
    assert status_counts(db_url) == {"published": 999, "failed": 1}
    # Isolation costs a few more kills than max_attempts (the batch is split on each recovery), never
    # a kill per row.
    assert max_attempts < kills <= max_attempts + 6, kills
    print(f"\n[poison isolation] relay kills={kills} poison attempts={attempts}")


def test_a_relay_recovering_its_own_batches_blames_no_row(db_url, redis_url, stream, rds, caplog):
    """Batches a live relay takes back itself (its database connections were cut mid-batch) are not
    evidence against their rows: no attempt is counted, nothing is split, nothing fails."""
    settings = make_settings(db_url, redis_url, stream, batch_size=200)
    ids = write_valid(db_url, 6000)
    caplog.set_level("INFO", logger="outbox.relay")
    with relay_thread(settings) as relay, psycopg.connect(db_url, autocommit=True) as admin:
        for _ in range(3):
            n = len(stream_entries(rds, stream))
            wait_for(lambda n=n: len(stream_entries(rds, stream)) > n + 300, timeout=30, what="relay progress")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'outbox-relay%'"
            )
        wait_for(lambda: status_counts(db_url) == {"published": 6000}, timeout=60, what="outbox drained")
        stats = relay.stats
    assert stats.db_errors >= 1 and "recovering interrupted batch" in caplog.text, (stats, caplog.text[-2000:])
    assert [f["event_id"] for _, f in stream_entries(rds, stream)] == ids
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT max(attempts) FROM outbox_events").fetchone() == (0,)
    assert "smaller batches" not in caplog.text and stats.failed == 0
