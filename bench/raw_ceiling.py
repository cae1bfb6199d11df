"""The raw ceiling of a relay on these servers: plain claim + pipelined XADD, nothing else.

Per batch: one statement that claims the oldest pending rows and marks them published

    UPDATE outbox_events o SET status = 'published', published_at = clock_timestamp()
    FROM (SELECT id ... WHERE status = 'pending' ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) p
    WHERE o.id = p.id RETURNING ...

then COMMIT, then one redis-py pipeline of XADD with the same wire fields as the relay (no payload
validation, no fence script, no leader lease, no position numbering, no second mark statement).
It is what the relay would cost if it did nothing but move bytes; the relay's figure divided by
this one is how much of the machine's ceiling the relay reaches.

The backlog is whatever the database holds: the drain part runs this loop on a prepared backlog (VACUUM
ANALYZE + CHECKPOINT) and on an after-outage one (committed by writer processes, never analysed), never
preparing the latter. A ceiling must not be held down by a plan: with ``pin_plan`` (the default) each
claim's transaction first prices out bitmap scans, seq scans, sorts and JIT (``PIN_PLAN``, the same
settings the relay uses since commit 10cd720), so the claim reads the partial pending index in id order
whatever the statistics say (on a never-analysed backlog the planner otherwise picks a Bitmap Heap Scan of
every pending row plus a top-N sort per claim). ``pin_plan=False`` runs the bare statement.

Standalone, against a database that already holds a pending backlog (``--fill N`` first commits N events
from ``--writers`` processes with outbox.record, nothing prepared afterwards):

    python -m bench.raw_ceiling --database-url URL --redis-url URL --stream KEY [--batch 1000]
        [--fill N --writers 4] [--planner] [--explain]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg
import redis

from bench import common  # noqa: F401  (puts the repo root on sys.path)
from outbox import wire

RAW_CLAIM = """
UPDATE outbox_events o SET status = 'published', published_at = clock_timestamp()
FROM (SELECT id FROM outbox_events WHERE status = 'pending' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) p
WHERE o.id = p.id
RETURNING o.id, o.event_id::text, o.event_type, o.tenant_id, o.occurred_at, o.payload::text,
          coalesce(o.payload->>'actorUserId', o.payload->>'userId', ''),
          o.execution_id, o.event_name, o.from_state, o.to_state, o.correlation_key
"""

# Transaction-local (is_local = true): gone at COMMIT, sent in the same pipeline as the claim.
PIN_PLAN = (
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), "
    "set_config('enable_sort', 'off', true), set_config('jit', 'off', true)"
)


def explain(dsn: str, batch: int = 1000, *, pin_plan: bool = True) -> str:
    """EXPLAIN (no ANALYZE: reads no table data) of one raw claim, as ``drain_raw`` would run it."""
    with psycopg.connect(dsn) as conn:
        if pin_plan:
            conn.execute(PIN_PLAN)
        rows = conn.execute("EXPLAIN " + RAW_CLAIM, (batch,)).fetchall()
        conn.rollback()
    return "\n".join(str(r[0]) for r in rows)


def drain_raw(dsn: str, redis_url: str, stream: str, batch: int = 1000, *, pin_plan: bool = True) -> dict[str, Any]:
    """Drain every pending row to ``stream``; returns events, seconds, events/s, batches."""
    client = redis.Redis.from_url(redis_url)
    conn = psycopg.connect(dsn, application_name="bench-raw-ceiling")
    n = batches = 0
    t0 = time.perf_counter()
    try:
        while True:
            with conn.pipeline():
                if pin_plan:
                    conn.execute(PIN_PLAN)
                cur = conn.execute(RAW_CLAIM, (batch,))
                conn.commit()
            rows = cur.fetchall()
            if not rows:
                break
            rows.sort(key=lambda r: r[0])  # RETURNING order is not guaranteed
            pipe = client.pipeline(transaction=False)
            for _id, eid, etype, tenant, occurred, payload, user, exe, name, frm, to, corr in rows:
                values = wire.values(
                    event_id=eid, event_type=etype, tenant=tenant, timestamp=wire.iso_utc(occurred),
                    payload_json=payload, user_id=user, execution_id=exe, event_name=name, from_state=frm, to_state=to,
                    correlation_key=corr,
                )  # fmt: skip
                flat = [x for kv in zip(wire.FIELDS, values, strict=True) for x in kv]
                pipe.execute_command("XADD", stream, "*", *flat)
            pipe.execute()
            n += len(rows)
            batches += 1
    finally:
        elapsed = time.perf_counter() - t0
        conn.close()
        client.close()
    return {"events": n, "seconds": round(elapsed, 3), "events_per_s": round(n / elapsed, 1), "batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--fill", type=int, default=0, help="first commit this many events with outbox.record")
    ap.add_argument("--writers", type=int, default=4, help="writer processes of --fill (default 4)")
    ap.add_argument("--planner", action="store_true", help="bare statement: do not pin the claim's plan")
    ap.add_argument("--explain", action="store_true", help="print the claim's plan (EXPLAIN) before draining")
    a = ap.parse_args()
    if a.fill:
        from bench import outage

        print("fill:", outage.fill(a.database_url, a.fill, a.writers))
    if a.explain:
        print(explain(a.database_url, a.batch, pin_plan=not a.planner))
    print(drain_raw(a.database_url, a.redis_url, a.stream, a.batch, pin_plan=not a.planner))


if __name__ == "__main__":
    main()
