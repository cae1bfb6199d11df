"""The ``Publisher`` contract, one suite for the Redis fence script and the in-memory fake (relay/memory.py).

The fence guarantees (order kept, positions at or below the fence never appended again, exact positions
beyond 2^53, a fence left by the earlier script honoured) run on both; the fault-injection cases run on
the fake only but check the same observable guarantees across retries.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import redis

from outbox import wire
from outbox.errors import BrokerError
from outbox.relay.memory import MemoryPublisher
from outbox.relay.publisher import Outgoing, RedisStreamPublisher, fence_key, stream_id_key
from tests.conftest import stream_entries


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


@dataclass
class Backend:
    """A publisher under test, a way to read its whole stream, and a way to set its fence from outside."""

    name: str
    pub: RedisStreamPublisher | MemoryPublisher
    read: Callable[[], list[tuple[str, dict[str, str]]]]
    #: Set the fence as a plain integer (what the earlier script stored), or delete it (``None``).
    set_fence: Callable[[int | None], None]

    def positions(self) -> list[int]:
        """The positions on the stream, in stream order (from each entry's payload)."""
        return [int(json.loads(f["payload_json"])["seq"]) for _sid, f in self.read()]

    def event_ids(self) -> list[str]:
        """The event ids on the stream, in stream order."""
        return [f["event_id"] for _sid, f in self.read()]


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The real Redis publisher on this test's stream (shared Redis), or the in-memory one."""
    if request.param == "memory":
        mem = MemoryPublisher(wire.FIELDS)

        def set_mem(value: int | None) -> None:
            mem.fence = value

        yield Backend("memory", mem, lambda: list(mem.entries), set_mem)
        return
    rds: redis.Redis = request.getfixturevalue("rds")
    stream: str = request.getfixturevalue("stream")
    fence = fence_key(stream, "contract")
    pub = RedisStreamPublisher.from_url(request.getfixturevalue("redis_url"), stream, fence, wire.FIELDS)

    def set_redis(value: int | None) -> None:
        if value is None:
            rds.delete(fence)
        else:
            rds.set(fence, str(value))

    yield Backend("redis", pub, lambda: stream_entries(rds, stream), set_redis)
    pub.close()


def appended(ids: Sequence[str | None]) -> list[bool]:
    """Per event: was it appended (a stream id) rather than skipped by the fence (``None``)."""
    return [i is not None for i in ids]


# ---- the contract, on both -----------------------------------------------------------------------


def test_batch_is_appended_in_order(backend: Backend) -> None:
    batch = events(1, 2, 3, 4, 5)
    r = backend.pub.publish(batch)
    assert r.error is None and appended(r.ids) == [True] * 5
    sids = [s for s in r.ids if s is not None]
    assert sorted(sids, key=stream_id_key) == sids and len(set(sids)) == 5
    assert [sid for sid, _f in backend.read()] == sids
    assert backend.event_ids() == [o.values[wire.FIELDS.index("event_id")] for o in batch]
    assert backend.pub.high_water() == 5


def test_positions_at_or_below_the_fence_are_skipped_and_never_appended_twice(backend: Backend) -> None:
    batch = events(1, 2, 3, 4, 5)
    backend.pub.publish(batch)
    again = backend.pub.publish(batch)  # the same batch retried
    assert again.ids == [None] * 5 and again.error is None and again.fence_before == 5
    overlap = backend.pub.publish(batch[2:] + events(6, 7, 8))  # a retry that overlaps new positions
    assert appended(overlap.ids) == [False, False, False, True, True, True]
    assert backend.positions() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(set(backend.event_ids())) == 8
    assert backend.pub.high_water() == 8


def test_gaps_are_allowed_and_the_fence_is_the_highest_position(backend: Backend) -> None:
    r = backend.pub.publish(events(2, 5, 9))
    assert appended(r.ids) == [True, True, True]
    assert backend.pub.high_water() == 9
    # Positions in the gaps below the fence count as sent: only the one above it goes out.
    r = backend.pub.publish(events(3, 6, 10))
    assert appended(r.ids) == [False, False, True]
    assert backend.positions() == [2, 5, 9, 10]


def test_high_water_is_zero_without_a_fence(backend: Backend) -> None:
    assert backend.pub.high_water() == 0
    backend.pub.publish(events(7))
    assert backend.pub.high_water() == 7


def test_fence_before_and_stream_fresh(backend: Backend) -> None:
    first = backend.pub.publish(events(1, 2))
    assert (first.fence_before, first.stream_fresh) == (-1, True)
    second = backend.pub.publish(events(3))
    assert (second.fence_before, second.stream_fresh) == (2, False)
    backend.set_fence(None)  # the fence key lost, the stream kept
    third = backend.pub.publish(events(4))
    assert (third.fence_before, third.stream_fresh) == (-1, False)
    assert appended(third.ids) == [True]


def test_an_all_skipped_batch_does_not_create_a_fence(backend: Backend) -> None:
    r = backend.pub.publish(events(0))  # position 0 is never above the fence
    assert r.ids == [None] and r.fence_before == -1
    assert backend.pub.state().fence is None and backend.read() == []


@pytest.mark.parametrize("base", [2**53, 2**64, 2**96], ids=["2^53", "2^64", "2^96"])
def test_positions_beyond_2_53_are_compared_exactly(backend: Backend, base: int) -> None:
    # Adjacent positions that a double cannot tell apart (2^53 + 1 rounds to 2^53) stay distinct.
    assert appended(backend.pub.publish(events(base - 1)).ids) == [True]
    r = backend.pub.publish(events(base - 1, base))
    assert appended(r.ids) == [False, True] and r.fence_before == base - 1
    r = backend.pub.publish(events(base, base + 1))
    assert appended(r.ids) == [False, True] and r.fence_before == base
    assert isinstance(r.fence_before, int)
    r = backend.pub.publish(events(base + 1, base + 2, base + 3))
    assert appended(r.ids) == [False, True, True] and r.fence_before == base + 1
    assert backend.pub.high_water() == base + 3
    assert backend.pub.state().fence == base + 3
    assert backend.positions() == [base - 1, base, base + 1, base + 2, base + 3]


def test_positions_climb_through_2_53_2_64_and_2_96_on_one_fence(backend: Backend) -> None:
    seqs = [2**53, 2**53 + 1, 2**64, 2**64 + 1, 2**96, 2**96 + 1]
    r = backend.pub.publish(events(*seqs))
    assert appended(r.ids) == [True] * 6
    assert appended(backend.pub.publish(events(*seqs, 2**96 + 2)).ids) == [False] * 6 + [True]
    assert backend.pub.high_water() == 2**96 + 2


def test_positions_outside_the_range_are_refused_before_anything_is_sent(backend: Backend) -> None:
    for bad in (-1, 10**30):
        with pytest.raises(ValueError, match="outside the fence's range"):
            backend.pub.publish(events(1, bad))
    assert backend.read() == [] and backend.pub.state().fence is None
    top = 10**30 - 1
    assert appended(backend.pub.publish(events(top - 1, top)).ids) == [True, True]
    assert backend.pub.high_water() == top


@pytest.mark.parametrize("legacy", [12345, 2**53 + 1], ids=["small", "2^53+1"])
def test_a_plain_integer_fence_from_the_earlier_script_is_honoured(backend: Backend, legacy: int) -> None:
    backend.set_fence(legacy)
    assert backend.pub.high_water() == legacy
    assert backend.pub.state().fence == legacy
    r = backend.pub.publish(events(legacy - 1, legacy, legacy + 1))
    assert appended(r.ids) == [False, False, True] and r.fence_before == legacy
    assert backend.pub.high_water() == legacy + 1
    assert backend.positions() == [legacy + 1]


def test_locate_finds_recent_events(backend: Backend) -> None:
    batch = events(*range(1, 21))
    r = backend.pub.publish(batch)
    eid = wire.FIELDS.index("event_id")
    recent = {o.values[eid]: sid for o, sid in zip(batch[-3:], r.ids[-3:], strict=True)}
    unknown = str(uuid.uuid4())
    assert backend.pub.locate([*recent, unknown], scan=10) == recent
    assert backend.pub.locate([batch[0].values[eid]], scan=5) == {}  # beyond the scan
    assert backend.pub.locate([batch[0].values[eid]], scan=20) == {batch[0].values[eid]: r.ids[0]}


def test_state(backend: Backend) -> None:
    empty = backend.pub.state()
    assert (empty.fence, empty.exists, empty.length, empty.first_id, empty.last_id) == (None, False, 0, None, None)
    first = backend.pub.publish(events(1, 2, 3)).ids
    second = backend.pub.publish(events(3, 4)).ids
    s = backend.pub.state()
    assert (s.fence, s.exists, s.length) == (4, True, 4)
    assert (s.first_id, s.last_id, s.origin) == (first[0], second[-1], first[0])


def test_empty_batch(backend: Backend) -> None:
    r = backend.pub.publish([])
    assert r.ids == [] and r.error is None
    assert backend.read() == [] and not backend.pub.state().exists


# ---- Redis only ----------------------------------------------------------------------------------


RedisAndFence = tuple[RedisStreamPublisher, str]


@pytest.fixture
def redis_backend(rds: redis.Redis, stream: str, redis_url: str) -> Iterator[RedisAndFence]:
    """The Redis publisher on this test's stream, and its fence key."""
    fence = fence_key(stream, "contract")
    pub = RedisStreamPublisher.from_url(redis_url, stream, fence, wire.FIELDS)
    yield pub, fence
    pub.close()


def test_redis_stores_the_fence_as_a_fixed_width_string(rds: redis.Redis, redis_backend: RedisAndFence) -> None:
    pub, fence = redis_backend
    pub.publish(events(2**96 + 1))
    assert rds.get(fence) == str(2**96 + 1).zfill(30)


def test_redis_refuses_a_fence_that_is_not_a_position(rds: redis.Redis, redis_backend: RedisAndFence) -> None:
    pub, fence = redis_backend
    for junk in ("abc", "-1", "1" * 31, ""):
        rds.set(fence, junk)
        with pytest.raises(BrokerError, match="not a position"):
            pub.publish(events(1))
    assert rds.xlen(pub.stream) == 0


# ---- fault injection (the fake only), same observable guarantees ---------------------------------


@pytest.fixture
def mem() -> MemoryPublisher:
    """A fresh in-memory publisher."""
    return MemoryPublisher(wire.FIELDS)


def positions(mem: MemoryPublisher) -> list[int]:
    """The positions on the fake's stream, in order."""
    return [int(json.loads(f["payload_json"])["seq"]) for _sid, f in mem.entries]


def test_transient_failures_apply_nothing(mem: MemoryPublisher) -> None:
    mem.fail_next(2)
    batch = events(1, 2, 3)
    for _ in range(2):
        with pytest.raises(BrokerError) as info:
            mem.publish(batch)
        assert info.value.transient
        assert mem.entries == [] and mem.fence is None
    assert appended(mem.publish(batch).ids) == [True] * 3
    assert positions(mem) == [1, 2, 3]


def test_retry_after_a_lost_reply_appends_nothing_twice(mem: MemoryPublisher) -> None:
    batch = events(1, 2, 3, 4)
    mem.lose_next_reply()
    with pytest.raises(BrokerError):
        mem.publish(batch)
    assert positions(mem) == [1, 2, 3, 4]  # applied, though the caller never heard
    retry = mem.publish(batch)
    assert retry.ids == [None] * 4 and retry.error is None and retry.fence_before == 4
    assert positions(mem) == [1, 2, 3, 4]


def test_retry_after_a_partial_publish_appends_only_the_rest(mem: MemoryPublisher) -> None:
    batch = events(1, 2, 3, 4, 5)
    mem.partial_next(2)
    r = mem.publish(batch)
    assert len(r.ids) == 2 and appended(r.ids) == [True, True]
    assert r.error is not None and r.error.transient
    # The relay re-sends what it did not hear about; re-sending the whole batch is just as safe.
    rest = mem.publish(batch)
    assert appended(rest.ids) == [False, False, True, True, True] and rest.error is None
    assert positions(mem) == [1, 2, 3, 4, 5]
    assert mem.state().fence == 5


def test_partial_after_a_fence_skip_counts_skipped_events(mem: MemoryPublisher) -> None:
    mem.publish(events(1, 2))
    mem.partial_next(3)
    r = mem.publish(events(1, 2, 3, 4))
    assert r.ids[:2] == [None, None] and appended(r.ids) == [False, False, True] and r.error is not None
    assert appended(mem.publish(events(4)).ids) == [True]
    assert positions(mem) == [1, 2, 3, 4]


def test_restart_empty_loses_stream_and_fence_and_says_so(mem: MemoryPublisher) -> None:
    mem.publish(events(1, 2, 3))
    mem.restart_empty()
    assert mem.high_water() == 0
    s = mem.state()
    assert (s.fence, s.exists, s.length, s.origin) == (None, False, 0, None)
    r = mem.publish(events(4, 5))
    assert (r.fence_before, r.stream_fresh) == (-1, True)  # what the relay's loss check reads
    assert appended(r.ids) == [True, True] and positions(mem) == [4, 5]
    assert mem.state().origin == r.ids[0]
