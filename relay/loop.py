"""The poll relay daemon: the pipeline that wires the lease (relay/lease.py), the outbox table as capture source
(relay/claim.py), validation (relay/encode.py), the publish step through the fence (relay/fence.py) and the marker
(relay/marker.py), with the ordering rules between them, outages, and Redis checks."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox import schemas
from outbox.errors import BrokerError, OutboxError
from outbox.liveness import Liveness
from outbox.ops import missing_tables
from outbox.relay import metrics, sql
from outbox.relay.claim import ClaimSource, Row
from outbox.relay.encode import encode, reason
from outbox.relay.fence import publish_all
from outbox.relay.guard import RISK_CODES, RedisGuard, Risk
from outbox.relay.lease import Lease, LostLease
from outbox.relay.loss import Loss, LossWatch
from outbox.relay.marker import Mark, Marker, write_mark
from outbox.relay.publisher import (
    Outgoing,
    Publisher,
    PublishResult,
    client_from_url,
    redis_server_settings,
    stream_publisher,
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
        self._publisher_factory = publisher_factory or stream_publisher(settings)
        self.registry = registry or schemas.registry
        self.me = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._publisher: Publisher | None = None
        self._instance_id: str | None = None
        self.lease = Lease("default", self.me, settings.lease_ttl)
        # The pipeline's parts besides the lease: the capture source (claims on the main connection, the next
        # batch claimed ahead on its own), validation (encode), the publish step (publish_all, through the
        # fence), and the marker (marks written on its own thread, overlapping the next claim).
        self.claims = ClaimSource(self.lease, settings, lambda: self._open("outbox-relay"))
        self.marker = Marker(lambda: self._open("outbox-relay-mark"), left_open=self.claims.interrupted)
        self._idle = False
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

    def _shutdown(self) -> None:
        # A batch claimed ahead was not sent: on a clean stop (leader) it is released, its rows pending again.
        self.claims.drop_ahead(release_on=self._db if self.epoch is not None else None)
        self.claims.shutdown()
        self.marker.shutdown(self._db)
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
        if self.marker.finished:
            self.marker.wait(self._db)  # see a failed mark now, not only when the next batch is handed over
        if self.epoch is None and not self._acquire(db):
            self.liveness.state("standby")
            if until_idle:
                return False
            self.liveness.wait(self._stop, self.settings.lease_ttl / 3)
            return True
        if self.lease.due():
            self._renew(db, idle=self._idle)
        if self.claims.prune_due():
            self.claims.prune(db)
        if self.claims.recovering:
            # An interrupted batch must go out before anything claimed after it: positions only grow on
            # the stream, and the fence would otherwise drop the older batch's unsent rows.
            self.claims.drop_ahead()
        ahead = self.claims.take_ahead()
        if ahead is not None:
            rows, recovered, blamed = ahead, False, False
            self._db_failures = 0
        else:
            rows, recovered, blamed = self._claim(db)
        if rows:
            self._idle = False
            if not recovered and len(rows) == self.settings.batch_size and not self._stop.is_set():
                self.claims.claim_ahead(self.marker.excluded([r.id for r in rows]))
            # Rows of an interrupted batch at or below the fence are already on the stream.
            hwm = self._with_broker(lambda p: p.high_water()) if recovered else 0
            if blamed and self.claims.split(db, rows, hwm):
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
            self._db = self._open("outbox-relay")
            self._db_reached = True
            self.claims.interrupted()
        return self._db

    def _open(self, application_name: str) -> psycopg.Connection[Any]:
        """A new connection for this relay (main, claim-ahead or marker), with keepalives and session limits."""
        # prepare_threshold=None: never server-side prepared, so every claim and mark is planned for its own
        # parameters. psycopg prepares a statement after 5 runs, and on a never-analysed backlog Postgres then
        # keeps the generic plan of the mark (it guesses 10 rows for the unnest and 1 pending row): a nested loop
        # re-running the unnest per row, 232 ms per 1,000-row mark instead of 22 ms (91% of an after-outage drain).
        # Planning each call costs well under a millisecond per 1,000-row batch.
        return psycopg.connect(
            self.dsn, connect_timeout=5, application_name=application_name, options=self._session_options(),
            prepare_threshold=None, **_KEEPALIVE,
        )  # fmt: skip

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
        self.claims.drop_ahead()
        self.marker.wait(None)  # no fallback: the main connection is the one that failed
        for conn in (self._db, self._listen):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._db = self._listen = None
        self.claims.close()
        self.marker.close()
        self._idle = False
        self.claims.interrupted()
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
        self.claims.interrupted()
        self._idle = False
        return True

    def _renew(self, db: psycopg.Connection[Any], *, idle: bool) -> None:
        self.lease.renew(db, idle=idle, notify_for=3 * self.settings.idle_poll_interval + self.settings.lease_ttl)

    def _lose_lease(self, why: str) -> None:
        self.claims.drop_ahead()
        if self.epoch is not None:
            log.warning("relay %s lost the lease (epoch %s): %s; standing by", self.me, self.epoch, why)
        self.lease.epoch = None
        self._idle = False
        metrics.LEADER.set(0)

    # ---- claim / process / mark --------------------------------------------------------------------

    def _claim(self, db: psycopg.Connection[Any]) -> tuple[list[Row], bool, bool]:
        """Claim the next batch (or, after an interruption, take the oldest open batch back for recovery).
        Returns the rows, whether they are a recovered batch, and whether a relay died with it (blamed)."""
        if self.claims.recovering:
            self.marker.wait(self._db)  # a batch whose mark is in flight is not interrupted
            batches = self.claims.open_batches(db)
            self.marker.forget_closed(batches)  # a mark that failed after its commit: the batch is closed after all
            if batches:
                log.info("recovering interrupted batch %s (%d open)", batches[0], len(batches))
                rows, blamed = self.claims.recover(db, batches[0])
                if not rows:  # nothing of it left pending: just close it
                    self.marker.write(db, Mark(batches[0]))
                return rows, True, blamed
            self.claims.recovering = False
        rows = self.claims.claim(db, self.marker.excluded())
        self._db_failures = 0
        return rows, False, False

    def _encode(self, r: Row) -> list[str]:
        return encode(r, self.registry, self.settings.max_payload_bytes)

    def _process(self, rows: list[Row], hwm: int = 0, *, recovered: bool = False, blamed: bool = False) -> None:
        started = time.perf_counter()
        self.stats.batches += 1
        metrics.BATCHES.inc()
        mark = Mark(rows[0].batch)
        good: list[Row] = []
        out: list[Outgoing] = []
        # Only a row that relays died with while it was alone in its batch is a proven poison pill (a blamed
        # batch of several is split first, see ClaimSource.split).
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
            verdicts = Mark(mark.batch, dead=mark.dead, failed=mark.failed)
            write_mark(self._db, verdicts, close=False, durable=True)
            mark.dead, mark.failed = [], []
        try:
            self._publish(out, good, mark)
        finally:
            # Whatever is known to be on the stream gets marked, even when interrupted; if the batch is
            # not complete it stays open and is recovered (the fence drops what was already sent).
            if len(mark.published) + dead + failed == len(rows):
                self._submit_mark(mark, now=recovered)
            else:
                self.claims.interrupted()
                if self._db is not None and mark.published:
                    with contextlib.suppress(psycopg.Error):
                        # The published rows of a batch that stays open are marked; the batch is not closed.
                        self._db.rollback()
                        write_mark(self._db, Mark(mark.batch, published=mark.published), close=False)
        self.stats.dead += dead
        self.stats.failed += failed
        metrics.FAILED.inc(failed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    def _locate(self, rows: list[Row], mark: Mark) -> None:
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

    def _submit_mark(self, mark: Mark, *, now: bool = False) -> None:
        """Hand a finished batch's mark to the marker (after the previous mark has finished), or with ``now``
        (recovered batches: nothing to overlap with) write it on the main connection."""
        if now:
            assert self._db is not None
            self.marker.write(self._db, mark)
        else:
            self.marker.submit(mark, self._db)

    def _publish(self, out: list[Outgoing], good: list[Row], mark: Mark) -> None:
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
        self.marker.wait(self._db)
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
