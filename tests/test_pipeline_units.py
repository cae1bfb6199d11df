"""The relay pipeline's recovery paths without servers: the publish step through the fence (relay/fence.py)
against the in-memory publisher's injected faults, and the relay's own use of it (marks filled in, counters,
stop during an outage, a Redis restart seen by the loss check). Nothing here talks to Postgres or Redis."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from outbox import wire
from outbox.errors import BrokerError
from outbox.relay import loop
from outbox.relay.fence import publish_all
from outbox.relay.marker import Mark
from outbox.relay.memory import MemoryPublisher
from outbox.relay.publisher import Outgoing, PublishResult
from outbox.settings import load_settings


def event(seq: int) -> Outgoing:
    """An envelope-valid event at position ``seq`` (its payload names the position)."""
    values = {
        "event_id": str(uuid.uuid4()),
        "execution_id": "",
        "event_name": "status",
        "event_type": "TICKET_STATUS_CHANGED",
        "tenant": "t1",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "user_id": "",
        "from_state": "open",
        "to_state": "closed",
        "payload_json": json.dumps({"seq": str(seq)}),
        "workflow_correlation_key": "",
    }
    return Outgoing(seq, [values[f] for f in wire.FIELDS])


def events(*seqs: int) -> list[Outgoing]:
    """One event per position, in the order given."""
    return [event(s) for s in seqs]


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


@dataclass
class Row:
    """What the relay's publish step reads of a claimed row: its id and its position."""

    id: int
    seq: int


def relay_on(mem: MemoryPublisher) -> loop.Relay:
    """A relay whose publisher is ``mem`` and whose Postgres is never reached (nothing here connects)."""
    settings = load_settings(
        database_url="postgresql://nobody@127.0.0.1:1/unused", redis_url=None, stream="test:units:stream",
        backoff_base=0.001, backoff_max=0.002,
    )  # fmt: skip
    relay = loop.Relay(settings, publisher_factory=lambda _instance: mem)
    relay._publisher = mem
    return relay


def publish_rows(relay: loop.Relay, seqs: list[int], batch: int = 1) -> Mark:
    """Run the relay's publish step on rows with ids ``100 + seq`` at positions ``seqs``; returns the mark."""
    mark = Mark(batch)
    rows = [Row(100 + s, s) for s in seqs]
    relay._publish(events(*seqs), rows, mark)  # type: ignore[arg-type]  # only .id and .seq are read
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
