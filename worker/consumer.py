"""The workflow worker: read the global stream through a consumer group and ingest each event exactly once.

Per batch (XREADGROUP COUNT ``batch_size``):

1. decode each entry (flat wire format), resolve its contract (tenant catalog, system catalog, registry)
   and validate the payload -- in one Postgres transaction, which then
2. inserts every event into ``workflow_runtime_events`` (``ON CONFLICT (event_id) DO NOTHING``) and, for the
   events that were new, a ``workflow_run_requests`` row per matching trigger -- one statement, ``sql.INGEST``;
3. commits, and only then XACKs the entries.

A redelivered or duplicated entry (same event id) inserts nothing, so it requests no run: effects happen
once however often an entry is delivered. If the batch statement fails because of one entry's data
(SQLSTATE classes 22/23/54, or a Python error while preparing an entry), the batch is retried one entry
per transaction, so a poison entry holds up nobody else. A failed entry stays pending; it is claimed again
(XAUTOCLAIM) after ``claim_idle`` seconds, by this worker or another, and after ``max_deliveries``
failed deliveries it is copied to the dead-letter stream with the reason and acknowledged. Database or
Redis outages are not the entries' fault: the batch in hand is retried with backoff and no delivery is
charged to it. Entries left pending by a dead consumer are claimed after the same idle time. When the group
is gone (the stream deleted, perhaps recreated by a publish: UNBLOCKED, NOGROUP), the worker creates it
again at the new stream's first entry and logs one line; duplicates are skipped by event id as always.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from outbox import schemas, wire
from outbox.errors import ConfigurationError
from outbox.liveness import Liveness
from outbox.ops import missing_tables
from outbox.retry import (
    Outage,
    backoff_delay,
    postgres_config_error,
    redis_auth_failure,
    redis_config_error,
    transient_redis,
)
from outbox.schemas.registry import Registry
from outbox.worker import sql
from outbox.worker.ingest import PoisonEntry, Resolution, Resolver, Row, build_row, columns, event_key
from outbox.worker.metrics import WorkerMetrics, default_metrics
from outbox.worker.settings import WorkerSettings, default_consumer_name

log = logging.getLogger("outbox.worker")

# SQLSTATE classes that mean "this entry's data", not "the database is unwell": data exceptions,
# integrity violations, program limits (e.g. a jsonb value too large).
_ENTRY_FAULT_CLASSES = ("22", "23", "54")

# Every table the worker reads or writes: resolving the FROM list fails (42P01) on the first one missing.
_TABLES_PROBE = """
SELECT 1 FROM workflow_runtime_events, workflow_triggers, workflow_run_requests, workflow_trigger_skips,
              system_event_catalog, event_catalog LIMIT 0
"""

# Delete idle consumers that own no pending entry, atomically (no entry can be delivered to one between the
# check and the delete). ARGV: min idle (ms), and a single consumer name to consider ('' = any).
_GC_CONSUMERS_LUA = """
local out = {}
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[2])
     and (ARGV[3] == '' or ARGV[3] == info['name']) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    out[#out + 1] = info['name']
  end
end
return out
"""


@dataclass
class WorkerStats:
    """What one ``Worker.run`` did."""

    read: int = 0
    claimed: int = 0
    ingested: int = 0
    duplicates: int = 0
    invalid: int = 0
    runs_requested: int = 0
    triggers_skipped: int = 0
    failed_deliveries: int = 0
    dead_lettered: int = 0
    batches: int = 0
    db_errors: int = 0
    redis_errors: int = 0
    groups_recreated: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Item:
    stream_id: str
    fields: dict[Any, Any]
    deliveries: int
    event: wire.WireEvent | None = None
    key: uuid.UUID | None = None


class _Stop(Exception):
    """Internal: stop requested while an outage kept the batch in hand from committing."""


def _entries(resp: Any) -> list[Any]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 map)."""
    if not resp:
        return []
    if isinstance(resp, dict):
        return list(next(iter(resp.values()))[0]) if resp else []
    return list(resp[0][1])


def _decode(stream_id: str, fields: dict[Any, Any]) -> wire.WireEvent:
    """``wire.decode`` for the str fields of a decoding client (the hot path); bytes go through ``wire.decode``."""
    values = [fields.get(f, "") for f in wire.FIELDS]
    if all(type(v) is str for v in values):
        return wire.WireEvent(stream_id, *values)
    return wire.decode(stream_id, fields)


# _decode builds WireEvent positionally: its fields after stream_id must be wire.FIELDS, in order.
assert [f.name for f in dataclasses.fields(wire.WireEvent)] == ["stream_id", *wire.FIELDS]


def client_name(consumer: str) -> str:
    """The Redis client name of a worker (CLIENT LIST shows it): ``outbox-worker:<consumer>``, spaces replaced."""
    return "outbox-worker:" + "".join(c if c.isprintable() and not c.isspace() else "_" for c in consumer)


def group_lost(exc: BaseException) -> bool:
    """Whether a Redis error says the consumer group is gone: NOGROUP (the group destroyed, or the stream deleted
    and perhaps recreated by a publish), or UNBLOCKED (Redis 7: the stream deleted under a blocked XREADGROUP)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def entry_fault(exc: BaseException) -> bool:
    """Whether a database error is caused by an entry's data (retrying the same data cannot help)."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    state = getattr(exc, "sqlstate", None)
    return bool(state) and str(state)[:2] in _ENTRY_FAULT_CLASSES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Worker:
    """One worker process (one consumer of the group). ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        registry: Registry | None = None,
        client: redis.Redis | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.dsn = settings.require_database()
        self.consumer = settings.consumer or default_consumer_name()
        self.registry = registry or schemas.registry
        self.resolver = Resolver(self.registry, settings.catalog_cache_ttl)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._redis_given = client is not None
        self._redis: redis.Redis | None = client
        self._db: psycopg.Connection[Any] | None = None
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._db_failures = 0
        self._redis_failures = 0
        self._db_outage = Outage("database", log)  # one line when an outage starts, one when it ends
        self._redis_outage = Outage("redis", log)
        # Each server let us in once: from then on a refused login is an outage (a password rotated, pg_hba
        # reloaded), not a configuration error.
        self._db_reached = self._redis_reached = False
        self._group_losses = 0  # consecutive, for the backoff
        self._scan_deleted = False
        self._pause = settings.pause()
        self._gc = self._r().register_script(_GC_CONSUMERS_LUA)
        # Process-runner hooks (systemd READY/WATCHDOG, health metric): alive() from this loop only.
        self.liveness = Liveness()

    # ---- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the entries in hand, then return from ``run``. Thread- and signal-safe."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def run(self, *, until_idle: bool = False) -> WorkerStats:
        """Consume until ``stop()`` (or, with ``until_idle``, until nothing new or claimable is left).
        Raises ``SchemaNotInstalled`` when the workflow tables are missing, at start or later."""
        s = self.settings
        log.info("worker %s starting (stream=%s, group=%s, dlq=%s)", self.consumer, s.stream, s.group, s.dlq)
        try:
            self._check_tables()
            self._with_redis(self._ensure_group)
            if s.consumer_gc_idle > 0:
                self._with_redis(lambda: self._gc_consumers(int(s.consumer_gc_idle * 1000), ""))
            self._with_redis(self._own_pending)
            self.liveness.state(f"reading {s.stream} as {self.consumer} (group {s.group})")
            while not self._stop.is_set():
                busy = self._with_redis(self._step)
                self._db_outage.ok()  # a whole step worked (a batch in hand is retried until it commits)
                if until_idle and not busy:
                    break
        except _Stop:
            pass
        finally:
            self._shutdown()
        log.info(
            "worker %s stopped: ingested=%d duplicates=%d invalid=%d runs=%d dead-lettered=%d",
            self.consumer, self.stats.ingested, self.stats.duplicates, self.stats.invalid,
            self.stats.runs_requested, self.stats.dead_lettered,
        )  # fmt: skip
        return self.stats

    def _shutdown(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(redis.RedisError):
                self._gc_consumers(0, self.consumer)  # leave no empty consumer behind
            if not self._redis_given:
                self._redis.close()
                self._redis = None
        if self._db is not None:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = None

    # ---- connections -------------------------------------------------------------------------------

    def _r(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.settings.require_redis(),
                socket_timeout=max(10.0, self.settings.block_ms / 1000 + 5),
                socket_connect_timeout=3,
                health_check_interval=30,
                decode_responses=True,
                client_name=client_name(self.consumer),
            )
        return self._redis

    def _connect(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(self.dsn, connect_timeout=5, application_name="outbox-worker")
            self._db_reached = True
        return self._db

    def _backoff(self, attempt: int) -> None:
        self.liveness.wait(self._stop, backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_max))

    def _with_redis(self, fn: Any) -> Any:
        """Run ``fn``; on a Redis outage (or a transient refusal) back off and run it again (until stopped)."""
        while True:
            try:
                value = fn()
            except redis.RedisError as exc:
                # Wrong password: not an outage, the process exits (code 2), until Redis has let this worker in
                # once; after that it is a password changed on a running server: an outage, retried.
                refused = None if self._redis_reached else redis_config_error(exc)
                if refused is not None:
                    raise refused from exc
                if group_lost(exc):
                    self._recreate_group(exc)
                    continue
                if not (transient_redis(exc) or redis_auth_failure(exc)):
                    raise
                self._redis_trouble(exc)
            else:
                self._redis_reached = True
                self._redis_failures = 0
                self._redis_outage.ok()
                self._group_losses = 0
                return value

    def _redis_trouble(self, exc: redis.RedisError) -> None:
        self.stats.redis_errors += 1
        self.metrics.redis_errors.inc()
        self._redis_failures += 1
        self._redis_outage.error(exc)
        if self._stop.is_set():
            raise _Stop() from None
        self._backoff(self._redis_failures)

    # ---- group and consumers -----------------------------------------------------------------------

    def _ensure_group(self) -> None:
        s = self.settings
        if self._create_group(s.start_id):
            log.info("created consumer group %s on %s at %s", s.group, s.stream, s.start_id)

    def _create_group(self, start: str) -> bool:
        """XGROUP CREATE ... MKSTREAM at ``start``; False when the group exists already."""
        s = self.settings
        try:
            self._r().xgroup_create(s.stream, s.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def _recreate_group(self, exc: redis.RedisError) -> None:
        """The group is gone (the stream deleted, or the group destroyed): create it again at id 0, whatever
        ``start_id`` says. Every entry of a recreated stream came after the loss, and re-reading entries of a
        stream that survived is harmless: events already ingested are recognised by id and skipped."""
        s = self.settings
        self._group_losses += 1
        if self._group_losses > 1:  # lost again before any command succeeded: do not spin on it
            self._backoff(self._group_losses - 1)
        self._claim_cursor = "0-0"
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):  # an outage: the retry reports it
            if self._create_group("0"):
                self.stats.groups_recreated += 1
                log.warning(
                    "consumer group %s on %s lost (%s); created it again from the stream's first entry, events "
                    "already ingested are skipped", s.group, s.stream, str(exc).strip(),
                )  # fmt: skip

    def _gc_consumers(self, min_idle_ms: int, only: str) -> list[str]:
        gone = [
            wire.text_of(n)
            for n in self._gc(keys=[self.settings.stream], args=[self.settings.group, min_idle_ms, only])
        ]
        if gone and not only:
            log.info("deleted %d idle consumer(s) with nothing pending: %s", len(gone), ", ".join(gone[:10]))
        return gone

    # ---- one iteration -----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Claim (when due) and read one batch; whether anything was delivered."""
        self.liveness.alive()
        busy = False
        if time.monotonic() >= self._next_claim:
            busy = self._claim()
        if self._stop.is_set():
            return busy
        s = self.settings
        resp: Any = self._r().xreadgroup(
            s.group, self.consumer, {s.stream: ">"}, count=s.batch_size, block=None if busy else s.block_ms
        )
        entries = _entries(resp)
        if entries:
            self.stats.read += len(entries)
            self._handle([_Item(wire.text_of(sid), f or {}, 1) for sid, f in entries])
            return True
        return busy

    def _own_pending(self) -> None:
        """Entries still pending under this consumer's name (only when a fixed name is reused): redo them."""
        s = self.settings
        start = "0"
        while not self._stop.is_set():
            self.liveness.alive()
            resp: Any = self._r().xreadgroup(s.group, self.consumer, {s.stream: start}, count=s.batch_size)
            entries = _entries(resp)
            if not entries:
                return
            items = self._with_deliveries(entries)
            log.info("re-processing %d entr(ies) left pending under %s", len(items), self.consumer)
            self._handle_claimed(items)
            start = wire.text_of(entries[-1][0])

    def _claim(self) -> bool:
        """One XAUTOCLAIM page of entries idle longer than ``claim_idle`` (dead consumers, failed entries)."""
        s = self.settings
        r = self._r()
        resp: Any = r.xautoclaim(
            s.stream, s.group, self.consumer, min_idle_time=int(s.claim_idle * 1000),
            start_id=self._claim_cursor, count=s.batch_size,
        )  # fmt: skip
        cursor, entries = wire.text_of(resp[0]), resp[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._next_claim = time.monotonic() + s.claim_interval  # sweep complete
        live = [(sid, f) for sid, f in entries if sid is not None]
        if len(live) < len(entries):
            self._scan_deleted = True  # Redis < 7: deleted entries come back as nil, ids unknown
        if self._scan_deleted:
            self._ack_deleted({wire.text_of(sid) for sid, _ in live})
        if not live:
            return False
        self.stats.claimed += len(live)
        self.metrics.claimed.inc(len(live))
        items = self._with_deliveries(live)
        log.info("claimed %d entr(ies) idle > %.1fs", len(items), s.claim_idle)
        self._handle_claimed(items)
        return True

    def _with_deliveries(self, entries: Sequence[tuple[Any, Any]]) -> list[_Item]:
        s = self.settings
        pipe = self._r().pipeline(transaction=False)
        for sid, _ in entries:
            pipe.xpending_range(s.stream, s.group, min=sid, max=sid, count=1, consumername=self.consumer)
        counts = pipe.execute()
        items = []
        for (sid, f), pend in zip(entries, counts, strict=True):
            n = int(pend[0]["times_delivered"]) if pend else 1
            items.append(_Item(wire.text_of(sid), f or {}, n))
        return items

    def _ack_deleted(self, keep: set[str]) -> None:
        """Acknowledge entries of this consumer that no longer exist on the stream (trimmed while pending)."""
        s = self.settings
        r = self._r()
        pend = r.xpending_range(s.stream, s.group, min="-", max="+", count=1000, consumername=self.consumer)
        ids = [wire.text_of(p["message_id"]) for p in pend if wire.text_of(p["message_id"]) not in keep]
        if ids:
            pipe = r.pipeline(transaction=False)
            for i in ids:
                pipe.xrange(s.stream, min=i, max=i)
            gone = [i for i, found in zip(ids, pipe.execute(), strict=True) if not found]
            if gone:
                r.xack(s.stream, s.group, *gone)
                log.warning("acknowledged %d pending entr(ies) no longer on the stream", len(gone))
        self._scan_deleted = False

    # ---- a batch -----------------------------------------------------------------------------------

    def _handle_claimed(self, items: list[_Item]) -> None:
        """Claimed entries: those delivered more than ``max_deliveries`` times never concluded (their consumers
        died while processing them): acknowledge them if their event is already ingested, else dead-letter."""
        limit = self.settings.max_deliveries
        over = [it for it in items if it.deliveries > limit]
        if over:
            keyed = {}
            for it in over:
                with contextlib.suppress(PoisonEntry, ValueError):
                    keyed[it.stream_id] = event_key(wire.decode(it.stream_id, it.fields))
            done = self._already_ingested(list(keyed.values()))
            ack = [it.stream_id for it in over if keyed.get(it.stream_id) in done or not it.fields]
            if ack:
                self._r().xack(self.settings.stream, self.settings.group, *ack)
            for it in over:
                if it.stream_id not in ack:
                    reason = f"delivered {it.deliveries} times and never acknowledged (consumers died processing it?)"
                    self._dead_letter(it, reason)
            items = [it for it in items if it.deliveries <= limit]
        if items:
            self._handle(items)

    def _already_ingested(self, keys: list[uuid.UUID]) -> set[uuid.UUID]:
        if not keys:
            return set()
        while True:
            try:
                db = self._connect()
                rows = db.execute(sql.ALREADY_INGESTED, {"ids": keys}).fetchall()
                db.rollback()
                self._db_ok()
                return {r[0] for r in rows}
            except psycopg.Error as exc:
                self._on_db_error(exc)

    def _handle(self, items: list[_Item]) -> None:
        """Ingest a batch: commit, then XACK; failed entries stay pending or go to the DLQ (timed)."""
        with self.metrics.batch_seconds.time():
            self._handle_batch(items)

    def _handle_batch(self, items: list[_Item]) -> None:
        self.stats.batches += 1
        ack: list[str] = []
        ready: list[_Item] = []
        failed: list[tuple[_Item, str]] = []
        seen: set[uuid.UUID] = set()
        for it in items:
            if not it.fields:
                ack.append(it.stream_id)  # deleted from the stream while pending: nothing to do
                continue
            try:
                it.event = _decode(it.stream_id, it.fields)
                it.key = event_key(it.event)
            except Exception as exc:
                failed.append((it, f"{type(exc).__name__}: {exc}"))
                continue
            if it.key in seen:  # the same event twice in one batch: the first one decides
                ack.append(it.stream_id)
                self.stats.duplicates += 1
                self.metrics.duplicates.inc()
                continue
            seen.add(it.key)
            ready.append(it)
        if ready:
            done, bad = self._commit_with_retry(ready)
            ack.extend(it.stream_id for it in done)
            failed.extend(bad)
        s = self.settings
        if ack:
            self._r().xack(s.stream, s.group, *ack)
        for it, reason in failed:
            self.stats.failed_deliveries += 1
            self.metrics.failed_deliveries.inc()
            if it.deliveries >= s.max_deliveries:
                self._dead_letter(it, reason)
            else:
                log.warning(
                    "entry %s failed (delivery %d of %d), retried after %.1fs: %s",
                    it.stream_id, it.deliveries, s.max_deliveries, s.claim_idle, reason,
                )  # fmt: skip

    def _dead_letter(self, it: _Item, reason: str) -> None:
        s = self.settings
        fields: dict[Any, Any] = dict(it.fields)
        fields.update(
            {
                "dlq_reason": reason[:4000],
                "dlq_source_stream": s.stream,
                "dlq_source_id": it.stream_id,
                "dlq_group": s.group,
                "dlq_consumer": self.consumer,
                "dlq_deliveries": str(it.deliveries),
                "dlq_at": wire.iso_utc(datetime.now(UTC)),
            }
        )
        pipe = self._r().pipeline(transaction=True)  # MULTI: the copy and the acknowledgement together
        pipe.xadd(s.dlq, fields)
        pipe.xack(s.stream, s.group, it.stream_id)
        pipe.execute()
        self.stats.dead_lettered += 1
        self.metrics.dead_lettered.inc()
        self.stats.dead_letter_reasons.append(reason)
        log.error("dead-lettered entry %s after %d deliveries: %s", it.stream_id, it.deliveries, reason)

    # ---- the transaction ---------------------------------------------------------------------------

    def _commit_with_retry(self, items: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, str]]]:
        """Commit the batch (or each entry alone); database outages are retried with backoff, in hand."""
        while True:
            try:
                result = self._commit(items)
            except psycopg.Error as exc:
                self._on_db_error(exc)
                continue
            self._db_ok()
            return result

    def _db_ok(self) -> None:
        self._db_failures = 0
        self._db_outage.ok()

    def _check_tables(self) -> None:
        """Fail now, not at the first entry, if the tables are missing; an outage is left to the batch path."""
        try:
            db = self._connect()
            db.execute(_TABLES_PROBE)
            db.rollback()
        except psycopg.Error as exc:
            missing = missing_tables(exc) or self._refused(exc)
            if missing is not None:
                raise missing from exc
            if self._db is not None:
                with contextlib.suppress(Exception):
                    self._db.close()
                self._db = None

    def _refused(self, exc: psycopg.Error) -> ConfigurationError | None:
        """A refused login as a configuration error, until Postgres has let this worker in once."""
        return None if self._db_reached else postgres_config_error(exc)

    def _on_db_error(self, exc: psycopg.Error) -> None:
        missing = missing_tables(exc) or self._refused(exc)
        if missing is not None:  # not an outage: the entries in hand stay pending; the process exits (code 4 or 2)
            raise missing from exc
        self.stats.db_errors += 1
        self.metrics.db_errors.inc()
        self._db_failures += 1
        self._db_outage.error(_first_line(exc), note="retrying the batch in hand with backoff")
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = None
        if self._stop.is_set():
            log.warning("stopping with %s; the entries in hand stay pending for another worker", _first_line(exc))
            raise _Stop()
        self._backoff(self._db_failures)

    def _commit(self, items: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, str]]]:
        try:
            return self._transaction(items)
        except psycopg.Error as exc:
            self._rollback()
            if not entry_fault(exc):
                raise
            if len(items) == 1:
                return [], [(items[0], _first_line(exc))]
            log.warning("batch of %d failed (%s); retrying one entry per transaction", len(items), _first_line(exc))
        done: list[_Item] = []
        failed: list[tuple[_Item, str]] = []
        for it in items:
            try:
                d, f = self._transaction([it])
            except psycopg.Error as exc:
                self._rollback()
                if not entry_fault(exc):
                    raise
                d, f = [], [(it, _first_line(exc))]
            done += d
            failed += f
        return done, failed

    def _rollback(self) -> None:
        if self._db is not None and not self._db.closed and not self._db.broken:
            with contextlib.suppress(psycopg.Error):
                self._db.rollback()

    def _transaction(self, items: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, str]]]:
        """Resolve, validate and insert ``items`` in one transaction; commit. Entries that fail to prepare
        (Python errors) are left out and returned as failed; database errors propagate."""
        db = self._connect()
        rows: list[Row] = []
        done: list[_Item] = []
        failed: list[tuple[_Item, str]] = []
        memo: dict[tuple[str, str], Resolution] = {}
        for it in items:
            assert it.event is not None and it.key is not None
            try:
                res = self.resolver.resolve(db, it.event.tenant, it.event.event_type, memo)
                rows.append(build_row(self.registry, it.event, it.key, res))
            except psycopg.Error:
                raise
            except Exception as exc:
                failed.append((it, f"{type(exc).__name__}: {exc}"))
                continue
            done.append(it)
        if not rows:
            db.rollback()
            return done, failed
        cur = db.execute(sql.INGEST, columns(rows))
        counts = cur.fetchone()
        assert counts is not None
        new, runs, skips, new_invalid = (int(c) for c in counts)
        self._test_pause("before_commit", len(rows))
        db.commit()
        self._test_pause("after_commit", len(rows))
        invalid = sum(1 for r in rows if r.error is not None)
        self.stats.ingested += new
        self.stats.duplicates += len(rows) - new
        self.stats.invalid += invalid  # counted per delivery; a duplicate invalid entry counts again
        self.stats.runs_requested += runs
        self.stats.triggers_skipped += skips
        m = self.metrics
        m.ingested.inc(new)
        m.duplicates.inc(len(rows) - new)
        m.schema_failures.inc(new_invalid)
        m.run_requests.inc(runs)
        m.trigger_skips.inc(skips)
        if invalid:
            for r in rows:
                if r.error is not None:
                    log.warning("event %s (%s, tenant %s) is invalid: %s", r.event_id, r.event_type, r.tenant_id,
                                r.error)  # fmt: skip
        return done, failed

    def _test_pause(self, where: str, n: int) -> None:
        if self._pause is not None and self._pause[0] == where:
            log.warning("test hook: pausing %.1fs %s (%d entries in hand)", self._pause[1], where, n)
            time.sleep(self._pause[1])
