"""EXPLAIN guard: the relay's claim is an index-ordered LIMIT scan whatever the statistics say.

The production backlog is one nobody has analysed: writers kept committing while no relay ran. On such a table
the default plan was a Bitmap Heap Scan of every pending row plus a top-N sort (see relay/sql.py CLAIM_PLAN).
Autovacuum is switched off on the test's own table only so that it cannot analyse the backlog mid-test and hide
the condition under test.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from outbox.relay import sql
from outbox.relay.lease import Lease

BACKLOG = 20_000
WRITERS = 4
_INSERT = (
    "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at) "
    "SELECT gen_random_uuid(), 't1', 'TICKET_CREATED', 'payload.TicketCreated.v1', %s::jsonb, now() "
    "FROM generate_series(1, %s)"
)


def _write_backlog(db_url: str) -> None:
    """``BACKLOG`` pending rows committed by concurrent writers in small transactions, as after an outage."""
    payload = json.dumps({"tenantId": "t1", "ticketId": "x", "title": "t" * 380})
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(db_url) as conn:
                for _ in range(BACKLOG // WRITERS // 50):
                    conn.execute(_INSERT, (payload, 50))
                    conn.commit()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


def _claim_plan(conn: psycopg.Connection[Any], epoch: int, *, forced: bool) -> dict[str, Any]:
    if forced:
        conn.execute(sql.CLAIM_PLAN)
    params = {"limit": 1000, "epoch": epoch, "ttl": 3600, "exclude": []}
    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.CLAIM, params).fetchone()
    conn.rollback()  # EXPLAIN ANALYZE ran the claim: undo it
    assert row is not None
    return dict(row[0][0])


def _picked(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan of the ``picked`` CTE (the read of outbox_events)."""
    for node in _nodes(plan["Plan"]):
        if node.get("Subplan Name") == "CTE picked":
            return node
    raise AssertionError(f"no CTE picked in {plan}")


@pytest.mark.parametrize("stats", ["never analysed", "analysed while all pending"])
def test_claim_reads_the_pending_index_in_order_whatever_the_statistics(db_url: str, stats: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE outbox_events SET (autovacuum_enabled = off)")
        _write_backlog(db_url)
        if stats == "analysed while all pending":
            # Statistics that say "everything is pending", then most rows published: the opposite mistake.
            admin.execute("ANALYZE outbox_events")
            admin.execute("UPDATE outbox_events SET status = 'published', published_at = now() WHERE id % 10 <> 0")
        else:
            got = admin.execute(
                "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'outbox_events'"
            ).fetchone()
            assert got == (0,), "the backlog must be unanalysed for this test to mean anything"
    with psycopg.connect(db_url) as conn:
        lease = Lease("default", "plan-test", 3600).acquire(conn)
        assert lease is not None
        default = _picked(_claim_plan(conn, lease[0], forced=False))
        plan = _claim_plan(conn, lease[0], forced=True)
    picked = _picked(plan)
    # The claim's own plan: Limit over an index scan of the partial pending index, reading only what it returns.
    assert picked["Node Type"] == "Limit", picked
    (scan,) = picked["Plans"]
    assert scan["Node Type"] == "Index Scan" and scan["Index Name"] == "outbox_events_pending_idx", scan
    assert scan["Actual Rows"] == 1000
    kinds = {n["Node Type"] for n in _nodes(picked)}
    assert not kinds & {"Bitmap Heap Scan", "Seq Scan", "Sort"}, kinds
    assert "JIT" not in plan, plan["JIT"]  # pricing plans out must not trigger a JIT compile of the claim
    # What the claim would have been without CLAIM_PLAN, for the record when the condition stops reproducing.
    print(f"{stats}: default plan {sorted({n['Node Type'] for n in _nodes(default)})}")
