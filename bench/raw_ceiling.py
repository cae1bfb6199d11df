"""The raw ceiling of a relay on these servers: plain claim + pipelined XADD, nothing else.

Per batch: one statement that claims the oldest pending rows and marks them published

    UPDATE outbox_events o SET status = 'published', published_at = clock_timestamp()
    FROM (SELECT id ... WHERE status = 'pending' ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) p
    WHERE o.id = p.id RETURNING ...

then COMMIT, then one redis-py pipeline of XADD with the same wire fields as the relay (no payload
validation, no fence script, no leader lease, no position numbering, no second mark statement).
It is what the relay would cost if it did nothing but move bytes; the relay's figure divided by
this one is how much of the machine's ceiling the relay reaches.

Standalone: python -m bench.raw_ceiling --database-url URL --redis-url URL --stream KEY [--batch 1000]
(against a database that already holds a pending backlog).
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


def drain_raw(dsn: str, redis_url: str, stream: str, batch: int = 1000) -> dict[str, Any]:
    """Drain every pending row to ``stream``; returns events, seconds, events/s, batches."""
    client = redis.Redis.from_url(redis_url)
    conn = psycopg.connect(dsn, application_name="bench-raw-ceiling")
    n = batches = 0
    t0 = time.perf_counter()
    try:
        while True:
            rows = conn.execute(RAW_CLAIM, (batch,)).fetchall()
            conn.commit()
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
    a = ap.parse_args()
    print(drain_raw(a.database_url, a.redis_url, a.stream, a.batch))


if __name__ == "__main__":
    main()
