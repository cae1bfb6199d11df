"""Part ``record-sql``: the Postgres side of ``outbox.record``'s statement, piece by piece, with pgbench.

No Python in the loop: pgbench (C client, ``-M prepared``, as psycopg prepares repeated statements)
runs BEGIN; INSERT ticket; <variant>; COMMIT with a fixed ~445-byte payload and server-side
gen_random_uuid() ids. Variants: nothing more (tx), the same row into the plain table, a bare INSERT
into outbox_events, + ON CONFLICT DO NOTHING, the full RECORD_ONE statement (CTE + the notify check)
with the relay busy, and RECORD_ONE while the relay is idle (the statement sends NOTIFY). Reports tx/s
and the Postgres backends' CPU per transaction. Skipped when pgbench is not on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from typing import Any
from urllib.parse import urlsplit

import psycopg

from bench import common
from bench.record_cost import SETUP_SQL

PAYLOAD = (
    '{"ticketId":"7f0c3c1e-8d0a-4a57-9a3e-1f2b3c4d5e6f","createdByUserId":"0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9",'
    '"createdAt":"2026-11-25T20:00:00.123Z","updatedFields":["title","status","priority"],"changes":{"title":'
    '{"new":"Printer on floor 3 is jammed again"},"status":{"new":"open"},"priority":{"new":"high"}},'
    '"tenantId":"tenant-0001","occurredAt":"2026-11-25T20:00:00.123Z",'
    '"actorUserId":"0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9","actorType":"USER"}'
)
COLS = (
    "event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate, execution_id, event_name, "
    "from_state, to_state, correlation_key"
)
# no ':' outside the JSON (pgbench reads :name as a variable) and CAST instead of '::'
VALS = (
    "gen_random_uuid(), 'tenant-0001', 'TICKET_CREATED', 'payload.TicketCreated.v1', "
    f"CAST('{PAYLOAD}' AS jsonb), now(), 'ticket-x', NULL, NULL, NULL, NULL, NULL"
)
TICKET = (
    "INSERT INTO tickets VALUES (gen_random_uuid(), 'tenant-0001', 'Printer on floor 3 is jammed again', "
    "'open', now());"
)


def variants() -> dict[str, tuple[str, bool]]:
    """label -> (transaction body, relay idle?)."""
    from outbox.sql import RECORD_ONE

    placeholder = "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)"
    if placeholder not in RECORD_ONE:
        raise RuntimeError("outbox.sql.RECORD_ONE changed shape: update bench/record_sql.py")
    record = RECORD_ONE.replace(placeholder, f"VALUES ({VALS})")
    return {
        "tx": (TICKET, False),
        "+ plain table INSERT": (f"{TICKET}\nINSERT INTO bench_plain_events ({COLS}) VALUES ({VALS});", False),
        "+ outbox_events INSERT (bare)": (f"{TICKET}\nINSERT INTO outbox_events ({COLS}) VALUES ({VALS});", False),
        "+ ... ON CONFLICT (event_id) DO NOTHING": (
            f"{TICKET}\nINSERT INTO outbox_events ({COLS}) VALUES ({VALS}) ON CONFLICT (event_id) DO NOTHING;",
            False,
        ),
        "+ RECORD_ONE (CTE + notify check), relay busy": (f"{TICKET}\n{record};", False),
        "+ RECORD_ONE, relay idle: NOTIFY sent": (f"{TICKET}\n{record};", True),
    }


def _reset(dsn: str, idle: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("TRUNCATE tickets, bench_plain_events, outbox_events")
        c.execute(
            "UPDATE outbox_relay SET notify_until = CASE WHEN %s THEN clock_timestamp() + interval '1 hour' END",
            (idle,),
        )
        c.execute("VACUUM (ANALYZE) tickets, bench_plain_events, outbox_events")
        c.execute("CHECKPOINT")


def _once(exe: str, dsn: str, body: str, clients: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write("BEGIN;\n" + body + "\nCOMMIT;\n")
        f.flush()
        pg = common.ProcCpu(urlsplit(dsn).path.lstrip("/")).start()
        p = subprocess.run(
            [exe, "-n", "-M", "prepared", "-f", f.name, "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(max(1, round(seconds))), dsn],
            capture_output=True, text=True,
        )  # fmt: skip
        cpu = pg.stop()
    m = re.search(r"tps = ([0-9.]+)", p.stdout)
    n = re.search(r"actually processed: ([0-9]+)", p.stdout)
    if not m or not n:
        raise RuntimeError(f"pgbench failed: {p.stderr[-500:]}")
    count = int(n.group(1))
    return {"tx": count, "tx_per_s": round(float(m.group(1)), 1), "pg_cpu_us_per_tx": round(1e6 * cpu / count, 1)}


def run(env: common.Env, *, clients: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    exe = shutil.which("pgbench")
    if exe is None:
        print("record-sql: pgbench not on PATH, skipped")
        return {"part": "record-sql", "skipped": "pgbench not on PATH", "summary": [], "raw": []}
    dsn = env.new_database("record_sql")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(SETUP_SQL)
    print(f"record-sql: pgbench -M prepared, {clients} clients, {seconds:g}s per cell, {rounds} round(s)", flush=True)
    raw: list[dict[str, Any]] = []
    vs = variants()
    for rnd in range(rounds):
        for n in clients:
            for label, (body, idle) in vs.items():
                r = common.measured(
                    env,
                    f"{label} x{n}",
                    lambda b=body, k=n: _once(exe, dsn, b, k, seconds),
                    lambda i=idle: _reset(dsn, i),
                )
                r.update(variant=label, clients=n, round=rnd)
                raw.append(r)
                print(
                    f"  round {rnd + 1} {n:>2} clients {label:<46} {r['tx_per_s']:>8,.0f} tx/s  "
                    f"PG {r['pg_cpu_us_per_tx']:>5.0f} µs/tx (others {r['other_pct']}%)",
                    flush=True,
                )
    summary = []
    for n in clients:
        for label in vs:
            cell = [r for r in raw if r["clients"] == n and r["variant"] == label]
            summary.append(
                {
                    "clients": n,
                    "variant": label,
                    "tx_per_s": common.median([r["tx_per_s"] for r in cell]),
                    "pg_cpu_us_per_tx": common.median([r["pg_cpu_us_per_tx"] for r in cell]),
                    "runs": [r["tx_per_s"] for r in cell],
                }
            )
    env.drop_database(dsn)
    return {
        "part": "record-sql",
        "params": {"clients": clients, "seconds": seconds, "rounds": rounds},
        "summary": summary,
        "raw": raw,
    }


def report(res: dict[str, Any]) -> str:
    if res.get("skipped"):
        return f"record-sql skipped: {res['skipped']}"
    clients = res["params"]["clients"]
    by = {(s["clients"], s["variant"]): s for s in res["summary"]}
    labels = list(dict.fromkeys(s["variant"] for s in res["summary"]))
    rows = []
    for label in labels:
        row: list[Any] = [label]
        for n in clients:
            s, base = by[(n, label)], by[(n, "tx")]
            row += [
                f"{s['tx_per_s']:,.0f}",
                f"{s['pg_cpu_us_per_tx']:,.0f}",
                f"{s['pg_cpu_us_per_tx'] - base['pg_cpu_us_per_tx']:+,.0f}",
            ]
        rows.append(row)
    headers = ["BEGIN; INSERT ticket; ...; COMMIT"]
    for n in clients:
        headers += [f"{n} clients tx/s", "PG µs/tx", "vs tx"]
    p = res["params"]
    return common.table(
        headers,
        rows,
        title=f"record-sql: pgbench -M prepared (no Python), median of {p['rounds']} runs of {p['seconds']:g}s; "
        "PG µs/tx = CPU of the Postgres backends per transaction",
    )
