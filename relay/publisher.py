"""The broker port (``Publisher``) and its Redis Streams implementation with the exactly-once fence."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from outbox.errors import BrokerError
from outbox.retry import redis_auth_failure, redis_config_error, transient_redis
from outbox.settings import Settings
from outbox.wire import FIELDS, text_of


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
    #: The fence the script found before this batch: its value, or -1 when the fence key did not exist.
    fence_before: int = 0
    #: The stream did not exist (or was an empty stream nothing was ever added to) before this batch.
    stream_fresh: bool = False


@dataclass(frozen=True, slots=True)
class StreamState:
    """What Redis holds for one outbox: the fence (``None`` when its key is missing) and the stream's shape.

    ``last_id`` is the stream's last generated id (kept by Redis through trimming and XDEL; only a new
    stream starts again from 0-0); ``origin`` the first id of the current incarnation of the stream, as
    recorded by the fence script when it found the stream fresh (``None`` before the first one).
    """

    fence: int | None
    exists: bool
    length: int = 0
    first_id: str | None = None
    last_id: str | None = None
    origin: str | None = None


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


#: Positions travel to the fence script, and the fence is stored, as decimal strings of this many digits.
POSITION_DIGITS = 30
_POSITION_END = 10**POSITION_DIGITS
_POSITION_SPEC = f"0{POSITION_DIGITS}d"


def position_arg(seq: int) -> str:
    """``seq`` as the fence script reads it (zero-padded to ``POSITION_DIGITS``); ``ValueError`` when out of range."""
    if not 0 <= seq < _POSITION_END:
        raise ValueError(f"position {seq} is outside the fence's range 0 <= seq < 10**{POSITION_DIGITS}")
    return format(seq, _POSITION_SPEC)


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
#
# Loss. Positions come from Postgres (outbox_relay.last_seq) and only grow, so a fence that lost its
# value (Redis restarted empty, key evicted) never lets a *new* event through twice: new positions are
# above anything the old fence held. What is lost is what the stream lost. So the script reports the
# fence it found (-1: no key) and whether the stream was fresh; the relay compares that with the
# highest position Postgres knows was appended and logs the loss (relay/loop.py). When it finds the
# stream fresh, the script records the id of its first entry in the origin key: entries older than
# that belong to an earlier incarnation of the stream, which `outbox republish` uses to tell entries
# lost with it from entries trimmed away on purpose (relay/republish.py).
#
# Exactness. Lua numbers are doubles, exact only up to 2^53, and positions go beyond (a WAL capture
# mode numbers events commit_lsn << 32 | index, up to ~2^96). So positions travel as decimal strings of
# POSITION_DIGITS digits, zero-padded, and the script compares them as strings: for strings of equal
# width made of ASCII digits, string order is numeric order (Lua 5.1 compares with strcoll: byte order
# in the C locale, and glibc's locales order the ten digits the same way). The fence is stored as such
# a string, checked by tests/test_publisher_contract.py at 2^53, 2^64 and 2^96. A fence written by
# the earlier script (a plain integer, "12345") is padded to that width once per batch; a fence that is
# not a position at all (garbage, a negative number) fails the script instead of being compared.
# KEYS: the stream, the fence, the origin.
# ARGV: trim mode ('' | MAXLEN | MINID), trim threshold, field count N, the N field names, then per
# event two arguments: its position (POSITION_DIGITS digits), and its N values joined by NUL. NUL
# cannot occur in the values (they come from Postgres text and jsonb, which cannot hold it), and two
# arguments per event instead of N+1 halve the client's argument-packing cost, which is where a Python
# relay spends its time.
_FENCE_LUA = """
local nf = tonumber(ARGV[3])
local args
if ARGV[1] ~= '' then args = {KEYS[1], ARGV[1], '~', ARGV[2], '*'} else args = {KEYS[1], '*'} end
local off = #args
for j = 1, nf do args[off + 2 * j - 1] = ARGV[3 + j] end
local raw = redis.call('GET', KEYS[2])
local before = ''
local hwm = string.rep('0', WIDTH)
if raw then
  if #raw > WIDTH or not string.find(raw, '^%d+$') then
    local shown = string.sub(raw, 1, 40)
    return redis.error_reply('ERR outbox fence ' .. KEYS[2] .. ' holds ' .. shown .. ', not a position')
  end
  hwm = string.rep('0', WIDTH - #raw) .. raw
  before = hwm
end
local fresh = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  fresh = 1
elseif redis.call('XLEN', KEYS[1]) == 0 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' and info[j + 1] == '0-0' then fresh = 1 end
  end
end
local first = nil
local out = {}
local k = 0
for i = 4 + nf, #ARGV, 2 do
  k = k + 1
  local seq = ARGV[i]
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
      if first then redis.call('SET', KEYS[2], hwm) end
      return {out, id.err, before, fresh}
    end
    if first == nil then
      first = id
      if fresh == 1 then redis.call('SET', KEYS[3], id) end
    end
    out[k] = id
    hwm = seq
  end
end
if first then redis.call('SET', KEYS[2], hwm) end
return {out, '', before, fresh}
""".replace("WIDTH", str(POSITION_DIGITS))


def fence_key(stream: str, instance_id: str) -> str:
    """The fence key of one outbox database: same hash slot as the stream, distinct per outbox instance."""
    return f"{{{stream}}}:outbox-fence:{instance_id}"


def origin_key(fence: str) -> str:
    """The key holding the first stream id of the current stream incarnation (next to its fence)."""
    return fence + ":origin"


def stream_id_key(sid: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"1700000000000-3"`` -> ``(1700000000000, 3)``)."""
    ms, _, n = sid.partition("-")
    return int(ms), int(n or 0)


def classify(exc: Exception, *, refuse_auth: bool = True) -> BrokerError:
    """Wrap a redis-py error as a ``BrokerError`` that says whether retrying can help. With ``refuse_auth`` (until
    the server has accepted us once) a refused login raises ``ConfigurationError`` (OUTBOX_REDIS_URL) instead,
    never retried; afterwards it is a password changed on a running server: an outage, retried."""
    if isinstance(exc, BrokerError):
        return exc
    if refuse_auth:
        refused = redis_config_error(exc)
        if refused is not None:
            raise refused from exc
    elif redis_auth_failure(exc):
        return BrokerError(f"{type(exc).__name__}: {exc}", transient=True)
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
        self.origin = origin_key(fence)
        self._script = client.register_script(_FENCE_LUA)
        self._head = [str(len(field_names)), *field_names]
        self._trim_maxlen = trim_maxlen
        self._trim_minid_age = trim_minid_age
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        #: A refused login is a configuration error until Redis has answered once, an outage afterwards.
        self.refuse_auth = True

    def _error(self, exc: Exception) -> BrokerError:
        return classify(exc, refuse_auth=self.refuse_auth)

    @classmethod
    def from_url(
        cls, url: str, stream: str, fence: str, field_names: Sequence[str], **kwargs: Any
    ) -> RedisStreamPublisher:
        """A publisher on its own connection pool (socket timeouts so a dead Redis cannot hang the relay)."""
        client = client_from_url(url)
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
            raise self._error(exc) from exc
        self.refuse_auth = False
        return int(raw) if raw else 0

    def publish(self, batch: Sequence[Outgoing]) -> PublishResult:
        """Run the fence script on the batch; ``BrokerError`` if nothing is known to have happened, ``ValueError``
        (before anything is sent) for a position outside ``0 <= seq < 10**POSITION_DIGITS``."""
        if not batch:
            return PublishResult([])
        mode, threshold = self._trim()
        args: list[Any] = [mode, threshold, *self._head]
        end, spec = _POSITION_END, _POSITION_SPEC
        for o in batch:
            seq = o.seq
            if not 0 <= seq < end:
                position_arg(seq)  # raises the ValueError
            args.append(format(seq, spec))
            args.append("\0".join(o.values))
        try:
            raw_ids, err, before, fresh = self._script(keys=[self.stream, self.fence, self.origin], args=args)
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        self.refuse_auth = False
        ids: list[str | None] = [
            None if (i == 0 or i is None) else (i.decode() if isinstance(i, bytes) else str(i)) for i in raw_ids
        ]
        error = None
        if err:
            msg = err.decode() if isinstance(err, bytes) else str(err)
            error = self._error(redis.ResponseError(msg))
        if self._wait_replicas and error is None:
            try:
                acked = int(self.client.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms))
            except redis.RedisError as exc:
                raise self._error(exc) from exc
            if acked < self._wait_replicas:
                raise BrokerError(f"only {acked} of {self._wait_replicas} replicas acknowledged", transient=True)
        return PublishResult(ids, error, fence_before=int(before) if before else -1, stream_fresh=bool(fresh))

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
            raise self._error(exc) from exc
        return found

    def state(self) -> StreamState:
        """The fence, the stream's length, first and last generated ids, and the origin, in one round trip."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.fence)
                pipe.get(self.origin)
                pipe.exists(self.stream)
                fence, origin, exists = pipe.execute()
            self.refuse_auth = False
            if not exists:
                return StreamState(int(fence) if fence else None, False, origin=text_of(origin) if origin else None)
            info = self.client.xinfo_stream(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():  # deleted between the two calls
                return StreamState(int(fence) if fence else None, False)
            raise self._error(exc) from exc
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        self.refuse_auth = False
        first = info.get("first-entry")
        return StreamState(
            fence=int(fence) if fence else None,
            exists=True,
            length=int(info.get("length", 0)),
            first_id=text_of(first[0]) if first else None,
            last_id=text_of(info.get("last-generated-id", "0-0")),
            origin=text_of(origin) if origin else None,
        )

    def entries(self, stream_ids: Sequence[str]) -> dict[str, str]:
        """``stream id -> event_id`` of those ids the stream still holds (pipelined XRANGE id id)."""
        found: dict[str, str] = {}
        try:
            for start in range(0, len(stream_ids), 1000):
                chunk = stream_ids[start : start + 1000]
                with self.client.pipeline(transaction=False) as pipe:
                    for sid in chunk:
                        pipe.xrange(self.stream, min=sid, max=sid, count=1)
                    replies = pipe.execute()
                for sid, reply in zip(chunk, replies, strict=True):
                    if reply:
                        fields = reply[0][1] or {}
                        raw = fields.get(b"event_id", fields.get("event_id"))
                        if raw is not None:
                            found[sid] = text_of(raw)
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        return found

    def find_between(self, event_ids: Collection[str], lo: str, hi: str, scan: int = 100_000) -> dict[str, str]:
        """``event_id -> stream id`` of those events found between stream ids ``lo`` and ``hi`` (inclusive)."""
        want = set(event_ids)
        found: dict[str, str] = {}
        low = lo
        try:
            while want and scan > 0:
                page = self.client.xrange(self.stream, min=low, max=hi, count=min(scan, 1000))
                if not page:
                    break
                for sid, fields in page:
                    raw = (fields or {}).get(b"event_id", (fields or {}).get("event_id"))
                    eid = text_of(raw) if raw is not None else None
                    if eid in want:
                        want.discard(eid)
                        found[eid] = text_of(sid)
                scan -= len(page)
                low = "(" + text_of(page[-1][0])
        except redis.RedisError as exc:
            raise self._error(exc) from exc
        return found

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def redis_server_settings(client: redis.Redis, *, refuse_auth: bool = True) -> dict[str, str]:
    """``maxmemory-policy``, ``appendonly``, ``appendfsync`` and ``save`` from CONFIG GET, or, where CONFIG is
    disabled or renamed (managed Redis), ``maxmemory-policy`` and ``appendonly`` from INFO (no ``save``).
    ``BrokerError`` when neither answers."""
    try:
        got: dict[str, str] = {}
        for name in ("maxmemory-policy", "appendonly", "appendfsync", "save"):
            got.update({text_of(k): text_of(v) for k, v in client.config_get(name).items()})
        if "maxmemory-policy" in got:
            return got
    except redis.ResponseError:
        pass  # CONFIG disabled or renamed: INFO is usually still there
    except redis.RedisError as exc:
        raise classify(exc, refuse_auth=refuse_auth) from exc
    try:
        info = client.info("memory")
        info.update(client.info("persistence"))
    except redis.RedisError as exc:
        raise classify(exc, refuse_auth=refuse_auth) from exc
    out: dict[str, str] = {}
    if "maxmemory_policy" in info:
        out["maxmemory-policy"] = text_of(info["maxmemory_policy"])
    if "aof_enabled" in info:
        out["appendonly"] = "yes" if int(info["aof_enabled"]) else "no"
    if not out:
        raise BrokerError("neither CONFIG GET nor INFO reports the eviction policy", transient=False)
    return out


def client_from_url(url: str) -> redis.Redis:
    """A Redis client with the relay's timeouts (a dead Redis cannot hang the caller)."""
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=30, retry_on_timeout=False
    )


def stream_publisher(settings: Settings) -> Callable[[str], RedisStreamPublisher]:
    """The relays' default publisher factory: instance id -> a publisher on the configured stream and its fence."""
    url = settings.require_redis()

    def make(instance_id: str) -> RedisStreamPublisher:
        return RedisStreamPublisher.from_url(
            url, settings.stream, fence_key(settings.stream, instance_id), FIELDS,
            trim_maxlen=settings.trim_maxlen, trim_minid_age=settings.trim_minid_age,
            wait_replicas=settings.redis_wait_replicas,
        )  # fmt: skip

    return make
