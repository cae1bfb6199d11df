"""Poll's capture source: claim committed pending outbox rows as batches under the lease's epoch, claim the next
batch ahead on a second connection, take interrupted batches back, split the ones relays died with, prune."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox.relay import sql
from outbox.relay.lease import Lease
from outbox.settings import Settings

log = logging.getLogger("outbox.relay")

# A recovered batch that a relay died with is split into this many parts (see ClaimSource.split).
SPLIT_INTO = 16


@dataclass(slots=True)
class Row:
    """One claimed outbox_events row: its batch, its position (``seq``), the event, and its attempt count."""

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


def split_starts(rows: list[Row], hwm: int, parts: int = SPLIT_INTO) -> list[int]:
    """Where the smaller batches after the first start when the rows above ``hwm`` (the unsent ones) are cut into
    up to ``parts`` consecutive parts of near-equal size; [] when at most one row is unsent (nothing to split)."""
    unsent = [r for r in rows if r.seq > hwm]
    if len(unsent) < 2:
        return []
    n = min(parts, len(unsent))
    return [unsent[i * len(unsent) // n].seq for i in range(1, n)]


class ClaimSource:
    """The outbox table as a capture source. Every statement runs under the lease's epoch: once another relay
    has taken the lease over, a claim returns nothing and writes nothing. The caller (relay/loop.py) decides
    the order: ``recovering`` means open batches must be taken back (oldest first) before anything new."""

    def __init__(self, lease: Lease, settings: Settings, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self.lease = lease
        self.settings = settings
        self._connect = connect  # opens the claim-ahead connection
        #: Open batches may exist: recover them (``open_batches``, ``recover``) before claiming anything new.
        self.recovering = True
        # Claim-ahead: while one full batch is validated and sent to Redis, the next one is claimed on a
        # second connection by one worker thread (psycopg releases the GIL while it waits on Postgres).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-claim")
        self._ahead_db: psycopg.Connection[Any] | None = None
        self._ahead: Future[list[Row]] | None = None
        self._pruned_at = 0.0

    def interrupted(self) -> None:
        """A batch may have been left open: recover open batches before claiming anything new."""
        self.recovering = True

    # ---- new batches ---------------------------------------------------------------------------------

    def claim(self, db: psycopg.Connection[Any], exclude: list[int]) -> list[Row]:
        """Claim up to ``batch_size`` committed pending rows (never those in ``exclude``) as one new open batch
        with the next positions, and commit. [] when none is pending or the epoch is no longer ours."""
        params = {"limit": self.settings.batch_size, "epoch": self.lease.epoch, "ttl": self.lease.ttl,
                  "exclude": exclude}  # fmt: skip
        with db.pipeline():
            db.execute(sql.CLAIM_PLAN)  # the plan must not depend on statistics (see relay/sql.py)
            cur = db.execute(sql.CLAIM, params)
            db.commit()
        rows = [Row(*r) for r in cur.fetchall()]
        if rows:
            self.lease.touched()  # the claim extended the lease
        return rows

    def claim_ahead(self, exclude: list[int]) -> None:
        """Start claiming the batch after the one in flight on the worker thread (``exclude``: its rows and
        those of unmarked batches). At most one claim ahead: ``take_ahead`` or ``drop_ahead`` it first."""
        assert self._ahead is None
        self._ahead = self._pool.submit(self._claim_on_own_connection, exclude)

    def _claim_on_own_connection(self, exclude: list[int]) -> list[Row]:
        """(Worker thread, own connection.) ``claim``."""
        if self._ahead_db is None or self._ahead_db.closed or self._ahead_db.broken:
            self._ahead_db = self._connect()
        return self.claim(self._ahead_db, exclude)

    def take_ahead(self) -> list[Row] | None:
        """The batch claimed ahead (waits for it; raises what its claim raised), or None if none was started."""
        fut, self._ahead = self._ahead, None
        return None if fut is None else fut.result()

    def drop_ahead(self, release_on: psycopg.Connection[Any] | None = None) -> None:
        """Wait for a claim-ahead in flight. Nothing of its batch was sent: on a clean stop (``release_on``: the
        main connection) the batch is deleted so its rows are simply pending again; otherwise it stays open for
        recovery (``recovering``)."""
        fut, self._ahead = self._ahead, None
        if fut is None:
            return
        rows: list[Row] = []
        with contextlib.suppress(Exception):
            rows = fut.result(timeout=30)
        if release_on is not None and rows:
            try:
                release_on.execute(sql.CLOSE_BATCH, (rows[0].batch,))
                release_on.commit()
                return
            except psycopg.Error:
                pass
        self.recovering = True

    # ---- interrupted batches -------------------------------------------------------------------------

    def open_batches(self, db: psycopg.Connection[Any]) -> list[int]:
        """Ids of the open (interrupted or unmarked) batches, oldest positions first. Rolls back."""
        batches = db.execute(sql.OPEN_BATCHES).fetchall()
        db.rollback()
        return [int(b[0]) for b in batches]

    def recover(self, db: psycopg.Connection[Any], batch: int) -> tuple[list[Row], bool]:
        """Take an open batch back under this epoch, and commit: its still-pending rows with their original
        positions, and whether a relay died with it (``blamed``: every such row's attempts were counted up)."""
        with db.pipeline():
            cur = db.execute(sql.RECOVER_BATCH, {"batch": batch, "epoch": self.lease.epoch})
            db.commit()
        fetched = cur.fetchall()
        return [Row(*r[:-1]) for r in fetched], bool(fetched and fetched[0][-1])

    def split(self, db: psycopg.Connection[Any], rows: list[Row], hwm: int) -> bool:
        """A relay died with this recovered batch in hand: replace it by up to ``SPLIT_INTO`` smaller batches
        of its unsent rows, recovered one at a time. A row that kills every relay handling it is thereby
        alone after a few deaths (1,000 rows: 3), and only it collects further attempts; the rows that shared
        its batch are published. False when at most one row is unsent (nothing to split)."""
        starts = split_starts(rows, hwm)
        if not starts:
            return False
        db.execute(sql.SPLIT_BATCH, {"batch": rows[0].batch, "starts": starts, "epoch": self.lease.epoch})
        db.commit()
        log.warning(
            "batch %s was in flight when a relay died; its %d unsent event(s) are retried in %d smaller batches "
            "so that an event that kills relays is isolated", rows[0].batch, sum(r.seq > hwm for r in rows),
            len(starts) + 1,
        )  # fmt: skip
        return True

    # ---- retention -----------------------------------------------------------------------------------

    def prune_due(self) -> bool:
        """Whether ``prune_interval`` has passed since the last sweep started."""
        return time.monotonic() - self._pruned_at > self.settings.prune_interval

    def prune(self, db: psycopg.Connection[Any]) -> int:
        """One retention sweep: delete published and dead rows past their retention, bounded. Commits."""
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
        return total

    # ---- connections ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the claim-ahead connection (none may be in flight: ``drop_ahead`` first)."""
        db, self._ahead_db = self._ahead_db, None
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()

    def shutdown(self) -> None:
        """Stop the worker thread and close its connection (``drop_ahead`` first)."""
        self._pool.shutdown(wait=True)
        self.close()
