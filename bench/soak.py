"""Chaos soak: writers, 3 relays and a worker (all real processes) on their own Postgres and Redis, while
relays are SIGKILLed at random instants, Redis is SIGKILLed and restarted (AOF, appendfsync always),
Postgres backends are terminated and Postgres is restarted once (fast shutdown). At the end it counts,
from the stream and the databases: lost, duplicated, out-of-order (per aggregate) and ingested events.

    python -m bench.soak --minutes 10 --kills 100        # the long run (prints a JSON line last)
    python -m bench.soak --minutes 1 --kills 20          # the short run CI does (tests/test_soak.py)

Exit code 0 when nothing was lost, duplicated or reordered, every committed event was ingested once by
the worker and no relay reported a Redis loss; 1 otherwise. Not part of the default test run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

TENANT = "soak"
STREAM = "soak:workflow:events:global"

# ---- writer process ------------------------------------------------------------------------------


def writer_main(db_url: str, out: str, seed: int, aggregates: int, pause: float) -> int:
    """(Child process.) Commit TICKET_STATUS_CHANGED events, one aggregate step per transaction, until
    SIGTERM. Each committed event is appended to ``out`` as ``event_id aggregate step``. A commit whose
    outcome is unknown (connection cut, Postgres restarting) is resolved by looking the ids up."""
    import outbox

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rng = random.Random(seed)
    aggs = [str(uuid.uuid4()) for _ in range(aggregates)]
    step = dict.fromkeys(aggs, 0)
    conn: psycopg.Connection[Any] | None = None
    with open(out, "a", buffering=1) as log:
        while not stop:
            picked = rng.sample(aggs, rng.randint(1, 3))
            events = [
                outbox.Event(
                    "TICKET_STATUS_CHANGED",
                    {"ticketId": a, "previousStatusId": f"s{step[a]}", "newStatusId": f"s{step[a] + 1}"},
                    tenant_id=TENANT,
                    aggregate=a,
                )
                for a in picked
            ]
            ids: list[str] = []
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(db_url, connect_timeout=3, application_name="soak-writer")
                ids = [str(i) for i in outbox.record_many(conn, events)]
                conn.commit()
                committed = True
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                committed = _resolve(db_url, ids, stop) if ids else False
            if committed:
                for a, eid in zip(picked, ids, strict=True):
                    step[a] += 1
                    log.write(f"{eid} {a} {step[a]}\n")
            time.sleep(pause)
    if conn is not None:
        conn.close()
    return 0


def _resolve(db_url: str, ids: list[str], stop: list[int]) -> bool:
    """Whether a transaction whose COMMIT failed did commit (asks until the database answers)."""
    while True:
        try:
            with psycopg.connect(db_url, connect_timeout=3) as c:
                row = c.execute(
                    "SELECT count(*) FROM outbox_events WHERE event_id = ANY(%s::uuid[])", (ids,)
                ).fetchone()
            return bool(row and row[0] == len(ids))
        except psycopg.Error:
            time.sleep(0.2)


# ---- orchestration -------------------------------------------------------------------------------


class Soak:
    """The servers, the processes and the faults of one run."""

    def __init__(self, minutes: float, kills: int, writers: int, seed: int, workdir: Path) -> None:
        from outbox.embedded import PostgresServer, RedisServer

        self.duration = minutes * 60
        self.kills_wanted = kills
        self.writers_n = writers
        self.rng = random.Random(seed)
        self.seed = seed
        self.dir = workdir
        self.pg = PostgresServer()
        self.redis = RedisServer(appendonly=True)  # appendfsync always, noeviction (outbox.embedded)
        self.relays: dict[int, subprocess.Popen[bytes]] = {}
        self.worker: subprocess.Popen[bytes] | None = None
        self.writers: list[subprocess.Popen[bytes]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._logs = 0

    @property
    def db_url(self) -> str:
        return self.pg.url("postgres")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        env.update(
            OUTBOX_DATABASE_URL=self.db_url, OUTBOX_REDIS_URL=self.redis.url, OUTBOX_STREAM=STREAM,
            OUTBOX_LEASE_TTL="1", OUTBOX_BATCH_SIZE="100", OUTBOX_BACKOFF_BASE="0.05", OUTBOX_BACKOFF_MAX="1",
            OUTBOX_IDLE_POLL_INTERVAL="0.2", OUTBOX_REDIS_CHECK_INTERVAL="2",
            OUTBOX_WORKER_BACKOFF_MAX="1", OUTBOX_WORKER_CLAIM_IDLE="5", OUTBOX_WORKER_BLOCK_MS="500",
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )  # fmt: skip
        return env

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        self._logs += 1
        with open(self.dir / f"{self._logs:04d}-{name}.log", "wb") as fh:
            return subprocess.Popen([sys.executable, *args], env=self.env(), stdout=fh, stderr=subprocess.STDOUT)

    def spawn_relay(self) -> None:
        p = self._spawn(["-m", "outbox.relay"], "relay")
        self.relays[p.pid] = p

    def spawn_worker(self) -> None:
        self.worker = self._spawn(["-m", "outbox.worker"], "worker")

    def start(self) -> None:
        from outbox import migrate

        self.pg.start()
        self.redis.start()
        migrate.upgrade(self.db_url)
        for _ in range(3):
            self.spawn_relay()
        self.spawn_worker()
        for i in range(self.writers_n):
            out = self.dir / f"writer-{i}.events"
            self.writers.append(
                self._spawn(["-m", "bench.soak", "writer", self.db_url, str(out), str(self.seed * 100 + i)], "writer")
            )

    # -- faults

    def leader_pid(self) -> int | None:
        try:
            with psycopg.connect(self.db_url, connect_timeout=2) as c:
                row = c.execute(
                    "SELECT leader FROM outbox_relay WHERE lease_until > clock_timestamp() AND leader IS NOT NULL"
                ).fetchone()
        except psycopg.Error:
            return None
        return int(row[0].split(":")[1]) if row else None

    def kill_relay(self) -> None:
        leader = self.leader_pid()
        live = [pid for pid, p in self.relays.items() if p.poll() is None]
        pid = leader if leader in live and self.rng.random() < 0.75 else self.rng.choice(live)
        victim = self.relays.pop(pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.counts["relay_kills"] += 1
        self.counts["leader_kills"] += pid == leader
        self.spawn_relay()

    def restart_redis(self) -> None:
        self.redis.kill()  # SIGKILL; AOF with appendfsync always keeps every acknowledged write
        time.sleep(self.rng.uniform(0.1, 1.0))
        self.redis.start()
        self.counts["redis_restarts"] += 1

    def restart_postgres(self) -> None:
        self.pg.stop()  # fast shutdown
        self.pg.start()
        self.counts["postgres_restarts"] += 1

    def terminate_backends(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.db_url, autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE (application_name LIKE 'outbox-%' OR application_name LIKE 'soak-%') "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND random() < 0.7"
            ).fetchone()
            self.counts["backends_terminated"] += int(row[0]) if row else 0
            self.counts["termination_rounds"] += 1

    def keep_alive(self) -> None:
        """Relays and the worker that exited on their own are restarted (and counted: they should not exit)."""
        for pid, p in list(self.relays.items()):
            if p.poll() is not None:
                self.relays.pop(pid)
                self.counts["relay_exits"] += 1
                self.spawn_relay()
        if self.worker is not None and self.worker.poll() is not None:
            self.counts["worker_exits"] += 1
            self.spawn_worker()

    # -- the run

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.start()
        d = self.duration
        plan: list[tuple[float, str]] = [(self.rng.uniform(0.05, 0.92) * d, "kill") for _ in range(self.kills_wanted)]
        plan.append((0.35 * d, "redis"))
        plan.append((0.6 * d, "postgres"))
        plan += [(self.rng.uniform(0.05, 0.92) * d, "terminate") for _ in range(max(3, int(d / 20)))]
        plan.sort()
        t0 = time.monotonic()
        for at, what in plan:
            while time.monotonic() - t0 < at:
                self.keep_alive()
                time.sleep(0.05)
            {"kill": self.kill_relay, "redis": self.restart_redis, "postgres": self.restart_postgres,
             "terminate": self.terminate_backends}[what]()  # fmt: skip
        while time.monotonic() - t0 < d:
            self.keep_alive()
            time.sleep(0.1)
        for w in self.writers:
            w.send_signal(signal.SIGTERM)
        for w in self.writers:
            w.wait(60)
        result = self.settle()
        result["seconds"] = round(time.monotonic() - started, 1)
        return result

    def settle(self, timeout: float = 180) -> dict[str, Any]:
        """Wait until every committed event is published and ingested (or the timeout), then count."""
        committed = self.committed()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keep_alive()
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.db_url) as c:
                row = c.execute(
                    "SELECT (SELECT count(*) FROM outbox_events WHERE status = 'pending'),"
                    " (SELECT count(*) FROM outbox_batches),"
                    " (SELECT count(*) FROM workflow_runtime_events WHERE event_id = ANY(%s::uuid[]))",
                    ([e for e, _, _ in committed],),
                ).fetchone()
                if row and row[0] == 0 and row[1] == 0 and row[2] >= len(committed):
                    break
            time.sleep(0.5)
        return self.count(committed)

    def committed(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        for f in sorted(self.dir.glob("writer-*.events")):
            for line in f.read_text().splitlines():
                eid, agg, step = line.split()
                out.append((eid, agg, int(step)))
        return out

    def count(self, committed: list[tuple[str, str, int]]) -> dict[str, Any]:
        rds = redis.Redis.from_url(self.redis.url, decode_responses=True)
        entries: list[dict[str, str]] = []
        last = "-"
        while True:
            page = rds.xrange(STREAM, min=last, count=5000)
            if not page:
                break
            entries += [f for _, f in page]
            last = "(" + page[-1][0]
        rds.close()
        on_stream = collections.Counter(e["event_id"] for e in entries)
        want = {eid for eid, _, _ in committed}
        with psycopg.connect(self.db_url) as c:
            statuses = dict(c.execute("SELECT status, count(*) FROM outbox_events GROUP BY status").fetchall())
            rows = {str(r[0]) for r in c.execute("SELECT event_id FROM outbox_events").fetchall()}
            ingested = {
                str(r[0])
                for r in c.execute(
                    "SELECT event_id FROM workflow_runtime_events WHERE event_id = ANY(%s::uuid[])", (list(want),)
                ).fetchall()
            }
        # Per aggregate, the steps must appear in increasing order on the stream.
        highest: dict[str, int] = {}
        out_of_order = 0
        for e in entries:
            payload = json.loads(e["payload_json"])
            agg, step = payload["ticketId"], int(payload["newStatusId"][1:])
            if step <= highest.get(agg, 0):
                out_of_order += 1
            highest[agg] = max(step, highest.get(agg, 0))
        loss_lines = sum(
            f.read_text(errors="replace").count("REDIS LOST PUBLISHED EVENTS") for f in self.dir.glob("*-relay.log")
        )
        return {
            "committed": len(want),
            "lost": len(want - set(on_stream)),
            "duplicated": sum(n - 1 for n in on_stream.values() if n > 1),
            "out_of_order": out_of_order,
            "unexpected": len(set(on_stream) - rows),
            "missing_rows": len(want - rows),
            "ingested": len(ingested),
            "not_ingested": len(want - ingested),
            "statuses": statuses,
            "loss_reports": loss_lines,
            **dict(self.counts),
        }

    def close(self) -> None:
        procs = [*self.relays.values(), *self.writers, *([self.worker] if self.worker else [])]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        self.redis.close()
        self.pg.close()


def failures(r: dict[str, Any]) -> list[str]:
    """What is wrong with a result (empty: the soak passed)."""
    bad = [k for k in ("lost", "duplicated", "out_of_order", "unexpected", "missing_rows", "not_ingested") if r[k]]
    if r["statuses"].get("dead") or r["statuses"].get("failed"):
        bad.append("dead/failed rows")
    if r["loss_reports"]:
        bad.append("loss_reports")
    return bad


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak``: run the soak, print the figures and a JSON line; exit 1 on any failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "writer":
        return writer_main(args[1], args[2], int(args[3]), aggregates=40, pause=0.02)
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="chaos phase length (default 10)")
    p.add_argument("--kills", type=int, default=100, help="relay SIGKILLs at random instants (default 100)")
    p.add_argument("--writers", type=int, default=2, help="writer processes (default 2)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--keep", action="store_true", help="keep the process logs (printed path)")
    ns = p.parse_args(args)
    seed = ns.seed if ns.seed is not None else random.randrange(1 << 30)
    workdir = Path(tempfile.mkdtemp(prefix="outbox-soak-"))
    soak = Soak(ns.minutes, ns.kills, ns.writers, seed, workdir)
    print(f"soak: {ns.minutes:g} min, {ns.kills} relay kills, {ns.writers} writers, seed {seed}, logs {workdir}",
          flush=True)  # fmt: skip
    try:
        result = soak.run()
    finally:
        soak.close()
    result["seed"] = seed
    bad = failures(result)
    for k in ("committed", "lost", "duplicated", "out_of_order", "ingested", "not_ingested", "relay_kills",
              "leader_kills", "redis_restarts", "postgres_restarts", "backends_terminated", "relay_exits",
              "worker_exits", "loss_reports", "seconds"):  # fmt: skip
        print(f"  {k:20} {result.get(k, 0)}")
    print(f"  {'statuses':20} {result['statuses']}")
    print("soak " + ("FAILED: " + ", ".join(bad) if bad else "passed"))
    print(json.dumps(result, default=str), flush=True)
    if not ns.keep and not bad:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
