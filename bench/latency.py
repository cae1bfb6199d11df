"""Part 3, ``latency``: commit-to-stream latency at a steady rate (and, as an extra, at a sparse rate).

Per wake mode (notify, poll), on a fresh database and stream:
  - the relay runs as ``python -m outbox.relay`` in its own process (OUTBOX_* environment, default settings
    apart from the URLs, stream, wake mode and log level); we wait until it is the leader (and, in
    notify mode, idle and listening, as it would be before traffic starts);
  - a reader process XREAD-BLOCKs the stream and notes the wall-clock arrival time of each event id;
  - writer processes each open a connection and, on a fixed schedule (steady: 1,000 events/s spread
    evenly; sparse: Poisson arrivals at a low rate), run one transaction per event:
    outbox.record(...) then COMMIT, noting time.time() when COMMIT returns;
  - latency = arrival time - commit time, per event id (same clock, same machine).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench import common


def _writer(dsn: str, worker: int, offsets: list[float], t0: float, out: Any) -> None:
    from datetime import UTC, datetime

    import outbox
    from outbox.wire import iso_utc as utc_iso
    from outbox.write import prepare

    conn = psycopg.connect(dsn, application_name=f"bench-latency-writer-{worker}")
    tenant = f"tenant-{worker:04d}"
    user = str(uuid.uuid4())
    title = common.TICKET_TITLES[worker % len(common.TICKET_TITLES)]
    for _ in range(200):  # warm up validation (no rows written)
        now = datetime.now(UTC)
        prepare("TICKET_CREATED", common.ticket_payload(str(uuid.uuid4()), user, title, utc_iso(now)),
                tenant_id=tenant, actor=user)  # fmt: skip
    conn.execute("SELECT 1")
    conn.commit()
    commits: list[tuple[str, float]] = []
    behind = 0.0
    for off in offsets:
        due = t0 + off
        now_t = time.time()
        if due > now_t:
            time.sleep(due - now_t)
        else:
            behind = max(behind, now_t - due)
        now = datetime.now(UTC)
        tid = str(uuid.uuid4())
        eid = outbox.record(
            conn, "TICKET_CREATED", common.ticket_payload(tid, user, title, utc_iso(now)),
            tenant_id=tenant, actor=user, aggregate=f"ticket:{tid}", occurred_at=now,
        )  # fmt: skip
        conn.commit()
        commits.append((str(eid), time.time()))
    conn.close()
    out.put((worker, commits, behind))


def _reader(redis_url: str, stream: str, stop: Any, seen: Any, out: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    last = "0-0"
    arrivals: list[tuple[str, float]] = []
    while True:
        resp = client.xread({stream: last}, count=5000, block=100)
        now = time.time()
        if resp:
            for _key, entries in resp:
                for sid, fields in entries:
                    arrivals.append((fields[b"event_id"].decode(), now))
                    last = sid
            seen.value = len(arrivals)
        elif stop.is_set():
            break
    client.close()
    out.put(arrivals)


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user+sys) used so far by a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _relay_state(dsn: str) -> tuple[bool, bool]:
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT coalesce(lease_until > clock_timestamp(), false), "
            "coalesce(notify_until > clock_timestamp(), false) "
            "FROM outbox_relay WHERE name = 'default'"
        ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def phase(
    dsn: str, env: common.Env, stream: str, relay_pid: int, label: str, schedules: list[list[float]], warmup: float
) -> dict[str, Any]:
    """``_phase`` on a quiet machine, again when other processes got in the way."""
    return common.measured(env, label, lambda: _phase(dsn, env, stream, relay_pid, label, schedules, warmup))


def _phase(
    dsn: str, env: common.Env, stream: str, relay_pid: int, label: str, schedules: list[list[float]], warmup: float
) -> dict[str, Any]:
    """Run writers on ``schedules`` (offsets in s, one list per writer) with a reader; latency stats.

    Events committed in the first ``warmup`` seconds are reported apart (``warmup_*``): they show the
    relay waking from idle, not the steady state."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    stop = ctx.Event()
    seen = ctx.Value("l", 0)
    # Only events written in this phase count; start reading after what is already there.
    client = env.redis()
    already = int(client.xlen(stream)) if client.exists(stream) else 0
    client.close()
    reader = ctx.Process(target=_reader, args=(env.redis_url, stream, stop, seen, out), daemon=True)
    reader.start()
    t0 = time.time() + 1.5
    writers = [
        ctx.Process(target=_writer, args=(dsn, i, offs, t0, out), daemon=True) for i, offs in enumerate(schedules)
    ]
    for w in writers:
        w.start()
    total = sum(len(s) for s in schedules)
    while time.time() < t0:
        time.sleep(0.01)
    cpu0, relay0, w0 = common.cpu_times(), _proc_cpu(relay_pid), time.time()
    results: list[Any] = []
    commits: dict[str, float] = {}
    behind = 0.0
    for _ in writers:
        item = out.get(timeout=max(s[-1] for s in schedules if s) + 300)
        results.append(item)
    for _w, cs, b in results:
        commits.update(cs)
        behind = max(behind, b)
    w1 = time.time()
    cpu1, relay1 = common.cpu_times(), _proc_cpu(relay_pid)
    deadline = time.time() + 30
    while seen.value < already + total and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    arrivals = dict(out.get(timeout=60))
    reader.join(10)
    for w in writers:
        w.join(10)
    cut = t0 + warmup
    lat = sorted(1000.0 * (arrivals[e] - t) for e, t in commits.items() if e in arrivals and t >= cut)
    warm = sorted(1000.0 * (arrivals[e] - t) for e, t in commits.items() if e in arrivals and t < cut)
    arrived = sum(1 for e in commits if e in arrivals)
    first = min(commits.values()) if commits else 0.0
    last = max(commits.values()) if commits else 0.0
    res = {
        "phase": label,
        "events": total,
        "arrived": arrived,
        "missing": total - arrived,
        "measured_events": len(lat),
        "warmup_s": warmup,
        "warmup_events": len(warm),
        "warmup_p50_ms": round(common.percentile(warm, 50), 2) if warm else None,
        "warmup_max_ms": round(warm[-1], 2) if warm else None,
        "write_rate": round((total - 1) / (last - first), 1) if last > first else None,
        "writers_max_behind_ms": round(behind * 1000, 1),
        "p50_ms": round(common.percentile(lat, 50), 2),
        "p95_ms": round(common.percentile(lat, 95), 2),
        "p99_ms": round(common.percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2) if lat else None,
        "min_ms": round(lat[0], 2) if lat else None,
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else None,
        "relay_cpu_pct": round(100 * (relay1 - relay0) / (w1 - w0), 1) if w1 > w0 else None,
        "machine_busy_pct": common.busy_pct(cpu0, cpu1),
    }
    return res


def run_mode(
    env: common.Env, mode: str, *, rate: float, seconds: float, warmup: float, writers: int, sparse_rate: float,
    sparse_seconds: float,
) -> list[dict[str, Any]]:  # fmt: skip
    dsn = env.new_database(f"latency_{mode}")
    stream = env.stream(f"latency-{mode}")
    penv = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    penv.update(
        OUTBOX_DATABASE_URL=dsn, OUTBOX_REDIS_URL=env.redis_url, OUTBOX_STREAM=stream, OUTBOX_WAKE=mode,
        OUTBOX_LOG_LEVEL="WARNING", PYTHONPATH=str(common.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )  # fmt: skip
    log = tempfile.NamedTemporaryFile(prefix=f"bench-relay-{mode}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "outbox.relay"], env=penv, cwd=str(common.ROOT), stdout=log, stderr=log
    )
    out: list[dict[str, Any]] = []
    try:
        _wait(lambda: _relay_state(dsn)[0], 30, "the relay to take the lease")
        if mode == "notify":
            _wait(lambda: _relay_state(dsn)[1], 30, "the relay to go idle and listen")
        else:
            time.sleep(1.0)
        n = int(rate * (warmup + seconds))
        steady = [[i / rate for i in range(k, n, writers)] for k in range(writers)]
        r = phase(dsn, env, stream, proc.pid, f"steady {rate:g}/s", steady, warmup)
        r.update(mode=mode, rate=rate, seconds=seconds, writers=writers)
        out.append(r)
        print(_line(r), flush=True)
        if sparse_rate > 0 and sparse_seconds > 0:
            time.sleep(2.0)  # let the relay go idle (idle_after) before the sparse phase
            rnd = random.Random(42)
            offs: list[float] = []
            t = rnd.expovariate(sparse_rate)
            while t < sparse_seconds:
                offs.append(t)
                t += rnd.expovariate(sparse_rate)
            r = phase(dsn, env, stream, proc.pid, f"sparse ~{sparse_rate:g}/s", [offs], 0.0)
            r.update(mode=mode, rate=sparse_rate, seconds=sparse_seconds, writers=1)
            out.append(r)
            print(_line(r), flush=True)
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited early with {proc.returncode}; log {log.name}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        tail = Path(log.name).read_text()[-2000:]
        if tail.strip():
            print(f"  relay log ({log.name}):\n" + tail, flush=True)
        os.unlink(log.name)
        env.delete_keys(stream)
        env.drop_database(dsn)
    return out


def _line(r: dict[str, Any]) -> str:
    return (
        f"  {r['mode']:<6} {r['phase']:<14} {r['arrived']:>6,}/{r['events']:<6,} events  written at "
        f"{r['write_rate'] or 0:,.0f}/s  warm-up max {r['warmup_max_ms']} ms  "
        f"p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms  "
        f"max {r['max_ms']} ms  relay CPU {r['relay_cpu_pct']}%  machine busy {r['machine_busy_pct']}% "
        f"(others {r['other_pct']}%)"
    )


def run(
    env: common.Env, *, modes: list[str], rate: float, seconds: float, warmup: float, writers: int,
    sparse_rate: float, sparse_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    print(
        f"latency: steady {rate:g} events/s for {warmup:g}s (warm-up, reported apart) + {seconds:g}s by {writers} "
        f"writer process(es); sparse "
        f"~{sparse_rate:g}/s (Poisson) for {sparse_seconds:g}s; relay = python -m outbox.relay; modes {modes}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for mode in modes:
        results += run_mode(
            env, mode, rate=rate, seconds=seconds, warmup=warmup, writers=writers, sparse_rate=sparse_rate,
            sparse_seconds=sparse_seconds,
        )  # fmt: skip
    return {
        "part": "latency",
        "params": {
            "modes": modes, "rate": rate, "seconds": seconds, "warmup": warmup, "writers": writers,
            "sparse_rate": sparse_rate, "sparse_seconds": sparse_seconds,
        },
        "results": results,
    }  # fmt: skip


def report(res: dict[str, Any]) -> str:
    rows = [
        [r["mode"], r["phase"], f"{r['arrived']:,}/{r['events']:,}", r["write_rate"], r["p50_ms"], r["p95_ms"],
         r["p99_ms"], r["max_ms"],
         "—" if not r["warmup_events"] else f"{r['warmup_p50_ms']} / {r['warmup_max_ms']}",
         r["relay_cpu_pct"], r["machine_busy_pct"], r["other_pct"]]
        for r in res["results"]
    ]  # fmt: skip
    headers = ["wake", "load", "arrived", "written/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    headers += ["warm-up p50 / max ms", "relay CPU %", "machine busy %", "others %"]
    p = res["params"]
    return common.table(
        headers,
        rows,
        title=f"latency: COMMIT returned -> entry read from the stream (XREAD BLOCK); steady percentiles "
        f"after a {p['warmup']:g}s warm-up",
    )
