"""The broker port (``Publisher``) and its Redis Streams implementation with the exactly-once fence."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from outbox.errors import BrokerError
from outbox.retry import transient_redis


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event ready to publish: its relay position and its field values (in the publisher's field order)."""

    seq: int
    values: Sequence[str]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Per event, in order: the new stream id, or ``None`` when the fence says it is already on the stream.

    ``ids`` may be shorter than the batch when ``error`` is set: events past ``len(ids)`` were not added.
    """

    ids: list[str | None]
    error: BrokerError | None = None


class Publisher(Protocol):
    """Where the relay puts events. Must be safe to retry with the same positions (``seq``)."""

    def high_water(self) -> int:
        """The highest position known to be on the broker (0 if none)."""
        ...

    def publish(self, batch: Sequence[Outgoing]) -> PublishResult:
        """Append the batch in order, skipping positions at or below the high-water mark. May be partial."""
        ...

    def locate(self, event_ids: Collection[str], scan: int) -> dict[str, str]:
        """Broker ids of those events found among the ``scan`` newest entries (best effort, for bookkeeping)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# The exactly-once fence, run atomically inside Redis for a whole batch.
#
# Protocol. The relay leader gives each row a position (publish_seq) in Postgres and commits that
# *before* it calls this script; positions only grow, and a row keeps its position until it is
# marked published. The script keeps the highest position it has appended in the fence key, next to
# the stream, and appends an event only if its position is above the fence, moving the fence in the
# same atomic step. So re-sending a batch after any failure (relay SIGKILLed between XADD and the
# Postgres mark, Redis reply lost, a paused relay waking up after its successor took over) appends
# nothing twice, and the memory cost is one key, not one key per event. Gaps are fine (dead-lettered
# rows consume positions); order is kept because a leader sends batches strictly in position order.
#
# Limits. The fence and the stream live and die together in Redis: with no persistence a Redis
# restart empties both and the relay republishes only what Postgres has not yet marked (rows marked
# before the restart are gone with the stream; that is Redis' durability, not a duplicate). With AOF
# `appendfsync everysec` a crash can lose the last second of both stream entries and fence after
# Postgres marked them published: use `appendfsync always`, or replicas plus OUTBOX_REDIS_WAIT_REPLICAS,
# when that second matters. The fence key must never be evicted: run Redis with
# `maxmemory-policy noeviction` (streams need it anyway). In a cluster the fence key shares the
# stream's hash slot through a hash tag.
# ARGV: trim mode ('' | MAXLEN | MINID), trim threshold, field count N, the N field names, then per
# event two arguments: its position, and its N values joined by NUL. NUL cannot occur in the values
# (they come from Postgres text and jsonb, which cannot hold it), and two arguments per event instead
# of N+1 halve the client's argument-packing cost, which is where a Python relay spends its time.
_FENCE_LUA = """
local nf = tonumber(ARGV[3])
local args
if ARGV[1] ~= '' then args = {KEYS[1], ARGV[1], '~', ARGV[2], '*'} else args = {KEYS[1], '*'} end
local off = #args
for j = 1, nf do args[off + 2 * j - 1] = ARGV[3 + j] end
local hwm = tonumber(redis.call('GET', KEYS[2]) or '0')
local out = {}
local k = 0
for i = 4 + nf, #ARGV, 2 do
  k = k + 1
  local seq = tonumber(ARGV[i])
  if seq <= hwm then
    out[k] = 0
  else
    local blob = ARGV[i + 1]
    local pos = 1
    for j = 1, nf do
      local stop = string.find(blob, '\\0', pos, true)
      if stop == nil then
        args[off + 2 * j] = string.sub(blob, pos)
        pos = #blob + 2
      else
        args[off + 2 * j] = string.sub(blob, pos, stop - 1)
        pos = stop + 1
      end
    end
    local id = redis.pcall('XADD', unpack(args))
    if type(id) == 'table' and id.err then
      redis.call('SET', KEYS[2], hwm)
      return {out, id.err}
    end
    out[k] = id
    hwm = seq
  end
end
redis.call('SET', KEYS[2], hwm)
return {out, ''}
"""


def fence_key(stream: str, instance_id: str) -> str:
    """The fence key of one outbox database: same hash slot as the stream, distinct per outbox instance."""
    return f"{{{stream}}}:outbox-fence:{instance_id}"


def classify(exc: Exception) -> BrokerError:
    """Wrap a redis-py error as a ``BrokerError`` that says whether retrying can help."""
    if isinstance(exc, BrokerError):
        return exc
    return BrokerError(f"{type(exc).__name__}: {exc}", transient=transient_redis(exc))


class RedisStreamPublisher:
    """Publishes batches to one Redis stream through the fence script."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        fence: str,
        field_names: Sequence[str],
        *,
        trim_maxlen: int | None = None,
        trim_minid_age: float | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.fence = fence
        self._script = client.register_script(_FENCE_LUA)
        self._head = [str(len(field_names)), *field_names]
        self._trim_maxlen = trim_maxlen
        self._trim_minid_age = trim_minid_age
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms

    @classmethod
    def from_url(
        cls, url: str, stream: str, fence: str, field_names: Sequence[str], **kwargs: Any
    ) -> RedisStreamPublisher:
        """A publisher on its own connection pool (socket timeouts so a dead Redis cannot hang the relay)."""
        client = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=30, retry_on_timeout=False
        )
        return cls(client, stream, fence, field_names, **kwargs)

    def _trim(self) -> tuple[str, str]:
        if self._trim_maxlen:
            return "MAXLEN", str(self._trim_maxlen)
        if self._trim_minid_age:
            return "MINID", str(int((time.time() - self._trim_minid_age) * 1000))
        return "", ""

    def high_water(self) -> int:
        """The fence value (highest position appended)."""
        try:
            raw = self.client.get(self.fence)
        except redis.RedisError as exc:
            raise classify(exc) from exc
        return int(raw) if raw else 0

    def publish(self, batch: Sequence[Outgoing]) -> PublishResult:
        """Run the fence script on the batch; ``BrokerError`` if nothing is known to have happened."""
        if not batch:
            return PublishResult([])
        mode, threshold = self._trim()
        args: list[Any] = [mode, threshold, *self._head]
        for o in batch:
            args.append(o.seq)
            args.append("\0".join(o.values))
        try:
            raw_ids, err = self._script(keys=[self.stream, self.fence], args=args)
        except redis.RedisError as exc:
            raise classify(exc) from exc
        ids: list[str | None] = [
            None if (i == 0 or i is None) else (i.decode() if isinstance(i, bytes) else str(i)) for i in raw_ids
        ]
        error = None
        if err:
            msg = err.decode() if isinstance(err, bytes) else str(err)
            error = classify(redis.ResponseError(msg))
        if self._wait_replicas and error is None:
            try:
                acked = int(self.client.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms))
            except redis.RedisError as exc:
                raise classify(exc) from exc
            if acked < self._wait_replicas:
                raise BrokerError(f"only {acked} of {self._wait_replicas} replicas acknowledged", transient=True)
        return PublishResult(ids, error)

    def locate(self, event_ids: Collection[str], scan: int) -> dict[str, str]:
        """Stream ids of the given events among the last ``scan`` entries, newest first (XREVRANGE pages).

        Used after a crash for rows the fence already saw: their entries were appended by the interrupted
        batch, so they sit near the tail. Entries trimmed away or beyond ``scan`` are simply not found.
        """
        want = set(event_ids)
        found: dict[str, str] = {}
        upper = "+"
        left = scan
        try:
            while want and left > 0:
                page = self.client.xrevrange(self.stream, max=upper, min="-", count=min(left, 1000))
                if not page:
                    break
                for sid, fields in page:
                    fields = fields or {}
                    raw = fields.get(b"event_id", fields.get("event_id"))
                    eid = raw.decode() if isinstance(raw, bytes) else raw
                    if eid in want:
                        want.discard(eid)
                        found[eid] = sid.decode() if isinstance(sid, bytes) else str(sid)
                left -= len(page)
                last = page[-1][0]
                upper = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        except redis.RedisError as exc:
            raise classify(exc) from exc
        return found

    def ping(self) -> None:
        """Raise ``BrokerError`` if Redis does not answer."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise classify(exc) from exc

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
