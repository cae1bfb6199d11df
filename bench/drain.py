"""Part 2, ``drain``: how fast the relay empties a backlog, next to the raw ceiling of the same servers.

Three scenarios per round (``scenarios``), each on fresh stream keys:

``outage`` (the production case): the backlog a relay finds after an outage. On a fresh database (the
  table never analysed), ``writers`` processes commit ``rows`` events with outbox.record, one per
  transaction (bench.outage.fill); then nothing: no VACUUM, ANALYZE or CHECKPOINT, autovacuum as the
  server has it (its pg_stat_user_tables counters are read before and after each drain). Then
  (a) the relay, Relay(settings, batch_size).run(until_idle=True) in this process, timed to its return;
  (b) on another such backlog (same fill), bench.raw_ceiling's claim-and-mark + pipelined XADD loop.
  Round 0 also clones the raw backlog (CREATE DATABASE ... TEMPLATE: a page copy, no tuple is read) and
  runs EXPLAIN (ANALYZE, BUFFERS) of the relay's claim there, twice (cold, then warm).
``live``: the same after-outage backlog, then the writers keep committing at ``live_rate`` events/s
  while the relay drains; timed until the relay has caught up (pending below one batch), or ``live_timeout``.
``prepared`` (not production): TRUNCATE, INSERT ... SELECT generate_series building valid TICKET_CREATED
  payloads in SQL, VACUUM ANALYZE + CHECKPOINT, then (a) and (b) as above (refilled and prepared again
  for (b)).

Every drain is verified (stats.published, XLEN of its stream, rows marked published) and charged with
CPU µs per event: this process (the relay or the raw loop), the Postgres backends of its database
(without the live writers' backends) and redis-server.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psycopg

from bench import common, outage, raw_ceiling

SCENARIOS = ("prepared", "outage", "live")


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


def with_cpu(env: common.Env, dsn: str, fn: Any, exclude: set[int] | None = None) -> dict[str, Any]:
    """Run ``fn()`` (a drain in this process) and add CPU µs per event: this process (the relay or the
    raw loop), the Postgres backends of ``dsn``'s database but those in ``exclude``, and redis-server."""
    from urllib.parse import urlsplit

    rpid = common.redis_pid(env)
    pg = outage.ProcCpuExcept(urlsplit(dsn).path.lstrip("/"), exclude or set()).start()
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


def relay_catch_up(
    dsn: str, redis_url: str, stream: str, batch_size: int, backlog: int, writers: outage.LiveWriters, timeout: float
) -> dict[str, Any]:
    """The relay drains ``backlog`` pending rows while ``writers`` keep committing; timed from the relay's
    start until it has caught up (pending = committed - published below one batch), or ``timeout``."""
    from outbox.relay import Relay
    from outbox.settings import load_settings

    settings = load_settings(database_url=dsn, redis_url=redis_url, stream=stream, batch_size=batch_size)
    relay = Relay(settings)
    writers.start()
    time.sleep(1.0)  # the writers are at their pace when the relay comes back
    seen: dict[str, Any] = {}
    gc.collect()
    base = writers.committed()
    t0 = time.perf_counter()

    def watch() -> None:
        deadline = t0 + timeout
        while not relay.stopping:
            committed, published, now = writers.committed(), relay.stats.published, time.perf_counter()
            pending = backlog + committed - published
            if pending < batch_size or now > deadline:
                seen.update(
                    t=now - t0, published=published, incoming=committed - base, pending=pending,
                    caught_up=pending < batch_size,
                )  # fmt: skip
                relay.stop()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stats = relay.run()
    watcher.join(10)
    t = seen["t"]
    return {
        "events": seen["published"],  # the CPU figures are per event published until caught up
        "seconds": round(t, 3),
        "caught_up": seen["caught_up"],
        "backlog_at_start": backlog + base,
        "incoming": seen["incoming"],
        "incoming_per_s": round(seen["incoming"] / t, 1),
        "pending_at_end": seen["pending"],
        "events_per_s": round(seen["published"] / t, 1),
        "net_drain_per_s": round((backlog + base - seen["pending"]) / t, 1),
        "published_total": stats.published,
        "batches": stats.batches,
        "dead": stats.dead,
        "failed": stats.failed,
    }


def _count(dsn: str, status: str) -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute("SELECT count(*) FROM outbox_events WHERE status = %s", (status,)).fetchone()[0])  # type: ignore[index]


def _clone(env: common.Env, dsn: str, label: str) -> str:
    """A copy of ``dsn``'s database (CREATE DATABASE ... TEMPLATE: pages copied, no tuple read)."""
    from urllib.parse import urlsplit

    src = urlsplit(dsn).path.lstrip("/")
    name = f"bench_{env.run_id}_{label}"
    with psycopg.connect(env.admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{src}"')
    env.databases.append(name)
    return common.db_url_for(env.admin_url, name)


def _explain_analyze(env: common.Env, dsn: str, batch_size: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the relay's claim on a copy of an untouched after-outage backlog: a new
    leader's first claim (cold: nothing read yet), then a claim-ahead excluding the first batch (warm)."""
    copy = _clone(env, dsn, "explain")
    try:
        before = outage.table_state(copy)
        cold = outage.explain_claim(copy, batch_size, analyze=True)
        with psycopg.connect(copy) as c:
            first = int(c.execute("SELECT min(id) FROM outbox_events").fetchone()[0])  # type: ignore[index]
        warm = outage.explain_claim(copy, batch_size, analyze=True, exclude=list(range(first, first + batch_size)))
    finally:
        env.drop_database(copy)
    return {"state": before, "cold": cold, "warm": warm}


def _label(kind: str, scenario: str, batch_size: int) -> str:
    if kind == "relay":
        return f"relay: Relay(batch_size={batch_size}).run(until_idle=True)"
    return "raw ceiling: claim+mark UPDATE (plan pinned), pipelined XADD"


def run(
    env: common.Env, *, rows: int, rounds: int, batch_size: int, scenarios: tuple[str, ...] = SCENARIOS,
    writers: int = 4, live_rate: float = 1000.0, live_timeout: float = 180.0, explain: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Every scenario ``rounds`` times (module docstring); per-run records and a summary per scenario."""
    print(
        f"drain: backlog {rows:,} rows, batch {batch_size}, {rounds} round(s), scenarios {', '.join(scenarios)}; "
        f"after-outage backlogs from {writers} writer processes, live rate {live_rate:,.0f}/s",
        flush=True,
    )
    raw: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    explains: dict[str, Any] = {}
    from outbox.relay import sql as relay_sql

    pinned_claim = hasattr(relay_sql, "CLAIM_PLAN")

    def relay_plans(dsn: str) -> str:
        """The relay's claim plans (plain EXPLAIN): a new leader's first claim, and the next ones, which
        exclude the batch in flight (a 1000-id array changes the row estimate, so it can change the plan)."""
        with psycopg.connect(dsn) as c:
            first = int(c.execute("SELECT coalesce(min(id), 1) FROM outbox_events").fetchone()[0])  # type: ignore[index]
        a = outage.plan_shape(outage.explain_claim(dsn, batch_size, analyze=False))
        b = outage.plan_shape(
            outage.explain_claim(dsn, batch_size, analyze=False, exclude=list(range(first, first + batch_size)))
        )
        return a if a == b else f"first: {a}; next: {b}"

    def drain_with_cpu(dsn: str, drain: Any) -> dict[str, Any]:
        return with_cpu(env, dsn, lambda: drain(dsn, env.redis_url, cur["stream"], batch_size))

    def new_stream(kind: str) -> str:
        if cur.get("stream"):
            env.delete_keys(cur["stream"])
        cur["stream"] = env.stream(f"drain-{kind}")
        return str(cur["stream"])

    def fresh_outage_db(kind: str) -> str:
        if cur.get("dsn"):
            env.drop_database(cur["dsn"])
        cur["dsn"] = dsn = env.new_database(f"outage_{kind}")
        cur["fill"] = outage.fill(dsn, rows, writers)
        cur["state0"] = outage.table_state(dsn)
        cur["plan"] = relay_plans(dsn)
        cur["raw_plan"] = outage.plan_shape(raw_ceiling.explain(dsn, batch_size), cte=None)
        cur["raw_plan_unpinned"] = outage.plan_shape(raw_ceiling.explain(dsn, batch_size, pin_plan=False), cte=None)
        new_stream(kind)
        return dsn

    def finish(r: dict[str, Any], scenario: str, kind: str, rnd: int, dsn: str, expected: int) -> dict[str, Any]:
        chk = _check_stream(env, cur["stream"], expected)
        r.update(
            scenario=scenario, kind=kind, round=rnd, stream_xlen=chk["xlen"], db_published=_count(dsn, "published")
        )
        r["verified"] = chk["ok"] and r["events"] == expected and (kind == "raw" or r["db_published"] == expected)
        if scenario != "prepared":
            after = outage.table_state(dsn)
            r.update(
                fill=cur["fill"], claim_plan=cur["plan"] if kind != "raw" else cur["raw_plan"],
                raw_plan_unpinned=cur["raw_plan_unpinned"], table_before=cur["state0"], table_after=after,
                analysed_during=outage.analysed_during(cur["state0"], after),
                analysed_before=outage.analysed_during({}, cur["state0"]),
                checkpoints_during=(after["checkpoints"] or 0) - (cur["state0"]["checkpoints"] or 0),
            )  # fmt: skip
        else:
            r.update(claim_plan=cur["plan"] if kind != "raw" else cur["raw_plan"])
        raw.append(r)
        extra = ""
        if scenario != "prepared":
            extra = (
                f"; fill {r['fill']['seconds']}s at {r['fill']['rate']:,.0f}/s; claim plan {r['claim_plan']}; "
                f"analysed before: {r['analysed_before']}, during: {r['analysed_during']}; "
                f"checkpoints during {r['checkpoints_during']}"
            )
        if scenario == "live":
            extra += (
                f"; caught up={r['caught_up']}, incoming {r['incoming_per_s']:,.0f}/s, "
                f"net drain {r['net_drain_per_s']:,.0f}/s, pending at end {r['pending_at_end']:,}"
            )
        print(
            f"  round {rnd + 1} {scenario} {kind}: {r['events']:,} events in {r['seconds']:.2f}s = "
            f"{r['events_per_s']:,.0f}/s (XLEN {chk['xlen']:,}, marked {r['db_published']:,}, "
            f"verified={r['verified']}; CPU µs/event {r['cpu_us_per_event']}; machine busy "
            f"{r['window_busy_pct']}%, others {r['other_pct']}%{extra})",
            flush=True,
        )
        return r

    for rnd in range(rounds):
        if "outage" in scenarios:
            r = common.measured(
                env, "after-outage relay drain",
                lambda: drain_with_cpu(cur["dsn"], relay_drain),
                lambda: fresh_outage_db("relay"),
            )  # fmt: skip
            finish(r, "outage", "relay", rnd, cur["dsn"], rows)

            def raw_setup() -> None:
                dsn = fresh_outage_db("raw")
                if explain and not explains:
                    print("  EXPLAIN (ANALYZE, BUFFERS) of the claim on a copy of the backlog...", flush=True)
                    explains.update(_explain_analyze(env, dsn, batch_size))

            q = common.measured(
                env, "after-outage raw ceiling drain",
                lambda: drain_with_cpu(cur["dsn"], raw_ceiling.drain_raw),
                raw_setup,
            )  # fmt: skip
            finish(q, "outage", "raw", rnd, cur["dsn"], rows)

        if "live" in scenarios:

            def live_setup() -> None:
                fresh_outage_db("live")
                if cur.get("writers"):
                    cur["writers"].stop()
                cur["writers"] = outage.LiveWriters(cur["dsn"], live_rate, writers)

            def live_run() -> dict[str, Any]:
                w: outage.LiveWriters = cur["writers"]
                try:
                    return with_cpu(
                        env, cur["dsn"],
                        lambda: relay_catch_up(
                            cur["dsn"], env.redis_url, cur["stream"], batch_size, rows, w, live_timeout
                        ),
                        exclude=w.backend_pids,
                    )  # fmt: skip
                finally:
                    cur["committed"] = rows + w.stop()
                    cur["writers"] = None

            r = common.measured(env, "after-outage relay catch-up (writers still writing)", live_run, live_setup)
            r["committed_total"] = cur["committed"]
            r["db_pending_after"] = _count(cur["dsn"], "pending")
            finish(r, "live", "relay", rnd, cur["dsn"], r["events"])
            # the relay published past the catch-up instant while it finished its batch: check the totals
            r["verified"] = (
                r["stream_xlen"] == r["published_total"] == r["db_published"]
                and r["db_published"] + r["db_pending_after"] == r["committed_total"]
            )

        if cur.get("dsn"):
            env.drop_database(cur["dsn"])
            cur["dsn"] = None

        if "prepared" in scenarios:
            cur["dsn"] = dsn = env.new_database("drain")

            def setup(kind: str) -> None:
                dsn = cur["dsn"]
                new_stream(f"prepared-{kind}")
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute("TRUNCATE outbox_events")
                cur["fill_seconds"] = round(common.fill_backlog(dsn, rows), 1)  # VACUUM ANALYZE + CHECKPOINT
                cur["payload_bytes"] = common.check_backlog_valid(dsn)
                cur["plan"] = relay_plans(dsn)
                cur["raw_plan"] = outage.plan_shape(raw_ceiling.explain(dsn, batch_size), cte=None)
                gc.collect()

            r = common.measured(
                env, "prepared relay drain",
                lambda: drain_with_cpu(cur["dsn"], relay_drain),
                lambda: setup("relay"),
            )  # fmt: skip
            r.update(fill_seconds=cur["fill_seconds"], payload_bytes=cur["payload_bytes"])
            finish(r, "prepared", "relay", rnd, dsn, rows)
            q = common.measured(
                env, "prepared raw ceiling drain",
                lambda: drain_with_cpu(cur["dsn"], raw_ceiling.drain_raw),
                lambda: setup("raw"),
            )  # fmt: skip
            finish(q, "prepared", "raw", rnd, dsn, rows)
            env.drop_database(dsn)
            cur["dsn"] = None

    if cur.get("stream"):
        env.delete_keys(cur["stream"])
    return {
        "part": "drain",
        "params": {
            "rows": rows,
            "rounds": rounds,
            "batch_size": batch_size,
            "scenarios": list(scenarios),
            "writers": writers,
            "live_rate": live_rate,
            "live_timeout": live_timeout,
            "payload_bytes": outage.payload_bytes(),
            "relay_claim_plan_pinned": pinned_claim,
        },
        "summary": _summary(raw),
        "explain_claim": explains,
        "raw": raw,
    }


def _summary(raw: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        runs = [r for r in raw if r["scenario"] == scenario]
        if not runs:
            continue
        s: dict[str, Any] = {}
        for kind in ("relay", "raw"):
            rs = [r for r in runs if r["kind"] == kind]
            if not rs:
                continue
            s[kind] = {
                "events_per_s": common.median([r["events_per_s"] for r in rs]),
                "cpu_us_per_event": {
                    k: common.median([r["cpu_us_per_event"][k] or 0.0 for r in rs])
                    for k in ("python", "postgres", "redis", "total")
                },
                "others_pct": common.median([r["other_pct"] for r in rs]),
                "verified": all(r["verified"] for r in rs),
                "claim_plans": sorted({r["claim_plan"] for r in rs}),
            }
            if scenario == "live":
                s[kind].update(
                    seconds=common.median([r["seconds"] for r in rs]),
                    caught_up=all(r["caught_up"] for r in rs),
                    incoming_per_s=common.median([r["incoming_per_s"] for r in rs]),
                    net_drain_per_s=common.median([r["net_drain_per_s"] for r in rs]),
                    backlog_at_start=common.median([r["backlog_at_start"] for r in rs]),
                )
        if "relay" in s and "raw" in s and s["raw"]["events_per_s"]:
            s["relay_over_raw"] = round(s["relay"]["events_per_s"] / s["raw"]["events_per_s"], 3)
        out[scenario] = s
    return out


SCENARIO_LABELS = {
    "outage": "after outage (production)",
    "prepared": "prepared (not production)",
    "live": "after outage, writers still writing",
}


def report(res: dict[str, Any]) -> str:
    s, p = res["summary"], res["params"]
    rows = []
    for scenario in ("outage", "prepared"):
        for kind in ("relay", "raw"):
            c_ = s.get(scenario, {}).get(kind)
            if not c_:
                continue
            runs = [r for r in res["raw"] if r["scenario"] == scenario and r["kind"] == kind]
            c = c_["cpu_us_per_event"]
            ratio = s[scenario].get("relay_over_raw")
            rows.append(
                [
                    SCENARIO_LABELS[scenario],
                    _label(kind, scenario, p["batch_size"]),
                    f"{c_['events_per_s']:,.0f}",
                    ", ".join(f"{r['events_per_s']:,.0f}" for r in runs),
                    f"{ratio:.2f}" if kind == "relay" and ratio else "",
                    f"{c['python']:.1f} + {c['postgres']:.1f} + {c['redis']:.1f} = {c['total']:.1f}",
                    f"{1e6 / c['total']:,.0f}" if c["total"] else "?",
                    "; ".join(c_["claim_plans"]),
                    c_["others_pct"],
                    "yes" if c_["verified"] else "NO",
                ]
            )
    out = common.table(
        [
            "backlog",
            f"drain of {p['rows']:,} rows",
            "events/s (median)",
            "runs",
            "relay / raw",
            "CPU µs/event: Python + PG + Redis",
            "1 / CPU",
            "claim plan",
            "others %",
            "verified",
        ],
        rows,
        title=f"drain: backlog of {p['rows']:,} events, {p['rounds']} round(s); relay claim plan pinned "
        f"(CLAIM_PLAN): {'yes' if p['relay_claim_plan_pinned'] else 'no'}. verified = XLEN == rows (and, for "
        "the relay, stats.published and rows marked published == rows)",
    )
    outage_runs = [r for r in res["raw"] if r["scenario"] != "prepared"]
    if outage_runs:
        av = outage_runs[0]["table_before"]["autovacuum_setting"]
        out += (
            f"\n\nAfter-outage backlogs: {p['writers']} writer processes, outbox.record, one event per transaction "
            f"(mix of {', '.join(f'{k} {v} B' for k, v in p['payload_bytes'].items())}), "
            f"fill rate {', '.join(format(r['fill']['rate'], ',.0f') for r in outage_runs)} events/s; "
            f"server autovacuum = {av}. Analysed/vacuumed before the drain: "
            f"{'; '.join(sorted({r['analysed_before'] for r in outage_runs}))}; during: "
            f"{'; '.join(sorted({r['analysed_during'] for r in outage_runs}))}. Server checkpoints during the "
            f"drains: {', '.join(str(r['checkpoints_during']) for r in outage_runs)}. Bare raw statement's plan "
            f"on that backlog (not run): {'; '.join(sorted({r['raw_plan_unpinned'] for r in outage_runs}))}."
        )
    live = s.get("live", {}).get("relay")
    if live:
        runs = [r for r in res["raw"] if r["scenario"] == "live"]
        alone = s.get("outage", {}).get("relay", {}).get("events_per_s")
        c = live["cpu_us_per_event"]
        out += "\n" + common.table(
            [
                "after outage, writers still writing",
                "backlog at start",
                "incoming/s",
                "caught up after s",
                "relay events/s",
                "net drain/s",
                "relay alone (no writers)",
                "CPU µs/event: Python + PG + Redis",
                "others %",
                "verified",
            ],
            [
                [
                    f"relay, writers offering {p['live_rate']:,.0f}/s"
                    + ("" if live["incoming_per_s"] >= 0.95 * p["live_rate"] else " (writers fell behind)"),
                    f"{live['backlog_at_start']:,.0f}",
                    f"{live['incoming_per_s']:,.0f}",
                    ", ".join(
                        (
                            f"{r['seconds']:.1f}"
                            if r["caught_up"]
                            else f"not after {r['seconds']:.0f} ({r['pending_at_end']:,} pending)"
                        )
                        for r in runs
                    ),
                    f"{live['events_per_s']:,.0f}",
                    f"{live['net_drain_per_s']:,.0f}",
                    f"{alone:,.0f}" if alone else "",
                    f"{c['python']:.1f} + {c['postgres']:.1f} + {c['redis']:.1f} = {c['total']:.1f}",
                    live["others_pct"],
                    "yes" if live["verified"] else "NO",
                ]
            ],
            title="catch-up: caught up = pending (committed - published) below one batch; net drain = "
            "(backlog at start - pending at the end) / time",
        )
    if res.get("explain_claim"):
        e = res["explain_claim"]
        out += (
            "\n\nEXPLAIN (ANALYZE, BUFFERS) of the relay's claim on a copy of the untouched after-outage backlog "
            f"(batch {p['batch_size']}):\n\n-- new leader's first claim (cold)\n{e['cold']}\n\n"
            f"-- the next claim, excluding the first batch (warm)\n{e['warm']}"
        )
    out += (
        "\n\n'1 / CPU' is the rate one sequential loop would reach if the CPU it uses were all it waited for "
        "(no contention, no fsync waits). The raw ceiling pins its claim's plan (index order), so it stays a "
        "ceiling on a never-analysed backlog."
    )
    return out
