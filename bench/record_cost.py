"""Part 1, ``record-cost``: what ``outbox.record`` adds to a business transaction.

Variants, run side by side at each writer count, for N seconds each (rounds interleave them):

  tx              BEGIN; INSERT one ticket; COMMIT
  tx+plain        ... + INSERT of the same outbox row into ``bench_plain_events`` (LIKE outbox_events:
                  same columns and defaults, bigint identity PK, no other index, no check) built by
                  hand in Python (dict + json.dumps + uuid7, no validation)
  tx+insert       ... + a bare INSERT of the same hand-built row into ``outbox_events`` itself (same
                  table, same indexes; no validation, no ON CONFLICT, no notify check)
  tx+record       ... + outbox.record(conn, "TICKET_CREATED", payload, tenant_id=, actor=, aggregate=)
                  with the relay busy (outbox_relay.notify_until NULL: the default under load)
  tx+record+notify  the same while the relay is idle and listening (notify_until in the future and a
                  LISTEN connection draining notifications): every writer's statement sends a NOTIFY

Each writer is a process (default) or a thread with its own psycopg connection.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench import common

VARIANTS = ("tx", "tx+plain", "tx+insert", "tx+record", "tx+record+notify")
ALL_VARIANTS = ("tx (pgbench)", *VARIANTS)

SETUP_SQL = """
CREATE TABLE IF NOT EXISTS tickets (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    title text NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_plain_events (LIKE outbox_events INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE bench_plain_events DROP CONSTRAINT IF EXISTS bench_plain_events_pkey;
ALTER TABLE bench_plain_events ADD CONSTRAINT bench_plain_events_pkey PRIMARY KEY (id);
"""

INSERT_TICKET = "INSERT INTO tickets (id, tenant_id, title, status, created_at) VALUES (%s, %s, %s, 'open', %s)"
INSERT_OUTBOX = (
    "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate, "
    "execution_id, event_name, from_state, to_state, correlation_key) "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_PLAIN = (
    "INSERT INTO bench_plain_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate, "
    "execution_id, event_name, from_state, to_state, correlation_key) "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass
class Result:
    count: int
    seconds: float
    cpu: float


def _make_tx(conn: Any, variant: str, worker: int) -> Any:
    """One business transaction of ``variant`` on ``conn`` (commits)."""
    import json
    from datetime import UTC, datetime

    import uuid_utils.compat as uuid_utils

    import outbox
    from outbox.wire import iso_utc as utc_iso

    tenant = f"tenant-{worker % 50:04d}"
    user = str(uuid.uuid4())
    titles = common.TICKET_TITLES
    counter = [0]

    def ticket() -> tuple[str, str, datetime]:
        counter[0] += 1
        now = datetime.now(UTC)
        tid = uuid.uuid4()
        conn.execute(INSERT_TICKET, (tid, tenant, titles[counter[0] % len(titles)], now))
        return str(tid), titles[counter[0] % len(titles)], now

    if variant == "tx":

        def run() -> None:
            ticket()
            conn.commit()

    elif variant in ("tx+plain", "tx+insert"):
        stmt = INSERT_PLAIN if variant == "tx+plain" else INSERT_OUTBOX

        def run() -> None:
            tid, title, now = ticket()
            data = common.ticket_payload(tid, user, title, utc_iso(now))
            data["tenantId"] = tenant
            data["occurredAt"] = utc_iso(now)
            data["actorUserId"] = user
            data["actorType"] = "USER"
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            conn.execute(
                stmt,
                (uuid_utils.uuid7(), tenant, "TICKET_CREATED", "payload.TicketCreated.v1", text, now,
                 f"ticket:{tid}", None, None, None, None, None),
            )  # fmt: skip
            conn.commit()

    else:  # tx+record, tx+record+notify (the difference is the relay row, set by the parent)

        def run() -> None:
            tid, title, now = ticket()
            outbox.record(
                conn, "TICKET_CREATED", common.ticket_payload(tid, user, title, utc_iso(now)),
                tenant_id=tenant, actor=user, aggregate=f"ticket:{tid}", occurred_at=now,
            )  # fmt: skip
            conn.commit()

    return run


def _worker(
    dsn: str, variant: str, worker: int, seconds: float, barrier: Any, out: Any, use_thread_clock: bool
) -> None:
    import psycopg

    clock = time.thread_time if use_thread_clock else time.process_time
    try:
        conn = psycopg.connect(dsn, application_name=f"bench-writer-{worker}")
        run = _make_tx(conn, variant, worker)
        for _ in range(30):  # warm up: imports, prepared statements, caches
            run()
    except BaseException:
        barrier.abort()
        raise
    barrier.wait()
    count = 0
    c0 = clock()
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        run()
        count += 1
    elapsed = time.perf_counter() - t0
    out.put((worker, count, elapsed, clock() - c0))
    conn.close()


class _Listener:
    """An idle relay's LISTEN connection: drains notifications so the queue never fills."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        from outbox.sql import NOTIFY_CHANNEL

        self.conn = psycopg.connect(dsn, autocommit=True, application_name="bench-listener")
        self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.received = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                self.received += 1

    def close(self) -> int:
        self._stop.set()
        self._t.join(5)
        self.conn.close()
        return self.received


def _reset(dsn: str, notify: bool) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("TRUNCATE tickets, bench_plain_events, outbox_events")
        c.execute(
            "UPDATE outbox_relay SET notify_until = CASE WHEN %s THEN clock_timestamp() + interval '1 hour' END",
            (notify,),
        )
        c.execute("VACUUM (ANALYZE) tickets, bench_plain_events, outbox_events")
        c.execute("CHECKPOINT")


PGBENCH_SCRIPT = """BEGIN;
INSERT INTO tickets (id, tenant_id, title, status, created_at)
  VALUES (gen_random_uuid(), 'tenant-0001', 'Printer on floor 3 is jammed again', 'open', now());
COMMIT;
"""


def pgbench(env: common.Env, dsn: str, clients: int, seconds: float) -> dict[str, Any] | None:
    """The business transaction alone from pgbench (C client): what the servers do without Python."""
    import shutil

    exe = shutil.which("pgbench")
    if exe is None:
        return None
    r = common.measured(
        env, f"pgbench x{clients}", lambda: _pgbench_once(exe, dsn, clients, seconds), lambda: _reset(dsn, False)
    )
    return r if r.get("tx_per_s") else None


def _dbname(dsn: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(dsn).path.lstrip("/")


def _pgbench_once(exe: str, dsn: str, clients: int, seconds: float) -> dict[str, Any]:
    import re
    import resource
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(PGBENCH_SCRIPT)
        f.flush()
        cpu0 = common.cpu_times()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = common.ProcCpu(_dbname(dsn)).start()
        p = subprocess.run(
            [exe, "-n", "-f", f.name, "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(max(1, round(seconds))), dsn],
            capture_output=True, text=True,
        )  # fmt: skip
        server_cpu = server.stop()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = common.cpu_times()
    m = re.search(r"tps = ([0-9.]+)", p.stdout)
    n = re.search(r"transactions actually processed: ([0-9]+)", p.stdout)
    count = int(n.group(1)) if n else 0
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "variant": "tx (pgbench)", "clients": clients, "tx": count,
        "tx_per_s": round(float(m.group(1)), 1) if m else None,
        "client_cpu_us_per_tx": round(1e6 * client_cpu / count, 1) if count else None,
        "server_cpu_us_per_tx": round(1e6 * server_cpu / count, 1) if count else None,
        "machine_busy_pct": common.busy_pct(cpu0, cpu1),
    }  # fmt: skip


def measure(env: common.Env, dsn: str, variant: str, clients: int, seconds: float, mode: str) -> dict[str, Any]:
    """Run ``clients`` writers of ``variant`` for ``seconds`` (on a quiet machine, retried when noisy)."""
    notify = variant == "tx+record+notify"
    return common.measured(
        env, f"{variant} x{clients}", lambda: _measure_once(dsn, variant, clients, seconds, mode),
        lambda: _reset(dsn, notify),
    )  # fmt: skip


def _measure_once(dsn: str, variant: str, clients: int, seconds: float, mode: str) -> dict[str, Any]:
    """Run ``clients`` writers of ``variant`` for ``seconds``; tx/s, client CPU, machine busy %."""
    notify = variant == "tx+record+notify"
    if mode == "thread":
        import queue

        barrier: Any = threading.Barrier(clients + 1)
        out: Any = queue.Queue()
        workers: list[Any] = [
            threading.Thread(target=_worker, args=(dsn, variant, i, seconds, barrier, out, True), daemon=True)
            for i in range(clients)
        ]
    else:
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(clients + 1)
        out = ctx.Queue()
        workers = [
            ctx.Process(target=_worker, args=(dsn, variant, i, seconds, barrier, out, False), daemon=True)
            for i in range(clients)
        ]
    for w in workers:
        w.start()
    listener = _Listener(dsn) if notify else None  # after the fork: no thread in the parent while forking
    barrier.wait(timeout=120)
    cpu0 = common.cpu_times()
    server = common.ProcCpu(_dbname(dsn)).start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    server_cpu = server.stop()
    cpu1 = common.cpu_times()
    for w in workers:
        w.join(30)
    received = listener.close() if listener else 0
    count = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    client_cpu = sum(r[3] for r in results)
    with __import__("psycopg").connect(dsn) as c:
        outbox_rows = c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]  # type: ignore[index]
    return {
        "variant": variant,
        "clients": clients,
        "tx": count,
        "seconds": round(elapsed, 3),
        "tx_per_s": round(sum(r[1] / r[2] for r in results), 1),
        "client_cpu_us_per_tx": round(1e6 * client_cpu / count, 1) if count else None,
        "server_cpu_us_per_tx": round(1e6 * server_cpu / count, 1) if count else None,
        "machine_busy_pct": common.busy_pct(cpu0, cpu1),
        "outbox_rows": outbox_rows,
        "notifications_received": received,
    }


def prepare_cost_us(n: int = 20_000) -> dict[str, float]:
    """Python-side CPU of record()'s validation (prepare) vs the hand-rolled plain row, µs per event."""
    import json
    from datetime import UTC, datetime

    import uuid_utils.compat as uuid_utils

    from outbox.wire import iso_utc as utc_iso
    from outbox.write import prepare

    user = str(uuid.uuid4())
    tid = str(uuid.uuid4())
    now = datetime.now(UTC)
    payload = common.ticket_payload(tid, user, common.TICKET_TITLES[0], utc_iso(now))
    for _ in range(500):
        prepare("TICKET_CREATED", payload, tenant_id="tenant-0001", actor=user, aggregate="t", occurred_at=now)
    t0 = time.perf_counter()
    for _ in range(n):
        prepare("TICKET_CREATED", payload, tenant_id="tenant-0001", actor=user, aggregate="t", occurred_at=now)
    t1 = time.perf_counter()
    for _ in range(n):
        data = dict(payload)
        data.update(tenantId="tenant-0001", occurredAt=utc_iso(now), actorUserId=user, actorType="USER")
        json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        uuid_utils.uuid7()
    t2 = time.perf_counter()
    size = len(prepare("TICKET_CREATED", payload, tenant_id="tenant-0001", actor=user, occurred_at=now)[4])
    return {
        "record_prepare_us": round((t1 - t0) / n * 1e6, 1),
        "plain_build_us": round((t2 - t1) / n * 1e6, 1),
        "payload_bytes": size,
    }


def run(env: common.Env, *, clients: list[int], seconds: float, rounds: int, mode: str) -> dict[str, Any]:
    import psycopg

    dsn = env.new_database("record_cost")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(SETUP_SQL)
    cpu = prepare_cost_us()
    print(
        f"record-cost: writer {mode}s, {clients} writers, {seconds:g}s per cell, {rounds} round(s); payload "
        f"{cpu['payload_bytes']} B; Python CPU per event: record() validation {cpu['record_prepare_us']} µs, "
        f"hand-built plain row {cpu['plain_build_us']} µs",
        flush=True,
    )
    raw: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for n in clients:
            pg = pgbench(env, dsn, n, seconds)
            if pg is not None:
                pg["round"] = rnd
                raw.append(pg)
                print(
                    f"  round {rnd + 1} {n:>2} writers {'tx (pgbench)':<17} {pg['tx_per_s']:>9,.0f} tx/s  "
                    f"CPU/tx client {pg['client_cpu_us_per_tx']} µs + PG {pg['server_cpu_us_per_tx']} µs  "
                    f"machine busy {pg['machine_busy_pct']}% (others {pg['other_pct']}%)",
                    flush=True,
                )
            for variant in VARIANTS:
                r = measure(env, dsn, variant, n, seconds, mode)
                r["round"] = rnd
                raw.append(r)
                print(
                    f"  round {rnd + 1} {n:>2} writers {variant:<17} {r['tx_per_s']:>9,.0f} tx/s  "
                    f"CPU/tx client {r['client_cpu_us_per_tx']} µs + PG {r['server_cpu_us_per_tx']} µs  "
                    f"machine busy {r['machine_busy_pct']}% "
                    f"(others {r['other_pct']}%)",
                    flush=True,
                )
    summary: list[dict[str, Any]] = []
    for n in clients:
        base = common.median([r["tx_per_s"] for r in raw if r["clients"] == n and r["variant"] == "tx"])
        for v in ALL_VARIANTS:
            cell = [r for r in raw if r["clients"] == n and r["variant"] == v]
            if not cell:
                continue
            tps = common.median([r["tx_per_s"] for r in cell])
            client = common.median([r["client_cpu_us_per_tx"] for r in cell if r.get("client_cpu_us_per_tx")])
            server = common.median([r["server_cpu_us_per_tx"] for r in cell if r.get("server_cpu_us_per_tx")])
            summary.append(
                {
                    "clients": n,
                    "variant": v,
                    "tx_per_s": round(tps, 1),
                    "change_pct_vs_tx": round(100.0 * (tps - base) / base, 1) if base else None,
                    "client_cpu_us_per_tx": round(client, 1),
                    "server_cpu_us_per_tx": round(server, 1),
                    "total_cpu_us_per_tx": round(client + server, 1),
                    "others_pct_median": common.median([r["other_pct"] for r in cell]),
                    "runs": [r["tx_per_s"] for r in cell],
                }
            )
    env.drop_database(dsn)
    return {
        "part": "record-cost",
        "params": {"clients": clients, "seconds": seconds, "rounds": rounds, "workers": mode},
        "python_cpu_per_event": cpu,
        "summary": summary,
        "raw": raw,
    }


def _pct(a: float, b: float) -> str:
    """``a`` relative to ``b`` as a signed percentage."""
    return f"{100.0 * (a - b) / b:+.1f}%" if b else "?"


def report(res: dict[str, Any]) -> str:
    clients = res["params"]["clients"]
    p = res["params"]
    by = {(s["clients"], s["variant"]): s for s in res["summary"]}
    variants = [v for v in ALL_VARIANTS if any((n, v) in by for n in clients)]
    rows = []
    for v in variants:
        row: list[Any] = [v]
        for n in clients:
            s = by.get((n, v))
            if s is None:
                row += ["", ""]
                continue
            row.append(f"{s['tx_per_s']:,.0f}")
            row.append("ref." if v == "tx (pgbench)" else "—" if v == "tx" else f"{s['change_pct_vs_tx']:+.1f}%")
        rows.append(row)
    headers = ["variant"]
    for n in clients:
        headers += [f"{n} writers tx/s", "vs tx"]
    out = common.table(
        headers,
        rows,
        title=f"record-cost: throughput, tx/s (median of {p['rounds']} runs of {p['seconds']:g}s; writers are "
        f"{p['workers']}s; 'vs tx' = throughput change against the business transaction alone)",
    )
    rows = []
    for v in variants:
        row = [v]
        totals = []
        for n in clients:
            s = by.get((n, v))
            if s is None:
                row.append("")
                continue
            row.append(f"{s['client_cpu_us_per_tx']:,.0f} + {s['server_cpu_us_per_tx']:,.0f}")
            totals.append(s["total_cpu_us_per_tx"])
        tot = common.median(totals)
        row += [f"{tot:,.0f}", f"{2e6 / tot:,.0f}" if tot else "?"]
        rows.append(row)
    out += "\n" + common.table(
        ["variant", *[f"{n} writers: client + PG µs/tx" for n in clients], "total µs/tx", "CPU-bound ceiling tx/s"],
        rows,
        title="record-cost: CPU per transaction (client process + its Postgres backend; median). Noise-robust: "
        "CPU time does not grow when other processes compete for the cores. Ceiling = 2 cores / total.",
    )
    rows = []
    for n in clients:
        plain, rec, note = by[(n, "tx+plain")], by[(n, "tx+record")], by[(n, "tx+record+notify")]
        tx, ins = by[(n, "tx")], by.get((n, "tx+insert"))
        rows.append(
            [
                n,
                _pct(rec["tx_per_s"], plain["tx_per_s"]),
                f"{rec['client_cpu_us_per_tx'] - plain['client_cpu_us_per_tx']:+,.0f}",
                f"{rec['server_cpu_us_per_tx'] - plain['server_cpu_us_per_tx']:+,.0f}",
                _pct(rec["tx_per_s"], ins["tx_per_s"]) if ins else "",
                f"{rec['total_cpu_us_per_tx'] - ins['total_cpu_us_per_tx']:+,.0f}" if ins else "",
                _pct(note["tx_per_s"], rec["tx_per_s"]),
                f"{note['server_cpu_us_per_tx'] - rec['server_cpu_us_per_tx']:+,.0f}",
                f"{plain['total_cpu_us_per_tx'] - tx['total_cpu_us_per_tx']:+,.0f}",
            ]
        )
    out += "\n" + common.table(
        [
            "writers",
            "record vs plain: tx/s",
            "client µs",
            "PG µs",
            "record vs insert: tx/s",
            "total µs",
            "notify vs not: tx/s",
            "PG µs",
            "plain row vs tx: total µs",
        ],
        rows,
        title="record-cost: what outbox.record adds over a plain INSERT of the same row (plain: index-less "
        "table; insert: outbox_events itself), and what the NOTIFY adds",
    )
    cpu = res["python_cpu_per_event"]
    worst = max((s["others_pct_median"] for s in res["summary"]), default=0)
    out += (
        f"\n\nPython CPU per event (one core, no I/O): record() validation+serialisation "
        f"{cpu['record_prepare_us']} µs vs hand-built plain row {cpu['plain_build_us']} µs; "
        f"payload {cpu['payload_bytes']} B. Other people's processes used up to {worst}% of the machine "
        "(median per cell) during these runs."
    )
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python bench/run.py record-cost")
