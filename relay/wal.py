"""WAL capture: read the outbox's logical slot in commit order, validate, publish through the fence, confirm.

Exactly once, by the same fence as the poll relay. Every event's position is ``commit_lsn << 32 | index`` (its
transaction's commit LSN, its index among the transaction's outbox messages): fixed by the WAL, so the events a
relay re-reads after a crash carry the positions they had, and the fence drops those already appended. The slot
is confirmed only after Redis holds every event below the confirmed LSN, so a crash at any point re-reads from
the slot at most what was not yet confirmed. One leader per slot (the ``wal`` lease); a new leader ends the
walsender of a predecessor that lost the lease but still holds the slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

import psycopg

from outbox import schemas, walmsg
from outbox.errors import BrokerError, OutboxError, WalStreamError
from outbox.liveness import Liveness
from outbox.ops import missing_tables
from outbox.relay import metrics, sql, walstream
from outbox.relay.encode import encode, reason
from outbox.relay.fence import publish_all
from outbox.relay.lease import Lease, LostLease
from outbox.relay.loop import RelayStats
from outbox.relay.loss import Loss, LossWatch
from outbox.relay.publisher import Outgoing, Publisher, stream_publisher
from outbox.retry import Outage, backoff_delay, postgres_config_error, quiet_pipeline_noise
from outbox.schemas.registry import Registry
from outbox.settings import Settings

log = logging.getLogger("outbox.relay")

# TCP keepalives on the normal connection: a vanished peer is noticed within ~25 s.
_KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
_SLOT_CHECK_EVERY = 10.0  # seconds between slot status reads (retained WAL, invalidation)


class _Stop(Exception):
    """Internal: stop requested while a batch was in flight (its events stay unconfirmed in the slot)."""


class WalRelay:
    """The WAL capture source's relay. ``run()`` until ``stop()``; several processes elect one leader."""

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
        self.me = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}:wal"
        self.lease = Lease("wal", self.me, settings.lease_ttl)
        self.stats = RelayStats()
        self.liveness = Liveness()
        self._stop = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        self._reader: walstream.WalReader | None = None
        self._publisher: Publisher | None = None
        self._db_reached = False
        self._failures = 0
        self._db_outage = Outage("database", log)
        self._broker_outage = Outage("broker", log)
        self._slot_outage = Outage("capture slot", log)
        self._oldest: datetime | None = None  # commit time of the oldest event read and not yet confirmed
        self._slot_checked = 0.0
        self._loss = LossWatch(self._report_loss)
        # One batch is in Redis' hands while the next is read and validated: the publish (a fence-script round
        # trip, mostly waiting) runs on one sender thread, everything else on this one. The reader, the
        # connection and the confirm stay on this thread; a batch is confirmed only once its publish returned,
        # and batches are sent strictly one after the other (a new one is submitted only after the previous one
        # was settled), so positions reach the fence in order. Whenever the reader goes (error, lost lease,
        # stop), the batch in flight is abandoned unconfirmed: it is re-read and the fence drops what it sent.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-wal-send")
        self._inflight: tuple[Future[tuple[int, int]], int] | None = None  # (publish, LSN to confirm after it)
        self._halt = threading.Event()  # the sender gives up retrying (stop, or the batch was abandoned)
        quiet_pipeline_noise()

    @property
    def epoch(self) -> int | None:
        """The leader term this relay holds on the ``wal`` lease, or None (standby)."""
        return self.lease.epoch

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return. Thread- and signal-safe."""
        self._stop.set()
        self._halt.set()

    def run(self, *, until_idle: bool = False) -> RelayStats:
        """Relay from the slot until ``stop()`` (or, with ``until_idle``, until the slot has nothing more)."""
        log.info("WAL relay %s starting (slot=%s, stream=%s)", self.me, self.settings.wal_slot, self.settings.stream)
        try:
            while not self._stop.is_set():
                try:
                    if not self._step(until_idle):
                        break
                    self._db_outage.ok()
                    self._slot_outage.ok()
                    self._failures = 0
                except _Stop:
                    break
                except LostLease:
                    log.warning("WAL relay %s lost the lease (epoch %s); standing by", self.me, self.lease.epoch)
                    self._standby()
                except WalStreamError as exc:
                    self._close_reader()
                    self.stats.db_errors += 1
                    metrics.DB_ERRORS.inc()
                    if not exc.transient:
                        metrics.WAL_SLOT_OK.set(0)
                        if until_idle:
                            raise
                    self._slot_outage.error(exc, note=_recovery(exc, self.settings))
                    self._backoff()
                except psycopg.Error as exc:
                    missing = missing_tables(exc)
                    if missing is not None:
                        raise missing from exc
                    refused = None if self._db_reached else postgres_config_error(exc)
                    if refused is not None:
                        raise refused from exc
                    self.stats.db_errors += 1
                    metrics.DB_ERRORS.inc()
                    self._db_outage.error(exc)
                    self._close_all()
                    self._backoff()
        finally:
            self._shutdown()
        return self.stats

    # ---- one iteration -------------------------------------------------------------------------------------

    def _step(self, until_idle: bool) -> bool:
        self.liveness.alive()
        db = self._connect()
        if self.lease.epoch is None and not self._acquire(db):
            self.liveness.state("standby")
            if until_idle:
                return False
            self.liveness.wait(self._stop, self.settings.lease_ttl / 3)
            return True
        if self.lease.due():
            self._renew(db)
        if time.monotonic() - self._slot_checked > _SLOT_CHECK_EVERY:
            self._check_slot(db)
        reader = self._open(db)
        txns = self._read(reader)
        if not txns:
            # Nothing of ours: still confirm what the server has gone past, so an idle slot pins no WAL.
            self._settle(db, reader)
            reader.confirm(reader.caught_up_lsn)
            self._oldest = None
            metrics.WAL_OLDEST_UNCONFIRMED_SECONDS.set(0)
            return not until_idle
        self._handle(db, reader, txns)
        return True

    def _read(self, reader: walstream.WalReader) -> list[walstream.WalTransaction]:
        """Whole transactions, about ``batch_size`` events: waits for the first, then takes what is already there."""
        s = self.settings
        wait = min(s.idle_poll_interval, s.lease_ttl / 3) if self._oldest is None else s.poll_interval
        return reader.read(wait)  # up to batch_size messages (max_items), whole transactions

    def _handle(self, db: psycopg.Connection[Any], reader: walstream.WalReader, txns: list[Any]) -> None:
        out: list[Outgoing] = []
        dead: list[tuple[walmsg.WalEvent, str]] = []
        for tx in txns:
            for m in tx.messages:
                pos = walstream.position(tx.commit_lsn, m.index)
                try:
                    ev = walmsg.decode(m.content)
                except walmsg.MessageError as exc:  # not written by record(): nothing to dead-letter it as
                    log.error("skipped a malformed outbox message at %s: %s", walstream.format_lsn(m.lsn), exc)
                    metrics.DEAD.labels("(malformed)").inc()
                    continue
                try:
                    out.append(Outgoing(pos, encode(ev, self.registry, self.settings.max_payload_bytes)))
                except Exception as exc:  # whatever one event raises is that event's reason, never the relay's end
                    dead.append((ev, reason(ev, exc)))
                    log.warning("dead-lettered event %s (%s): %s", ev.event_id, ev.event_type, dead[-1][1])
                    if not isinstance(exc, OutboxError):
                        log.debug("unexpected error encoding event %s", ev.event_id, exc_info=True)
                    metrics.DEAD.labels(ev.event_type).inc()
        self.stats.batches += 1
        metrics.BATCHES.inc()
        if dead:
            self._write_dead(db, dead)  # before this batch's confirm (idempotent, so before the previous one's too)
        self._settle(db, reader)  # the previous batch: in Redis, then confirmed
        self._oldest = txns[0].commit_time
        self._halt.clear()
        if self._stop.is_set():  # stop() sets _stop, then _halt: a stop racing this clear is never lost
            self._halt.set()
        self._inflight = (self._sender.submit(self._send, out), reader.caught_up_lsn)

    def _send(self, out: list[Outgoing]) -> tuple[int, int]:
        """(Sender thread.) Publish one batch through the fence, in calls of batch_size events (one big
        transaction makes several); returns (appended, fence-skipped). Touches neither Postgres nor the reader."""
        assert self._publisher is not None
        started = time.perf_counter()
        size = self.settings.batch_size
        appended = skipped = 0
        for start in range(0, len(out), size):
            a, k = publish_all(
                self._publisher, out[start : start + size], failed=self._broker_failed,
                sent=lambda result, batch: self._loss.on_publish(result, [o.seq for o in batch]),
            )  # fmt: skip
            appended += a
            skipped += k
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return appended, skipped

    def _settle(self, db: psycopg.Connection[Any] | None, reader: walstream.WalReader | None) -> None:
        """Wait until the batch in flight is on the stream, then confirm it. Keeps the lease meanwhile (a broker
        outage can last); raises what the publish raised (_Stop when asked to stop during an outage)."""
        if self._inflight is None:
            return
        fut, lsn = self._inflight
        try:
            while True:
                try:
                    appended, skipped = fut.result(timeout=min(1.0, self.settings.lease_ttl / 3))
                    break
                except FutureTimeout:
                    self.liveness.alive()
                    if db is not None and self.lease.due():
                        self._renew(db)  # keep the lease (and with it the slot) through a broker outage
        finally:
            if fut.done():
                self._inflight = None
        self.stats.published += appended
        self.stats.fence_skipped += skipped
        self._broker_outage.ok()
        # Only now, with every event below it in Redis (or dead in Postgres), may the slot move on.
        if reader is not None:
            reader.confirm(lsn)
        if self._oldest is not None:
            metrics.WAL_OLDEST_UNCONFIRMED_SECONDS.set(max(0.0, (datetime.now(UTC) - self._oldest).total_seconds()))

    def _abandon(self) -> None:
        """The reader is going: let the batch in flight end (its sender gives up retrying), never confirm it."""
        if self._inflight is None:
            return
        fut, _lsn = self._inflight
        self._halt.set()
        with contextlib.suppress(Exception):
            fut.result()
        self._inflight = None

    def _write_dead(self, db: psycopg.Connection[Any], dead: list[tuple[walmsg.WalEvent, str]]) -> None:
        """Dead rows in outbox_events (durably, before the slot moves past them), so replay works as in poll mode.
        Idempotent: an event re-read after a crash finds its row there already."""
        rows = [dead_row(e, why) for e, why in dead]
        db.rollback()
        with db.cursor() as cur:
            cur.executemany(sql.INSERT_DEAD, rows)
        db.commit()
        self.stats.dead += len(dead)

    def _report_loss(self, loss: Loss) -> None:
        """One loud line per loss. WAL mode keeps no published event in Postgres: nothing to republish from."""
        metrics.REDIS_LOSS.labels(loss.what).inc()
        log.error(
            "REDIS LOST PUBLISHED EVENTS on stream %s: %s. Events at positions above %d may be missing from the "
            "stream (new events are still published exactly once). WAL capture keeps no copy of published events "
            "in Postgres, so `outbox republish` cannot restore them: re-derive them from the business tables",
            self.settings.stream, loss.detail, loss.after_seq,
        )  # fmt: skip

    def _broker_failed(self, attempt: int, error: BrokerError, held: int) -> None:
        """(Sender thread.) A publish failed: log the outage and back off; give up when stopped or abandoned."""
        self.stats.broker_errors += 1
        self._broker_outage.error(error, note=f"{held} event(s) held in the slot, retrying with backoff")
        if self._halt.is_set():
            raise _Stop()
        if self._halt.wait(backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_max)):
            raise _Stop()

    # ---- lease, slot, connections ----------------------------------------------------------------------------

    def _acquire(self, db: psycopg.Connection[Any]) -> bool:
        got = self.lease.acquire(db)
        if got is None:
            return False
        epoch, _seq, instance = got
        self.stats.leader_epochs.append(epoch)
        metrics.LEADER.set(1)
        log.info("WAL relay %s is the leader (epoch %s)", self.me, epoch)
        self.liveness.state(f"leader (wal, epoch {epoch})")
        if self._publisher is not None:
            self._publisher.close()
        self._publisher = self._publisher_factory(instance)
        with contextlib.suppress(BrokerError):  # Redis down: the publish path waits for it (and reports it)
            self._loss.baseline(self._publisher.high_water() or None, None)
        # A predecessor that lost the lease may still hold the slot (paused, partitioned): end its walsender.
        status = walstream.slot_status(db, self.settings.wal_slot)
        db.rollback()
        if status is not None and status.active_pid is not None:
            with contextlib.suppress(psycopg.Error):
                db.execute(sql.END_WALSENDER, {"pid": status.active_pid})
                log.warning("ended walsender %d, which still held slot %s", status.active_pid, status.name)
            db.rollback()
        return True

    def _renew(self, db: psycopg.Connection[Any]) -> None:
        self.lease.renew(db)
        confirmed = self._reader.confirmed_lsn if self._reader is not None else None
        db.execute(sql.WAL_REPORT, {"epoch": self.lease.epoch, "oldest": self._oldest,
                                    "lsn": None if confirmed is None else walstream.format_lsn(confirmed)})  # fmt: skip
        db.commit()

    def _check_slot(self, db: psycopg.Connection[Any]) -> None:
        self._slot_checked = time.monotonic()
        status = walstream.slot_status(db, self.settings.wal_slot)
        db.rollback()
        if status is None or status.wal_status == "lost":
            metrics.WAL_SLOT_OK.set(0)
            return  # _open says why and how to recover
        metrics.WAL_SLOT_OK.set(1)
        retained = status.retained_bytes or 0
        metrics.WAL_RETAINED_BYTES.set(retained)
        if retained > self.settings.wal_warn_retained_bytes:
            log.warning(
                "slot %s retains %d MiB of WAL (OUTBOX_WAL_WARN_RETAINED_BYTES=%d MiB)%s", status.name,
                retained >> 20, self.settings.wal_warn_retained_bytes >> 20,
                "" if status.safe_wal_size is None else f"; {status.safe_wal_size >> 20} MiB left before "
                "max_slot_wal_keep_size invalidates it",
            )  # fmt: skip
        if self._oldest is not None:
            age = (datetime.now(UTC) - self._oldest).total_seconds()
            if age > self.settings.wal_warn_age:
                log.warning("the oldest unconfirmed event in slot %s is %.0fs old", status.name, age)

    def _open(self, db: psycopg.Connection[Any]) -> walstream.WalReader:
        if self._reader is None:
            conn = walstream.connect(self.dsn)
            try:
                reader = walstream.WalReader(
                    conn, self.settings.wal_slot, self.settings.wal_publication,
                    prefix=walmsg.PREFIX, max_items=self.settings.batch_size,
                )  # fmt: skip
                reader.start()
            except BaseException:
                conn.close()
                raise
            self._reader = reader
            metrics.WAL_SLOT_OK.set(1)
            log.info("reading slot %s from %s", reader.slot, walstream.format_lsn(reader.confirmed_lsn))
        return self._reader

    def _connect(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(
                self.dsn, connect_timeout=5, application_name="outbox-relay-wal-control", **_KEEPALIVE
            )
            self._db_reached = True
        return self._db

    def _standby(self) -> None:
        self._close_reader()
        self.lease.epoch = None
        self._oldest = None
        metrics.LEADER.set(0)

    def _close_reader(self) -> None:
        self._abandon()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _close_all(self) -> None:
        self._close_reader()
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        self._db = None

    def _backoff(self) -> None:
        self._failures += 1
        self.liveness.wait(
            self._stop, backoff_delay(self._failures, self.settings.backoff_base, self.settings.backoff_max)
        )

    def _shutdown(self) -> None:
        if self._inflight is not None and self._reader is not None:
            with contextlib.suppress(Exception):  # a clean stop confirms the batch it finished sending
                self._settle(None, self._reader)
        self._close_reader()  # before the lease goes: a successor can take the slot at once
        self._sender.shutdown(wait=True)
        if self.lease.epoch is not None and self._db is not None and not self._db.closed:
            with contextlib.suppress(psycopg.Error):
                self.lease.release(self._db)
                log.info("WAL relay %s released the lease (epoch %s)", self.me, self.lease.epoch)
        self.lease.epoch = None
        metrics.LEADER.set(0)
        self._close_all()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None


def dead_row(e: walmsg.WalEvent, why: str) -> tuple[Any, ...]:
    """INSERT_DEAD's parameters for an event whatever its fields hold: a hostile message must still fit the row
    (a payload that is not JSON is kept as a JSON string, an id that is not a UUID gets a derived one and is
    named in the reason, a timestamp that does not parse becomes now), or the slot would never move past it."""
    payload = e.payload
    try:
        json.loads(payload)
    except ValueError:
        payload = json.dumps(payload)
    try:
        event_id = uuid.UUID(e.event_id)
    except ValueError:
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, "outbox-wal:" + e.event_id)
        why = f"event id {e.event_id[:100]!r} is not a UUID (stored as {event_id}); " + why
    try:
        occurred: datetime = datetime.fromisoformat(e.timestamp.removesuffix(" AD").replace("Z", "+00:00"))
    except ValueError:
        occurred = datetime.now(UTC)

    def text(v: str | None) -> str | None:
        return None if v is None else v.replace("\x00", "")

    return (event_id, text(e.tenant_id), text(e.event_type), text(e.schema_ref), payload.replace("\\u0000", ""),
            occurred, text(e.aggregate), text(e.execution_id), text(e.event_name), text(e.from_state),
            text(e.to_state), text(e.correlation_key), why.replace("\x00", ""))  # fmt: skip


def _recovery(exc: WalStreamError, settings: Settings) -> str:
    """What an operator does about a capture-slot error."""
    if exc.sqlstate == "42704":
        return "create it with `outbox migrate --capture wal`; retrying"
    if exc.sqlstate == "55000":
        return (
            "events committed since the slot's last confirmed position were not captured; recreate the slot with "
            f"`outbox migrate --capture wal --recreate-slot` (slot {settings.wal_slot}); retrying"
        )
    return "retrying with backoff"
