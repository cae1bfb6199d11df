"""``outbox demo``: a realistic burst of business transactions through the outbox, relayed and checked."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import redis
from rich.console import Console
from rich.table import Table

import outbox
from outbox import migrate, walmsg
from outbox.embedded import DEMO_EXTRA, Embedded, EmbeddedServerError, MissingServerError
from outbox.errors import WalStreamError
from outbox.relay.setup import setup_wal
from outbox.relay.walstream import drop_slot
from outbox.settings import load_settings

DEMO_SCHEMA = """
CREATE TABLE IF NOT EXISTS demo_tickets (
    id uuid PRIMARY KEY, tenant_id text NOT NULL, title text NOT NULL, status text NOT NULL,
    priority text NOT NULL, assignee uuid, updated_at timestamptz NOT NULL DEFAULT now()
)
"""
LOGICAL = {"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}
TENANTS = [f"tenant-{n}" for n in ("acme", "globex", "initech", "umbrella")]
STATUSES = ["new", "open", "waiting", "resolved", "closed"]


@contextlib.contextmanager
def _servers(
    database_url: str | None, redis_url: str | None, console: Console, capture: str
) -> Iterator[tuple[str, str]]:
    if database_url and redis_url:
        # Configured servers: use a throwaway database there, never the configured one itself.
        with redis.Redis.from_url(redis_url, socket_connect_timeout=5) as r:
            r.ping()
        name = f"outbox_demo_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        scheme, _, rest = database_url.partition("://")
        base = rest.rsplit("/", 1)[0] if "/" in rest else rest
        console.print(f"using configured servers (throwaway database {name})")
        try:
            yield f"{scheme}://{base}/{name}", redis_url
        finally:
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    console.print("no OUTBOX_DATABASE_URL/OUTBOX_REDIS_URL: starting throwaway Postgres and Redis ...")
    # WAL mode decodes the WAL: the throwaway server runs wal_level=logical.
    with Embedded(pg_settings=LOGICAL if capture == "wal" else None) as emb:
        console.print(f"  postgres {emb.database_url}\n  redis    {emb.redis_url}")
        yield emb.database_url, emb.redis_url


@contextlib.contextmanager
def _relay(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """The relay as its own process, as in production (and off the writers' GIL); killed if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "outbox.relay"], env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(15)


class _Burst:
    """Writers doing ticket work; remembers what committed, what rolled back, what was written invalid."""

    def __init__(self, dsn: str, transactions: int, writers: int, capture: str = "poll") -> None:
        self.capture = capture
        self.dsn = dsn
        self.transactions = transactions
        self.writers = writers
        self.lock = threading.Lock()
        self.committed: dict[str, float] = {}  # event id -> commit time (epoch s)
        self.rolled_back: set[str] = set()
        self.invalid: set[str] = set()
        self.refused = 0  # record() refused bad input up front (nothing written)

    def _one(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        tenant = rng.choice(TENANTS)
        user = str(uuid.uuid4())
        ticket = uuid.uuid4()
        roll = rng.random()
        ids: list[str] = []
        with conn.transaction() as tx:
            conn.execute(
                "INSERT INTO demo_tickets (id, tenant_id, title, status, priority) VALUES (%s, %s, %s, 'new', 'p3')",
                (ticket, tenant, f"Printer on floor {rng.randint(1, 9)} is jammed"),
            )
            ids.append(str(outbox.record(
                conn, "TICKET_CREATED",
                {"ticketId": ticket, "ticketNumber": f"T-{rng.randint(1000, 99999)}", "title": "Printer jammed",
                 "priority": "p3", "status": "new", "estimatedHours": Decimal("1.5")},
                tenant_id=tenant, actor=user, aggregate=f"ticket:{ticket}",
            )))  # fmt: skip
            prev = "new"
            for _ in range(rng.randint(0, 3)):
                new = rng.choice([s for s in STATUSES if s != prev])
                conn.execute("UPDATE demo_tickets SET status = %s, updated_at = now() WHERE id = %s", (new, ticket))
                ids.append(str(outbox.record(
                    conn, "TICKET_STATUS_CHANGED",
                    {"ticketId": ticket, "previousStatusId": prev, "newStatusId": new},
                    tenant_id=tenant, actor=user, aggregate=f"ticket:{ticket}", from_state=prev, to_state=new,
                )))  # fmt: skip
                prev = new
            if roll < 0.01:
                # A writer that bypasses record(): its event reaches the relay, which must dead-letter it.
                bad = str(uuid.uuid4())
                payload = json.dumps({"tenantId": tenant, "ticketId": "not-a-uuid"})
                if self.capture == "wal":
                    head = {
                        "v": 1,
                        "id": bad,
                        "tenant": tenant,
                        "type": "TICKET_STATUS_CHANGED",
                        "schema": "payload.TicketStatusChanged.v1",
                        "at": walmsg.column_text(datetime.now(UTC)),
                    }
                    conn.execute(
                        "SELECT pg_logical_emit_message(true, 'outbox', %s)", (json.dumps(head) + "\n" + payload,)
                    )
                else:
                    conn.execute(
                        "INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at) "
                        "VALUES (%s, %s, 'TICKET_STATUS_CHANGED', 'payload.TicketStatusChanged.v1', %s::jsonb, now())",
                        (bad, tenant, payload),
                    )  # fmt: skip
                ids.append(bad)
            if roll < 0.02:
                try:  # bad input through record(): refused, nothing written, transaction still fine
                    outbox.record(conn, "TICKET_STATUS_CHANGED", {"ticketId": "nope"}, tenant_id=tenant)
                except outbox.RecordError:
                    with self.lock:
                        self.refused += 1
            if 0.02 <= roll < 0.12:
                with self.lock:
                    self.rolled_back.update(ids)
                raise psycopg.Rollback(tx)  # leaves the block; nothing of this transaction exists
        if 0.02 <= roll < 0.12:
            return
        now = time.time()
        with self.lock:
            for i in ids:
                if roll < 0.01 and i == ids[-1]:
                    self.invalid.add(i)
                else:
                    self.committed[i] = now

    def run(self) -> float:
        per = [self.transactions // self.writers + (1 if i < self.transactions % self.writers else 0)
               for i in range(self.writers)]  # fmt: skip

        def work(n: int, seed: int) -> None:
            rng = random.Random(seed)
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for _ in range(n):
                    self._one(conn, rng)

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(n, i)) for i, n in enumerate(per)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started


def _drain(remaining: Callable[[], int], relay: subprocess.Popen[bytes], console: Console, stall_s: float = 30) -> None:
    """Wait until the relay has handled every event; give up if it exits or stops making progress."""
    last, progress_at = -1, time.monotonic()
    while pending := remaining():
        if relay.poll() is not None:
            console.print("[red]the relay exited before publishing everything[/]")
            return
        if pending != last:
            last, progress_at = pending, time.monotonic()
        elif time.monotonic() - progress_at > stall_s:
            console.print(f"[red]the relay published nothing for {stall_s:.0f}s ({pending} events left)[/]")
            return
        time.sleep(0.05)


def run_demo(
    *,
    transactions: int,
    writers: int,
    database_url: str | None,
    redis_url: str | None,
    console: Console,
    capture: str = "poll",
) -> int:
    """Run the demo; 0 when every check passes, 1 when one fails or a server does not start, 2 without servers."""
    err = Console(stderr=True)
    try:
        return _run(transactions, writers, database_url, redis_url, console, capture)
    except MissingServerError as exc:
        err.print(
            f"error: outbox demo needs the embedded servers (no {exc.missing} found): {DEMO_EXTRA}, "
            "or set OUTBOX_DATABASE_URL and OUTBOX_REDIS_URL",
            style="red", markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        return 2
    except EmbeddedServerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        err.print("removed the temporary servers and their data", highlight=False)
        return 1
    except WalStreamError as exc:
        err.print(f"error: --capture wal: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except psycopg.OperationalError as exc:
        err.print(f"database unavailable: {' '.join(str(exc).split())}", markup=False, highlight=False, soft_wrap=True)
        return 3
    except redis.exceptions.ConnectionError as exc:
        err.print(f"redis unavailable: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 3


def _run(
    transactions: int, writers: int, database_url: str | None, redis_url: str | None, console: Console, capture: str
) -> int:
    tag = uuid.uuid4().hex[:8]
    stream = f"demo:{tag}:workflow:events:global"
    slot = f"outbox_demo_{tag}"  # slot names are server-wide: never one a real relay uses
    with _servers(database_url, redis_url, console, capture) as (dsn, rurl):
        migrate.upgrade(dsn)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(DEMO_SCHEMA)
        if capture == "wal":
            setup_wal(dsn, slot, slot)
            outbox.configure(capture="wal", wal_slot=slot)
            console.print(f"WAL capture: slot {slot} (wal_level=logical)")
        try:
            return _burst_and_check(dsn, rurl, stream, slot, transactions, writers, console, capture)
        finally:
            if capture == "wal":
                outbox.configure(capture="poll")
                with psycopg.connect(dsn, autocommit=True) as c:  # a slot left behind would pin the server's WAL
                    drop_slot(c, slot)


def _burst_and_check(
    dsn: str, rurl: str, stream: str, slot: str, transactions: int, writers: int, console: Console, capture: str
) -> int:
    settings = load_settings(database_url=dsn, redis_url=rurl, stream=stream, log_level="ERROR",
                             capture=capture, wal_slot=slot, wal_publication=slot)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update({"OUTBOX_" + k.upper(): str(v) for k, v in settings.model_dump().items() if v is not None})
    with _relay(env) as relay:
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline = time.monotonic() + 30
            leading = "SELECT lease_until > now() FROM outbox_relay WHERE name = %s"
            while not c.execute(leading, ("wal" if capture == "wal" else "default",)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline or relay.poll() is not None:
                    console.print("[red]the relay did not start[/]")
                    return 1
                time.sleep(0.05)
        console.print(f"burst: {transactions} business transactions from {writers} writers, relay running ...")
        burst = _Burst(dsn, transactions, writers, capture)
        write_s = burst.run()
        t0 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c, redis.Redis.from_url(rurl) as r:

            def remaining() -> int:
                if capture == "poll":
                    return int(c.execute("SELECT count(*) FROM outbox_events WHERE status = 'pending'").fetchone()[0])  # type: ignore[index]
                dead_rows = int(c.execute("SELECT count(*) FROM outbox_events WHERE status = 'dead'").fetchone()[0])  # type: ignore[index]
                return max(0, len(burst.committed) + len(burst.invalid) - int(r.xlen(stream)) - dead_rows)

            _drain(remaining, relay, console)
        drain_tail = time.perf_counter() - t0
        relay.send_signal(signal.SIGTERM)
        relay_rc = relay.wait(15)
    rds = redis.Redis.from_url(rurl, decode_responses=True)
    entries: list[tuple[str, dict[str, str]]] = rds.xrange(stream)  # type: ignore[assignment]
    rds.delete(stream)
    for key in rds.scan_iter(match=f"*{stream}*"):
        rds.delete(key)
    with psycopg.connect(dsn) as c:
        dead: dict[str, str] = dict(c.execute(
            "SELECT event_id::text, last_error FROM outbox_events WHERE status = 'dead'").fetchall())  # fmt: skip

    seen: dict[str, int] = {}
    lat_ms: list[float] = []
    by_type: dict[str, int] = {}
    for sid, f in entries:
        eid = f["event_id"]
        seen[eid] = seen.get(eid, 0) + 1
        by_type[f["event_type"]] = by_type.get(f["event_type"], 0) + 1
        if eid in burst.committed:
            lat_ms.append(max(0.0, int(sid.split("-")[0]) - burst.committed[eid] * 1000))
    missing = [e for e in burst.committed if seen.get(e, 0) == 0]
    dupes = [e for e, n in seen.items() if n > 1]
    leaked = [e for e in seen if e in burst.rolled_back or e in burst.invalid]
    not_dead = [e for e in burst.invalid if e not in dead]

    t = Table(title="what landed on the stream", show_header=True)
    t.add_column("event type")
    t.add_column("entries", justify="right")
    for k, v in sorted(by_type.items()):
        t.add_row(k, str(v))
    console.print(t)
    lat_ms.sort()
    p50 = statistics.median(lat_ms) if lat_ms else float("nan")
    p99 = lat_ms[int(len(lat_ms) * 0.99) - 1] if lat_ms else float("nan")
    s = Table(title="summary", show_header=False)
    s.add_row("committed events", str(len(burst.committed)))
    s.add_row("rolled-back events (must not appear)", str(len(burst.rolled_back)))
    s.add_row("refused by record() (bad input, nothing written)", str(burst.refused))
    s.add_row("invalid rows from a non-validating writer", str(len(burst.invalid)))
    s.add_row("dead-lettered by the relay", str(len(dead)))
    s.add_row("stream entries", str(len(entries)))
    s.add_row("write phase", f"{write_s:.2f}s, {len(burst.committed) / write_s:,.0f} events/s committed")
    s.add_row("drain after the last commit", f"{drain_tail * 1000:.0f} ms")
    s.add_row("commit-to-stream latency p50 / p99", f"{p50:.1f} ms / {p99:.1f} ms")
    console.print(s)
    for eid, why in list(dead.items())[:3]:
        console.print(f"  dead letter {eid}: {why}", markup=False)
    checks = {
        "every committed event is on the stream": not missing,
        "no event is on the stream twice": not dupes,
        "no rolled-back or invalid event is on the stream": not leaked,
        "every invalid row is dead-lettered": not not_dead,
        "the relay stopped cleanly on SIGTERM (exit 0)": relay_rc == 0,
    }
    for name, ok in checks.items():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {name}")
    console.print("cleaned up (servers stopped, temporary data removed)")
    return 0 if all(checks.values()) else 1
