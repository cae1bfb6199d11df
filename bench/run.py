#!/usr/bin/env python
"""Benchmark suite of the outbox: one entry point.

    python bench/run.py [--quick] [--database-url URL --redis-url URL] PART [PART ...]

PART: record-cost | record-sql | drain | latency | profile | compare | all (= the first five, in that order).
compare (bench/compare.py: poll vs WAL capture) starts a Postgres and a Redis of its own (wal_level=logical)
and ignores the server flags; it is run by name only, after the others.
Servers: the flags, else OUTBOX_DATABASE_URL / OUTBOX_REDIS_URL, else embedded servers
(outbox.embedded). Every run works in its own databases (bench_<run id>_*) and stream keys
(bench:<run id>:*) and drops/deletes them at the end. Results: a table on stdout and
bench/results/<part>[-quick].json (or <name>-<part>.json with --name).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

PARTS = ("record-cost", "record-sql", "drain", "latency", "profile", "compare")
# compare runs on servers of its own for ~25 min (python -m bench.compare): by name only, not in "all"
ALL = PARTS[:5]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("parts", nargs="+", choices=(*PARTS, "all"), metavar="PART", help=" | ".join((*PARTS, "all")))
    ap.add_argument("--quick", action="store_true", help="short version of every part (smoke run, noisy figures)")
    ap.add_argument(
        "--database-url", help="Postgres server to create the bench databases on (default $OUTBOX_DATABASE_URL)"
    )
    ap.add_argument("--redis-url", help="Redis server (default $OUTBOX_REDIS_URL)")
    ap.add_argument("--name", help="results file prefix: bench/results/<name>-<part>.json")
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=25.0,
        help="before each measurement wait until the machine is below this %% busy (default 25)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="longest wait for a quiet machine per measurement, s (default 180; 0 = never wait)",
    )
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="repeat a measurement when other people's processes used more than this %% of the "
        "machine during it (default 10)",
    )
    ap.add_argument("--retries", type=int, default=2, help="repeats of a noisy measurement (default 2)")
    g = ap.add_argument_group("record-cost / record-sql")
    g.add_argument("--clients", type=_ints, help="writer counts, comma-separated (default 1,4,16)")
    g.add_argument("--seconds", type=float, help="seconds per variant and writer count (default 10; quick 2)")
    g.add_argument("--rounds", type=int, help="rounds, median reported (default 3; quick 1)")
    g.add_argument("--sql-clients", type=_ints, help="record-sql pgbench clients (default 4,16)")
    g.add_argument("--workers", choices=("process", "thread"), default="process", help="writer kind (default process)")
    g = ap.add_argument_group("drain / profile")
    g.add_argument("--rows", type=int, help="backlog rows (default 200000; quick 20000)")
    g.add_argument("--drain-rounds", type=int, help="drain rounds, median reported (default 3; quick 1)")
    g.add_argument("--batch-size", type=int, default=1000, help="relay and raw ceiling batch size (default 1000)")
    g.add_argument("--profile-rows", type=int, help="backlog rows for the profile (default 100000; quick 20000)")
    g.add_argument(
        "--drain-scenarios",
        default="outage,live,prepared",
        help="drain backlogs, comma-separated: outage (written by --drain-writers processes while no relay ran, "
        "never analysed), live (the same, writers still writing at --live-rate), prepared (SQL fill + VACUUM "
        "ANALYZE + CHECKPOINT: not production). Default all three",
    )
    g.add_argument("--drain-writers", type=int, default=4, help="processes writing an after-outage backlog (default 4)")
    g.add_argument("--live-rate", type=float, default=1000.0, help="live scenario: events/s offered (default 1000)")
    g.add_argument(
        "--live-timeout",
        type=float,
        default=180.0,
        help="live scenario: longest wait for the catch-up, s (default 180)",
    )
    g.add_argument(
        "--no-explain", action="store_true", help="skip the EXPLAIN (ANALYZE, BUFFERS) of the claim (a backlog copy)"
    )
    g = ap.add_argument_group("latency")
    g.add_argument("--modes", default="notify,poll", help="wake modes (default notify,poll)")
    g.add_argument("--rate", type=float, default=1000.0, help="steady events/s (default 1000)")
    g.add_argument("--latency-seconds", type=float, help="steady phase length (default 20; quick 5)")
    g.add_argument("--warmup", type=float, help="steady phase warm-up reported apart, s (default 2; quick 1)")
    g.add_argument("--writers", type=int, default=4, help="writer processes sharing the steady rate (default 4)")
    g.add_argument("--sparse-rate", type=float, default=2.0, help="sparse phase events/s, Poisson (default 2; 0 = off)")
    g.add_argument("--sparse-seconds", type=float, help="sparse phase length (default 20; quick 5)")
    a = ap.parse_args(argv)
    q = a.quick
    a.clients = a.clients or [1, 4, 16]
    a.sql_clients = a.sql_clients or [4, 16]
    a.seconds = a.seconds or (2.0 if q else 10.0)
    a.rounds = a.rounds or (1 if q else 3)
    a.rows = a.rows or (20_000 if q else 200_000)
    a.drain_rounds = a.drain_rounds or (1 if q else 3)
    a.profile_rows = a.profile_rows or (20_000 if q else 100_000)
    a.latency_seconds = a.latency_seconds or (5.0 if q else 20.0)
    a.sparse_seconds = a.sparse_seconds if a.sparse_seconds is not None else (5.0 if q else 20.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.modes = [m for m in a.modes.split(",") if m]
    a.drain_scenarios = tuple(x for x in a.drain_scenarios.split(",") if x)
    if bad := set(a.drain_scenarios) - {"outage", "live", "prepared"}:
        ap.error(f"unknown drain scenario(s): {', '.join(sorted(bad))}")
    if "all" in a.parts:
        a.parts = [*ALL, *(["compare"] if "compare" in a.parts else [])]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    common.QUIET.update(
        threshold=a.quiet_threshold, max_wait=a.quiet_wait, max_foreign=a.max_foreign, retries=a.retries
    )
    shared = [p for p in a.parts if p != "compare"]
    if shared:
        _shared_parts(a, shared, argv)
    if "compare" in a.parts:
        from bench import compare

        opts = ["--quiet-threshold", str(a.quiet_threshold), "--max-foreign", str(a.max_foreign)]
        opts += ["--quick"] if a.quick else []
        opts += ["--name", f"{a.name}-compare"] if a.name else []
        compare.main(opts)
    return 0


def _shared_parts(a: argparse.Namespace, parts: list[str], argv: list[str] | None) -> None:
    """The parts that run on the given (or embedded) servers, in one environment."""
    from bench import drain, latency, profile_relay, record_cost, record_sql

    with common.environment(a.database_url, a.redis_url) as env:
        info = common.machine_info(env)
        common.print_machine(info)
        defaults = common.relay_defaults()
        print("relay settings (defaults unless noted per part): " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
        print(f"run id {env.run_id}: databases bench_{env.run_id}_*, keys {env.key_prefix}:*", flush=True)
        for part in parts:
            started = time.time()
            print(f"\n== {part} ==", flush=True)
            if part == "record-cost":
                res = record_cost.run(env, clients=a.clients, seconds=a.seconds, rounds=a.rounds, mode=a.workers)
                text = record_cost.report(res)
            elif part == "record-sql":
                res = record_sql.run(env, clients=a.sql_clients, seconds=a.seconds, rounds=a.rounds)
                text = record_sql.report(res)
            elif part == "drain":
                res = drain.run(
                    env, rows=a.rows, rounds=a.drain_rounds, batch_size=a.batch_size, scenarios=a.drain_scenarios,
                    writers=a.drain_writers, live_rate=a.live_rate, live_timeout=a.live_timeout,
                    explain=not a.no_explain,
                )  # fmt: skip
                text = drain.report(res)
            elif part == "latency":
                res = latency.run(
                    env, modes=a.modes, rate=a.rate, seconds=a.latency_seconds, warmup=a.warmup, writers=a.writers,
                    sparse_rate=a.sparse_rate, sparse_seconds=a.sparse_seconds,
                )  # fmt: skip
                text = latency.report(res)
            else:
                res = profile_relay.run(env, rows=a.profile_rows, batch_size=a.batch_size)
                text = profile_relay.report(res)
            res["machine"] = info
            res["relay_settings"] = defaults
            res["quick"] = a.quick
            res["command"] = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
            res["wall_seconds"] = round(time.time() - started, 1)
            print(text, flush=True)
            name = f"{a.name}-{part}" if a.name else f"{part}{'-quick' if a.quick else ''}"
            path = common.write_results(name, res)
            print(f"\n-> {path.relative_to(common.ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
