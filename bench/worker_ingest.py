"""Ingest rate of the workflow worker: events/s from a pre-filled stream, with triggers matched.

    python bench/worker_ingest.py [--events 20000] [--tenants 5] [--triggers 3] [--workers 1] [--batch-size 100]
                                  [--database-url URL --redis-url URL]

Creates its own database (migrated) and its own stream key (``bench:worker:<run>:...``), pre-fills the stream
with valid TICKET_STATUS_CHANGED entries in the flat wire format for a few tenants, gives each tenant a few
triggers (one unfiltered, the others with payload filters that match part of the events), then starts
``python -m outbox.worker`` process(es) and polls the consumer group until its lag and pending count are 0. Reports
events/s and run requests/s from the first to the last ingest (database clock), and the wall time from process
start. Cleans up its database and keys (never FLUSHALL). Without URLs (and without OUTBOX_DATABASE_URL /
OUTBOX_REDIS_URL) it starts embedded servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from outbox import migrate, wire  # noqa: E402
from outbox.settings import libpq_url  # noqa: E402

STATUSES = ("open", "waiting", "in-progress", "resolved", "closed")


def _db_url(admin_url: str, name: str) -> str:
    return urlsplit(admin_url)._replace(path="/" + name).geturl()


@contextlib.contextmanager
def servers(database_url: str | None, redis_url: str | None) -> Iterator[tuple[str, str, bool]]:
    database_url = database_url or os.environ.get("OUTBOX_DATABASE_URL")
    redis_url = redis_url or os.environ.get("OUTBOX_REDIS_URL")
    if database_url and redis_url:
        yield libpq_url(database_url), redis_url, False
        return
    if database_url or redis_url:
        raise SystemExit("give both --database-url and --redis-url (or neither, for embedded servers)")
    from outbox.embedded import Embedded

    print("no servers configured: starting embedded Postgres and Redis", file=sys.stderr)
    with Embedded() as emb:
        yield emb.database_url, emb.redis_url, True


def fill_stream(r: redis.Redis, stream: str, n: int, tenants: list[str]) -> float:
    """XADD ``n`` valid entries round-robin over ``tenants``; returns seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        payload = {
            "tenantId": tenant,
            "occurredAt": wire.iso_utc(now),
            "actorUserId": str(uuid.uuid4()),
            "actorType": "USER",
            "ticketId": str(uuid.uuid4()),
            "previousStatusId": STATUSES[i % 4],
            "newStatusId": STATUSES[(i % 4) + 1],
            "reason": "customer confirmed the fix" if i % 3 == 0 else None,
        }
        values = wire.values(
            event_id=str(uuid.uuid4()), event_type="TICKET_STATUS_CHANGED", tenant=tenant, timestamp=wire.iso_utc(now),
            payload_json=json.dumps({k: v for k, v in payload.items() if v is not None}),
            user_id=str(payload["actorUserId"]), event_name="ticket.status_changed",
            from_state=str(payload["previousStatusId"]), to_state=str(payload["newStatusId"]),
            correlation_key=f"ticket:{payload['ticketId']}",
        )  # fmt: skip
        pipe.xadd(stream, dict(zip(wire.FIELDS, values, strict=True)))
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def add_triggers(dsn: str, tenants: list[str], per_tenant: int) -> None:
    from outbox.worker.triggers import add_trigger

    filters: list[dict[str, Any] | None] = [
        None,
        {"newStatusId": "closed"},
        {"newStatusId": "resolved", "previousStatusId": "in-progress"},
        {"reason": "customer confirmed the fix"},
        {"previousStatusId": "open"},
    ]
    with psycopg.connect(dsn) as conn:
        for t in tenants:
            for k in range(per_tenant):
                add_trigger(conn, t, "TICKET_STATUS_CHANGED", f"wf-{k}", payload_filter=filters[k % len(filters)])
        conn.commit()


def group_state(r: redis.Redis, stream: str, group: str) -> tuple[int | None, int]:
    """(lag, pending) of the group; lag None until the group exists."""
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return None, 0
    for g in groups:
        if g["name"] == group:
            lag = g.get("lag")
            return (int(lag) if lag is not None else None), int(g["pending"])
    return None, 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--tenants", type=int, default=5)
    ap.add_argument("--triggers", type=int, default=3, help="triggers per tenant")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (consumers of the group)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    args = ap.parse_args()
    print("command:", shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]))

    run = uuid.uuid4().hex[:8]
    stream = f"bench:worker:{run}:workflow:events:global"
    group = "workflow-runtime-v2"
    tenants = [f"tenant-{i:03d}" for i in range(args.tenants)]
    with servers(args.database_url, args.redis_url) as (admin_url, redis_url, embedded):
        dbname = f"bench_worker_{run}"
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
            pg_version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            sync_commit = c.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
            fsync = c.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
        dsn = _db_url(admin_url, dbname)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            migrate.upgrade(dsn)
            add_triggers(dsn, tenants, args.triggers)
            fill_s = fill_stream(r, stream, args.events, tenants)
            print(f"filled {args.events} entries for {len(tenants)} tenants in {fill_s:.1f}s; "
                  f"{args.triggers} triggers per tenant")  # fmt: skip
            env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
            env.update(
                OUTBOX_DATABASE_URL=dsn, OUTBOX_REDIS_URL=redis_url, OUTBOX_STREAM=stream, OUTBOX_LOG_LEVEL="WARNING",
                OUTBOX_WORKER_BATCH_SIZE=str(args.batch_size), PYTHONPATH=str(ROOT),
            )  # fmt: skip
            started = time.perf_counter()
            for _ in range(args.workers):
                procs.append(subprocess.Popen([sys.executable, "-m", "outbox.worker"], env=env, cwd=ROOT))
            deadline = time.monotonic() + 1800
            while True:
                lag, pend = group_state(r, stream, group)
                if lag == 0 and pend == 0:
                    break
                if any(p.poll() is not None for p in procs):
                    raise SystemExit("a worker exited early")
                if time.monotonic() > deadline:
                    raise SystemExit("timed out")
                time.sleep(0.05)
            wall = time.perf_counter() - started
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(60) for p in procs]
            with psycopg.connect(dsn) as c:
                row = c.execute(
                    "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL),"
                    " extract(epoch FROM max(processed_at) - min(processed_at)) FROM workflow_runtime_events"
                ).fetchone()
                runs = c.execute("SELECT count(*) FROM workflow_run_requests").fetchone()[0]  # type: ignore[index]
            assert row is not None
            events, invalid, span = int(row[0]), int(row[1]), float(row[2] or 0.0)
            if events != args.events or invalid:
                raise SystemExit(f"expected {args.events} valid events, got {events} ({invalid} invalid)")
            rate = events / span if span > 0 else float("inf")
            result = {
                "events": events,
                "run_requests": int(runs),
                "tenants": len(tenants),
                "triggers_per_tenant": args.triggers,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "ingest_seconds": round(span, 3),
                "events_per_s": round(rate),
                "runs_per_s": round(runs / span) if span > 0 else None,
                "wall_seconds_incl_startup": round(wall, 2),
                "worker_exit_codes": codes,
                "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
                "postgres": f"{pg_version} (synchronous_commit={sync_commit}, fsync={fsync})",
                "redis": str(r.info("server").get("redis_version")),
                "embedded_servers": embedded,
            }
            print(
                f"ingested {events} events ({runs} run requests) in {span:.2f}s: {rate:,.0f} events/s, "
                f"{result['runs_per_s']:,} runs/s; wall incl. process start {wall:.1f}s; exit codes {codes}"
            )
            print(json.dumps(result, indent=2))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for key in r.scan_iter(match=f"bench:worker:{run}:*", count=1000):
                r.delete(key)
            r.close()
            with psycopg.connect(admin_url, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
