"""Part 2, ``drain``: how fast the relay empties a backlog, next to the raw ceiling of the same servers.

Per round, on a fresh database and fresh stream keys:
  (a) fill the backlog (INSERT ... SELECT generate_series building valid TICKET_CREATED payloads in SQL),
      VACUUM ANALYZE + CHECKPOINT, then Relay(settings, batch_size=1000).run(until_idle=True), in this
      process; verify stats.published, XLEN of the stream and the rows marked published;
  (b) TRUNCATE, refill the same number of rows, VACUUM ANALYZE + CHECKPOINT, then bench.raw_ceiling
      (plain claim-and-mark + pipelined XADD) to its own stream; verify XLEN.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import psycopg

from bench import common, raw_ceiling


def relay_drain(dsn: str, redis_url: str, stream: str, batch_size: int) -> dict[str, Any]:
    from outbox.relay import Relay
    from outbox.settings import load_settings

    settings = load_settings(database_url=dsn, redis_url=redis_url, stream=stream, batch_size=batch_size)
    relay = Relay(settings)
    gc.collect()
    t0 = time.perf_counter()
    stats = relay.run(until_idle=True)
    elapsed = time.perf_counter() - t0
    return {
        "events": stats.published,
        "seconds": round(elapsed, 3),
        "events_per_s": round(stats.published / elapsed, 1),
        "batches": stats.batches,
        "dead": stats.dead,
        "failed": stats.failed,
        "fence_skipped": stats.fence_skipped,
    }


def with_cpu(env: common.Env, dsn: str, fn: Any) -> dict[str, Any]:
    """Run ``fn()`` (a drain in this process) and add CPU µs per event: this process (the relay or the
    raw loop), the Postgres backends of ``dsn``'s database, and redis-server."""
    from urllib.parse import urlsplit

    rpid = common.redis_pid(env)
    pg = common.ProcCpu(urlsplit(dsn).path.lstrip("/")).start()
    r0 = common.pid_cpu(rpid) if rpid else 0.0
    c0 = time.process_time()
    res = dict(fn())
    c1 = time.process_time()
    r1 = common.pid_cpu(rpid) if rpid else 0.0
    pg_s = pg.stop()
    n = res["events"] or 1
    res["cpu_us_per_event"] = {
        "python": round(1e6 * (c1 - c0) / n, 1),
        "postgres": round(1e6 * pg_s / n, 1),
        "redis": round(1e6 * (r1 - r0) / n, 1) if rpid else None,
    }
    res["cpu_us_per_event"]["total"] = round(sum(v or 0.0 for v in res["cpu_us_per_event"].values()), 1)
    return res


def _published(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute("SELECT count(*) FROM outbox_events WHERE status = 'published'").fetchone()[0])  # type: ignore[index]


def _check_stream(env: common.Env, stream: str, expected: int) -> dict[str, Any]:
    from outbox import wire

    client = env.redis()
    try:
        xlen = int(client.xlen(stream))
        first = client.xrange(stream, count=1)
        last = client.xrevrange(stream, count=1)
    finally:
        client.close()
    ok_fields = all(set(wire.decode(sid, f).__dict__) >= set(wire.FIELDS) for sid, f in first + last)
    return {"xlen": xlen, "ok": xlen == expected and ok_fields}


def run(env: common.Env, *, rows: int, rounds: int, batch_size: int) -> dict[str, Any]:
    print(f"drain: backlog {rows:,} rows, batch {batch_size}, {rounds} round(s)", flush=True)
    raw: list[dict[str, Any]] = []
    dsn = env.new_database("drain")
    cur: dict[str, Any] = {}

    def setup(kind: str) -> None:
        if cur.get("stream"):
            env.delete_keys(cur["stream"])
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("TRUNCATE outbox_events")
        cur["fill_seconds"] = round(common.fill_backlog(dsn, rows), 1)
        cur["payload_bytes"] = common.check_backlog_valid(dsn)
        cur["stream"] = env.stream(f"drain-{kind}")
        gc.collect()

    for rnd in range(rounds):
        r = common.measured(
            env, "relay drain",
            lambda: with_cpu(env, dsn, lambda: relay_drain(dsn, env.redis_url, cur["stream"], batch_size)),
            lambda: setup("relay"),
        )  # fmt: skip
        chk = _check_stream(env, cur["stream"], rows)
        r.update(
            kind="relay", round=rnd, fill_seconds=cur["fill_seconds"], payload_bytes=cur["payload_bytes"],
            stream_xlen=chk["xlen"], db_published=_published(dsn),
        )  # fmt: skip
        r["verified"] = chk["ok"] and r["events"] == rows and r["db_published"] == rows
        raw.append(r)
        print(
            f"  round {rnd + 1} relay: {r['events']:,} events in {r['seconds']:.2f}s = {r['events_per_s']:,.0f}/s "
            f"(XLEN {chk['xlen']:,}, marked {r['db_published']:,}, verified={r['verified']}; CPU µs/event "
            f"{r['cpu_us_per_event']}; "
            f"machine busy {r['window_busy_pct']}%, others {r['other_pct']}%)",
            flush=True,
        )

        q = common.measured(
            env, "raw ceiling drain",
            lambda: with_cpu(env, dsn, lambda: raw_ceiling.drain_raw(dsn, env.redis_url, cur["stream"], batch_size)),
            lambda: setup("raw"),
        )  # fmt: skip
        chk = _check_stream(env, cur["stream"], rows)
        q.update(
            kind="raw", round=rnd, stream_xlen=chk["xlen"], db_published=_published(dsn),
            verified=chk["ok"] and q["events"] == rows,
        )  # fmt: skip
        raw.append(q)
        print(
            f"  round {rnd + 1} raw:   {q['events']:,} events in {q['seconds']:.2f}s = {q['events_per_s']:,.0f}/s "
            f"(XLEN {chk['xlen']:,}, verified={q['verified']}; CPU µs/event {q['cpu_us_per_event']}; "
            f"machine busy {q['window_busy_pct']}%, "
            f"others {q['other_pct']}%)",
            flush=True,
        )
    if cur.get("stream"):
        env.delete_keys(cur["stream"])
    env.drop_database(dsn)
    relay_eps = common.median([r["events_per_s"] for r in raw if r["kind"] == "relay"])
    raw_eps = common.median([r["events_per_s"] for r in raw if r["kind"] == "raw"])
    cpu = {
        kind: {
            k: common.median([r["cpu_us_per_event"][k] or 0.0 for r in raw if r["kind"] == kind])
            for k in ("python", "postgres", "redis", "total")
        }
        for kind in ("relay", "raw")
    }
    return {
        "part": "drain",
        "params": {"rows": rows, "rounds": rounds, "batch_size": batch_size},
        "summary": {
            "relay_events_per_s": relay_eps,
            "raw_events_per_s": raw_eps,
            "relay_over_raw": round(relay_eps / raw_eps, 3) if raw_eps else None,
            "cpu_us_per_event": cpu,
            "all_verified": all(r["verified"] for r in raw),
            "others_pct": {
                kind: common.median([r["other_pct"] for r in raw if r["kind"] == kind]) for kind in ("relay", "raw")
            },
        },
        "raw": raw,
    }


def report(res: dict[str, Any]) -> str:
    s, p = res["summary"], res["params"]
    rows = []
    for kind, label, eps in (
        ("relay", f"relay: Relay(batch_size={p['batch_size']}).run(until_idle=True)", s["relay_events_per_s"]),
        ("raw", "raw ceiling: claim+mark UPDATE, pipelined XADD", s["raw_events_per_s"]),
    ):
        runs = [r for r in res["raw"] if r["kind"] == kind]
        c = s["cpu_us_per_event"][kind]
        rows.append(
            [
                label,
                f"{eps:,.0f}",
                ", ".join(f"{r['events_per_s']:,.0f}" for r in runs),
                f"{c['python']:.1f} + {c['postgres']:.1f} + {c['redis']:.1f} = {c['total']:.1f}",
                f"{1e6 / c['total']:,.0f}" if c["total"] else "?",
                s["others_pct"][kind],
                "yes" if all(r["verified"] for r in runs) else "NO",
            ]
        )
    out = common.table(
        [
            f"drain of {p['rows']:,} rows",
            "events/s (median)",
            "runs",
            "CPU µs/event: Python + PG + Redis",
            "1 / CPU",
            "others %",
            "verified",
        ],
        rows,
        title=f"drain: backlog of {p['rows']:,} TICKET_CREATED rows, {p['rounds']} round(s). verified = "
        "XLEN == rows (and, for the relay, stats.published and rows marked published == rows)",
    )
    out += (
        f"\n\nrelay / raw ceiling = {s['relay_over_raw']:.2f}. '1 / CPU' is the rate one sequential loop "
        "would reach if the CPU it uses were all it waited for (no contention, no fsync waits)."
    )
    return out
