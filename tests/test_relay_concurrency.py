"""Concurrency: several relays at once, concurrent writers, late commits, wake-up, lease takeover.

The fault tests run in both capture modes (``mode``, tests/modes.py); the rest are about the poll relay's own
mechanics (claims over invisible rows, NOTIFY wake-up, the table's lease) and stay poll only."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

import outbox
from tests.conftest import make_settings, spawn_relay, stream_entries, wait_for
from tests.modes import MODES, Mode, ModeDb, mode_db_fixture, mode_fixture, relay_thread  # noqa: F401 - fixtures
from tests.test_relay_faults import (
    EVENT_TYPE,
    TENANT,
    Writer,
    assert_exactly_once,
    leader_pid,
    relay_row,
    stream_ids,
    write_events,
    xlen,
)

# ---- helpers -------------------------------------------------------------------------------------


def record_one(db_url: str, **extra: Any) -> str:
    """Record and commit one valid event in its own transaction."""
    with psycopg.connect(db_url) as conn:
        eid = outbox.record(
            conn, EVENT_TYPE,
            {"ticketId": str(uuid.uuid4()), "previousStatusId": "open", "newStatusId": "closed", **extra},
            tenant_id=TENANT,
        )  # fmt: skip
        conn.commit()
    return str(eid)


class RelayProcess:
    """``python -m outbox.relay`` in a child process, its stderr collected line by line by a reader thread."""

    def __init__(self, settings: Any) -> None:
        self.proc = spawn_relay(settings)
        # WAL mode runs the slot's relay and the table's: it is up once the slot's relay is.
        self._started = " starting (slot=" if settings.capture == "wal" else " starting (stream="
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def started(self) -> bool:
        """The relay loop is running (imports done, signal handlers installed)."""
        return any(self._started in line for line in self.lines)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    def terminate(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


class AggregateWriter(threading.Thread):
    """Owns a few aggregates; one event per transaction with a per-aggregate ``seqNo`` in the payload. Every
    10th transaction also records an event and rolls back (``rolled_back``: never to be published)."""

    def __init__(self, db_url: str, name: str, *, aggregates: int, events: int, pause: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.db_url, self.events, self.pause = db_url, events, pause
        self.aggs = {f"{name}-agg{j}": str(uuid.uuid4()) for j in range(aggregates)}
        self.seq: dict[str, int] = collections.Counter()
        self.ids: set[str] = set()
        self.rolled_back: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random()
        try:
            with psycopg.connect(self.db_url) as conn:
                for i in range(self.events):
                    agg = rng.choice(list(self.aggs))
                    if i % 10 == 9:
                        payload = {"ticketId": self.aggs[agg], "previousStatusId": "a", "newStatusId": "b",
                                   "seqNo": -1, "agg": agg}  # fmt: skip
                        eid = outbox.record(conn, EVENT_TYPE, payload, tenant_id=TENANT, aggregate=agg)
                        conn.rollback()
                        self.rolled_back.add(str(eid))
                    self.seq[agg] += 1
                    payload = {
                        "ticketId": self.aggs[agg], "previousStatusId": "a", "newStatusId": "b",
                        "seqNo": self.seq[agg], "agg": agg,
                    }  # fmt: skip
                    eid = outbox.record(conn, EVENT_TYPE, payload, tenant_id=TENANT, aggregate=agg)
                    conn.commit()
                    self.ids.add(str(eid))
                    time.sleep(rng.uniform(0, self.pause))
        except BaseException as exc:
            self.error = exc


# ---- 8. several relays, concurrent writers -------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_several_relays_with_concurrent_writers_exactly_once_in_aggregate_order(
    mode: Mode, mode_db: ModeDb, n, redis_url, stream, rds
):
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream, batch_size=25)
    relays = [RelayProcess(settings) for _ in range(n)]
    try:
        writers = [AggregateWriter(db_url, f"w{w}", aggregates=5, events=400) for w in range(4)]
        for w in writers:
            w.start()
        # Mid-traffic, SIGKILL whichever relay leads and start a replacement: a standby must take over.
        wait_for(lambda: xlen(rds, stream) > 300, timeout=30, what="traffic on the stream")
        pid = wait_for(lambda: leader_pid(db_url, mode.lease), timeout=10, what="a leader")
        victim = next(r for r in relays if r.pid == pid)
        victim.kill()
        relays.remove(victim)
        relays.append(RelayProcess(settings))
        for w in writers:
            w.join(60)
            assert not w.is_alive() and w.error is None, w.error
        mode.wait_drained(db_url)
        epoch = relay_row(db_url, mode.lease)["epoch"]
        wait_for(lambda: all(r.started() for r in relays), timeout=20, what="every relay to be up")
    finally:
        codes = [r.terminate() for r in relays]
    assert codes == [0] * len(relays), [(c, r.log[-1500:]) for c, r in zip(codes, relays, strict=True)]
    assert epoch >= 2, "no takeover happened after the leader was killed"

    expected = set().union(*(w.ids for w in writers))
    assert len(expected) == 1600
    assert_exactly_once(rds, stream, db_url, expected, capture=mode.name,
                        never=set().union(*(w.rolled_back for w in writers)))  # fmt: skip
    assert_aggregate_order(rds, stream, writers)


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_frozen_leader_is_replaced_and_publishes_nothing_twice_when_it_thaws(
    mode: Mode, mode_db: ModeDb, redis_url, stream, rds
):
    """A leader frozen (SIGSTOP, as a long GC pause or a paused VM) in the middle of a batch: a standby
    takes over once the lease expires (WAL: ending the frozen leader's walsender, which still holds the
    slot); when the old leader thaws it may still send its stale batch, which the fence must drop.
    Writers keep writing throughout."""
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream, batch_size=25)
    a = RelayProcess(settings)
    b: RelayProcess | None = None
    try:
        wait_for(lambda: leader_pid(db_url, mode.lease) == a.pid, timeout=20, what="A to lead")
        b = RelayProcess(settings)
        wait_for(b.started, timeout=20, what="B to stand by")
        # Writers run for several seconds (well past the 1 s lease), so traffic is still flowing when B leads.
        writers = [AggregateWriter(db_url, f"w{w}", aggregates=5, events=400, pause=0.012) for w in range(4)]
        for w in writers:
            w.start()
        wait_for(lambda: xlen(rds, stream) > 200, timeout=30, what="traffic on the stream")
        mode.signal_while_in_flight(db_url, rds, stream, a.pid, signal.SIGSTOP)
        # Counted at the freeze, not at the takeover: B may drain the whole backlog within one poll of
        # leader_pid. Past this point A can add at most the one batch (25) whose script it had already sent.
        frozen_at = xlen(rds, stream)
        try:
            wait_for(lambda: leader_pid(db_url, mode.lease) == b.pid, timeout=settings.lease_ttl + 5,
                     what="B to take over")  # fmt: skip
            wait_for(lambda: xlen(rds, stream) > frozen_at + 50, timeout=15, what="B to publish")
        finally:
            os.kill(a.pid, signal.SIGCONT)
        for w in writers:
            w.join(60)
            assert not w.is_alive() and w.error is None, w.error
        mode.wait_drained(db_url)
        wait_for(lambda: "lost the lease" in a.log, timeout=10, what="A to notice it lost the lease")
        assert leader_pid(db_url, mode.lease) == b.pid
    finally:
        codes = [r.terminate() for r in (a, b) if r is not None]
    assert codes == [0, 0], (codes, a.log[-1500:])
    print("\n[frozen leader] A:", next((x for x in reversed(a.lines) if "relay stopped" in x), "?"))
    expected = set().union(*(w.ids for w in writers))
    assert_exactly_once(rds, stream, db_url, expected, capture=mode.name,
                        never=set().union(*(w.rolled_back for w in writers)))  # fmt: skip
    assert_aggregate_order(rds, stream, writers)


def assert_aggregate_order(rds: Any, stream: str, writers: list[AggregateWriter]) -> None:
    """Per aggregate, the stream carries seqNo 1..n in order (commit order of its single writer)."""
    per_agg: dict[str, list[int]] = collections.defaultdict(list)
    for _, fields in stream_entries(rds, stream):
        payload = json.loads(fields["payload_json"])
        per_agg[payload["agg"]].append(payload["seqNo"])
    want = {agg: w.seq[agg] for w in writers for agg in w.aggs if w.seq[agg]}
    assert set(per_agg) == set(want)
    for agg, seqs in per_agg.items():
        out_of_order = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
        assert not out_of_order, f"aggregate {agg}: stream order breaks commit order at {out_of_order[:5]}"
        assert seqs == list(range(1, want[agg] + 1)), f"aggregate {agg}: {seqs[:20]}..."


# ---- 9. a long transaction commits late ----------------------------------------------------------


# poll only: the claim passing over a row its transaction has not committed yet (outbox ids)
def test_long_transaction_committing_late_is_still_published(settings, rds, stream, db_url):
    with relay_thread(settings) as relay:
        late = psycopg.connect(db_url)
        try:
            e1 = str(outbox.record(late, EVENT_TYPE, {"ticketId": str(uuid.uuid4()), "previousStatusId": "a",
                                                      "newStatusId": "b"}, tenant_id=TENANT))  # fmt: skip
            others = {record_one(db_url) for _ in range(49)}
            wait_for(lambda: {e for _, e in stream_ids(rds, stream)} >= others, timeout=10, what="E2..E50")
            time.sleep(0.3)  # several more claims pass over the invisible row
            assert e1 not in {e for _, e in stream_ids(rds, stream)}
            e1_id = late.execute("SELECT id FROM outbox_events WHERE event_id = %s", (e1,)).fetchone()[0]
            with psycopg.connect(db_url) as c:
                ids = dict(c.execute("SELECT event_id::text, id FROM outbox_events").fetchall())
            assert e1 not in ids, "E1 is visible before its transaction committed"
            assert e1_id < min(ids[e] for e in others), "E1 should hold the lowest outbox id"
            late.commit()
        finally:
            late.close()
        wait_for(lambda: e1 in {e for _, e in stream_ids(rds, stream)}, timeout=10, what="the late event E1")
        time.sleep(0.3)
        stats = relay.stats
    assert_exactly_once(rds, stream, db_url, others | {e1})
    assert stream_ids(rds, stream)[-1][1] == e1, "E1 is published after everything committed before it"
    assert stats.published == 50 and stats.fence_skipped == 0


# ---- 10. idle wake-up ----------------------------------------------------------------------------


def _arrival(rds: Any, stream: str, eid: str, t0: float, timeout: float) -> float:
    wait_for(lambda: eid in {e for _, e in stream_ids(rds, stream)}, timeout=timeout, interval=0.005, what=eid)
    return time.monotonic() - t0


# poll only: LISTEN/NOTIFY wake-up (the WAL relay waits on the replication stream)
def test_idle_relay_is_woken_by_notify(db_url, redis_url, stream, rds):
    # idle_poll_interval=5: an idle relay that missed the NOTIFY polls again only 5 s after it started
    # waiting, and each event is recorded at least 0.5 s into that wait, so without NOTIFY no event could
    # arrive within 4 s. The bound below (half the poll interval) keeps that apart from a real wake-up
    # delayed by a loaded machine (new connection, record, claim, publish, the test's own poll).
    settings = make_settings(db_url, redis_url, stream, idle_poll_interval=5.0)
    with relay_thread(settings) as relay:
        latencies = []
        for i in range(3):
            wait_for(lambda: relay_row(db_url)["listening"], timeout=5, what="the relay to go idle and listen")
            time.sleep(0.5 + 0.2 * i)  # well past idle_after: blocked in the LISTEN wait
            t0 = time.monotonic()
            eid = record_one(db_url)
            latencies.append(_arrival(rds, stream, eid, t0, timeout=8))
        stats = relay.stats
    assert max(latencies) < settings.idle_poll_interval / 2, f"idle relay took {latencies}s: not woken by NOTIFY"
    assert stats.published == 3 and len(stats.leader_epochs) == 1


# poll only: wake=poll
def test_poll_mode_delivers_without_listen(db_url, redis_url, stream, rds, pg_admin_url):
    settings = make_settings(db_url, redis_url, stream, wake="poll", idle_poll_interval=1.0)
    dbname = db_url.rsplit("/", 1)[1]
    with relay_thread(settings) as relay:
        time.sleep(1.5)  # long idle
        with psycopg.connect(pg_admin_url) as c:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s"
            listeners = c.execute(sql, (dbname, "outbox-relay-listen%")).fetchone()[0]
        assert listeners == 0, "poll mode opened a LISTEN connection"
        assert relay_row(db_url)["notify_until"] is None, "poll mode asked writers to NOTIFY"
        t0 = time.monotonic()
        eid = record_one(db_url)
        latency = _arrival(rds, stream, eid, t0, timeout=10)
        stats = relay.stats
    assert latency < settings.idle_poll_interval + 0.5, latency
    assert stats.published == 1


# ---- 11. lease takeover --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_standby_takes_over_after_graceful_stop(mode: Mode, mode_db: ModeDb, redis_url, rds, stream):
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream)
    first = set(write_events(db_url, 100))
    with contextlib.ExitStack() as stack_a:
        a = stack_a.enter_context(relay_thread(settings, identity="relay-a"))
        wait_for(lambda: a.stats.leader_epochs, timeout=5, what="A to lead")
        with relay_thread(settings, identity="relay-b") as b:
            time.sleep(2 * settings.lease_ttl)  # B keeps trying while A renews
            more = set(write_events(db_url, 100))
            mode.wait_drained(db_url, timeout=10)
            assert b.stats.leader_epochs == [], "B became leader while A held a live lease"
            assert relay_row(db_url, mode.lease)["leader"] == "relay-a"
            stack_a.close()  # stop A (it releases the lease)
            t0 = time.monotonic()
            wait_for(lambda: b.stats.leader_epochs, timeout=settings.lease_ttl + 1, what="B to take over")
            took = time.monotonic() - t0
            assert relay_row(db_url, mode.lease)["leader"] == "relay-b"
            after = set(write_events(db_url, 100))
            mode.wait_drained(db_url, timeout=10)
            stats_b = b.stats
    assert a.stats.published == 200 and stats_b.published == 100, (a.stats, stats_b)
    assert stats_b.leader_epochs[0] > a.stats.leader_epochs[-1]
    assert_exactly_once(rds, stream, db_url, first | more | after, capture=mode.name)
    print(f"\n[takeover/stop {mode.name}] B led {took:.2f}s after A stopped")


@pytest.mark.fault
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_standby_takes_over_after_leader_sigkill_once_lease_expires(mode: Mode, mode_db: ModeDb, redis_url, rds,
                                                                    stream):  # fmt: skip
    db_url = mode_db.url
    settings = mode.settings(db_url, redis_url, stream)
    backlog = set(write_events(db_url, 2000, chunk=20))
    proc = spawn_relay(settings.model_copy(update={"batch_size": 20}))
    writer = Writer(db_url, chunk=5, pause=0.01)
    try:
        wait_for(lambda: leader_pid(db_url, mode.lease) == proc.pid, timeout=15, what="the subprocess to lead")
        writer.start()
        with relay_thread(settings, identity="relay-b") as b:
            wait_for(lambda: xlen(rds, stream) > 200, timeout=15, what="progress")
            assert b.stats.leader_epochs == []
            proc.kill()
            proc.communicate(timeout=10)
            t0 = time.monotonic()
            time.sleep(0.1)
            dead_lease = relay_row(db_url, mode.lease)["lease_until"]  # A can no longer renew it
            wait_for(lambda: b.stats.leader_epochs, timeout=settings.lease_ttl + 2, what="B to take over")
            took = time.monotonic() - t0
            row = relay_row(db_url, mode.lease)
            assert row["leader"] == "relay-b"
            assert row["leader_since"] >= dead_lease, "B took the lease before the dead leader's lease expired"
            writer.stop()
            assert writer.errors == 0
            mode.wait_drained(db_url)
            stats_b = b.stats
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        writer.halt.set()
    assert took < settings.lease_ttl + 1, took
    skipped = assert_exactly_once(rds, stream, db_url, backlog | writer.committed, capture=mode.name,
                                  never=writer.rolled_back)  # fmt: skip
    assert stats_b.dead == 0 and stats_b.failed == 0
    print(f"\n[takeover/sigkill] B led {took:.2f}s after the kill; stats={stats_b}; fence-skipped rows={skipped}")
