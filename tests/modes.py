"""The capture modes the fault suites run in, so one test body checks both.

Per mode: a database ready for it (``mode_db``), the writers' setup (``Mode.writing``, entered by the ``mode``
fixture for the whole test), the relay's settings (``Mode.settings``), the in-process relay (``relay_for`` /
``relay_thread``: ``Relay`` or ``WalRelay``; a subprocess gets the mode from its settings: ``python -m
outbox.relay`` with ``OUTBOX_CAPTURE=wal`` runs ``WalAndTable``), and what "nothing left to relay" and "a batch
in flight" mean there.

- poll: events are outbox_events rows, on the shared test server; the ``default`` lease.
- wal: events are logical decoding messages, on a ``wal_level=logical`` server (tests/logical.py), read from
  the mode's slot; the ``wal`` lease. A batch is in flight while Redis' fence is at or past the slot's
  confirmed position (published, not yet confirmed: a successor re-reads it and the fence must drop it).

Use: import ``mode_fixture`` and ``mode_db_fixture`` (the fixtures ``mode`` and ``mode_db``), mark the test
``@pytest.mark.parametrize("mode", MODES, indirect=True)`` and take ``mode`` (and ``mode_db``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

import outbox
from outbox import migrate, walmsg
from outbox.relay import Relay
from outbox.relay.publisher import fence_key
from outbox.relay.setup import setup_wal
from outbox.relay.wal import WalRelay
from outbox.relay.walstream import parse_lsn
from outbox.settings import Settings
from tests.conftest import make_settings, wait_for
from tests.conftest import relay_thread as _relay_thread
from tests.logical import LOGICAL_SETTINGS, LogicalDb

MODES = ("poll", "wal")

AnyRelay = Relay | WalRelay


@dataclass(frozen=True)
class Mode:
    """One capture mode, with the slot and publication names a WAL test uses (unused in poll mode)."""

    name: str
    slot: str
    publication: str

    @property
    def wal(self) -> bool:
        return self.name == "wal"

    @property
    def lease(self) -> str:
        """The outbox_relay row this mode's relay leads through."""
        return "wal" if self.wal else "default"

    @property
    def server_settings(self) -> dict[str, str]:
        """What a Postgres server the test starts itself needs for this mode."""
        return dict(LOGICAL_SETTINGS) if self.wal else {}

    def prepare(self, url: str) -> None:
        """Make a fresh database ready: the outbox tables, and in WAL mode the slot and publication."""
        migrate.upgrade(url)
        if self.wal:
            setup_wal(url, self.slot, self.publication)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """``record()`` writes in this mode for the duration of the block (back to poll afterwards)."""
        if not self.wal:
            yield
            return
        outbox.configure(capture="wal", wal_slot=self.slot)
        try:
            yield
        finally:
            outbox.configure(capture="poll", wal_slot=walmsg.PREFIX)

    def settings(self, db_url: str, redis_url: str, stream: str, **kw: Any) -> Settings:
        """``make_settings`` for this mode."""
        if self.wal:
            kw = {"capture": "wal", "wal_slot": self.slot, "wal_publication": self.publication, **kw}
        return make_settings(db_url, redis_url, stream, **kw)

    def drained(self, db_url: str, since: str | None = None) -> bool:
        """Nothing committed before ``since`` (``mark()``) is left to relay: poll, no pending row; WAL, the slot
        is confirmed at or past that position."""
        with psycopg.connect(db_url, connect_timeout=3) as c:
            if not self.wal:
                return c.execute("SELECT count(*) FROM outbox_events WHERE status = 'pending'").fetchone() == (0,)
            return c.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (since, self.slot),
            ).fetchone() == (True,)

    def mark(self, db_url: str) -> str | None:
        """WAL mode: the server's WAL position now (past every commit so far); poll mode: None."""
        if not self.wal:
            return None
        with psycopg.connect(db_url, connect_timeout=3) as c:
            row = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def wait_drained(self, db_url: str, timeout: float = 30.0) -> None:
        """Wait until everything committed so far has been relayed (and, in WAL mode, confirmed)."""
        since = self.mark(db_url)
        wait_for(lambda: self.drained(db_url, since), timeout=timeout, what="everything published")

    def in_flight(self, conn: psycopg.Connection[Any], rds: redis.Redis, stream: str) -> int:
        """Events published (or claimed) by a relay that has not yet recorded them as done: poll, pending rows
        already handed a stream position; WAL, 1 when the fence is at or past the slot's confirmed position."""
        return self._in_flight_probe(conn, rds, stream)()

    def _in_flight_probe(self, conn: psycopg.Connection[Any], rds: redis.Redis, stream: str) -> Callable[[], int]:
        if not self.wal:
            sql = in_flight_sql(conn)
            return lambda: int(conn.execute(sql).fetchone()[0])
        row = conn.execute("SELECT instance_id::text FROM outbox_relay WHERE name = 'wal'").fetchone()
        fence = None if row is None else fence_key(stream, row[0])
        slot_sql = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"

        def probe() -> int:
            # Redis first: a fence read before a confirm and a slot read after it reads as "not in flight".
            at = None if fence is None else rds.get(fence)
            if at is None:
                return 0
            confirmed = conn.execute(slot_sql, (self.slot,)).fetchone()
            assert confirmed is not None and confirmed[0] is not None, f"slot {self.slot} is gone"
            return int(int(at) >> 32 >= parse_lsn(confirmed[0]))  # a position is commit_lsn << 32 | index

        return probe

    def signal_while_in_flight(self, db_url: str, rds: redis.Redis, stream: str, pid: int, sig: int,
                               timeout: float = 5.0) -> None:  # fmt: skip
        """Send ``sig`` to ``pid`` the moment a batch is seen in flight (polling on one open connection)."""
        with psycopg.connect(db_url, autocommit=True) as c:
            probe = self._in_flight_probe(c, rds, stream)
            deadline = time.monotonic() + timeout
            while not probe() and time.monotonic() < deadline:
                pass
            os.kill(pid, sig)

    def reader_pid(self, db_url: str) -> int | None:
        """WAL mode: the backend pid of the walsender holding the slot (None when nobody holds it)."""
        if not self.wal:
            return None
        with psycopg.connect(db_url) as c:
            row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
        return None if row is None else row[0]


def in_flight_sql(c: psycopg.Connection[Any]) -> str:
    """Poll mode: count pending rows already handed a stream position (open batches, or ``publish_seq`` set)."""
    if c.execute("SELECT to_regclass('outbox_batches') IS NOT NULL").fetchone()[0]:
        return (
            "SELECT count(*) FROM outbox_batches b CROSS JOIN LATERAL unnest(b.event_ids) AS x(id) "
            "JOIN outbox_events e ON e.id = x.id WHERE e.status = 'pending'"
        )
    return "SELECT count(*) FROM outbox_events WHERE status = 'pending' AND publish_seq IS NOT NULL"


def wait_backend_gone(db_url: str, pid: int | None, timeout: float = 10.0) -> None:
    """Wait until the server backend ``pid`` has exited (a killed client's walsender finishes reading first)."""
    if pid is None:
        return
    with psycopg.connect(db_url, autocommit=True) as c:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        wait_for(lambda: c.execute(sql, (pid,)).fetchone() == (0,), timeout=timeout, what=f"backend {pid} to exit")


@pytest.fixture(name="mode")
def mode_fixture(request: pytest.FixtureRequest) -> Iterator[Mode]:
    """The capture mode (``indirect`` parameter, default poll); writers write in it for the whole test."""
    tag = uuid.uuid4().hex[:12]
    m = Mode(getattr(request, "param", "poll"), f"outbox_s_{tag}", f"outbox_p_{tag}")
    with m.writing():
        yield m


@dataclass(frozen=True)
class ModeDb:
    """A database ready for the test's mode, and an admin URL of its server (to cut its connections)."""

    url: str
    admin_url: str

    @property
    def name(self) -> str:
        return urlsplit(self.url).path.lstrip("/")


@pytest.fixture(name="mode_db")
def mode_db_fixture(mode: Mode, request: pytest.FixtureRequest) -> ModeDb:
    """poll: a fresh migrated database on the shared server; WAL: one on the logical server, with the slot."""
    if not mode.wal:
        return ModeDb(request.getfixturevalue("db_url"), request.getfixturevalue("pg_admin_url"))
    ldb: LogicalDb = request.getfixturevalue("logical_db")  # drops the database and its slots afterwards
    mode.prepare(ldb.url)
    return ModeDb(ldb.url, request.getfixturevalue("logical_pg_url"))


def relay_for(settings: Settings, **kw: Any) -> AnyRelay:
    """The in-process relay for ``settings.capture`` (WAL: the slot's relay alone, not the table's)."""
    return WalRelay(settings, **kw) if settings.capture == "wal" else Relay(settings, **kw)


def relay_thread(settings: Settings, **kw: Any) -> contextlib.AbstractContextManager[AnyRelay]:
    """Run the mode's relay in a background thread for the duration of the block, then stop it."""
    return _relay_thread(settings, make=relay_for, **kw)
