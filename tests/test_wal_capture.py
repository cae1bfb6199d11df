"""WAL capture mode end to end: record() emits a logical decoding message, the relay reads the slot and
publishes exactly once in commit order. On a wal_level=logical server of the session's own (tests/logical.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

import outbox
from outbox import migrate, walmsg
from outbox.errors import CaptureUnavailable
from outbox.relay.capture import WalAndTable
from outbox.relay.setup import setup_wal
from outbox.relay.wal import WalRelay
from outbox.settings import Settings
from tests.conftest import ROOT, make_settings, relay_env, status_counts, stream_entries, wait_for
from tests.logical import LogicalDb

TICKET = {"title": "Printer on fire", "priority": "high"}


@pytest.fixture
def wal_db(logical_db: LogicalDb) -> LogicalDb:
    """A migrated database on the logical server with its slot and publication."""
    migrate.upgrade(logical_db.url)
    setup_wal(logical_db.url, logical_db.slot, logical_db.publication)
    return logical_db


@pytest.fixture
def wal_writer(wal_db: LogicalDb) -> Iterator[LogicalDb]:
    """record() in WAL mode on the test's slot for the duration of the test."""
    outbox.configure(capture="wal", wal_slot=wal_db.slot)
    try:
        yield wal_db
    finally:
        outbox.configure(capture="poll", wal_slot=walmsg.PREFIX)


@pytest.fixture
def wal_settings(wal_db: LogicalDb, redis_url: str, stream: str, rds: redis.Redis) -> Settings:
    return make_settings(wal_db.url, redis_url, stream, capture="wal", wal_slot=wal_db.slot,
                         wal_publication=wal_db.publication)  # fmt: skip


def _ticket(conn: psycopg.Connection[Any], aggregate: str = "T-1", **extra: Any) -> uuid.UUID:
    payload = {"ticketId": str(uuid.uuid4()), **TICKET, **extra}
    return outbox.record(conn, "TICKET_CREATED", payload, tenant_id="t1", aggregate=aggregate)


def _ids(rds: redis.Redis, stream: str) -> list[str]:
    return [f["event_id"] for _sid, f in stream_entries(rds, stream)]


def test_events_reach_the_stream_once_in_commit_order(wal_writer: LogicalDb, wal_settings: Settings, rds, stream):
    a = psycopg.connect(wal_writer.url)
    b = psycopg.connect(wal_writer.url)
    try:
        a1, a2 = _ticket(a), _ticket(a)  # A starts first...
        b1 = _ticket(b)
        b.commit()  # ...but B commits first
        a.commit()
        r = _ticket(a)
        a.rollback()  # never committed: never published
        c1 = _ticket(a)
        a.commit()
    finally:
        a.close()
        b.close()
    stats = WalRelay(wal_settings).run(until_idle=True)
    assert _ids(rds, stream) == [str(b1), str(a1), str(a2), str(c1)]
    assert str(r) not in _ids(rds, stream)
    assert stats.published == 4 and stats.dead == 0
    # Running again re-reads nothing: the slot was confirmed past them.
    again = WalRelay(wal_settings).run(until_idle=True)
    assert again.published == 0 and len(_ids(rds, stream)) == 4


def test_no_table_row_is_written_in_wal_mode(wal_writer: LogicalDb, wal_settings: Settings):
    with psycopg.connect(wal_writer.url) as conn:
        outbox.record_many(conn, [outbox.Event("TICKET_CREATED", {"ticketId": str(uuid.uuid4()), **TICKET},
                                               tenant_id="t1") for _ in range(3)])  # fmt: skip
        conn.commit()
    assert status_counts(wal_writer.url) == {}


def test_writer_without_a_slot_gets_a_clear_error_and_its_transaction_stays_usable(wal_db: LogicalDb):
    outbox.configure(capture="wal", wal_slot="no_such_slot")
    try:
        with psycopg.connect(wal_db.url) as conn:
            conn.execute("CREATE TABLE business (x int)")
            conn.execute("INSERT INTO business VALUES (1)")
            with pytest.raises(CaptureUnavailable, match=r"no_such_slot.*NOT recorded"):
                _ticket(conn)
            with pytest.raises(CaptureUnavailable):
                outbox.record_many(
                    conn, [outbox.Event("TICKET_CREATED", {"ticketId": str(uuid.uuid4()), **TICKET}, tenant_id="t1")]
                )
            conn.execute("INSERT INTO business VALUES (2)")  # the caller's transaction is still usable
            conn.commit()
            assert conn.execute("SELECT count(*) FROM business").fetchone() == (2,)
    finally:
        outbox.configure(capture="poll", wal_slot=walmsg.PREFIX)


def test_invalid_events_become_dead_rows_and_replay_publishes_them(
    wal_writer: LogicalDb, wal_settings: Settings, rds, stream
):
    bad_id = str(uuid.uuid4())
    with psycopg.connect(wal_writer.url) as conn:
        good = _ticket(conn)
        # What a buggy or hostile writer could emit with our prefix: the contract's required field missing,
        # a payload that is not JSON, a header that is not ours at all.
        head = {"v": 1, "id": bad_id, "tenant": "t1", "type": "TICKET_CREATED", "schema": "payload.TicketCreated.v1",
                "at": "2026-12-02T10:00:00.000Z AD"}  # fmt: skip
        conn.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)",
                     [json.dumps(head) + "\n" + json.dumps({"tenantId": "t1", "title": "no ticketId"})])  # fmt: skip
        conn.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)",
                     [json.dumps({**head, "id": "not-a-uuid"}) + "\n{not json"])  # fmt: skip
        conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'garbage')")
        after = _ticket(conn)
        conn.commit()
    stats = WalRelay(wal_settings).run(until_idle=True)
    assert _ids(rds, stream) == [str(good), str(after)]  # the invalid ones never block the rest
    assert stats.dead == 2
    with psycopg.connect(wal_writer.url) as conn:
        rows = dict(conn.execute("SELECT event_id::text, last_error FROM outbox_events WHERE status = 'dead'"))
    assert rows[bad_id].startswith("PayloadValidationError [payload.TicketCreated.v1]")
    assert any("not-a-uuid" in why for why in rows.values())
    # Replay the fixable one after fixing nothing (it stays invalid): it is dead again, through the table path.
    # Replay of a row whose payload is now acceptable publishes it once: make it valid, then replay.
    with psycopg.connect(wal_writer.url) as conn:
        conn.execute(
            "UPDATE outbox_events SET payload = payload || jsonb_build_object('ticketId', gen_random_uuid()::text, "
            "'occurredAt', '2026-12-02T10:00:00.000Z') "
            "WHERE event_id = %s",
            [bad_id],
        )
        conn.commit()
    cmd = [sys.executable, "-m", "outbox.cli", "replay", "--id", bad_id]
    res = subprocess.run(cmd, env=relay_env(wal_settings), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    WalAndTable(wal_settings).run(until_idle=True)
    assert _ids(rds, stream) == [str(good), str(after), bad_id]


def test_per_aggregate_order_is_commit_order_under_concurrent_writers(
    wal_writer: LogicalDb, wal_settings: Settings, rds, stream
):
    """Writers race on the same aggregates (a row lock on the business row, as a real app takes): each aggregate's
    events come out in the order their transactions committed, which the business row's version records."""
    tickets = {f"T-{i}": str(uuid.uuid4()) for i in range(1, 6)}
    with psycopg.connect(wal_writer.url) as conn:
        conn.execute("CREATE TABLE tickets (id text PRIMARY KEY, version int NOT NULL)")
        conn.execute("INSERT INTO tickets SELECT 'T-' || i, 0 FROM generate_series(1, 5) i")
        conn.commit()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(wal_writer.url) as conn:
                for i in range(60):
                    agg = f"T-{(i * 7 + n) % 5 + 1}"
                    row = conn.execute(
                        "UPDATE tickets SET version = version + 1 WHERE id = %s RETURNING version", [agg]
                    ).fetchone()
                    assert row is not None
                    outbox.record(conn, "TICKET_CREATED", {"ticketId": tickets[agg], "title": f"v{row[0]}"},
                                  tenant_id="t1", aggregate=agg)  # fmt: skip
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    relay = WalRelay(wal_settings)
    t = threading.Thread(target=relay.run)
    t.start()
    try:
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for w in threads:
            w.start()
        for w in threads:
            w.join()
        assert not errors, errors
        wait_for(lambda: len(_ids(rds, stream)) == 240, what="240 events on the stream")
    finally:
        relay.stop()
        t.join(15)
    by_ticket: dict[str, list[int]] = {}
    for _sid, f in stream_entries(rds, stream):
        p = json.loads(f["payload_json"])
        by_ticket.setdefault(p["ticketId"], []).append(int(p["title"][1:]))
    assert sorted(by_ticket) == sorted(tickets.values())
    for versions in by_ticket.values():
        assert versions == list(range(1, len(versions) + 1)), versions  # every version, in commit order


def test_sigkill_loops_lose_nothing_and_duplicate_nothing(wal_writer: LogicalDb, wal_settings: Settings, rds, stream):
    """Writers keep committing while the relay process is SIGKILLed again and again; the slot restarts it."""
    stop = threading.Event()
    written: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(wal_writer.url) as conn:
                while not stop.is_set():
                    ids = [str(_ticket(conn)) for _ in range(5)]
                    conn.commit()
                    written.extend(ids)
        except BaseException as exc:
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    env = relay_env(wal_settings)
    try:
        for _ in range(4):
            before = len(_ids(rds, stream))
            proc = subprocess.Popen([sys.executable, "-m", "outbox.relay"], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            try:
                wait_for(lambda b=before: len(_ids(rds, stream)) > b + 50, timeout=60, what="the relay publishing")
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
    finally:
        stop.set()
        w.join()
    assert not errors, errors
    with psycopg.connect(wal_writer.url, autocommit=True) as conn:  # the killed leader's lease runs out
        wait_for(lambda: conn.execute("SELECT lease_until < clock_timestamp() FROM outbox_relay WHERE name = 'wal'")
                 .fetchone() == (True,), what="the lease to expire")  # fmt: skip
    last = WalRelay(wal_settings).run(until_idle=True)  # a last, clean run drains the slot
    assert last.leader_epochs, "the last run did not lead"
    got = _ids(rds, stream)
    assert len(got) == len(set(got)), "an event was published twice"
    assert sorted(got) == sorted(written)


def test_a_missing_slot_is_reported_with_the_fix(wal_db: LogicalDb, redis_url: str, stream: str, rds):
    s = make_settings(wal_db.url, redis_url, stream, capture="wal", wal_slot="gone_slot",
                      wal_publication=wal_db.publication)  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "outbox.relay", "--once"], env=relay_env(s), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0
    assert "gone_slot" in res.stderr and "does not exist" in res.stderr


def _status(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "outbox.cli", "status", *args]
    return subprocess.run(cmd, env=relay_env(settings), capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_status_shows_the_slot_its_retained_wal_and_the_oldest_unconfirmed_event(
    wal_writer: LogicalDb, wal_settings: Settings, rds, stream
):
    with psycopg.connect(wal_writer.url) as conn:
        conn.execute("SELECT pg_sleep(0.3)")  # the event's commit is a little in the past when status peeks
        _ticket(conn)
        conn.execute("SELECT pg_sleep(0.3)")
        conn.commit()
    res = _status(wal_settings, "--json")
    assert res.returncode == 0, res.stderr
    wal = json.loads(res.stdout)["wal"]
    assert wal["slot_exists"] and not wal["slot_active"] and wal["wal_status"] in ("reserved", "extended")
    assert wal["retained_wal_bytes"] > 0
    assert wal["oldest_unconfirmed_source"] == "peek" and wal["oldest_unconfirmed_age"] > 0
    WalRelay(wal_settings).run(until_idle=True)
    wal = json.loads(_status(wal_settings, "--json").stdout)["wal"]
    assert wal["oldest_unconfirmed_age"] == 0.0  # nothing left in the slot
    # Thresholds: a retained-WAL limit below what the slot holds is a warning under the table.
    low = make_settings(wal_writer.url, wal_settings.redis_url or "", stream, capture="wal", wal_slot=wal_writer.slot,
                        wal_publication=wal_writer.publication, wal_warn_retained_bytes=1)  # fmt: skip
    res = _status(low)
    assert res.returncode == 0 and "capture slot" in res.stdout and "retains" in res.stderr, res.stderr


def test_status_says_how_to_recover_a_missing_slot(wal_db: LogicalDb, redis_url: str, stream: str, rds):
    s = make_settings(wal_db.url, redis_url, stream, capture="wal", wal_slot="gone_slot",
                      wal_publication=wal_db.publication)  # fmt: skip
    res = _status(s)
    assert res.returncode == 0
    assert "MISSING" in res.stdout and "outbox migrate --capture wal" in res.stderr


def test_migrate_creates_the_slot_idempotently_and_refuses_a_server_without_logical_wal(
    logical_db: LogicalDb, db_url: str, redis_url: str, stream: str
):
    s = make_settings(logical_db.url, redis_url, stream, capture="wal", wal_slot=logical_db.slot,
                      wal_publication=logical_db.publication)  # fmt: skip
    cmd = [sys.executable, "-m", "outbox.cli", "migrate"]
    first = subprocess.run(cmd, env=relay_env(s), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"slot {logical_db.slot} created" in first.stderr
    again = subprocess.run(cmd, env=relay_env(s), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 0 and f"slot {logical_db.slot} exists" in again.stderr
    # The shared test server (or the session's own default one) runs wal_level=replica.
    replica = make_settings(db_url, redis_url, stream, capture="wal")
    with psycopg.connect(db_url) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
    if level == ("logical",):
        pytest.fail("the default test server must run wal_level=replica for this check")
    res = subprocess.run(cmd, env=relay_env(replica), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert "wal_level" in res.stderr and "logical" in res.stderr


def test_a_redis_that_lost_the_stream_is_reported_and_new_events_stay_exactly_once(
    wal_writer: LogicalDb, wal_settings: Settings, rds, stream, caplog
):
    with psycopg.connect(wal_writer.url) as conn:
        first = [str(_ticket(conn)) for _ in range(3)]
        conn.commit()
    relay = WalRelay(wal_settings)
    t = threading.Thread(target=relay.run)
    t.start()
    try:
        wait_for(lambda: _ids(rds, stream) == first, what="the first events")
        for key in rds.scan_iter(match=f"*{stream}*"):  # what a Redis restart without persistence leaves: nothing
            rds.delete(key)
        with psycopg.connect(wal_writer.url) as conn:
            later = [str(_ticket(conn)) for _ in range(3)]
            conn.commit()
        wait_for(lambda: _ids(rds, stream) == later, what="the new events, once each")
    finally:
        relay.stop()
        t.join(15)
    lines = [r.getMessage() for r in caplog.records if "REDIS LOST PUBLISHED EVENTS" in r.getMessage()]
    assert len(lines) == 1 and "cannot restore them" in lines[0], lines


def test_a_big_transaction_goes_out_in_batches_of_batch_size(wal_writer: LogicalDb, redis_url: str, stream, rds):
    from outbox import wire
    from outbox.relay.publisher import PublishResult, RedisStreamPublisher, fence_key

    s = make_settings(wal_writer.url, redis_url, stream, capture="wal", wal_slot=wal_writer.slot,
                      wal_publication=wal_writer.publication, batch_size=50)  # fmt: skip
    sizes: list[int] = []

    class Counting(RedisStreamPublisher):
        def publish(self, batch: Any) -> PublishResult:
            sizes.append(len(batch))
            return super().publish(batch)

    def factory(instance: str) -> Counting:
        return Counting.from_url(redis_url, stream, fence_key(stream, instance), wire.FIELDS)

    with psycopg.connect(wal_writer.url) as conn:
        big = [str(e) for e in outbox.record_many(conn, [
            outbox.Event("TICKET_CREATED", {"ticketId": str(uuid.uuid4()), **TICKET}, tenant_id="t1")
            for _ in range(300)
        ])]  # fmt: skip
        conn.commit()
        small = []
        for _ in range(30):
            small.append(str(_ticket(conn)))
            conn.commit()
    stats = WalRelay(s, publisher_factory=factory).run(until_idle=True)
    assert _ids(rds, stream) == big + small
    assert stats.published == 330 and max(sizes) <= 50, sizes
