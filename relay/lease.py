"""The lease: one leader per capture mode, elected through its outbox_relay row, with an epoch as fencing token."""

from __future__ import annotations

import time
from typing import Any, LiteralString

import psycopg

ENSURE_ROW: LiteralString = "INSERT INTO outbox_relay (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING"

# Take the lease when it is free or expired. The epoch bump is the fencing token: every later claim
# checks it in the same statement, so a relay that lost its lease (paused, partitioned) can no
# longer reserve rows once a successor has taken over.
ACQUIRE: LiteralString = """
UPDATE outbox_relay
SET epoch = epoch + 1, leader = %(me)s, leader_since = clock_timestamp(),
    lease_until = clock_timestamp() + make_interval(secs => %(ttl)s), notify_until = NULL
WHERE name = %(name)s AND (lease_until IS NULL OR lease_until < clock_timestamp())
RETURNING epoch, last_seq, instance_id
"""

RENEW: LiteralString = """
UPDATE outbox_relay
SET lease_until = clock_timestamp() + make_interval(secs => %(ttl)s),
    notify_until = CASE WHEN %(idle)s THEN clock_timestamp() + make_interval(secs => %(notify_for)s) END
WHERE name = %(name)s AND epoch = %(epoch)s
RETURNING last_seq
"""

RELEASE: LiteralString = """
UPDATE outbox_relay SET leader = NULL, lease_until = NULL, notify_until = NULL
WHERE name = %(name)s AND epoch = %(epoch)s
"""


class LostLease(Exception):
    """Another relay took the lease over (this one's epoch is gone)."""


class Lease:
    """The lease on one outbox_relay row (``default``: the poll relay; ``wal``: the WAL relay)."""

    def __init__(self, name: str, me: str, ttl: float) -> None:
        self.name = name
        self.me = me
        self.ttl = ttl
        self.epoch: int | None = None
        self.renewed_at = 0.0

    def acquire(self, db: psycopg.Connection[Any]) -> tuple[int, int, str] | None:
        """Take the lease if it is free or expired: ``(epoch, last_seq, instance_id)``, else None. Commits."""
        db.execute(ENSURE_ROW, {"name": self.name})
        row = db.execute(ACQUIRE, {"me": self.me, "ttl": self.ttl, "name": self.name}).fetchone()
        db.commit()
        if row is None:
            return None
        self.epoch = int(row[0])
        self.renewed_at = time.monotonic()
        return self.epoch, int(row[1]), str(row[2])

    def due(self, within: float | None = None) -> bool:
        """Whether a renewal is due (a third of the TTL, or ``within`` seconds, since the last one)."""
        return time.monotonic() - self.renewed_at > (self.ttl / 3 if within is None else within)

    def renew(self, db: psycopg.Connection[Any], *, idle: bool = False, notify_for: float = 0.0) -> None:
        """Extend the lease (and, ``idle``, ask writers to NOTIFY for ``notify_for`` s). ``LostLease`` if gone."""
        params = {"ttl": self.ttl, "idle": idle, "notify_for": notify_for, "epoch": self.epoch, "name": self.name}
        with db.pipeline():
            cur = db.execute(RENEW, params)
            db.commit()
        if cur.fetchone() is None:
            raise LostLease()
        self.renewed_at = time.monotonic()

    def touched(self) -> None:
        """Note that a statement that also extends the lease (the poll claim) just committed."""
        self.renewed_at = time.monotonic()

    def release(self, db: psycopg.Connection[Any]) -> None:
        """Give the lease up so a standby takes over at once (rolls back first; commits)."""
        db.rollback()
        db.execute(RELEASE, {"epoch": self.epoch, "name": self.name})
        db.commit()
