"""Shared plumbing of the benchmark suite: servers, private databases and stream keys, payloads,
machine info, result tables and JSON files.

Nothing here is timed; the parts (record_cost, drain, latency, profile_relay) use it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"

# The same realistic TICKET_CREATED payload everywhere (about 400 bytes once record() has added
# tenantId, occurredAt, actorUserId and actorType).
TICKET_TITLES = (
    "Printer on floor 3 is jammed again",
    "VPN drops every 20 minutes since the update",
    "Cannot open shared mailbox in Outlook",
    "New laptop for the onboarding on Monday",
)


def ticket_payload(ticket_id: str, user_id: str, title: str, created_at: str) -> dict[str, Any]:
    """Business fields of TICKET_CREATED (payload.TicketCreated.v1); record() adds the envelope keys."""
    return {
        "ticketId": ticket_id,
        "createdByUserId": user_id,
        "createdAt": created_at,
        "updatedFields": ["title", "status", "priority"],
        "changes": {
            "title": {"new": title},
            "status": {"new": "open"},
            "priority": {"new": "high"},
        },
    }


# Builds the same payload in SQL for fast backlog fills (INSERT ... SELECT generate_series).
# The LATERAL subquery references g so the random uuids are drawn per row.
FILL_SQL = """
INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate)
SELECT gen_random_uuid(), x.tenant, 'TICKET_CREATED', 'payload.TicketCreated.v1',
       jsonb_build_object(
         'ticketId', x.tid, 'createdByUserId', x.uid, 'createdAt', x.ts,
         'updatedFields', jsonb_build_array('title', 'status', 'priority'),
         'changes', jsonb_build_object(
            'title', jsonb_build_object('new', 'Printer on floor ' || g || ' is jammed again'),
            'status', jsonb_build_object('new', 'open'),
            'priority', jsonb_build_object('new', 'high')),
         'tenantId', x.tenant, 'occurredAt', x.ts, 'actorUserId', x.uid, 'actorType', 'USER'),
       now(), 'ticket:' || x.tid
FROM generate_series(1, %(n)s) AS g,
LATERAL (SELECT gen_random_uuid()::text AS tid, gen_random_uuid()::text AS uid,
                'tenant-' || lpad((g %% 50)::text, 4, '0') AS tenant,
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS ts
         WHERE g IS NOT NULL) AS x
"""


def fill_backlog(dsn: str, rows: int, chunk: int = 50_000) -> float:
    """Insert ``rows`` pending TICKET_CREATED rows; VACUUM ANALYZE + CHECKPOINT; returns seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = off")
        left = rows
        while left > 0:
            n = min(chunk, left)
            conn.execute(FILL_SQL, {"n": n})
            conn.commit()
            left -= n
    settle(dsn)
    return time.perf_counter() - started


def settle(dsn: str) -> None:
    """VACUUM ANALYZE the outbox and CHECKPOINT, so every measured run starts from the same state."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) outbox_events")
        conn.execute("CHECKPOINT")


def check_backlog_valid(dsn: str, sample: int = 5) -> int:
    """Validate a few filled rows with the registry (fails fast on a bad fill); returns avg payload bytes."""
    from outbox import schemas

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_type, schema_ref, payload::text FROM outbox_events ORDER BY random() LIMIT %s", (sample,)
        ).fetchall()
        avg = conn.execute("SELECT avg(octet_length(payload::text))::int FROM outbox_events").fetchone()
    for event_type, ref, payload in rows:
        schemas.registry.validate_json(event_type, payload, ref=ref)
    return int(avg[0]) if avg and avg[0] else 0


# ---- servers, databases, keys --------------------------------------------------------------------


def db_url_for(admin_url: str, dbname: str) -> str:
    """The admin URL pointed at another database."""
    parts = urlsplit(admin_url)
    return parts._replace(path="/" + dbname).geturl()


@dataclass
class Env:
    """Servers plus the private databases and stream keys of one benchmark run; cleans up on exit."""

    admin_url: str
    redis_url: str
    embedded: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    databases: list[str] = field(default_factory=list)
    _template: str | None = None

    @property
    def key_prefix(self) -> str:
        return f"bench:{self.run_id}"

    def stream(self, part: str) -> str:
        """A private stream key for one part of this run."""
        return f"{self.key_prefix}:{part}:{uuid.uuid4().hex[:4]}:workflow:events:global"

    def redis(self, **kw: Any) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, **kw)

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def template(self) -> str:
        """A migrated template database (created once per run)."""
        if self._template is None:
            from outbox import migrate

            name = f"bench_{self.run_id}_tmpl"
            with self._admin() as c:
                c.execute(f'CREATE DATABASE "{name}"')
            self.databases.append(name)
            migrate.upgrade(db_url_for(self.admin_url, name))
            self._template = name
        return self._template

    def new_database(self, label: str) -> str:
        """A fresh migrated database (cloned from the template); returns its URL."""
        tmpl = self.template()
        name = f"bench_{self.run_id}_{label}_{uuid.uuid4().hex[:4]}".replace("-", "_")
        with self._admin() as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}"')
        self.databases.append(name)
        return db_url_for(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self._admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def delete_keys(self, pattern_part: str | None = None) -> int:
        """Delete this run's Redis keys (stream entries and fence keys); never touches other keys."""
        pattern = f"*{pattern_part or self.key_prefix}*"
        if self.key_prefix not in pattern:
            raise ValueError("refusing to delete keys outside this run's prefix")
        n = 0
        client = self.redis()
        try:
            for key in client.scan_iter(match=pattern, count=1000):
                n += client.delete(key)
        finally:
            client.close()
        return n

    def cleanup(self) -> None:
        self.delete_keys()
        for name in list(self.databases):
            with contextlib.suppress(Exception), self._admin() as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.databases.remove(name)


@contextlib.contextmanager
def environment(database_url: str | None, redis_url: str | None) -> Iterator[Env]:
    """Servers from the flags, else OUTBOX_DATABASE_URL/OUTBOX_REDIS_URL, else embedded ones."""
    database_url = database_url or os.environ.get("OUTBOX_DATABASE_URL")
    redis_url = redis_url or os.environ.get("OUTBOX_REDIS_URL")
    if database_url and redis_url:
        from outbox.settings import libpq_url

        env = Env(libpq_url(database_url), redis_url)
        try:
            yield env
        finally:
            env.cleanup()
        return
    if database_url or redis_url:
        raise SystemExit("give both --database-url and --redis-url (or neither, for embedded servers)")
    from outbox.embedded import Embedded

    print("no servers configured: starting embedded Postgres (fsync=off) and Redis", file=sys.stderr)
    with Embedded() as emb:
        env = Env(emb.database_url, emb.redis_url, embedded=True)
        try:
            yield env
        finally:
            env.cleanup()


# ---- machine info ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _version(mod: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(mod)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(env: Env) -> dict[str, Any]:
    """Cores, memory, versions and the server settings that matter for these figures."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psycopg": _version("psycopg"),
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "pydantic": _version("pydantic"),
        "embedded_servers": env.embedded,
    }
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    with psycopg.connect(env.admin_url) as c:
        info["postgres"] = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections", "max_wal_size"):
            info[f"pg.{name}"] = c.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
    client = env.redis(decode_responses=True)
    try:
        srv = client.info("server")
        info["redis"] = srv.get("redis_version")
        info["redis.appendonly"] = client.config_get("appendonly").get("appendonly")
        info["redis.appendfsync"] = client.config_get("appendfsync").get("appendfsync")
    finally:
        client.close()
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cores']} cores ({info['cpu']}), {info['mem_gib']} GiB, Linux {info['kernel']}; "
        f"Python {info['python']}, psycopg {info['psycopg']}, redis-py {info['redis-py']}, "
        f"hiredis {info['hiredis']}, pydantic {info['pydantic']}"
    )
    print(
        f"servers: PostgreSQL {info['postgres']} (synchronous_commit={info['pg.synchronous_commit']}, "
        f"fsync={info['pg.fsync']}, shared_buffers={info['pg.shared_buffers']}), Redis {info['redis']} "
        f"(appendonly={info['redis.appendonly']}){'  [embedded]' if info['embedded_servers'] else ''}"
    )
    print(f"date: {info['date']}, commit {info.get('git_commit', '?')}")


def relay_defaults() -> dict[str, Any]:
    """The relay's default settings (URLs and stream left out)."""
    from outbox.settings import Settings

    d = Settings().model_dump()
    for k in ("database_url", "redis_url", "stream"):
        d.pop(k, None)
    return d


# ---- CPU accounting ---------------------------------------------------------------------------------


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    vals = [float(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    total = sum(vals[:8])
    return total - idle, total


def busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Machine-wide CPU busy % between two ``cpu_times()`` readings."""
    d_busy, d_total = after[0] - before[0], after[1] - before[1]
    return round(100.0 * d_busy / d_total, 1) if d_total > 0 else 0.0


_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PG_AUX = ("checkpointer", "walwriter", "background writer", "autovacuum", "logical replication", "stats collector")


def _snapshot() -> dict[int, tuple[int, float, float, str]]:
    """pid -> (ppid, own cpu ticks, reaped children's cpu ticks, cmdline) of every process now."""
    snap: dict[int, tuple[int, float, float, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        snap[int(d)] = (
            int(rest[1]),
            float(rest[11]) + float(rest[12]),
            float(rest[13]) + float(rest[14]),
            cmd or stat.split("(", 1)[1].split(")")[0],
        )
    return snap


def _proc_ticks() -> float:
    """user + nice + system ticks of the whole machine (what processes can be charged with)."""
    try:
        v = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return float(v[0]) + float(v[1]) + float(v[2])
    except (OSError, IndexError, ValueError):
        return 0.0


class Meter:
    """CPU used during a measurement: the whole machine, ours, and everyone else's.

    Ours = this process and its descendants, the Postgres backends of this run's databases (their
    command line names the database), the Postgres auxiliary processes and redis-server. A thread
    samples every process every ``interval`` s, so processes that exit inside the window (workers,
    their backends) are charged up to their last sample. ``other_pct`` = user+system time of the
    machine not charged to us (other people's processes, kernel threads); ``foreign_top`` names the
    biggest other processes.
    """

    def __init__(self, run_id: str, interval: float = 0.25) -> None:
        import threading

        self.tag = f"bench_{run_id}"
        self.interval = interval
        self._seen: dict[int, tuple[int, float, float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._seen.update(_snapshot())

    def _ours(self, snap: dict[int, tuple[int, float, float, str]]) -> set[int]:
        me = os.getpid()
        ours: set[int] = {me}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _t, _c, cmd) in snap.items():
                if pid in ours:
                    continue
                if (
                    ppid in ours
                    or self.tag in cmd
                    or "redis-server" in cmd
                    or (cmd.startswith("postgres:") and any(a in cmd for a in _PG_AUX))
                ):
                    ours.add(pid)
                    changed = True
        return ours

    def start(self) -> Meter:
        self.t0 = time.monotonic()
        self.cpu0 = cpu_times()
        self.k0 = _proc_ticks()
        self.p0 = _snapshot()
        self._seen = dict(self.p0)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        self._seen.update(_snapshot())
        k1 = _proc_ticks()
        cpu1 = cpu_times()
        dt_ = time.monotonic() - self.t0
        pct = dt_ * _CLK * (os.cpu_count() or 1) / 100.0  # ticks per 1 % of the machine
        ours = self._ours(self._seen)
        mine = 0.0
        others: dict[str, float] = {}
        for pid, (_ppid, t, _c, cmd) in self._seen.items():
            d = t - (self.p0[pid][1] if pid in self.p0 else 0.0)
            if d <= 0:
                continue
            if pid in ours:
                mine += d
            else:
                key = cmd[:60]
                others[key] = others.get(key, 0.0) + d
        other = max(0.0, (k1 - self.k0) - mine)
        worst = sorted(others.items(), key=lambda kv: -kv[1])[:3]
        return {
            "window_busy_pct": busy_pct(self.cpu0, cpu1),
            "ours_pct": round(mine / pct, 1) if pct else 0.0,
            "other_pct": round(other / pct, 1) if pct else 0.0,
            "foreign_top": [f"{k} ({v / pct:.0f}%)" for k, v in worst if v / pct >= 1],
        }


class ProcCpu:
    """CPU seconds used during a window by the processes whose command line contains ``match``
    (e.g. the Postgres backends of one database: their command line names it).

    A background thread samples them every ``interval`` s, so backends that come and go inside the
    window are counted up to their last sample. Noise-robust: CPU time does not grow when other
    people's processes compete for the cores (wall time does)."""

    def __init__(self, match: str, interval: float = 0.2) -> None:
        import threading

        self.match = match
        self.interval = interval
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._skip: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _scan(self) -> dict[int, float]:
        now: dict[int, float] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            if pid in self._skip:
                continue
            try:
                if pid not in self._last and pid not in self._base:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                    if self.match.encode() not in cmd:
                        self._skip.add(pid)
                        continue
                rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                now[pid] = float(rest[11]) + float(rest[12])
            except (OSError, IndexError, ValueError):
                continue
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._scan())

    def start(self) -> ProcCpu:
        self._base = self._scan()
        self._last = dict(self._base)
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        self._last.update(self._scan())
        ticks = sum(t - self._base.get(pid, 0.0) for pid, t in self._last.items())
        return ticks / _CLK


def pid_cpu(pid: int) -> float:
    """CPU seconds (user+sys) used so far by one process (0 if it is gone)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (float(rest[11]) + float(rest[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def redis_pid(env: Env) -> int | None:
    """PID of the redis-server (when it runs on this machine)."""
    client = env.redis(decode_responses=True)
    try:
        pid = int(client.info("server").get("process_id", 0))
    finally:
        client.close()
    return pid if pid and Path(f"/proc/{pid}").exists() else None


QUIET = {"threshold": 25.0, "max_wait": 180.0, "max_foreign": 10.0, "retries": 2}


def wait_quiet(label: str = "") -> float:
    """Wait (up to QUIET['max_wait'] s) until the machine is idle (< threshold % busy over 1 s).

    Other people's test runs share these 2 cores and the Postgres server; a measurement taken while
    they run is not comparable. Returns the background busy % measured just before starting.
    """
    deadline = time.monotonic() + QUIET["max_wait"]
    warned = False
    while True:
        a = cpu_times()
        time.sleep(1.0)
        busy = busy_pct(a, cpu_times())
        if busy < QUIET["threshold"] or time.monotonic() > deadline:
            if busy >= QUIET["threshold"]:
                print(f"    [warning] machine still {busy}% busy before {label}: figure may be low", flush=True)
            return busy
        if not warned:
            print(f"    [waiting] machine {busy}% busy (other processes) before {label}...", flush=True)
            warned = True
        time.sleep(2.0)


def measured(env: Env, label: str, run: Any, setup: Any = None) -> dict[str, Any]:
    """``setup()``, wait for a quiet machine, ``run()`` under a Meter; repeat (QUIET['retries'] times)
    while other people's processes used more than QUIET['max_foreign'] % of the machine during the
    run. Returns the cleanest attempt's result dict with the Meter's figures added."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + int(QUIET["retries"])):
        if setup is not None:
            setup()
        bg = wait_quiet(label)
        meter = Meter(env.run_id).start()
        r = dict(run())
        r.update(meter.stop(), background_busy_pct=bg, attempt=attempt + 1)
        if best is None or r["other_pct"] < best["other_pct"]:
            best = r
        if r["other_pct"] <= QUIET["max_foreign"]:
            break
        print(
            f"    [noisy] {label}: other processes used {r['other_pct']}% of the machine during the run "
            f"({'; '.join(r['foreign_top']) or 'short-lived processes'})"
            + (": again" if attempt < QUIET["retries"] else ": keeping the cleanest attempt"),
            flush=True,
        )
    assert best is not None
    return best


# ---- output -----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table (also valid Markdown)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    for r in cells:
        lines.append(
            "| "
            + " | ".join((c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            + " |"
        )
    return "\n".join(lines)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, round(p / 100.0 * len(sorted_xs) + 0.5) - 1))
    return float(sorted_xs[k])


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
