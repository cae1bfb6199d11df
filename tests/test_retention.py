"""Retention: dead and failed rows are kept for ``retention_dead`` counted from when they became dead
(``dead_at``, migration ``outbox_0005``), not from when they were recorded."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import psycopg
from alembic import command
from sqlalchemy import create_engine, pool

from outbox import migrate, ops
from outbox.relay import Relay
from outbox.relay import sql as relay_sql
from outbox.settings import sqlalchemy_url
from tests.conftest import make_settings

TICKET = {"previousStatusId": "open", "newStatusId": "closed"}


def _insert(conn: psycopg.Connection, payload: dict, **cols: object) -> str:
    """A row written by SQL (bypassing ``record``), with extra column values."""
    eid = str(uuid.uuid4())
    names = ", ".join(["event_id", "tenant_id", "event_type", "schema_ref", "payload", "occurred_at", *cols])
    marks = ", ".join(["%s", "'t1'", "'TICKET_STATUS_CHANGED'", "'payload.TicketStatusChanged.v1'", "%s::jsonb",
                       "now()", *["%s"] * len(cols)])  # fmt: skip
    conn.execute(f"INSERT INTO outbox_events ({names}) VALUES ({marks})", (eid, json.dumps(payload), *cols.values()))
    return eid


def _rows(db_url: str) -> dict[str, tuple[str, datetime | None]]:
    with psycopg.connect(db_url) as c:
        return {str(e): (s, d) for e, s, d in c.execute("SELECT event_id, status, dead_at FROM outbox_events")}


def test_row_pending_longer_than_retention_is_kept_for_the_full_retention_once_dead(db_url, redis_url, stream, rds):
    """Finding 4: recorded two hours ago, dead-lettered now, retention one hour: a prune keeps it."""
    settings = make_settings(db_url, redis_url, stream, retention_dead=3600.0, prune_interval=0.001)
    with psycopg.connect(db_url) as conn:
        late = _insert(conn, {"tenantId": "t1", **TICKET}, recorded_at="2000-01-01T00:00:00Z")  # ticketId missing
        _insert(conn, {}, status="dead", last_error="old", dead_at="2000-01-01T00:00:00Z")
        conn.commit()
    stats = Relay(settings).run(until_idle=True)  # prunes `old`, then dead-letters `late`
    assert stats.dead == 1
    assert set(_rows(db_url)) == {late}
    status, dead_at = _rows(db_url)[late]
    assert status == "dead" and dead_at is not None

    Relay(settings).run(until_idle=True)  # a later sweep, with the row recorded longer ago than the retention
    assert _rows(db_url)[late] == ("dead", dead_at)

    with psycopg.connect(db_url) as conn:  # the row is still there to be replayed
        assert [str(r["event_id"]) for r in ops.dead_letters(conn)] == [late]


def test_failed_rows_get_dead_at_and_replay_clears_it(db_url):
    """The relay's poison-pill verdict stamps dead_at too; a replay that requeues clears the stamp, one that finds
    the row still invalid keeps the original."""
    with psycopg.connect(db_url) as conn:
        valid = {"tenantId": "t1", "occurredAt": "2026-11-25T10:00:00Z", "ticketId": str(uuid.uuid4()), **TICKET}
        fixed = _insert(conn, valid)
        broken = _insert(conn, {"tenantId": "t1", **TICKET})
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox_events ORDER BY id")]
        conn.execute(relay_sql.MARK_FAILED, {"ids": ids, "reasons": ["poison?"] * len(ids)})
        conn.commit()
    rows = _rows(db_url)
    assert rows[fixed][0] == rows[broken][0] == "failed" and rows[fixed][1] and rows[broken][1]
    with psycopg.connect(db_url) as conn:
        report = ops.replay(conn)
    assert report.requeued == [fixed] and list(report.still_invalid) == [broken]
    after = _rows(db_url)
    assert after[fixed] == ("pending", None)
    assert after[broken] == ("dead", rows[broken][1])  # still dead since the same instant


def test_dead_row_written_by_hand_is_stamped_by_the_sweep_not_deleted(db_url, redis_url, stream, rds):
    """A row made dead by SQL that does not set dead_at starts its retention at the next sweep."""
    settings = make_settings(db_url, redis_url, stream, retention_dead=3600.0, prune_interval=0.001)
    with psycopg.connect(db_url) as conn:
        eid = _insert(conn, {}, status="dead", recorded_at="2000-01-01T00:00:00Z")
        conn.commit()
    Relay(settings).run(until_idle=True)
    status, dead_at = _rows(db_url)[eid]
    assert status == "dead" and dead_at is not None


def test_migration_0005_backfills_dead_at_of_existing_dead_and_failed_rows(db_url):
    """Down to outbox_0004, rows of every status, up again: dead/failed rows get the migration's time (their
    real dead time is unknown; this keeps them a full retention), the others none; the prune index exists."""
    cfg = migrate.alembic_config(db_url)
    engine = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "outbox_0004")
    engine.dispose()
    with psycopg.connect(db_url) as conn:
        cols = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns"
                                           " WHERE table_name = 'outbox_events'")}  # fmt: skip
        assert "dead_at" not in cols
        ids = {st: _insert(conn, {}, status=st, recorded_at="2000-01-01T00:00:00Z")
               for st in ("pending", "published", "dead", "failed")}  # fmt: skip
        conn.commit()
        before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    migrate.upgrade(db_url)
    rows = _rows(db_url)
    assert rows[ids["pending"]][1] is None and rows[ids["published"]][1] is None
    assert rows[ids["dead"]][1] >= before and rows[ids["failed"]][1] >= before
    with psycopg.connect(db_url) as conn:
        version = conn.execute("SELECT version_num FROM outbox_alembic_version").fetchone()[0]
        idx = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'outbox_events'"))
    assert version == "outbox_0006"
    assert "(dead_at)" in idx["outbox_events_dead_at_idx"] and "'dead'::text" in idx["outbox_events_dead_at_idx"]
