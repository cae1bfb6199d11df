"""The relay daemon: claim committed outbox rows, validate, publish through the fence, mark."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox import schemas, wire
from outbox.errors import BrokerError, OutboxError
from outbox.liveness import Liveness
from outbox.ops import missing_tables
from outbox.relay import metrics, sql
from outbox.relay.encode import encode, reason
from outbox.relay.fence import publish_all
from outbox.relay.guard import RISK_CODES, RedisGuard, Risk
from outbox.relay.lease import Lease, LostLease
from outbox.relay.loss import Loss, LossWatch
from outbox.relay.publisher import (
    Outgoing,
    Publisher,
    PublishResult,
    RedisStreamPublisher,
    client_from_url,
    fence_key,
    redis_server_settings,
)
from outbox.retry import Outage, backoff_delay, postgres_config_error, quiet_pipeline_noise
from outbox.schemas.registry import Registry
from outbox.settings import Settings
from outbox.sql import NOTIFY_CHANNEL

log = logging.getLogger("outbox.relay")

# TCP keepalives on every relay connection: a peer that vanished (black-holed network, frozen host) is
# noticed within ~25 s instead of never, so no thread waits forever on a reply (ignored on Unix sockets).
_KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


@dataclass
class RelayStats:
    """What one ``Relay.run`` did."""

    published: int = 0
    fence_skipped: int = 0
    dead: int = 0
    failed: int = 0
    batches: int = 0
    broker_errors: int = 0
    db_errors: int = 0
    leader_epochs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Row:
    batch: int
    seq: int
    id: int
    event_id: str
    tenant_id: str
    event_type: str
    schema_ref: str
    payload: str
    timestamp: str
    execution_id: str | None
    event_name: str | None
    from_state: str | None
    to_state: str | None
    correlation_key: str | None
    attempts: int


@dataclass(slots=True)
class _Mark:
    """The outcome of one batch, written (with the batch closed) by the marker thread."""

    batch: int
    published: list[tuple[int, str | None, int]] = field(default_factory=list)  # (row id, stream id, seq)
    dead: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


# A recovered batch that a relay died with is split into this many parts (see Relay._split).
_SPLIT_INTO = 16


class _Stop(Exception):
    """Internal: stop requested while a batch was in flight (its rows stay reserved)."""


class Relay:
    """One relay process. ``run()`` until ``stop()``; several processes elect one leader through a lease."""

    def __init__(
        self,
        settings: Settings,
        *,
        publisher_factory: Callable[[str], Publisher] | None = None,
        registry: Registry | None = None,
        identity: str | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = settings.require_database()
        if publisher_factory is None:
            url = settings.require_redis()

            def publisher_factory(instance_id: str) -> Publisher:
                return RedisStreamPublisher.from_url(
                    url,
                    settings.stream,
                    fence_key(settings.stream, instance_id),
                    wire.FIELDS,
                    trim_maxlen=settings.trim_maxlen,
                    trim_minid_age=settings.trim_minid_age,
                    wait_replicas=settings.redis_wait_replicas,
                )

        self._publisher_factory = publisher_factory
        self.registry = registry or schemas.registry
        self.me = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._publisher: Publisher | None = None
        self._instance_id: str | None = None
        self.lease = Lease("default", self.me, settings.lease_ttl)
        self._recover = True
        # Marks are written by one marker thread on its own connection, in parallel with the next claim
        # (a mark UPDATE of a full batch costs Postgres about as much as the claim itself). Until a
        # batch's mark has committed its rows are still 'pending', so every claim excludes them by id
        # (``_unmarked``); at most one mark is in flight (``_submit_mark`` waits for the previous one).
        # A mark that fails on the marker is written again on the main connection (so a marker that cannot
        # connect slows the relay down but never stops it); if that fails too, the batch stays open, its
        # ids stay excluded, and recovery sends it again through the fence (which drops every event).
        self._mark_lock = threading.Lock()
        self._unmarked: dict[int, list[int]] = {}  # batch id -> row ids whose mark has not committed
        self._mark_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-mark")
        self._mark_db: psycopg.Connection[Any] | None = None
        self._mark_fut: Future[None] | None = None
        self._mark_inflight: _Mark | None = None
        self._marker_down_since: float | None = None
        # Claim-ahead: while one full batch is validated and sent to Redis, the next one is claimed on a
        # second connection by one worker thread (psycopg releases the GIL while it waits on Postgres).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-claim")
        self._ahead_db: psycopg.Connection[Any] | None = None
        self._prefetch: Future[list[_Row]] | None = None
        self._idle = False
        self._pruned_at = 0.0
        self._last_busy = time.monotonic()
        self._db_outage = Outage("database", log)  # one line when an outage starts, one when it ends
        self._db_reached = False  # Postgres let us in once: from then on a refused login is an outage
        self._db_failures = 0  # consecutive, for the backoff
        self._broker_outage = Outage("broker", log)
        quiet_pipeline_noise()
        # Process-runner hooks (systemd READY/WATCHDOG, health metric): alive() from this loop only.
        self.liveness = Liveness()
        # Redis checks (relay/guard.py, relay/loss.py): at start and every redis_check_interval.
        self._loss = LossWatch(self._report_loss)
        self._guard: RedisGuard | None = None
        self._check_client: Any = None
        self._checked_at: float | None = None
        self._check_failed_said = False
        self._waited_for_redis = False  # the last step only waited for Redis' settings to be checked (strict)
        if settings.redis_url is not None:
            self._guard = RedisGuard(self._redis_settings, strict=settings.redis_strict, on_risk=self._note_risk)

    @property
    def epoch(self) -> int | None:
        """The leader term this relay holds, or None (standby)."""
        return self.lease.epoch

    @epoch.setter
    def epoch(self, value: int | None) -> None:
        self.lease.epoch = value

    # ---- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return. Thread- and signal-safe."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def run(self, *, until_idle: bool = False) -> RelayStats:
        """Relay until ``stop()`` (or, with ``until_idle``, until no claimable row is left). Returns counters.
        Raises ``SchemaNotInstalled`` when the outbox tables are missing, at start or later."""
        log.info("relay %s starting (stream=%s, wake=%s)", self.me, self.settings.stream, self.settings.wake)
        try:
            while not self._stop.is_set():
                try:
                    if not self._step(until_idle):
                        break
                    if not self._waited_for_redis:  # a step that only waited proves nothing about the servers
                        self._db_outage.ok()  # a whole step worked: an outage ends after `settle` s of these
                        self._broker_outage.ok()
                except _Stop:
                    break
                except LostLease:
                    self._lose_lease("another relay holds the lease")
                except psycopg.Error as exc:
                    missing = missing_tables(exc)
                    if missing is not None:  # not an outage: retrying cannot help, the process exits (code 4)
                        raise missing from exc
                    # Wrong password, unknown role...: not an outage either (exit 2), until Postgres has let this
                    # relay in once; after that it is a password rotated or pg_hba reloaded: an outage, retried.
                    refused = None if self._db_reached else postgres_config_error(exc)
                    if refused is not None:
                        raise refused from exc
                    self._on_db_error(exc)
        finally:
            self._shutdown()
        return self.stats

    def _drop_prefetch(self, *, release: bool = False) -> None:
        """Wait for a claim-ahead in flight. Nothing of its batch was sent: on a clean stop (``release``)
        the batch is deleted so its rows are simply pending again; otherwise it stays open for recovery."""
        fut, self._prefetch = self._prefetch, None
        if fut is None:
            return
        rows: list[_Row] = []
        with contextlib.suppress(Exception):
            rows = fut.result(timeout=30)
        if release and rows and self._db is not None:
            try:
                self._db.execute(sql.CLOSE_BATCH, (rows[0].batch,))
                self._db.commit()
                return
            except psycopg.Error:
                pass
        self._recover = True

    def _shutdown(self) -> None:
        self._drop_prefetch(release=self.epoch is not None)
        self._pool.shutdown(wait=True)
        with contextlib.suppress(psycopg.Error):
            self._await_mark()
        self._mark_pool.shutdown(wait=True)
        for extra in (self._ahead_db, self._mark_db):
            if extra is not None:
                extra.close()
        self._ahead_db = self._mark_db = None
        if self.epoch is not None and self._db is not None and not self._db.closed:
            try:
                self.lease.release(self._db)
                log.info("relay %s released the lease (epoch %s)", self.me, self.epoch)
            except psycopg.Error:
                pass
        self.lease.epoch = None
        metrics.LEADER.set(0)
        for conn in (self._db, self._listen):
            if conn is not None:
                conn.close()
        self._db = self._listen = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._check_client is not None:
            self._check_client.close()
            self._check_client = None

    # ---- one iteration -----------------------------------------------------------------------------

    def _step(self, until_idle: bool) -> bool:
        self.liveness.alive()
        self._waited_for_redis = not self._check_redis()
        if self._waited_for_redis:
            return True  # strict mode: nothing happens before Redis' settings have been checked
        db = self._connect()
        if self._mark_fut is not None and self._mark_fut.done():
            self._await_mark()  # see a failed mark now, not only when the next batch is handed over
        if self.epoch is None and not self._acquire(db):
            self.liveness.state("standby")
            if until_idle:
                return False
            self.liveness.wait(self._stop, self.settings.lease_ttl / 3)
            return True
        now = time.monotonic()
        if self.lease.due():
            self._renew(db, idle=self._idle)
        if now - self._pruned_at > self.settings.prune_interval:
            self._prune(db)
        if self._recover:
            # An interrupted batch must go out before anything claimed after it: positions only grow on
            # the stream, and the fence would otherwise drop the older batch's unsent rows.
            self._drop_prefetch()
        blamed = False
        if self._prefetch is not None:
            fut, self._prefetch = self._prefetch, None
            rows, recovered = fut.result(), False
        else:
            rows, recovered, blamed = self._claim(db)
        if rows:
            self._idle = False
            if not recovered and len(rows) == self.settings.batch_size and not self._stop.is_set():
                self._prefetch = self._pool.submit(self._claim_ahead, self._excluded([r.id for r in rows]))
            # Rows of an interrupted batch at or below the fence are already on the stream.
            hwm = self._with_broker(lambda p: p.high_water()) if recovered else 0
            if blamed and self._split(db, rows, hwm):
                return True  # its parts are recovered next, one at a time
            self._process(rows, hwm, recovered=recovered, blamed=blamed)
            self._last_busy = time.monotonic()
            if len(rows) < self.settings.batch_size and self.settings.poll_interval and not recovered:
                self._stop.wait(self.settings.poll_interval)  # let a few more rows gather
            return True
        if recovered:
            return True  # an interrupted batch with nothing left pending was just closed
        if until_idle:
            return False
        self._wait_for_work(db)
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(
                self.dsn, connect_timeout=5, application_name="outbox-relay", options=self._session_options(),
                **_KEEPALIVE,
            )  # fmt: skip
            self._db_reached = True
            self._recover = True
        return self._db

    def _session_options(self) -> str:
        # A relay frozen inside a transaction (long pause, partition) must not keep the relay row locked
        # past its lease, or no standby could take over: the server ends such a transaction, and lock
        # waits are bounded so a standby's takeover attempt never hangs behind a frozen leader.
        ttl_ms = int(self.settings.lease_ttl * 1000)
        return f"-c idle_in_transaction_session_timeout={max(1000, ttl_ms)} -c lock_timeout={max(1000, ttl_ms)}"

    def _on_db_error(self, exc: psycopg.Error) -> None:
        self.stats.db_errors += 1
        metrics.DB_ERRORS.inc()
        self._db_outage.error(exc)
        self._drop_prefetch()
        self._await_mark(fallback=False)
        for conn in (self._db, self._listen, self._ahead_db, self._mark_db):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._db = self._listen = self._ahead_db = self._mark_db = None
        self._idle = False
        self._recover = True
        self._db_failures += 1
        self._backoff_sleep(self._db_failures)

    def _backoff_sleep(self, attempt: int) -> None:
        self.liveness.wait(self._stop, backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_max))

    # ---- leadership --------------------------------------------------------------------------------

    def _acquire(self, db: psycopg.Connection[Any]) -> bool:
        got = self.lease.acquire(db)
        if got is None:
            return False
        self.epoch, _last_seq, instance = got
        self.stats.leader_epochs.append(self.epoch)
        metrics.LEADER.set(1)
        log.info("relay %s is the leader (epoch %s)", self.me, self.epoch)
        self.liveness.state(f"leader (epoch {self.epoch})")
        if self._publisher is None or self._instance_id != instance:
            reached = self._redis_reached()
            if self._publisher is not None:
                self._publisher.close()
            self._publisher = self._publisher_factory(instance)
            if reached and hasattr(self._publisher, "refuse_auth"):
                self._publisher.refuse_auth = False  # the same server has let this relay in already
            self._instance_id = instance
        hwm = self._with_broker(lambda p: p.high_water())
        db.execute(sql.SYNC_SEQ, {"hwm": hwm, "epoch": self.epoch})
        db.commit()
        head = db.execute(sql.PUBLISHED_HEAD).fetchone()
        db.rollback()
        if head is not None:
            self._loss.baseline(head[0], head[1])
        with contextlib.suppress(BrokerError):  # Redis gone again: the publish path waits for it (and reports it)
            self._probe_loss()
        self._recover = True
        self._idle = False
        return True

    def _renew(self, db: psycopg.Connection[Any], *, idle: bool) -> None:
        self.lease.renew(db, idle=idle, notify_for=3 * self.settings.idle_poll_interval + self.settings.lease_ttl)

    def _lose_lease(self, why: str) -> None:
        self._drop_prefetch()
        if self.epoch is not None:
            log.warning("relay %s lost the lease (epoch %s): %s; standing by", self.me, self.epoch, why)
        self.lease.epoch = None
        self._idle = False
        metrics.LEADER.set(0)

    # ---- claim / process / mark --------------------------------------------------------------------

    def _claim(self, db: psycopg.Connection[Any]) -> tuple[list[_Row], bool, bool]:
        """Claim the next batch (or, after an interruption, take the oldest open batch back for recovery).
        Returns the rows, whether they are a recovered batch, and whether a relay died with it (blamed)."""
        if self._recover:
            self._await_mark()  # a batch whose mark is in flight is not interrupted
            batches = db.execute(sql.OPEN_BATCHES).fetchall()
            db.rollback()
            with self._mark_lock:  # a mark that failed after its commit: the batch is closed after all
                still_open = {int(b[0]) for b in batches}
                self._unmarked = {k: v for k, v in self._unmarked.items() if k in still_open}
            if batches:
                batch_id = int(batches[0][0])
                log.info("recovering interrupted batch %s (%d open)", batch_id, len(batches))
                with db.pipeline():
                    cur = db.execute(sql.RECOVER_BATCH, {"batch": batch_id, "epoch": self.epoch})
                    db.commit()
                fetched = cur.fetchall()
                rows = [_Row(*r[:-1]) for r in fetched]
                if not rows:  # nothing of it left pending: just close it
                    self._submit_mark(_Mark(batch_id), now=True)
                return rows, True, bool(fetched and fetched[0][-1])
            self._recover = False
        return self._claim_new(db, self._excluded()), False, False

    def _excluded(self, in_flight: list[int] | None = None) -> list[int]:
        """Row ids no claim may take: the batch in flight, and batches whose mark has not committed."""
        with self._mark_lock:
            out = [i for ids in self._unmarked.values() for i in ids]
        return out + in_flight if in_flight else out

    def _claim_new(self, db: psycopg.Connection[Any], exclude: list[int]) -> list[_Row]:
        params = {"limit": self.settings.batch_size, "epoch": self.epoch, "ttl": self.settings.lease_ttl,
                  "exclude": exclude}  # fmt: skip
        with db.pipeline():
            db.execute(sql.CLAIM_PLAN)  # the plan must not depend on statistics (see relay/sql.py)
            cur = db.execute(sql.CLAIM, params)
            db.commit()
        rows = [_Row(*r) for r in cur.fetchall()]
        self._db_failures = 0
        if rows:
            self.lease.touched()  # the claim extended the lease
        return rows

    def _claim_ahead(self, exclude: list[int]) -> list[_Row]:
        """(Worker thread, own connection.) Claim the batch after the one in flight (``exclude``: its
        rows and those of unmarked batches)."""
        if self._ahead_db is None or self._ahead_db.closed or self._ahead_db.broken:
            self._ahead_db = psycopg.connect(
                self.dsn, connect_timeout=5, application_name="outbox-relay", options=self._session_options(),
                **_KEEPALIVE,
            )  # fmt: skip
        return self._claim_new(self._ahead_db, exclude)

    @staticmethod
    def _write_mark(db: psycopg.Connection[Any], mark: _Mark, *, close: bool = True, durable: bool = False) -> None:
        """Write and commit one mark in one round trip: published rows, verdicts, and (``close``) the batch
        closed. Not ``durable`` (synchronous_commit off) is safe for a mark that closes or only publishes:
        one lost in a crash leaves its batch open, and the fence drops its events when it is sent again."""
        with db.pipeline():
            if not durable:
                db.execute("SET LOCAL synchronous_commit = off")
            if mark.published:
                db.execute(
                    sql.MARK_PUBLISHED,
                    {"ids": [m[0] for m in mark.published], "sids": [m[1] for m in mark.published],
                     "seqs": [m[2] for m in mark.published]},
                )  # fmt: skip
            if mark.dead:
                db.execute(sql.MARK_DEAD, {"ids": [m[0] for m in mark.dead], "reasons": [m[1] for m in mark.dead]})
            if mark.failed:
                db.execute(
                    sql.MARK_FAILED, {"ids": [m[0] for m in mark.failed], "reasons": [m[1] for m in mark.failed]}
                )
            if close:
                db.execute(sql.CLOSE_BATCH, (mark.batch,))
            db.commit()

    def _submit_mark(self, mark: _Mark, *, now: bool = False) -> None:
        """Hand a finished batch's mark to the marker thread (after the previous mark has finished), or
        with ``now`` (recovered batches: nothing to overlap with) write it on the main connection."""
        self._await_mark()
        if now:
            self._mark_sync(mark)
            return
        with self._mark_lock:
            self._unmarked[mark.batch] = [m[0] for m in mark.published]
        self._mark_inflight = mark
        self._mark_fut = self._mark_pool.submit(self._mark_async, mark)

    def _await_mark(self, *, fallback: bool = True) -> None:
        """Wait for the mark in flight. If it failed, write it on the main connection (``fallback``);
        when that is not possible or fails too, leave its batch open for recovery (see __init__)."""
        fut, self._mark_fut = self._mark_fut, None
        mark, self._mark_inflight = self._mark_inflight, None
        if fut is None:
            return
        try:
            fut.result()
        except Exception as exc:  # psycopg errors, or anything else
            if self._marker_down_since is None:
                self._marker_down_since = time.monotonic()
                log.warning(
                    "writing a batch mark failed on the marker connection; marks go through the main connection "
                    "until it works again: %s", str(exc).strip()[:200],
                )  # fmt: skip
            db = self._db
            if not fallback or mark is None or db is None or db.closed or db.broken:
                self._recover = True
                return
            try:
                self._mark_sync(mark)
            except BaseException:
                self._recover = True  # the batch stays open: recovery sends it again through the fence
                raise
            return
        if self._marker_down_since is not None:
            log.warning("marker connection works again after %.1fs", time.monotonic() - self._marker_down_since)
            self._marker_down_since = None

    def _mark_sync(self, mark: _Mark) -> None:
        """Write one mark on the main connection (same rules as ``_mark_async``)."""
        db = self._db
        assert db is not None
        db.rollback()
        self._write_mark(db, mark)
        with self._mark_lock:
            self._unmarked.pop(mark.batch, None)

    def _mark_async(self, mark: _Mark) -> None:
        """(Marker thread, own connection.) Write one mark."""
        db = self._mark_db
        if db is None or db.closed or db.broken:
            db = self._mark_db = psycopg.connect(
                self.dsn, connect_timeout=5, application_name="outbox-relay-mark", options=self._session_options(),
                **_KEEPALIVE,
            )  # fmt: skip
        try:
            self._write_mark(db, mark)
        except BaseException:
            with contextlib.suppress(Exception):
                db.close()
            self._mark_db = None
            raise
        with self._mark_lock:
            self._unmarked.pop(mark.batch, None)

    def _encode(self, r: _Row) -> list[str]:
        return encode(r, self.registry, self.settings.max_payload_bytes)

    def _process(self, rows: list[_Row], hwm: int = 0, *, recovered: bool = False, blamed: bool = False) -> None:
        started = time.perf_counter()
        self.stats.batches += 1
        metrics.BATCHES.inc()
        mark = _Mark(rows[0].batch)
        good: list[_Row] = []
        out: list[Outgoing] = []
        # Only a row that relays died with while it was alone in its batch is a proven poison pill (a blamed
        # batch of several is split first, see _split).
        alone = blamed and sum(r.seq > hwm for r in rows) == 1
        for r in rows:
            if r.seq <= hwm:
                # Only rows that were valid are ever sent, and rejected rows are marked before anything
                # is sent (below), so a still-pending row at or below the fence did reach the stream.
                mark.published.append((r.id, None, r.seq))
                self.stats.fence_skipped += 1
                metrics.DEDUPED.inc()
                continue
            if alone and r.attempts > self.settings.max_attempts:
                mark.failed.append(
                    (r.id, f"carried by {r.attempts} interrupted relay batches, the last ones alone: a relay dies "
                           "handling it (poison row)")
                )  # fmt: skip
                log.error("marked event %s (%s) failed: %s", r.event_id, r.event_type, mark.failed[-1][1])
                continue
            try:
                values = self._encode(r)
            except Exception as exc:  # whatever one row raises is that row's reason, never the relay's end
                mark.dead.append((r.id, reason(r, exc)))
                log.warning("dead-lettered event %s (%s): %s", r.event_id, r.event_type, mark.dead[-1][1])
                if not isinstance(exc, OutboxError):
                    log.debug("unexpected error encoding event %s", r.event_id, exc_info=True)
                metrics.DEAD.labels(r.event_type).inc()
                continue
            good.append(r)
            out.append(Outgoing(r.seq, values))
        if mark.published:
            self._locate(rows, mark)
        dead, failed = len(mark.dead), len(mark.failed)
        if dead or failed:
            # Rejected rows hold positions too: commit their verdict (synchronously) before sending the
            # rest, or a crash could leave them pending below the fence and recovery would take them for
            # published.
            assert self._db is not None
            self._db.rollback()
            verdicts = _Mark(mark.batch, dead=mark.dead, failed=mark.failed)
            self._write_mark(self._db, verdicts, close=False, durable=True)
            mark.dead, mark.failed = [], []
        try:
            self._publish(out, good, mark)
        finally:
            # Whatever is known to be on the stream gets marked, even when interrupted; if the batch is
            # not complete it stays open and is recovered (the fence drops what was already sent).
            if len(mark.published) + dead + failed == len(rows):
                self._submit_mark(mark, now=recovered)
            else:
                self._recover = True
                if self._db is not None and mark.published:
                    with contextlib.suppress(psycopg.Error):
                        self._mark_rows(self._db, mark)
        self.stats.dead += dead
        self.stats.failed += failed
        metrics.FAILED.inc(failed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    def _split(self, db: psycopg.Connection[Any], rows: list[_Row], hwm: int) -> bool:
        """A relay died with this recovered batch in hand: replace it by up to ``_SPLIT_INTO`` smaller batches
        of its unsent rows, recovered one at a time. A row that kills every relay handling it is thereby
        alone after a few deaths (1,000 rows: 3), and only it collects further attempts; the rows that shared
        its batch are published. False when at most one row is unsent (nothing to split)."""
        unsent = [r for r in rows if r.seq > hwm]
        if len(unsent) < 2:
            return False
        parts = min(_SPLIT_INTO, len(unsent))
        starts = [unsent[i * len(unsent) // parts].seq for i in range(1, parts)]
        db.execute(sql.SPLIT_BATCH, {"batch": rows[0].batch, "starts": starts, "epoch": self.epoch})
        db.commit()
        log.warning(
            "batch %s was in flight when a relay died; its %d unsent event(s) are retried in %d smaller batches "
            "so that an event that kills relays is isolated", rows[0].batch, len(unsent), parts,
        )  # fmt: skip
        return True

    def _locate(self, rows: list[_Row], mark: _Mark) -> None:
        """Fill in the stream ids of recovered rows the fence had already seen (best effort: they are
        published either way; a row whose entry cannot be found keeps a NULL stream_id)."""
        assert self._publisher is not None
        event_ids = {r.id: r.event_id for r in rows}
        scan = max(5 * self.settings.batch_size, 5000)
        try:
            found = self._publisher.locate([event_ids[m[0]] for m in mark.published], scan)
        except BrokerError as exc:
            log.warning("could not look up stream ids of %d recovered event(s): %s", len(mark.published), exc)
            return
        mark.published = [(rid, found.get(event_ids[rid]), seq) for rid, _sid, seq in mark.published]
        if len(found) < len(mark.published):
            log.info("%d recovered event(s) were already on the stream; stream id of %d not found in the last %d "
                     "entries", len(mark.published), len(mark.published) - len(found), scan)  # fmt: skip

    @staticmethod
    def _mark_rows(db: psycopg.Connection[Any], mark: _Mark) -> None:
        """Mark the published rows of a batch that stays open (interrupted mid-way); the batch is not closed."""
        db.rollback()
        Relay._write_mark(db, _Mark(mark.batch, published=mark.published), close=False)

    def _publish(self, out: list[Outgoing], good: list[_Row], mark: _Mark) -> None:
        """Send ``out`` until all of it is known to be on the stream; fills ``mark.published`` as it goes."""
        assert self._publisher is not None
        rows = iter(good)

        def sent(result: PublishResult, batch: Sequence[Outgoing]) -> None:
            self._loss.on_publish(result, [o.seq for o in batch])
            for sid in result.ids:
                r = next(rows)
                mark.published.append((r.id, sid, r.seq))

        appended, skipped = publish_all(self._publisher, out, sent=sent, failed=self._broker_failed)
        self.stats.published += appended
        self.stats.fence_skipped += skipped
        self._broker_outage.ok()

    def _broker_failed(self, attempt: int, error: BrokerError, held: int) -> None:
        """A publish failed: log the outage, back off (keeping the lease), or stop when asked to."""
        self.stats.broker_errors += 1
        self._broker_outage.error(error, note=f"{held} event(s) held, retrying with backoff")
        if self._stop.is_set():
            raise _Stop()
        self._backoff_sleep(attempt)
        if self._db is not None and self.lease.due():
            self._renew(self._db, idle=False)  # keep the lease through a broker outage

    def _with_broker(self, fn: Callable[[Publisher], int]) -> int:
        attempt = 0
        while True:
            assert self._publisher is not None
            try:
                value = fn(self._publisher)
            except BrokerError as exc:
                attempt += 1
                self.stats.broker_errors += 1
                self._broker_outage.error(exc)
                if self._stop.is_set():
                    raise _Stop() from None
                self._backoff_sleep(attempt)
                if self._db is not None and self.lease.due():
                    self._renew(self._db, idle=False)
                continue
            self._broker_outage.ok()
            return value

    # ---- Redis checks ------------------------------------------------------------------------------

    def _redis_settings(self) -> dict[str, str]:
        if self._check_client is None:
            self._check_client = client_from_url(self.settings.require_redis())
        return redis_server_settings(self._check_client, refuse_auth=not self._redis_reached())

    def _redis_reached(self) -> bool:
        """Whether Redis has let this relay in once (a settings check or a publisher command succeeded): from
        then on a refused login is a password changed on a running server, an outage, not a configuration error."""
        if self._guard is not None and self._guard.verified:
            return True
        return getattr(self._publisher, "refuse_auth", True) is False

    @staticmethod
    def _note_risk(risk: Risk) -> None:
        metrics.REDIS_RISK.labels(risk.code).set(1)

    def _check_redis(self) -> bool:
        """At start and every ``redis_check_interval``: Redis' eviction/persistence settings (all relays) and
        its data against what Postgres knows was published (the leader). False: wait (strict, unchecked)."""
        guard = self._guard
        now = time.monotonic()
        verified = guard is None or guard.verified
        interval = self.settings.redis_check_interval if verified else min(self.settings.redis_check_interval, 5.0)
        if self._checked_at is not None and now - self._checked_at < interval:
            return True
        self._checked_at = now
        if guard is not None:
            try:
                for code in RISK_CODES - {r.code for r in guard.check()}:
                    metrics.REDIS_RISK.labels(code).set(0)
            except BrokerError as exc:
                if not self._check_failed_said:
                    self._check_failed_said = True
                    log.warning("could not check Redis' settings yet (%s); checking again", exc)
                if guard.strict and not guard.verified:
                    self._checked_at = None
                    self._backoff_sleep(3)
                    return False
                return True
        if self.epoch is not None:
            with contextlib.suppress(BrokerError):  # an outage is the publish path's business
                self._probe_loss()
        return True

    def _probe_loss(self) -> None:
        state = getattr(self._publisher, "state", None)
        if state is not None:
            self._loss.on_state(state())

    def _report_loss(self, loss: Loss) -> None:
        """One loud line per loss, naming what was lost and the command that restores it."""
        metrics.REDIS_LOSS.labels(loss.what).inc()
        since = None
        db = self._db
        if db is not None and not db.closed and not db.broken:
            try:
                row = db.execute(sql.LOSS_SINCE, {"after": loss.after_seq}).fetchone()
                since = row[0] if row else None
            except psycopg.Error as exc:
                log.warning("could not look up where a republish must start: %s", str(exc).strip()[:200])
            finally:
                with contextlib.suppress(psycopg.Error):  # a failed look-up must not leave the transaction failed
                    db.rollback()
        fix = (
            f"restore them with: outbox republish --since '{since.isoformat()}'"
            if since is not None
            else "no published row is retained in Postgres to restore them from"
        )
        log.error(
            "REDIS LOST PUBLISHED EVENTS on stream %s: %s. Events marked published after position %d may be "
            "missing from the stream (new events are still published exactly once); %s",
            self.settings.stream, loss.detail, loss.after_seq, fix,
        )  # fmt: skip

    # ---- waiting -----------------------------------------------------------------------------------

    def _wait_for_work(self, db: psycopg.Connection[Any]) -> None:
        quiet = time.monotonic() - self._last_busy
        s = self.settings
        if quiet < s.idle_after:
            self._stop.wait(s.poll_interval)
            return
        if s.wake == "poll":
            # Pure polling (PgBouncer transaction mode): back off gently up to idle_poll_interval.
            self._stop.wait(min(s.idle_poll_interval, max(s.poll_interval, quiet / 10)))
            return
        self._await_mark()
        if not self._idle:
            # Going idle: LISTEN first, then tell writers to notify, then poll once more (the caller
            # loops) so a row committed between our last poll and the flag is not left waiting.
            self._ensure_listen()
            self._renew(db, idle=True)
            self._idle = True
            return
        assert self._listen is not None
        woke = False
        for _ in self._listen.notifies(timeout=s.idle_poll_interval, stop_after=1):
            woke = True
        if not woke and self.lease.due(s.idle_poll_interval):
            self._renew(db, idle=True)  # keep notify_until ahead of now while idle

    def _ensure_listen(self) -> None:
        if self._listen is None or self._listen.closed or self._listen.broken:
            self._listen = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=5, application_name="outbox-relay-listen", **_KEEPALIVE
            )
            self._listen.execute(f"LISTEN {NOTIFY_CHANNEL}")

    # ---- retention ---------------------------------------------------------------------------------

    def _prune(self, db: psycopg.Connection[Any]) -> None:
        self._pruned_at = time.monotonic()
        db.execute(sql.STAMP_DEAD)  # see relay/sql.py: retention of dead rows counts from dead_at
        db.commit()
        total = 0
        for stmt, age in (
            (sql.PRUNE_PUBLISHED, self.settings.retention_published),
            (sql.PRUNE_DEAD, self.settings.retention_dead),
        ):
            for _ in range(20):  # bounded per sweep so publishing is never starved
                n = db.execute(stmt, {"age": age, "limit": 5000}).rowcount
                db.commit()
                total += n
                if n < 5000:
                    break
        if total:
            log.info("retention: deleted %d old row(s)", total)
