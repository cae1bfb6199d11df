"""``outbox worker status``: consumer-group lag and pending entries, the DLQ, ingested events and runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import redis

from outbox.wire import text_of
from outbox.worker import sql
from outbox.worker.runs import counts_by_status
from outbox.worker.settings import WorkerSettings

LAG_COUNT_CAP = 1_000_000


def _texts(reply: Mapping[Any, Any]) -> dict[str, Any]:
    """An XINFO reply with text keys, and text for the values sent as bytes (numbers and None stay as they are)."""
    return {text_of(k): text_of(v) if isinstance(v, bytes) else v for k, v in reply.items()}


def _id(v: str) -> tuple[int, int]:
    ms, _, seq = v.partition("-")
    return int(ms), int(seq or 0)


def _count_after(r: redis.Redis, stream: str, after: str, cap: int = LAG_COUNT_CAP) -> tuple[int, bool]:
    """Entries with an id above ``after`` (counted by paging XRANGE; capped). Returns (count, capped)."""
    n = 0
    start = f"({after}"
    while n < cap:
        page = r.xrange(stream, min=start, max="+", count=10_000)
        if not page:
            break
        n += len(page)
        start = f"({text_of(page[-1][0])}"
    return min(n, cap), n >= cap


def stream_status(r: redis.Redis, settings: WorkerSettings) -> dict[str, Any]:
    """The Redis side: stream, group, lag, consumers with their pending entries, DLQ."""
    s = settings
    out: dict[str, Any] = {"stream": s.stream, "group": s.group, "stream_exists": bool(r.exists(s.stream))}
    out["dlq"] = {"stream": s.dlq, "length": int(r.xlen(s.dlq)) if r.exists(s.dlq) else 0}
    if not out["stream_exists"]:
        out.update(group_exists=False, length=0, lag=None, pending=0, consumers=[])
        return out
    info = _texts(r.xinfo_stream(s.stream))
    out["length"] = int(info.get("length", 0))
    last_generated = str(info.get("last-generated-id", "0-0"))
    out["last_generated_id"] = last_generated
    groups = [_texts(g) for g in r.xinfo_groups(s.stream)]
    group = next((g for g in groups if g.get("name") == s.group), None)
    if group is None:
        out.update(group_exists=False, lag=None, pending=0, consumers=[])
        return out
    last_delivered = str(group.get("last-delivered-id", "0-0"))
    out.update(group_exists=True, last_delivered_id=last_delivered, entries_read=group.get("entries-read"))
    lag = group.get("lag")
    if lag is not None:
        out.update(lag=int(lag), lag_source="xinfo")
    elif _id(last_delivered) >= _id(last_generated):
        out.update(lag=0, lag_source="computed")
    else:
        n, capped = _count_after(r, s.stream, last_delivered)
        out.update(lag=n, lag_source="computed", lag_capped=capped)
    summary = r.xpending(s.stream, s.group)
    out["pending"] = int(summary.get("pending", 0))
    out["pending_min_id"] = None if summary.get("min") is None else text_of(summary["min"])
    out["pending_max_id"] = None if summary.get("max") is None else text_of(summary["max"])
    per = {text_of(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
    consumers = []
    for c in r.xinfo_consumers(s.stream, s.group):
        name = text_of(c["name"])
        consumers.append({"name": name, "pending": per.get(name, int(c.get("pending", 0))), "idle_ms": int(c["idle"])})
    out["consumers"] = sorted(consumers, key=lambda c: c["name"])
    return out


def db_status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The Postgres side: events ingested (and invalid), run requests in total, per tenant and per status."""
    events = conn.execute(sql.STATUS_EVENTS).fetchall()
    runs = dict(conn.execute(sql.STATUS_RUNS).fetchall())
    tenants = sorted({str(e[0]) for e in events} | set(runs))
    by = {str(e[0]): e for e in events}
    per_tenant = [
        {
            "tenant_id": t,
            "ingested": int(by[t][1]) if t in by else 0,
            "invalid": int(by[t][2]) if t in by else 0,
            "runs_started": int(runs.get(t, 0)),
            "last_processed_at": by[t][3] if t in by else None,
        }
        for t in tenants
    ]
    return {
        "events_ingested": sum(p["ingested"] for p in per_tenant),
        "events_invalid": sum(p["invalid"] for p in per_tenant),
        "runs_started": sum(p["runs_started"] for p in per_tenant),
        "runs_by_status": counts_by_status(conn),
        "tenants": per_tenant,
    }


def status(r: redis.Redis, conn: psycopg.Connection[Any], settings: WorkerSettings) -> dict[str, Any]:
    """Both sides in one dict (what ``outbox worker status --json`` prints)."""
    data = stream_status(r, settings)
    data.update(db_status(conn))
    return data
