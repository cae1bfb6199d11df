"""Fault injection against the relay: real SIGKILLs, real server stops and crashes, real cut connections.

Every server these tests stop, kill or restart is one the test started itself (``RedisServer`` /
``PostgresServer`` on a free port). Connection cuts on the shared Postgres only terminate the
backends of this test's own relay, in this test's own database.

The invariant checked everywhere is the outbox contract: every committed event ends up on the
stream exactly once, none of a rolled-back transaction does, and its row ends up ``published`` (or
``dead`` when its payload is invalid). The faults that apply to both capture modes run in both
(``mode``, tests/modes.py): in WAL mode there is no row, the slot holds what is not yet relayed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

import outbox
from outbox.embedded import PostgresServer, RedisServer
from outbox.settings import Settings
from tests.conftest import make_settings, spawn_relay, status_counts, wait_for
from tests.modes import (  # noqa: F401 - the fixtures mode, mode_db
    MODES,
    AnyRelay,
    Mode,
    ModeDb,
    in_flight_sql,
    mode_db_fixture,
    mode_fixture,
    relay_for,
    relay_thread,
    wait_backend_gone,
)

TENANT = "t1"
EVENT_TYPE = "TICKET_STATUS_CHANGED"
SCHEMA_REF = "payload.TicketStatusChanged.v1"


# ---- helpers -------------------------------------------------------------------------------------


def ticket_event(**extra: Any) -> outbox.Event:
    """A valid TICKET_STATUS_CHANGED event for tenant t1 on a random ticket."""
    payload = {"ticketId": str(uuid.uuid4()), "previousStatusId": "open", "newStatusId": "closed", **extra}
    return outbox.Event(EVENT_TYPE, payload, tenant_id=TENANT)


def write_events(db_url: str, n: int, *, chunk: int = 500) -> list[str]:
    """Commit ``n`` valid events (``record_many`` in chunks, one transaction per chunk); their ids."""
    ids: list[str] = []
    with psycopg.connect(db_url) as conn:
        for start in range(0, n, chunk):
            batch = [ticket_event() for _ in range(min(chunk, n - start))]
            ids += [str(i) for i in outbox.record_many(conn, batch)]
            conn.commit()
    return ids


def client(url: str) -> redis.Redis:
    """A decoding client for a Redis server the test started itself."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def stream_ids(rds: redis.Redis, stream: str) -> list[tuple[str, str]]:
    """(stream id, event_id) of every entry, in stream order."""
    return [(sid, f["event_id"]) for sid, f in rds.xrange(stream)]


def xlen(rds: redis.Redis, stream: str) -> int:
    try:
        return int(rds.xlen(stream))
    except redis.ConnectionError:
        return -1


def rows(db_url: str) -> dict[str, tuple[str, str | None, str | None]]:
    """event_id -> (status, stream_id, last_error) for every outbox row."""
    with psycopg.connect(db_url) as c:
        got = c.execute("SELECT event_id::text, status, stream_id, last_error FROM outbox_events").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in got}


def pending_count(db_url: str) -> int:
    with psycopg.connect(db_url, connect_timeout=3) as c:
        return int(c.execute("SELECT count(*) FROM outbox_events WHERE status = 'pending'").fetchone()[0])


def in_flight(db_url: str) -> int:
    """Pending rows already handed a stream position by a relay (a batch in flight or interrupted).

    Works with either bookkeeping of the relay: positions kept on the rows (``publish_seq`` set while
    pending) or open batches in ``outbox_batches``.
    """
    with psycopg.connect(db_url) as c:
        return int(c.execute(in_flight_sql(c)).fetchone()[0])


def relay_row(db_url: str, lease: str = "default") -> dict[str, Any]:
    """A lease row (``default``: poll, ``wal``), plus ``listening`` (notify_until ahead) and the server's ``now``."""
    with psycopg.connect(db_url) as c:
        cur = c.execute(
            "SELECT leader, epoch, last_seq, lease_until, leader_since, notify_until, "
            "notify_until > clock_timestamp() AS listening, clock_timestamp() AS now "
            "FROM outbox_relay WHERE name = %s",
            (lease,),
        )
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def leader_pid(db_url: str, lease: str = "default") -> int | None:
    """PID in the leader identity (``host:pid:suffix``) while the lease is live."""
    r = relay_row(db_url, lease)
    if not r["leader"] or r["lease_until"] is None or r["lease_until"] < r["now"]:
        return None
    return int(r["leader"].split(":")[1])


def assert_exactly_once(
    rds: redis.Redis, stream: str, db_url: str, expected: set[str], *, capture: str = "poll",
    never: Collection[str] = (),
) -> int:  # fmt: skip
    """Every expected event is on the stream exactly once, nothing else is (none of ``never``: events of
    rolled-back transactions), every row is published (``capture="wal"``: there is no row at all).

    Returns how many rows were marked after a fence skip (published, but with no stream id of their
    own: the event was already on the stream when a later relay re-sent it).
    """
    entries = stream_ids(rds, stream)
    counts = collections.Counter(eid for _, eid in entries)
    dups = {eid: c for eid, c in counts.items() if c > 1}
    assert not dups, f"{len(dups)} event(s) on the stream more than once, e.g. {list(dups.items())[:5]}"
    on_stream = set(counts)
    rolled_back = set(never) & on_stream
    assert not rolled_back, f"{len(rolled_back)} event(s) of rolled-back transactions on the stream"
    missing = expected - on_stream
    extra = on_stream - expected
    assert not missing, f"{len(missing)} committed event(s) never reached the stream, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected event(s) on the stream, e.g. {sorted(extra)[:5]}"
    table = rows(db_url)
    if capture == "wal":
        assert not table, f"WAL capture wrote {len(table)} outbox row(s), e.g. {list(table.items())[:3]}"
        return 0
    assert set(table) == expected, "outbox rows and committed events differ"
    not_published = {e: r for e, r in table.items() if r[0] != "published"}
    assert not not_published, f"{len(not_published)} row(s) not published, e.g. {list(not_published.items())[:3]}"
    by_sid = dict(entries)
    for eid, (_, sid, _) in table.items():
        if sid is not None:
            assert by_sid.get(sid) == eid, f"row {eid} says stream id {sid}, which holds {by_sid.get(sid)}"
    return sum(1 for _, sid, _ in table.values() if sid is None)


def drain(settings: Settings, timeout: float = 30.0) -> AnyRelay:
    """Run fresh relays (of ``settings.capture``) with ``until_idle`` until one became leader and emptied the outbox."""
    deadline = time.monotonic() + timeout
    while True:
        relay = relay_for(settings)
        relay.run(until_idle=True)
        if relay.stats.leader_epochs:
            return relay
        assert time.monotonic() < deadline, "no relay could take the lease (a dead leader's lease never expired?)"
        time.sleep(0.1)


def terminate_relay_backends(admin_url: str, dbname: str, application: str = "outbox-relay%") -> int:
    """Cut the relay's connections to ``dbname`` whose application_name is LIKE ``application`` (server
    side; by default all of them); how many were cut."""
    with psycopg.connect(admin_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()",
            (dbname, application),
        ).fetchone()
    return int(row[0])


def end_reader(mode: Mode, db_url: str, admin: psycopg.Connection[Any]) -> int | None:
    """WAL mode: terminate the walsender holding the slot; its pid, or None when there was none to end."""
    pid = mode.reader_pid(db_url)
    if pid is None or not admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
        return None
    return pid


class Writer(threading.Thread):
    """Writes small committed batches until stopped, surviving a dead or restarting database.

    ``committed``: ids whose COMMIT returned. ``unsure``: ids whose COMMIT raised (may or may not
    have committed; the database decides). ``rolled_back``: every ``rollback_every``-th batch is
    written, then rolled back (never committed: must never be published).
    """

    def __init__(self, db_url: str, *, chunk: int = 10, pause: float = 0.005, rollback_every: int = 7) -> None:
        super().__init__(daemon=True)
        self.db_url, self.chunk, self.pause, self.rollback_every = db_url, chunk, pause, rollback_every
        self.committed: set[str] = set()
        self.unsure: set[str] = set()
        self.rolled_back: set[str] = set()
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        n = 0
        while not self.halt.is_set():
            ids: list[str] = []
            n += 1
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.db_url, connect_timeout=2)
                ids = [str(i) for i in outbox.record_many(conn, [ticket_event() for _ in range(self.chunk)])]
                if n % self.rollback_every == 0:
                    conn.rollback()
                    self.rolled_back.update(ids)
                else:
                    conn.commit()
                    self.committed.update(ids)
            except psycopg.Error:
                self.errors += 1
                self.unsure.update(ids)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive()


@contextlib.contextmanager
def own_redis(*, appendonly: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.close()


# ---- 1. SIGKILL of the relay, repeatedly ---------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_sigkill_relay_repeatedly_publishes_every_event_exactly_once(mode: Mode, mode_db: ModeDb, redis_url, stream,
                                                                     rds):  # fmt: skip
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream, batch_size=20)
    # WAL mode reads whole transactions (chunks of 20: batches of 20 too) and publishes several times faster than
    # poll mode: it needs a longer backlog to still be busy at the 5th kill.
    expected = set(write_events(db_url, 15000 if mode.wal else 3000, chunk=20))
    written = mode.mark(db_url)
    # A warm standby is always running, so each kill costs one lease expiry, not a Python start-up.
    procs = {p.pid: p for p in (spawn_relay(settings), spawn_relay(settings))}
    kills = []  # (stream length before, stream length at the kill, the victim's batch left in flight)
    rng = random.Random()
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for i in range(8):
                before = xlen(rds, stream)
                if before >= len(expected) - 300:
                    break
                wait_for(lambda b=before: xlen(rds, stream) > b, timeout=20, interval=0.002, what="relay progress")
                # A leader among the live relays: the lease of the one killed last stays live for up to
                # lease_ttl, and progress can also be its last script, sent before the kill and run late.
                pid = wait_for(lambda: (p := leader_pid(db_url, mode.lease)) in procs and p, timeout=5,
                               what="a live leader")  # fmt: skip
                victim = procs.pop(pid)
                reader = mode.reader_pid(db_url)
                if i % 2:
                    time.sleep(rng.uniform(0, 0.05))
                    victim.kill()  # SIGKILL at a random moment
                else:  # between claim and mark (WAL: between publish and confirm)
                    mode.signal_while_in_flight(db_url, rds, stream, victim.pid, signal.SIGKILL)
                victim.communicate(timeout=10)
                assert victim.returncode == -signal.SIGKILL, f"relay exited on its own (rc={victim.returncode})"
                wait_backend_gone(db_url, reader)  # WAL: its walsender has taken the last confirm it was sent
                kills.append((before, xlen(rds, stream), mode.in_flight(conn, rds, stream)))
                new = spawn_relay(settings)
                procs[new.pid] = new
    finally:
        for p in procs.values():
            p.kill()
            p.communicate(timeout=10)
    assert len(kills) >= 5, f"backlog drained after only {len(kills)} kills: {kills}"
    assert any(k[2] for k in kills), f"no kill interrupted a batch in flight: {kills}"
    assert not mode.drained(db_url, written), "every event was relayed before the last kill: nothing was interrupted"

    final = drain(settings)
    skipped_rows = assert_exactly_once(rds, stream, db_url, expected, capture=mode.name)
    assert final.stats.failed == 0 and final.stats.dead == 0
    print(
        f"\n[sigkill] kills={len(kills)} progress={kills} final relay: published={final.stats.published} "
        f"fence_skipped={final.stats.fence_skipped}; rows marked without a stream id: {skipped_rows}"
    )
    # Rows a recovering relay finds already on the stream (fence skips) get their stream ids looked up
    # in the stream's tail; the whole stream (3000 entries) is within the lookup here, so none is left
    # without one (assert_exactly_once checked that every id found holds its own event).
    assert skipped_rows == 0, f"{skipped_rows} fence-skipped row(s) left without their stream id"


# ---- 2. Redis stopped mid-run --------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_redis_stopped_rows_stay_pending_then_published_once(mode: Mode, mode_db: ModeDb, stream):
    db_url = mode_db.url
    with own_redis(appendonly=True) as server:
        rds = client(server.url)
        settings = mode.settings(db_url, server.url, stream, batch_size=50)
        with relay_thread(settings) as relay:
            first = set(write_events(db_url, 300, chunk=100))
            wait_for(lambda: xlen(rds, stream) == 300, timeout=20, what="first events on the stream")

            server.stop()
            second = set(write_events(db_url, 100, chunk=100))
            held_from = mode.mark(db_url)  # WAL: past the first held transaction's commit
            second |= set(write_events(db_url, 200, chunk=100))
            errors = relay.stats.broker_errors
            wait_for(lambda: relay.stats.broker_errors >= errors + 2, timeout=10, what="two failed publishes")
            counts = status_counts(db_url)
            if mode.wal:  # the slot must not be confirmed past an event Redis does not hold
                assert counts == {}, counts
                assert not mode.drained(db_url, held_from), "the slot was confirmed past events Redis never got"
            else:
                assert counts.get("pending") == 300, counts
                assert counts.get("published") == 300, counts
                assert "dead" not in counts and "failed" not in counts, counts
            assert relay.stats.published == 300

            server.start()  # same port, same AOF directory: stream and fence come back
            # The relay may already be publishing the held events again; the first 300 must have survived.
            survivors = [f["event_id"] for _, f in rds.xrange(stream, count=300)]
            assert set(survivors) == first, "stream lost across a graceful Redis restart with appendonly"
            third = set(write_events(db_url, 200, chunk=100))
            mode.wait_drained(db_url)
            stats = relay.stats
        assert_exactly_once(rds, stream, db_url, first | second | third, capture=mode.name)
        assert stats.published == 800 and stats.dead == 0 and stats.failed == 0, stats
        rds.close()


# ---- 3. Redis SIGKILLed while publishing ---------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_redis_sigkilled_while_publishing_no_duplicates(mode: Mode, mode_db: ModeDb, stream):
    db_url = mode_db.url
    with own_redis(appendonly=True) as server:
        rds = client(server.url)
        settings = mode.settings(db_url, server.url, stream, batch_size=50)
        backlog = set(write_events(db_url, 3000, chunk=50))
        writer = Writer(db_url, chunk=5, pause=0.01)
        with relay_thread(settings) as relay:
            writer.start()
            killed = 0
            for _ in range(3):
                before = xlen(rds, stream)
                wait_for(lambda b=before: xlen(rds, stream) > b + 50, timeout=30, interval=0.002, what="progress")
                server.kill()  # SIGKILL
                killed += 1
                time.sleep(0.3)
                server.start()
            writer.stop()
            assert writer.errors == 0
            expected = backlog | writer.committed
            mode.wait_drained(db_url, timeout=60)
            stats = relay.stats
        skipped = assert_exactly_once(rds, stream, db_url, expected, capture=mode.name, never=writer.rolled_back)
        assert stats.dead == 0 and stats.failed == 0, stats
        print(f"\n[redis kill {mode.name}] kills={killed} events={len(expected)} stats={stats} "
              f"fence-skipped rows={skipped}")  # fmt: skip
        rds.close()


# ---- 4. Postgres connections cut -----------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_postgres_connections_cut_repeatedly(mode: Mode, mode_db: ModeDb, redis_url, rds, stream):
    """Every connection of the relay is cut, again and again, while writers write; in WAL mode also the
    walsender alone (the slot's active_pid), after which the relay must read the slot again."""
    db_url, dbname = mode_db.url, mode_db.name
    settings = mode.settings(db_url, redis_url, stream)
    backlog = set(write_events(db_url, 1000, chunk=100))
    writer = Writer(db_url, chunk=10, pause=0.005)
    cut = walsender_cuts = 0
    with relay_thread(settings) as relay, psycopg.connect(mode_db.admin_url, autocommit=True) as admin:
        writer.start()
        for i in range(10 if mode.wal else 6):
            before = xlen(rds, stream)
            if i % 2 and mode.wal:
                old = wait_for(lambda: end_reader(mode, db_url, admin), timeout=10,
                               what="the walsender holding the slot to terminate")  # fmt: skip
                wait_for(lambda o=old: mode.reader_pid(db_url) not in (None, o), timeout=10,
                         what="the relay to read the slot again after its walsender was ended")  # fmt: skip
                walsender_cuts += 1
            else:
                wait_for(
                    lambda: terminate_relay_backends(mode_db.admin_url, dbname) > 0 or None,
                    timeout=10,
                    interval=0.01,
                    what="a relay backend to terminate",
                )
                cut += 1
            wait_for(lambda b=before: xlen(rds, stream) > b + 20, timeout=20, what="progress after the cut")
        writer.stop()
        assert writer.errors == 0
        expected = backlog | writer.committed
        mode.wait_drained(db_url)
        stats = relay.stats
    skipped = assert_exactly_once(rds, stream, db_url, expected, capture=mode.name, never=writer.rolled_back)
    assert stats.db_errors >= cut + walsender_cuts, stats
    assert stats.dead == 0 and stats.failed == 0, stats
    print(f"\n[pg cut {mode.name}] cuts={cut} walsender cuts={walsender_cuts} events={len(expected)} stats={stats} "
          f"fence-skipped rows={skipped}")  # fmt: skip


@pytest.mark.fault  # poll only: the marker connection is the poll relay's
def test_marker_connection_cut_repeatedly(db_url, pg_admin_url, settings, rds, stream, caplog):
    """Only the marker thread's connection is cut, again and again, while writers write: every lost
    mark is written again on the main connection (or, failing that, recovered through the fence);
    nothing is published twice and no batch is left open."""
    dbname = urlsplit(db_url).path.lstrip("/")
    backlog = set(write_events(db_url, 3000))
    writer = Writer(db_url, chunk=10, pause=0.005)
    caplog.set_level("WARNING", logger="outbox.relay")
    cut = 0
    with relay_thread(settings.model_copy(update={"batch_size": 100})) as relay:
        writer.start()
        for _ in range(8):
            wait_for(
                lambda: terminate_relay_backends(pg_admin_url, dbname, "outbox-relay-mark") > 0 or None,
                timeout=10,
                interval=0.005,
                what="the marker's backend to terminate",
            )
            cut += 1
            time.sleep(0.15)
        writer.stop()
        assert writer.errors == 0
        expected = backlog | writer.committed
        wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="everything published")
        wait_for(lambda: in_flight(db_url) == 0 and open_batches(db_url) == 0, timeout=10, what="no open batch")
        stats = relay.stats
    failed_marks = sum("writing a batch mark failed" in r.getMessage() for r in caplog.records)
    assert failed_marks >= 1, "no mark was ever interrupted: the cuts missed the marker"
    skipped = assert_exactly_once(rds, stream, db_url, expected)
    assert stats.dead == 0 and stats.failed == 0, stats
    print(f"\n[marker cut] cuts={cut} failed marks={failed_marks} events={len(expected)} stats={stats} "
          f"fence-skipped rows={skipped}")  # fmt: skip


def open_batches(db_url: str) -> int:
    """Rows in outbox_batches (claimed, not yet closed by a mark)."""
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM outbox_batches").fetchone()
    return int(row[0]) if row else 0


# ---- 5. own Postgres stopped / crashed and restarted ---------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_postgres_restart_everything_exactly_once(mode: Mode, how, redis_url, stream, rds):
    server = PostgresServer(settings=mode.server_settings).start()
    try:
        url = server.url("postgres")
        mode.prepare(url)
        settings = mode.settings(url, redis_url, stream, batch_size=50)
        writer = Writer(url, chunk=10, pause=0.005)
        with relay_thread(settings) as relay:
            writer.start()
            for _ in range(2):
                wrote, sent = len(writer.committed), xlen(rds, stream)
                wait_for(lambda w=wrote, s=sent: len(writer.committed) > w + 100 and xlen(rds, stream) > s + 100,
                         timeout=20, what="traffic")  # fmt: skip
                if how == "stop":
                    server.stop()
                else:
                    server.kill()
                time.sleep(0.7)  # down for a while: writers fail, the relay retries
                server.start()
            before = len(writer.committed)
            wait_for(lambda: len(writer.committed) > before + 50, timeout=20, what="writes after the restart")
            writer.stop()
            mode.wait_drained(url)
            stats = relay.stats
        # What committed: poll, the outbox rows; WAL, what the slot delivered (there is no row).
        got = {e for _, e in stream_ids(rds, stream)} if mode.wal else set(rows(url))
        assert writer.committed <= got, "a committed event is missing after the restart"
        assert got <= writer.committed | writer.unsure
        skipped = assert_exactly_once(rds, stream, url, got, capture=mode.name, never=writer.rolled_back)
        assert stats.db_errors >= 2 and stats.dead == 0 and stats.failed == 0, stats
        print(f"\n[pg {how} {mode.name}] events={len(got)} writer errors={writer.errors} stats={stats} "
              f"fence-skipped={skipped}")  # fmt: skip
    finally:
        server.close()


# ---- 6. poison rows ------------------------------------------------------------------------------


def insert_raw(conn: psycopg.Connection[Any], event_type: str, ref: str, payload: dict[str, Any], tenant: str) -> str:
    """A row written by a non-validating writer (plain SQL)."""
    eid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s::jsonb, clock_timestamp())",
        (eid, tenant, event_type, ref, json.dumps(payload)),
    )
    return eid


# poll only: rows written by plain SQL (WAL mode's malformed messages: tests/test_wal_capture.py)
def test_poison_rows_are_dead_lettered_and_do_not_block(settings, rds, stream, db_url):
    ok = "2026-01-01T00:00:00.000Z"
    good = set(write_events(db_url, 20))
    with psycopg.connect(db_url) as conn:
        missing_field = insert_raw(
            conn, EVENT_TYPE, SCHEMA_REF,
            {"tenantId": TENANT, "occurredAt": ok, "previousStatusId": "a", "newStatusId": "b"}, TENANT,
        )  # fmt: skip
        wrong_tenant = insert_raw(
            conn, EVENT_TYPE, SCHEMA_REF,
            {"tenantId": "t2", "occurredAt": ok, "ticketId": str(uuid.uuid4()), "previousStatusId": "a",
             "newStatusId": "b"}, TENANT,
        )  # fmt: skip
        unknown_type = insert_raw(
            conn, "NO_SUCH_EVENT_TYPE", "payload.NoSuchEventType.v1", {"tenantId": TENANT, "occurredAt": ok}, TENANT
        )
        conn.commit()
    good |= set(write_events(db_url, 20))
    with relay_thread(settings) as relay:
        wait_for(lambda: pending_count(db_url) == 0, timeout=15, what="outbox drained")
        stats = relay.stats
    table = rows(db_url)
    poison = {missing_field, wrong_tenant, unknown_type}
    for eid in poison:
        assert table[eid][0] == "dead", (eid, table[eid])
    err = table[missing_field][2] or ""
    assert SCHEMA_REF in err and "ticketId" in err and "PayloadValidationError" in err, err
    err = table[wrong_tenant][2] or ""
    assert "TenantMismatch" in err and "t2" in err, err
    err = table[unknown_type][2] or ""
    assert "UnknownEventType" in err and "NO_SUCH_EVENT_TYPE" in err, err
    on_stream = [eid for _, eid in stream_ids(rds, stream)]
    assert not poison & set(on_stream), "a dead-lettered event reached the stream"
    assert sorted(on_stream) == sorted(good), "valid events were not all published exactly once"
    assert all(table[e][0] == "published" for e in good)
    assert stats.dead == 3 and stats.failed == 0 and stats.published == 40, stats


@pytest.mark.fault  # poll only: an open batch (outbox_batches) and a raw row
def test_poison_row_in_an_interrupted_batch_stays_dead(db_url, stream):
    """A batch [A, P, B] with P invalid: A and B reach the stream, the relay is SIGKILLed before it
    records the outcome. The successor recovers the batch: A and B are already on the stream (fence),
    but P never was: it must end 'dead', not 'published'.

    Staging (all real faults): the test's own Redis is frozen (SIGSTOP) while the relay claims the
    batch; the test then locks the open batch's row, so after Redis thaws and the batch is published
    the relay's mark (which closes the batch in the same transaction) blocks; it is SIGKILLed there.
    """
    with own_redis(appendonly=False) as server:
        rds = client(server.url)
        settings = make_settings(db_url, server.url, stream, batch_size=50)
        proc = spawn_relay(settings)
        lock: psycopg.Connection[Any] | None = None
        try:
            wait_for(lambda: leader_pid(db_url) == proc.pid, timeout=20, what="the relay to lead")
            time.sleep(0.3)  # idle
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                with psycopg.connect(db_url) as conn:
                    a = str(outbox.record_many(conn, [ticket_event()])[0])
                    p = insert_raw(
                        conn, EVENT_TYPE, SCHEMA_REF,
                        {"tenantId": TENANT, "occurredAt": "2026-01-01T00:00:00.000Z", "previousStatusId": "a",
                         "newStatusId": "b"}, TENANT,
                    )  # fmt: skip
                    b = str(outbox.record_many(conn, [ticket_event()])[0])
                    conn.commit()
                # The relay rejects P and commits that verdict before it sends A and B (a rejected row
                # must never be left pending below the fence); A and B stay in flight while Redis is frozen.
                wait_for(
                    lambda: in_flight(db_url) == 2 and rows(db_url)[p][0] == "dead",
                    timeout=10,
                    what="the batch [A, P, B] to be claimed and P rejected",
                )
                lock = psycopg.connect(db_url)
                assert lock.execute("SELECT count(*) FROM (SELECT 1 FROM outbox_batches FOR UPDATE) b").fetchone() == (
                    1,
                )
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            wait_for(lambda: {e for _, e in stream_ids(rds, stream)} == {a, b}, timeout=10, what="A and B")
            time.sleep(0.3)  # the relay's mark is now blocked on the batch row, its outcome not yet written
            proc.kill()
            proc.communicate(timeout=10)
            # The killed relay's backend is still waiting on our lock with the rest of its pipeline
            # (COMMIT included) already received: Postgres only notices a dead client at its next
            # socket operation. End it, as client_connection_check_interval would, before unlocking.
            assert lock is not None
            lock.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'outbox-relay%'"
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            if lock is not None:
                lock.close()
        assert in_flight(db_url) == 2, "staging failed: the killed relay's batch should still be open"

        final = drain(settings)
        table = rows(db_url)
        on_stream = [e for _, e in stream_ids(rds, stream)]
        assert sorted(on_stream) == sorted([a, b])
        assert table[a][0] == "published" and table[b][0] == "published"
        assert table[p][0] == "dead", (
            f"poison row P ended {table[p][0]!r} (stream id {table[p][1]}, last_error {table[p][2]!r}) "
            f"though it never reached the stream; successor stats: {final.stats}"
        )
        assert "ticketId" in (table[p][2] or "")
        assert final.stats.fence_skipped == 2 and final.stats.published == 0, final.stats
        rds.close()


# ---- 7. SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_sigterm_exits_zero_promptly_and_successor_finishes(mode: Mode, mode_db: ModeDb, redis_url, stream, rds):
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream, batch_size=10)
    expected = set(write_events(db_url, 4000, chunk=10))  # WAL mode reads whole transactions: batches of 10 too
    proc = spawn_relay(settings)
    try:
        wait_for(lambda: xlen(rds, stream) > 200, timeout=20, interval=0.005, what="relay progress")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = err.decode(errors="replace")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{log[-2000:]}"
    assert took < 5
    assert "received SIGTERM" in log, log[-2000:]
    left = len(expected) - xlen(rds, stream)
    assert left > 0, "the relay finished the whole backlog before SIGTERM: it was not busy"
    if not mode.wal:
        assert pending_count(db_url) == left
    with psycopg.connect(db_url) as c:
        stopped_in_flight = mode.in_flight(c, rds, stream)
    assert stopped_in_flight == 0, "a graceful stop left a batch in flight (it should finish the batch in hand)"
    assert relay_row(db_url, mode.lease)["leader"] is None, "a graceful stop did not release the lease"

    t1 = time.monotonic()
    final = drain(settings.model_copy(update={"batch_size": 500}))
    assert time.monotonic() - t1 < settings.lease_ttl + 10
    assert final.stats.fence_skipped == 0 and final.stats.published == left, final.stats
    assert assert_exactly_once(rds, stream, db_url, expected, capture=mode.name) == 0
