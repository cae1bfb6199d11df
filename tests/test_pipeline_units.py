"""The relay pipeline's recovery paths without servers: the publish step through the fence (relay/fence.py)
against the in-memory publisher's injected faults, and the relay's own use of it (marks filled in, counters,
stop during an outage, a Redis restart seen by the loss check); the split of a blamed batch (relay/claim.py);
the claim-ahead and the marker (relay/marker.py) when Postgres cannot be reached: what stays excluded from
claims and what is left for recovery. Nothing here talks to a Postgres or Redis server (the unreachable
Postgres is a real connection attempt to a port nobody listens on, not a fake)."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from outbox import wire
from outbox.embedded import free_port
from outbox.errors import BrokerError
from outbox.relay import loop
from outbox.relay.claim import SPLIT_INTO, ClaimSource, Row, split_starts
from outbox.relay.fence import publish_all
from outbox.relay.lease import Lease
from outbox.relay.marker import Mark, Marker
from outbox.relay.memory import MemoryPublisher
from outbox.relay.publisher import Outgoing, PublishResult
from outbox.settings import Settings, load_settings
from tests.test_publisher_contract import events


def positions(mem: MemoryPublisher) -> list[int]:
    """The positions on the fake's stream, in stream order."""
    return [int(json.loads(f["payload_json"])["seq"]) for _sid, f in mem.entries]


class Stop(Exception):
    """Raised by a ``failed`` callback that gives up."""


@dataclass
class Calls:
    """What ``publish_all`` told its callbacks: per reply the positions covered and the ids, per failure
    ``(attempt, held)``. ``stop_after``: the failure at which ``failed`` raises ``Stop``."""

    replies: list[tuple[list[int], list[str | None]]] = field(default_factory=list)
    results: list[PublishResult] = field(default_factory=list)
    failures: list[tuple[int, int]] = field(default_factory=list)
    errors: list[BrokerError] = field(default_factory=list)
    stop_after: int | None = None

    def sent(self, result: PublishResult, batch: Sequence[Outgoing]) -> None:
        self.results.append(result)
        self.replies.append(([o.seq for o in batch], list(result.ids)))

    def failed(self, attempt: int, error: BrokerError, held: int) -> None:
        self.failures.append((attempt, held))
        self.errors.append(error)
        if self.stop_after is not None and attempt >= self.stop_after:
            raise Stop()

    def run(self, mem: MemoryPublisher, out: list[Outgoing]) -> tuple[int, int]:
        return publish_all(mem, out, sent=self.sent, failed=self.failed)


@pytest.fixture
def mem() -> MemoryPublisher:
    """A fresh in-memory publisher."""
    return MemoryPublisher(wire.FIELDS)


# ---- publish_all against injected faults -----------------------------------------------------------------


def test_transient_outage_then_recovery_loses_nothing_and_sends_nothing_twice(mem: MemoryPublisher) -> None:
    mem.fail_next(3)
    calls = Calls()
    assert calls.run(mem, events(1, 2, 3, 4, 5)) == (5, 0)
    assert calls.failures == [(1, 5), (2, 5), (3, 5)]  # attempts count up; the whole batch is held each time
    assert all(e.transient for e in calls.errors)
    assert positions(mem) == [1, 2, 3, 4, 5]
    assert [seqs for seqs, _ids in calls.replies] == [[1, 2, 3, 4, 5]]  # one reply, after the outage
    assert mem.publishes == 4


def test_partial_publish_then_retry_sends_only_the_rest(mem: MemoryPublisher) -> None:
    mem.partial_next(2)
    calls = Calls()
    assert calls.run(mem, events(1, 2, 3, 4, 5)) == (5, 0)
    assert calls.failures == [(1, 3)]  # three events still held after the partial reply
    # The first reply covers the prefix that was appended; the retry carries only the rest.
    assert [seqs for seqs, _ids in calls.replies] == [[1, 2], [3, 4, 5]]
    assert all(sid is not None for _seqs, ids in calls.replies for sid in ids)
    assert positions(mem) == [1, 2, 3, 4, 5]


def test_outage_then_partial_counts_attempts_and_held_events(mem: MemoryPublisher) -> None:
    mem.fail_next(2)
    mem.partial_next(2)  # applies to the first publish that gets through
    calls = Calls()
    assert calls.run(mem, events(10, 11, 12, 13, 14)) == (5, 0)
    assert calls.failures == [(1, 5), (2, 5), (3, 3)]
    assert positions(mem) == [10, 11, 12, 13, 14]


def test_lost_reply_retry_appends_nothing_twice_and_reports_fence_skipped(mem: MemoryPublisher) -> None:
    mem.lose_next_reply()
    calls = Calls()
    assert calls.run(mem, events(1, 2, 3, 4)) == (0, 4)  # nothing appended by the retry: all fence-skipped
    assert calls.failures == [(1, 4)]
    assert calls.replies == [([1, 2, 3, 4], [None] * 4)]  # the reply the relay heard: already on the stream
    assert positions(mem) == [1, 2, 3, 4]


def test_after_a_fence_skip_only_new_positions_are_appended(mem: MemoryPublisher) -> None:
    mem.publish(events(1, 2, 3))
    calls = Calls()
    assert calls.run(mem, events(2, 3, 4, 5)) == (2, 2)
    assert positions(mem) == [1, 2, 3, 4, 5]


def test_restart_empty_still_appends_new_positions_and_says_the_stream_is_fresh(mem: MemoryPublisher) -> None:
    assert Calls().run(mem, events(1, 2, 3)) == (3, 0)
    mem.restart_empty()
    calls = Calls()
    assert calls.run(mem, events(4, 5)) == (2, 0)
    assert positions(mem) == [4, 5]
    assert calls.failures == []
    r = calls.results[0]
    assert (r.fence_before, r.stream_fresh) == (-1, True)  # what the relay's loss check reads
    assert mem.high_water() == 5


def test_a_failed_callback_that_raises_stops_at_once(mem: MemoryPublisher) -> None:
    mem.fail_next(5)
    calls = Calls(stop_after=1)
    with pytest.raises(Stop):
        calls.run(mem, events(1, 2, 3))
    assert calls.failures == [(1, 3)]
    assert mem.publishes == 1  # no further attempt was sent
    assert mem.entries == [] and mem.fence is None
    assert calls.replies == []


def test_stopping_after_a_partial_publish_reports_the_prefix_and_sends_nothing_more(mem: MemoryPublisher) -> None:
    mem.partial_next(2)
    calls = Calls(stop_after=1)
    with pytest.raises(Stop):
        calls.run(mem, events(1, 2, 3, 4))
    assert [seqs for seqs, _ids in calls.replies] == [[1, 2]]  # what is on the stream can still be marked
    assert calls.failures == [(1, 2)]
    assert mem.publishes == 1
    assert positions(mem) == [1, 2]


def test_an_empty_batch_sends_nothing(mem: MemoryPublisher) -> None:
    calls = Calls()
    assert calls.run(mem, []) == (0, 0)
    assert mem.publishes == 0 and calls.replies == [] and calls.failures == []


# ---- the relay's publish step (Relay._publish) with the in-memory publisher -------------------------------


def unit_settings() -> Settings:
    """Settings naming a Postgres nobody listens on, no Redis, and millisecond backoffs."""
    return load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/unused", redis_url=None,
        stream="test:units:stream", backoff_base=0.001, backoff_max=0.002, batch_size=100,
    )  # fmt: skip


def row(seq: int, batch: int = 1) -> Row:
    """A claimed row at position ``seq`` with id ``100 + seq``."""
    return Row(batch, seq, 100 + seq, str(uuid.uuid4()), "t1", "TICKET_STATUS_CHANGED", "ref", "{}",
               "2026-01-01T00:00:00.000Z AD", None, None, None, None, None, 1)  # fmt: skip


def relay_on(mem: MemoryPublisher) -> loop.Relay:
    """A relay whose publisher is ``mem`` and whose Postgres is never reached (nothing here connects)."""
    relay = loop.Relay(unit_settings(), publisher_factory=lambda _instance: mem)
    relay._publisher = mem
    return relay


def publish_rows(relay: loop.Relay, seqs: list[int], batch: int = 1) -> Mark:
    """Run the relay's publish step on rows with ids ``100 + seq`` at positions ``seqs``; returns the mark."""
    mark = Mark(batch)
    relay._publish(events(*seqs), [row(s, batch) for s in seqs], mark)
    return mark


def test_relay_publish_marks_every_row_through_an_outage_and_a_partial_reply(mem: MemoryPublisher) -> None:
    relay = relay_on(mem)
    mem.fail_next(2)
    mem.partial_next(3)
    mark = publish_rows(relay, [1, 2, 3, 4, 5])
    assert [(rid, seq) for rid, _sid, seq in mark.published] == [(101, 1), (102, 2), (103, 3), (104, 4), (105, 5)]
    assert [sid for _rid, sid, _seq in mark.published] == [sid for sid, _f in mem.entries]
    assert relay.stats.published == 5 and relay.stats.fence_skipped == 0
    assert relay.stats.broker_errors == 3
    assert positions(mem) == [1, 2, 3, 4, 5]


def test_relay_publish_after_a_lost_reply_marks_rows_without_stream_ids(mem: MemoryPublisher) -> None:
    relay = relay_on(mem)
    mem.lose_next_reply()
    mark = publish_rows(relay, [1, 2, 3])
    assert mark.published == [(101, None, 1), (102, None, 2), (103, None, 3)]
    assert relay.stats.published == 0 and relay.stats.fence_skipped == 3 and relay.stats.broker_errors == 1
    assert positions(mem) == [1, 2, 3]


def test_relay_publish_stops_during_an_outage_when_asked_to(mem: MemoryPublisher) -> None:
    relay = relay_on(mem)
    relay.stop()
    mem.fail_next(10)
    with pytest.raises(loop._Stop):
        publish_rows(relay, [1, 2])
    assert mem.publishes == 1 and mem.entries == []
    assert relay.stats.broker_errors == 1 and relay.stats.published == 0


def test_relay_publish_reports_a_redis_restart_once(mem: MemoryPublisher, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="outbox.relay")
    relay = relay_on(mem)
    publish_rows(relay, [1, 2, 3])
    assert "REDIS LOST" not in caplog.text
    mem.restart_empty()
    mark = publish_rows(relay, [4, 5], batch=2)
    assert [seq for _rid, _sid, seq in mark.published] == [4, 5]
    assert positions(mem) == [4, 5]
    lost = [r for r in caplog.records if "REDIS LOST PUBLISHED EVENTS" in r.getMessage()]
    assert len(lost) == 1 and "after position 0" in lost[0].getMessage()
    publish_rows(relay, [6], batch=3)
    assert len([r for r in caplog.records if "REDIS LOST" in r.getMessage()]) == 1  # once per incident


# ---- the split of a blamed batch (relay/claim.py) ---------------------------------------------------------


def parts_of(rows: list[Row], hwm: int) -> list[list[Row]]:
    """The unsent rows cut where ``split_starts`` says (the first part starts at the first unsent row)."""
    starts = split_starts(rows, hwm)
    unsent = [r for r in rows if r.seq > hwm]
    bounds = [unsent[0].seq, *starts, unsent[-1].seq + 1]
    return [[r for r in unsent if lo <= r.seq < hi] for lo, hi in itertools.pairwise(bounds)]


def test_split_cuts_the_unsent_rows_into_near_equal_consecutive_parts() -> None:
    rows = [row(s) for s in range(1, 1001)]
    parts = parts_of(rows, hwm=0)
    assert len(parts) == SPLIT_INTO
    assert [r.seq for p in parts for r in p] == list(range(1, 1001))  # every position kept, in order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_split_leaves_out_rows_at_or_below_the_fence() -> None:
    rows = [row(s) for s in range(1, 21)]
    starts = split_starts(rows, hwm=12)
    assert starts == [14, 15, 16, 17, 18, 19, 20]  # 8 unsent rows: one part each, the first at 13
    assert split_starts(rows, hwm=19) == []  # one unsent row: nothing to split
    assert split_starts(rows, hwm=20) == []


def test_a_row_that_kills_every_relay_is_alone_after_three_splits_of_a_thousand() -> None:
    poison = 637
    batch = [row(s) for s in range(1, 1001)]
    splits = 0
    while len(batch) > 1:  # every relay handling the poison row dies; its part is recovered, blamed, split
        batch = next(p for p in parts_of(batch, hwm=0) if any(r.seq == poison for r in p))
        splits += 1
    assert splits == 3 and batch[0].seq == poison


# ---- claim-ahead and marker with Postgres unreachable -----------------------------------------------------


def unreachable() -> psycopg.Connection[Any]:
    """A real connection attempt to a port nobody listens on: refused at once."""
    return psycopg.connect(f"postgresql://nobody@127.0.0.1:{free_port()}/unused", connect_timeout=2)


def test_a_failed_claim_ahead_is_raised_to_the_loop() -> None:
    claims = ClaimSource(Lease("default", "me", 1.0), unit_settings(), unreachable)
    assert claims.take_ahead() is None  # nothing claimed ahead
    claims.claim_ahead([1, 2])
    with pytest.raises(psycopg.OperationalError):
        claims.take_ahead()
    assert claims.take_ahead() is None  # taken once
    claims.shutdown()


def test_dropping_a_claim_ahead_leaves_its_batch_for_recovery() -> None:
    claims = ClaimSource(Lease("default", "me", 1.0), unit_settings(), unreachable)
    assert claims.recovering  # a new source looks for open batches first
    claims.recovering = False
    claims.drop_ahead()
    assert not claims.recovering  # nothing was claimed ahead: nothing can be open
    claims.claim_ahead([])
    claims.drop_ahead()
    assert claims.recovering
    assert claims.take_ahead() is None
    claims.shutdown()


@dataclass
class Marks:
    """A marker whose own connection cannot be opened (each attempt starts once ``gate`` is set), and how often
    it left a batch open."""

    marker: Marker
    left_open: list[int]
    gate: threading.Event


@pytest.fixture
def marks() -> Iterator[Marks]:
    left: list[int] = []
    gate = threading.Event()
    gate.set()

    def connect() -> psycopg.Connection[Any]:
        assert gate.wait(10)
        return unreachable()

    marker = Marker(connect, left_open=lambda: left.append(1))
    yield Marks(marker, left, gate)
    gate.set()
    marker.shutdown(None)


def published(batch: int, *ids: int) -> Mark:
    """A mark of batch ``batch`` whose rows ``ids`` were published."""
    return Mark(batch, published=[(i, f"1-{i}", i) for i in ids])


def test_rows_of_a_mark_not_committed_are_excluded_from_claims(marks: Marks) -> None:
    m = marks.marker
    assert m.excluded() == [] and m.excluded([7]) == [7]
    m.submit(published(1, 11, 12), None)
    assert m.excluded() == [11, 12]
    assert m.excluded([21, 22]) == [11, 12, 21, 22]  # and the batch in flight
    m.wait(None)
    assert marks.left_open == [1]  # it failed, with no main connection to fall back on: the batch stays open
    assert m.excluded() == [11, 12]  # so its rows stay excluded until recovery has seen the batch


def test_forget_closed_keeps_excluding_only_batches_still_open(marks: Marks) -> None:
    m = marks.marker
    m.submit(published(1, 11, 12), None)
    m.submit(published(2, 21), None)
    m.wait(None)
    assert sorted(m.excluded()) == [11, 12, 21]
    m.forget_closed([2, 3])  # batch 1's mark committed after all (its reply was lost)
    assert m.excluded() == [21]
    m.forget_closed([])
    assert m.excluded() == []


def test_at_most_one_mark_in_flight(marks: Marks) -> None:
    m = marks.marker
    marks.gate.clear()
    m.submit(published(1, 11), None)
    assert not m.finished and marks.left_open == []  # in flight
    marks.gate.set()
    m.submit(published(2, 21), None)  # waits for the first one before handing the second over
    assert marks.left_open == [1]
    wait_until(lambda: m.finished)
    m.wait(None)
    assert marks.left_open == [1, 1]
    m.wait(None)  # nothing in flight: nothing happens
    assert marks.left_open == [1, 1] and not m.finished


def test_a_marker_outage_is_logged_once(marks: Marks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    m = marks.marker
    for batch in (1, 2, 3):
        m.submit(published(batch, 10 + batch), None)
    m.wait(None)
    failed = [r for r in caplog.records if "writing a batch mark failed" in r.getMessage()]
    assert len(failed) == 1 and marks.left_open == [1, 1, 1]
    assert "marker connection works again" not in caplog.text


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_relay_whose_mark_cannot_be_written_recovers_that_batch_before_claiming(mem: MemoryPublisher) -> None:
    relay = relay_on(mem)  # its Postgres (hence its marker's connection) is unreachable
    try:
        relay.claims.recovering = False
        relay._submit_mark(published(1, 11, 12))
        assert relay.marker.excluded([13]) == [11, 12, 13]  # what the next claim ahead would exclude
        relay.marker.wait(relay._db)  # no main connection to write it on either
        assert relay.claims.recovering  # the batch stays open: recovery takes it back first
        assert relay.marker.excluded() == [11, 12]
    finally:
        relay._shutdown()
