"""The after-outage backlog of the ``drain`` part: what a relay finds when it comes back.

Production case: the relay was down while the application kept committing events, one per business
transaction, from several processes. Nobody vacuumed, analysed or checkpointed the table for the relay's
sake: the backlog is exactly what concurrent ``outbox.record`` calls left (hint bits unset, no planner
statistics when the table was never analysed, autovacuum as the server has it).

- ``fill``: writer processes commit a backlog with ``outbox.record`` as fast as they can, one event per
  transaction, with ~420-byte payloads of four real ticket event types; nothing is done afterwards.
- ``LiveWriters``: writer processes committing at a fixed offered rate (the application still writing
  while the relay catches up).
- ``table_state``: what autovacuum/ANALYZE did to the table (pg_stat_user_tables, pg_class) and how many
  checkpoints the server has run, to print before and after a drain.
- ``explain_claim``: the relay's claim statement under EXPLAIN, inside a transaction that is rolled back.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench import common

# ---- payloads: real catalog event types, ~420 bytes each once record() has added the envelope keys ------


def _created(tid: str, user: str, ts: str, n: int) -> dict[str, Any]:
    return common.ticket_payload(tid, user, common.TICKET_TITLES[n % len(common.TICKET_TITLES)], ts)


def _status(tid: str, user: str, ts: str, n: int) -> dict[str, Any]:
    return {
        "ticketId": tid,
        "previousStatusId": "open",
        "newStatusId": ("in_progress", "waiting_on_customer", "resolved")[n % 3],
        "reason": "Customer confirmed the workaround; keeping the ticket until the vendor ships the fix",
        "changedAt": ts,
    }


def _priority(tid: str, user: str, ts: str, n: int) -> dict[str, Any]:
    return {
        "ticketId": tid,
        "previousPriorityId": "normal",
        "newPriorityId": ("high", "urgent")[n % 2],
        "reason": "Affects the whole accounting team during the month-end close, escalated by the desk",
        "changedAt": ts,
    }


def _assigned(tid: str, user: str, ts: str, n: int) -> dict[str, Any]:
    return {
        "ticketId": tid,
        "assignedToUserId": user,
        "assignedByUserId": user,
        "newAssigneeId": user,
        "newAssigneeType": "user",
        "assignedAt": ts,
        "updatedFields": ["assigned_to"],
    }


EVENT_MIX: tuple[tuple[str, Callable[[str, str, str, int], dict[str, Any]]], ...] = (
    ("TICKET_CREATED", _created),
    ("TICKET_STATUS_CHANGED", _status),
    ("TICKET_ASSIGNED", _assigned),
    ("TICKET_PRIORITY_CHANGED", _priority),
)


def _record_one(conn: psycopg.Connection[Any], tenant: str, user: str, n: int) -> None:
    """One business-like transaction: ``outbox.record`` of the n-th event of the mix, then COMMIT."""
    import outbox
    from outbox.wire import iso_utc

    event_type, build = EVENT_MIX[n % len(EVENT_MIX)]
    now = datetime.now(UTC)
    tid = str(uuid.uuid4())
    outbox.record(
        conn, event_type, build(tid, user, iso_utc(now), n),
        tenant_id=tenant, actor=user, aggregate=f"ticket:{tid}", occurred_at=now,
    )  # fmt: skip
    conn.commit()


def payload_bytes() -> dict[str, int]:
    """Size of each mix member's payload as record() stores it (compact JSON, envelope keys added)."""
    from outbox.wire import iso_utc
    from outbox.write import prepare

    now = datetime.now(UTC)
    user, tid = str(uuid.uuid4()), str(uuid.uuid4())
    return {
        et: len(prepare(et, b(tid, user, iso_utc(now), 1), tenant_id="tenant-0001", actor=user, occurred_at=now)[4])
        for et, b in EVENT_MIX
    }


# ---- writers ---------------------------------------------------------------------------------------------


def _burst_writer(dsn: str, worker: int, count: int, out: Any) -> None:
    conn = psycopg.connect(dsn, application_name=f"bench-outage-writer-{worker}")
    tenant, user = f"tenant-{worker:04d}", str(uuid.uuid4())
    for n in range(count):
        _record_one(conn, tenant, user, worker + n)
    conn.close()
    out.put(worker)


def fill(dsn: str, rows: int, writers: int) -> dict[str, Any]:
    """Commit ``rows`` events from ``writers`` processes (``outbox.record``, one event per transaction, as
    fast as they go); nothing afterwards: no VACUUM, ANALYZE or CHECKPOINT. Returns seconds and rate."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    shares = [rows // writers + (1 if i < rows % writers else 0) for i in range(writers)]
    procs = [ctx.Process(target=_burst_writer, args=(dsn, i, n, out), daemon=True) for i, n in enumerate(shares)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for _ in procs:
        out.get(timeout=3600)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(10)
        if p.exitcode != 0:
            raise RuntimeError(f"backlog writer exited with {p.exitcode}")
    return {"rows": rows, "writers": writers, "seconds": round(elapsed, 1), "rate": round(rows / elapsed, 1)}


def _paced_writer(dsn: str, worker: int, rate: float, go: Any, stop: Any, done: Any, pids: Any) -> None:
    conn = psycopg.connect(dsn, application_name=f"bench-live-writer-{worker}")
    pids[worker] = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    conn.commit()
    tenant, user = f"tenant-{100 + worker:04d}", str(uuid.uuid4())
    go.wait()
    t0, n = time.monotonic(), 0
    while not stop.is_set():
        due = t0 + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            stop.wait(wait)
            continue
        _record_one(conn, tenant, user, worker + n)
        n += 1
        done[worker] = n
    conn.close()


class LiveWriters:
    """``writers`` processes sharing a fixed offered ``rate`` (events/s, evenly paced, one event per
    transaction) from ``start()`` to ``stop()``; a writer that falls behind catches up without sleeping."""

    def __init__(self, dsn: str, rate: float, writers: int) -> None:
        ctx = mp.get_context("fork")
        self._go, self._stop = ctx.Event(), ctx.Event()
        self._done = ctx.Array("q", writers, lock=False)
        self._pids = ctx.Array("q", writers, lock=False)
        self._procs = [
            ctx.Process(
                target=_paced_writer, args=(dsn, i, rate / writers, self._go, self._stop, self._done, self._pids),
                daemon=True,
            )
            for i in range(writers)
        ]  # fmt: skip
        for p in self._procs:
            p.start()
        deadline = time.monotonic() + 30
        while not all(self._pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.backend_pids = {int(p) for p in self._pids}

    def start(self) -> None:
        self._go.set()

    def committed(self) -> int:
        """Events committed so far (a writer bumps its counter right after its COMMIT returns)."""
        return int(sum(self._done))

    def stop(self) -> int:
        """Stop the writers; returns the events they committed."""
        self._go.set()
        self._stop.set()
        for p in self._procs:
            p.join(30)
        return self.committed()


class ProcCpuExcept(common.ProcCpu):
    """``common.ProcCpu`` without some processes (the live writers' own Postgres backends)."""

    def __init__(self, match: str, exclude: set[int]) -> None:
        super().__init__(match)
        self._skip.update(exclude)


# ---- table state, plans --------------------------------------------------------------------------------

_STATE = """
SELECT current_setting('autovacuum') AS autovacuum_setting,
       s.last_autoanalyze, s.autoanalyze_count, s.last_analyze, s.analyze_count,
       s.last_autovacuum, s.autovacuum_count, s.last_vacuum, s.vacuum_count,
       s.n_mod_since_analyze, s.n_ins_since_vacuum,
       c.reltuples::bigint AS reltuples, c.relpages,
       (SELECT count(*) FROM pg_statistic st WHERE st.starelid = c.oid) AS stat_columns,
       (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) AS checkpoints,
       (SELECT array_agg(a.pid) FROM pg_stat_activity a WHERE a.datname = current_database()
          AND a.backend_type = 'autovacuum worker') AS autovacuum_workers_now
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'outbox_events'::regclass
"""


def table_state(dsn: str) -> dict[str, Any]:
    """What autovacuum and ANALYZE did to outbox_events so far (pg_stat_user_tables, pg_class, whether
    pg_statistic holds any column), plus the server's checkpoint count; reads no table data."""
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(_STATE)
        row = cur.fetchone()
        names = [d.name for d in cur.description or ()]
    assert row is not None
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(names, row, strict=True)}


def analysed_during(before: dict[str, Any], after: dict[str, Any]) -> str:
    """One phrase: did autovacuum (or anyone) analyse or vacuum the table between two ``table_state``s."""
    said = []
    for what in ("autoanalyze", "analyze", "autovacuum", "vacuum"):
        n = (after.get(f"{what}_count") or 0) - (before.get(f"{what}_count") or 0)
        if n:
            said.append(f"{what} x{n} (last {after.get(f'last_{what}')})")
    return ", ".join(said) or "none"


def claim_params(dsn: str, batch: int, exclude: list[int] | None = None) -> dict[str, Any]:
    """Parameters of a claim by a new leader (the current epoch; ``exclude``: the batch in flight)."""
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT epoch FROM outbox_relay WHERE name = 'default'").fetchone()
    return {"limit": batch, "epoch": int(row[0]) if row else 0, "ttl": 10.0, "exclude": exclude or []}


def explain_claim(dsn: str, batch: int, *, analyze: bool, exclude: list[int] | None = None) -> str:
    """EXPLAIN of the relay's claim (``outbox.relay.sql.CLAIM``) as the relay runs it: after
    ``sql.CLAIM_PLAN`` in the same transaction when the relay has one. With ``analyze`` it runs (ANALYZE,
    BUFFERS) inside a transaction that is rolled back, and sets hint bits on every heap page it visits;
    without, nothing is read from the table (the planner only looks at its size)."""
    from outbox.relay import sql

    opts = "(ANALYZE, BUFFERS)" if analyze else "(COSTS)"
    pin = getattr(sql, "CLAIM_PLAN", None)
    with psycopg.connect(dsn) as c:
        if pin:
            c.execute(pin)
        rows = c.execute(f"EXPLAIN {opts} " + sql.CLAIM, claim_params(dsn, batch, exclude)).fetchall()
        c.rollback()
    return _short_arrays("\n".join(str(r[0]) for r in rows))


def _short_arrays(plan: str) -> str:
    """Long array literals in a plan (the excluded ids) cut to their ends and length."""
    import re

    def cut(m: re.Match[str]) -> str:
        items = m.group(1).split(",")
        return (
            m.group(0)
            if len(items) <= 6
            else "'{" + ",".join(items[:3]) + ",...," + items[-1] + f"}}' ({len(items)} ids)"
        )

    return re.sub(r"'\{([0-9,]+)\}'", cut, plan)


def plan_shape(plan: str, cte: str | None = "CTE picked") -> str:
    """The chain of nodes that picks the rows, from the first ``Limit`` (inside ``cte`` when given) down to
    its first scan, e.g. ``Limit > Sort > Bitmap Heap Scan on outbox_events e``."""
    lines = plan.splitlines()
    start = next((i for i, ln in enumerate(lines) if cte in ln), -1) if cte else -1
    if cte and start < 0:
        return "?"
    chain: list[str] = []
    for ln in lines[start + 1 :]:
        s = ln.strip()
        if not chain and "Limit" not in s:
            continue
        if chain and not s.startswith("->"):
            continue
        node = s.removeprefix("->").strip().split("  (")[0]
        chain.append(node.replace("Index Scan using outbox_events_pending_idx", "Index Scan (pending_idx)"))
        if "Scan" in node:
            break
    return " > ".join(chain) or "?"
