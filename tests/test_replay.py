"""Dead letters and replay: a poison row is dead-lettered, fixed, replayed once, and never twice."""

from __future__ import annotations

import json
import uuid

import psycopg

import outbox
from outbox import ops
from outbox.relay import Relay
from tests.conftest import status_counts, stream_entries

TICKET_PAYLOAD = {"previousStatusId": "open", "newStatusId": "closed"}


def _valid(conn: psycopg.Connection, n: int) -> list[str]:
    return [
        str(outbox.record(conn, "TICKET_STATUS_CHANGED", {**TICKET_PAYLOAD, "ticketId": str(uuid.uuid4())},
                          tenant_id="t1"))
        for _ in range(n)
    ]  # fmt: skip


def _poison(conn: psycopg.Connection, payload: dict, event_type: str = "TICKET_STATUS_CHANGED") -> str:
    eid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at) "
        "VALUES (%s, 't1', %s, 'payload.TicketStatusChanged.v1', %s::jsonb, now())",
        (eid, event_type, json.dumps(payload)),
    )
    return eid


def test_poison_row_dead_lettered_then_replayed_once(settings, rds, stream, db_url):
    good_payload = {"tenantId": "t1", "occurredAt": "2026-11-25T10:00:00Z", **TICKET_PAYLOAD}
    with psycopg.connect(db_url) as conn:
        before = _valid(conn, 5)
        poison = _poison(conn, good_payload)  # ticketId missing
        after = _valid(conn, 5)
        conn.commit()
    stats = Relay(settings).run(until_idle=True)
    assert stats.dead == 1 and stats.published == 10
    ids = [f["event_id"] for _, f in stream_entries(rds, stream)]
    assert ids == before + after  # the poison row blocked nothing and kept the order of the others

    with psycopg.connect(db_url) as conn:
        letters = ops.dead_letters(conn)
        assert [str(r["event_id"]) for r in letters] == [poison]
        assert "payload.TicketStatusChanged.v1" in letters[0]["last_error"]
        assert "ticketId" in letters[0]["last_error"]

        # Still broken: a replay re-validates and leaves it dead.
        report = ops.replay(conn)
        assert report.requeued == [] and poison in report.still_invalid
        assert status_counts(db_url)["dead"] == 1

        # The operator fixes the payload; a dry run says it would go, and changes nothing.
        conn.execute(
            "UPDATE outbox_events SET payload = payload || jsonb_build_object('ticketId', %s::text) "
            "WHERE event_id = %s",
            (str(uuid.uuid4()), poison),
        )
        conn.commit()
        dry = ops.replay(conn, ops.Filter(event_ids=[poison]), dry_run=True)
        assert dry.requeued == [poison] and dry.dry_run
        assert status_counts(db_url)["dead"] == 1

        report = ops.replay(conn, ops.Filter(event_ids=[poison]))
        assert report.requeued == [poison]
    Relay(settings).run(until_idle=True)
    ids = [f["event_id"] for _, f in stream_entries(rds, stream)]
    assert ids.count(poison) == 1 and len(ids) == 11

    with psycopg.connect(db_url) as conn:
        again = ops.replay(conn)
        assert again.matched == 0 and again.requeued == []
        by_id = ops.replay(conn, ops.Filter(event_ids=[poison, str(uuid.uuid4())]))
        assert by_id.already_published == [poison] and len(by_id.not_found) == 1 and by_id.requeued == []
    Relay(settings).run(until_idle=True)
    assert [f["event_id"] for _, f in stream_entries(rds, stream)].count(poison) == 1
    assert status_counts(db_url) == {"published": 11}


def test_replay_filters_by_type_tenant_and_time(settings, db_url):
    with psycopg.connect(db_url) as conn:
        a = _poison(conn, {"tenantId": "t1"})
        b = _poison(conn, {"tenantId": "t1"}, event_type="TICKET_PRIORITY_CHANGED")
        conn.commit()
    Relay(settings).run(until_idle=True)
    with psycopg.connect(db_url) as conn:
        assert {str(r["event_id"]) for r in ops.dead_letters(conn)} == {a, b}
        only_b = ops.dead_letters(conn, ops.Filter(event_type="TICKET_PRIORITY_CHANGED"))
        assert [str(r["event_id"]) for r in only_b] == [b]
        assert ops.dead_letters(conn, ops.Filter(tenant="other")) == []
        assert ops.dead_letters(conn, ops.Filter(statuses=("failed",))) == []
        from datetime import UTC, datetime, timedelta

        future = datetime.now(UTC) + timedelta(days=1)
        assert ops.dead_letters(conn, ops.Filter(since=future)) == []
        assert len(ops.dead_letters(conn, ops.Filter(until=future))) == 2
        assert ops.count_replayable(conn, ops.Filter(event_type="TICKET_STATUS_CHANGED")) == 1


def test_crash_looping_row_is_marked_failed_and_replayable(settings, rds, stream, db_url):
    with psycopg.connect(db_url) as conn:
        (eid,) = _valid(conn, 1)
        # As if the row had been in flight through more relay crashes than max_attempts allows, in an
        # open batch whose position the stream fence has never seen.
        conn.execute(
            "WITH r AS (UPDATE outbox_events SET attempts = %s WHERE event_id = %s RETURNING id) "
            "INSERT INTO outbox_batches (epoch, first_seq, event_ids) SELECT 0, 1000000, array[r.id] FROM r",
            (settings.max_attempts, eid),
        )
        conn.commit()
    stats = Relay(settings).run(until_idle=True)
    assert stats.failed == 1 and stats.published == 0
    assert stream_entries(rds, stream) == []
    with psycopg.connect(db_url) as conn:
        (row,) = ops.dead_letters(conn, ops.Filter(statuses=("failed",)))
        assert "interrupted relay batches" in row["last_error"]
        assert ops.replay(conn, ops.Filter(statuses=("failed",))).requeued == [eid]
    Relay(settings).run(until_idle=True)
    assert [f["event_id"] for _, f in stream_entries(rds, stream)] == [eid]


def test_recovered_row_below_the_fence_is_marked_published_not_resent(settings, rds, stream, db_url):
    with psycopg.connect(db_url) as conn:
        ids = _valid(conn, 3)
        conn.commit()
    Relay(settings).run(until_idle=True)
    assert len(stream_entries(rds, stream)) == 3
    # Simulate a relay killed after XADD but before the mark: the rows are pending again and their
    # batch (same positions) is still open.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO outbox_batches (epoch, first_seq, event_ids) "
            "SELECT 0, min(publish_seq), array_agg(id ORDER BY publish_seq) FROM outbox_events"
        )
        conn.execute("UPDATE outbox_events SET status = 'pending', published_at = NULL, stream_id = NULL")
        conn.commit()
    stats = Relay(settings).run(until_idle=True)
    assert stats.fence_skipped == 3 and stats.published == 0
    assert [f["event_id"] for _, f in stream_entries(rds, stream)] == ids
    assert status_counts(db_url) == {"published": 3}


def test_status_reports_pending_dead_and_per_tenant(settings, db_url):
    with psycopg.connect(db_url) as conn:
        _valid(conn, 2)
        outbox.record(conn, "TICKET_STATUS_CHANGED", {**TICKET_PAYLOAD, "ticketId": str(uuid.uuid4())},
                      tenant_id="t2")  # fmt: skip
        _poison(conn, {"tenantId": "t1"})
        conn.commit()
        st = ops.status(conn, by_tenant=True)
        assert st["pending"] == 4 and st["dead"] == 0 and st["oldest_pending_age"] >= 0
        tenants = {t["tenant_id"]: t for t in st["tenants"]}
        assert tenants["t1"]["pending"] == 3 and tenants["t2"]["pending"] == 1
    Relay(settings).run(until_idle=True)
    with psycopg.connect(db_url) as conn:
        st = ops.status(conn)
        assert st["pending"] == 0 and st["dead"] == 1 and st["published_last_minute"] == 3
        assert st["open_batches"] == 0 and st["oldest_open_batch_age"] is None
        assert st["oldest_pending_age"] is None


def test_dead_row_in_an_open_batch_is_not_replayed_until_the_batch_closes(settings, rds, stream, db_url):
    """A batch [A, P, B]: P is dead-lettered, A and B are sent (the fence passes P's position), then the
    relay dies before closing the batch. Replaying P now would make it pending inside the open batch, and
    the successor's recovery would take P (position below the fence) for sent. So replay leaves it until
    the batch is closed, and P then goes out once with a fresh position."""
    from outbox import wire
    from outbox.relay import sql as relay_sql
    from outbox.relay.lease import Lease
    from outbox.relay.publisher import Outgoing, RedisStreamPublisher, fence_key

    fixed = {"tenantId": "t1", "occurredAt": "2026-11-25T10:00:00Z", "ticketId": str(uuid.uuid4()), **TICKET_PAYLOAD}
    with psycopg.connect(db_url) as conn:
        a = _valid(conn, 1)[0]
        p = _poison(conn, {k: v for k, v in fixed.items() if k != "ticketId"})
        b = _valid(conn, 1)[0]
        conn.commit()
        # A relay's first steps, with the relay's own statements: take the lease, claim the batch, reject P.
        epoch, _seq, instance = Lease("default", "dying-relay", 3600).acquire(conn)
        batch = conn.execute(
            relay_sql.CLAIM, {"limit": 10, "epoch": epoch, "ttl": 3600, "exclude": []}
        ).fetchall()  # fmt: skip
        conn.commit()
        by_id = {row[3]: row for row in batch}  # event_id -> (batch, seq, id, event_id, ...)
        assert [row[3] for row in batch] == [a, p, b]
        conn.execute(relay_sql.MARK_DEAD, {"ids": [by_id[p][2]], "reasons": ["ValidationError: ticketId"]})
        conn.commit()
    publisher = RedisStreamPublisher.from_url(settings.redis_url, stream, fence_key(stream, str(instance)), wire.FIELDS)
    try:
        sent = publisher.publish([
            Outgoing(by_id[e][1], wire.values(event_id=e, event_type="TICKET_STATUS_CHANGED", tenant="t1",
                                              timestamp="2026-11-25T10:00:00.000Z", payload_json="{}"))
            for e in (a, b)
        ])  # fmt: skip
        assert sent.error is None and len(sent.ids) == 2 and publisher.high_water() > by_id[p][1]
    finally:
        publisher.close()
    # ... and the relay is gone. The operator fixes P and replays it while the batch is still open.
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE outbox_events SET payload = %s::jsonb WHERE event_id = %s", (json.dumps(fixed), p))
        conn.execute("UPDATE outbox_relay SET lease_until = now() - interval '1 second'")
        conn.commit()
        report = ops.replay(conn)
        assert report.requeued == [] and report.in_open_batch == [p]
        assert status_counts(db_url)["dead"] == 1
        st = ops.status(conn)
        assert st["open_batches"] == 1 and st["oldest_open_batch_age"] >= 0

    stats = Relay(settings).run(until_idle=True)  # the successor recovers the batch: A and B were sent
    assert stats.fence_skipped == 2 and stats.published == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_batches").fetchone() == (0,)
        report = ops.replay(conn)
        assert report.requeued == [p] and report.in_open_batch == []
    stats = Relay(settings).run(until_idle=True)
    assert stats.published == 1
    ids = [f["event_id"] for _, f in stream_entries(rds, stream)]
    assert sorted(ids) == sorted([a, b, p]) and ids[-1] == p
    assert status_counts(db_url) == {"published": 3}
