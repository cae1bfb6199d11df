"""Operating the workflow worker: trigger management (library and ``outbox worker triggers``), Prometheus
metrics (registry and an HTTP scrape of a worker process), claimable run requests (migration ``outbox_0004``,
``outbox.worker.runs``, ``outbox worker runs``). Real Postgres and Redis throughout.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from alembic import command
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, pool
from typer.testing import CliRunner

from outbox import migrate
from outbox.catalog import register_tenant_event
from outbox.cli.main import app as cli_app
from outbox.errors import ConfigurationError
from outbox.settings import sqlalchemy_url
from outbox.worker import (
    InvalidRunStatus,
    InvalidTrigger,
    InvalidTriggerFilter,
    RunRequestNotClaimed,
    RunRequestNotFound,
    TriggerInUse,
    TriggerNotFound,
    UnknownTriggerEventType,
    Worker,
    WorkerInputError,
    WorkerMetrics,
    WorkerSettings,
    check_filter,
    claim,
    complete,
    create_trigger,
    fail,
    get_trigger,
    list_runs,
    list_triggers,
    load_worker_settings,
    parse_filter,
    remove_trigger,
    requeue_stale,
)
from outbox.worker.runs import counts_by_status
from tests.conftest import wait_for
from tests.test_worker import (
    STATUS,
    count,
    drained,
    entry,
    pending,
    q,
    spawn_worker,
    status_payload,
    trigger,
    worker_env,
    worker_thread,
    wsettings,
    xadd_all,
)

# ---- helpers -------------------------------------------------------------------------------------------


def cli(db_url: str, *args: str, **env: str) -> Any:
    """``outbox worker ...`` in-process; returns the click result."""
    return CliRunner().invoke(cli_app, ["worker", *args], env={"OUTBOX_DATABASE_URL": db_url, **env})


def flat(text: str) -> str:
    """Output with line wrapping undone (rich wraps long messages at the terminal width)."""
    return " ".join(text.split())


def ingest(ws: WorkerSettings, rds: redis.Redis, entries: list[dict[str, str]], **kw: Any) -> Worker:
    """Add entries to the stream and run a worker until it is idle."""
    xadd_all(rds, ws.stream, entries)
    w = Worker(ws, **kw)
    w.run(until_idle=True)
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def n_triggers(db_url: str) -> int:
    return count(db_url, "workflow_triggers")


@pytest.fixture
def ws(db_url: str, redis_url: str, stream: str, rds: redis.Redis) -> WorkerSettings:
    return wsettings(db_url, redis_url, stream)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url) as c:
        yield c


# ---- triggers: the library -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"closed"', "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": {"b": Infinity}}', "Infinity is not JSON"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": {"b": ["ok", "x\\u0000y"]}}', "$.a.b[1]: strings must not contain"),
        ('{"a\\u0000": 1}', "keys must not contain"),
    ],
)
def test_filter_grammar_refuses_with_the_field_named(text, needle):
    with pytest.raises(InvalidTriggerFilter) as exc:
        parse_filter(text)
    assert exc.value.field == "payload_filter"
    assert needle in exc.value.reason
    assert str(exc.value).startswith("payload_filter: ")


def test_filter_grammar_python_values():
    good = {"a": None, "b": [1, 2.5, True, "x"], "c": {"d": {"e": []}}, "é": "ü"}
    assert check_filter(good) is good
    assert parse_filter(json.dumps(good)) == good
    for bad, needle in (([1], "got array"), ("x", "got str"), ({"a": {1, 2}}, "$.a: set is not a JSON value"),
                        ({"a": float("inf")}, "NaN/Infinity"), ({"a": [float("nan")]}, "$.a[0]")):  # fmt: skip
        with pytest.raises(InvalidTriggerFilter, match=None) as exc:
            check_filter(bad)
        assert needle in exc.value.reason, exc.value.reason


def test_valid_filters_are_stored_and_round_trip(conn, db_url):
    filters = [{}, {"newStatusId": "closed"}, {"tags": ["vip"], "meta": {"n": 1, "ok": True, "none": None}}]
    ids = [create_trigger(conn, "tenant-a", STATUS, f"wf-{i}", payload_filter=f).id for i, f in enumerate(filters)]
    text = create_trigger(conn, "tenant-a", STATUS, "wf-text", payload_filter='{"newStatusId": "open"}')
    conn.commit()
    assert [get_trigger(conn, i).payload_filter for i in ids] == filters
    assert text.payload_filter == {"newStatusId": "open"} and text.enabled
    assert q(db_url, "SELECT payload_filter FROM workflow_triggers WHERE id = %s", text.id) == [
        ({"newStatusId": "open"},)
    ]


def test_event_type_must_resolve_as_the_worker_resolves_it(conn, db_url):
    """Tenant catalog, system catalog, then the schema registry: anything else is refused, naming event_type."""
    register_tenant_event(conn, "tenant-c", "CUSTOM_DEAL_WON", name="Deal won", schema={"type": "object"})
    conn.execute("DELETE FROM system_event_catalog WHERE event_type = 'TICKET_PRIORITY_CHANGED'")
    conn.commit()
    custom = create_trigger(conn, "tenant-c", "CUSTOM_DEAL_WON", "celebrate")  # tenant catalog
    system = create_trigger(conn, "tenant-a", STATUS, "flow")  # system catalog
    registry_only = create_trigger(conn, "tenant-a", "TICKET_PRIORITY_CHANGED", "prio")  # code registry
    conn.commit()
    assert {t.id for t in list_triggers(conn)} == {custom.id, system.id, registry_only.id}
    for tenant, event_type in (
        ("tenant-a", "CUSTOM_DEAL_WON"),
        ("tenant-a", "NO_SUCH_EVENT"),
        ("tenant-a", "ticket_status_changed"),
    ):
        with pytest.raises(UnknownTriggerEventType) as exc:
            create_trigger(conn, tenant, event_type, "flow")
        assert exc.value.field == "event_type" and event_type in exc.value.reason and tenant in exc.value.reason
    conn.rollback()
    empties = [
        ({"tenant_id": ""}, "tenant_id"),
        ({"workflow_name": "  "}, "workflow_name"),
        ({"event_type": ""}, "event_type"),
        ({"payload_schema_ref": ""}, "payload_schema_ref"),
    ]
    for kw, field in empties:
        args: dict[str, Any] = {"tenant_id": "tenant-a", "event_type": STATUS, "workflow_name": "wf", **kw}
        with pytest.raises(InvalidTrigger) as exc2:
            create_trigger(conn, **args)
        assert exc2.value.field == field
    with pytest.raises(InvalidTriggerFilter):
        create_trigger(conn, "tenant-a", STATUS, "wf", payload_filter="[1]")
    conn.rollback()
    assert n_triggers(db_url) == 3


def test_unknown_trigger_ids(conn):
    for bad in (str(uuid.uuid4()), "not-a-uuid", uuid.uuid4()):
        with pytest.raises(TriggerNotFound) as exc:
            get_trigger(conn, bad)
        assert exc.value.field == "id" and str(bad) in exc.value.reason
        with pytest.raises(TriggerNotFound):
            remove_trigger(conn, bad)


# ---- triggers: the CLI, with a worker running -----------------------------------------------------------


def test_triggers_cli_lifecycle_with_the_worker(ws, rds, stream, db_url):
    """add (disabled) -> no run; enable -> runs; disable -> none; remove refused while it has run requests;
    a trigger with only skips is removed together with its skips; list filters by tenant."""
    res = cli(db_url, "triggers", "add", "--tenant", "tenant-a", "--event-type", STATUS, "--workflow", "survey",
              "--filter", '{"newStatusId": "closed"}', "--disabled")  # fmt: skip
    assert res.exit_code == 0, res.output
    tid = res.stdout.strip()
    assert uuid.UUID(tid) and get_trigger_row(db_url, tid) == (
        "tenant-a",
        STATUS,
        "survey",
        {"newStatusId": "closed"},
        False,
    )
    res = cli(db_url, "triggers", "add", "--tenant", "tenant-a", "--event-type", STATUS, "--workflow", "pinned",
              "--schema-ref", "payload.TicketStatusChanged.v9", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    pinned = json.loads(res.stdout)
    assert pinned["payload_schema_ref"] == "payload.TicketStatusChanged.v9" and pinned["enabled"] is True
    res = cli(db_url, "triggers", "add", "--tenant", "tenant-b", "--event-type", STATUS, "--workflow", "b-flow")
    assert res.exit_code == 0, res.output

    def closed() -> dict[str, str]:
        return entry("tenant-a", status_payload("tenant-a", "closed"))

    e1 = closed()
    with worker_thread(ws):
        xadd_all(rds, stream, [e1, closed()])
        wait_for(lambda: drained(rds, stream, db_url, 2), what="2 events while disabled")
        assert q(db_url, "SELECT count(*) FROM workflow_run_requests WHERE trigger_id = %s", tid)[0][0] == 0
        res = cli(db_url, "triggers", "enable", tid)
        assert res.exit_code == 0 and f"trigger {tid} enabled" in flat(res.stdout)
        xadd_all(rds, stream, [closed(), entry("tenant-a", status_payload("tenant-a", "open"))])
        wait_for(lambda: drained(rds, stream, db_url, 4), what="2 events while enabled")
        assert q(db_url, "SELECT count(*) FROM workflow_run_requests WHERE trigger_id = %s", tid)[0][0] == 1
        res = cli(db_url, "triggers", "disable", tid, "--json")
        assert res.exit_code == 0 and json.loads(res.stdout)["enabled"] is False
        xadd_all(rds, stream, [closed()])
        wait_for(lambda: drained(rds, stream, db_url, 5), what="1 event after disabling")
    assert q(db_url, "SELECT count(*) FROM workflow_run_requests WHERE trigger_id = %s", tid)[0][0] == 1
    assert q(db_url, "SELECT count(*) FROM workflow_trigger_skips WHERE trigger_id = %s", pinned["id"])[0][0] == 5

    listed = cli(db_url, "triggers", "list", "--tenant", "tenant-a", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["workflow_name"], r["enabled"]) for r in rows] == [
        (tid, "survey", False),
        (pinned["id"], "pinned", True),
    ]
    assert len(json.loads(cli(db_url, "triggers", "list", "--json").stdout)) == 3
    human = cli(db_url, "triggers", "list")
    assert human.exit_code == 0 and "survey" in human.stdout and "3 trigger(s)" in human.stdout

    res = cli(db_url, "triggers", "remove", tid)  # it has a run request: refused, nothing changes
    assert res.exit_code == 1
    assert "has 1 run request(s)" in flat(res.output) and "disable it instead" in flat(res.output)
    assert n_triggers(db_url) == 3
    res = cli(db_url, "triggers", "remove", pinned["id"])  # only skips: removed with them
    assert res.exit_code == 0, res.output
    assert n_triggers(db_url) == 2 and count(db_url, "workflow_trigger_skips") == 0
    with psycopg.connect(db_url) as c, pytest.raises(TriggerInUse) as exc:
        remove_trigger(c, tid)
    assert exc.value.requests == 1 and exc.value.field == "id"


def get_trigger_row(db_url: str, tid: str) -> tuple[Any, ...]:
    return q(db_url, "SELECT tenant_id, event_type, workflow_name, payload_filter, enabled FROM workflow_triggers"
                     " WHERE id = %s", tid)[0]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--filter", "{not json"], 2, ["--filter (payload_filter)", "not valid JSON"]),
        (["--filter", '["closed"]'], 2, ["--filter (payload_filter)", "must be a JSON object"]),
        (["--filter", '{"a": NaN}'], 2, ["--filter (payload_filter)", "NaN is not JSON"]),
        (["--event-type", "NO_SUCH_EVENT"], 2, ["--event-type (event_type)", "unknown event type 'NO_SUCH_EVENT'"]),
        (["--workflow", ""], 2, ["--workflow (workflow_name)", "must not be empty"]),
    ],
)
def test_triggers_add_refuses_bad_input_naming_the_flag(db_url, args, code, needles):
    base = {"--tenant": "tenant-a", "--event-type": STATUS, "--workflow": "wf"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    res = cli(db_url, "triggers", "add", *[x for kv in base.items() for x in kv])
    assert res.exit_code == code, res.output
    for needle in needles:
        assert needle in flat(res.output)
    assert n_triggers(db_url) == 0


@pytest.mark.parametrize("action", ["enable", "disable", "remove"])
def test_triggers_cli_unknown_id(db_url, action):
    trigger(db_url, "tenant-a", "flow")
    for bad in (str(uuid.uuid4()), "nope"):
        res = cli(db_url, "triggers", action, bad)
        assert res.exit_code == 1, res.output
        assert f"ID (id): no trigger with id '{bad}'" in flat(res.output)
    assert [t[0] for t in q(db_url, "SELECT enabled FROM workflow_triggers")] == [True]


def test_triggers_cli_database_down():
    res = cli("postgresql://postgres@127.0.0.1:1/nope", "triggers", "list")
    assert res.exit_code == 3 and "database unavailable" in res.output


# ---- metrics ---------------------------------------------------------------------------------------------


def sample(reg: CollectorRegistry, name: str) -> float:
    value = reg.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.raw_stream_entries  # XADDs entries the reader rejects, on purpose
def test_metrics_count_what_the_worker_did(db_url, redis_url, stream, rds):
    """Counters on a private registry equal what the database and the DLQ show, after real entries."""
    ws = wsettings(db_url, redis_url, stream, max_deliveries=1)
    trigger(db_url, "tenant-a", "all")
    trigger(db_url, "tenant-a", "closed", payload_filter={"newStatusId": "closed"})
    trigger(db_url, "tenant-a", "pinned", payload_schema_ref="payload.TicketStatusChanged.v9")
    reg = CollectorRegistry()
    metrics = WorkerMetrics(reg)
    valid = [entry("tenant-a", status_payload("tenant-a", s)) for s in ("closed", "closed", "open")]
    invalid = entry("tenant-a", {"tenantId": "tenant-a"})  # misses required fields
    poison = entry("tenant-a", "{not json")
    w = ingest(ws, rds, [*valid, invalid, poison], metrics=metrics)
    assert w.stats.ingested == 4
    assert sample(reg, "outbox_worker_ingested_total") == 4 == count(db_url, "workflow_runtime_events")
    assert sample(reg, "outbox_worker_schema_failures_total") == 1
    assert sample(reg, "outbox_worker_run_requests_total") == 5 == count(db_url, "workflow_run_requests")
    assert sample(reg, "outbox_worker_trigger_skips_total") == 3 == count(db_url, "workflow_trigger_skips")
    assert sample(reg, "outbox_worker_dead_lettered_total") == 1 == rds.xlen(f"{stream}:dlq")
    assert sample(reg, "outbox_worker_failed_deliveries_total") == 1
    assert sample(reg, "outbox_worker_duplicates_total") == 0
    batches = sample(reg, "outbox_worker_batch_seconds_count")
    assert batches >= 1 and sample(reg, "outbox_worker_batch_seconds_sum") > 0
    # redelivered: two entries again (one of them twice, in the same batch) -- duplicates, nothing new
    ingest(ws, rds, [valid[0], valid[0], invalid], metrics=metrics)
    assert sample(reg, "outbox_worker_duplicates_total") == 3
    assert sample(reg, "outbox_worker_ingested_total") == 4
    assert sample(reg, "outbox_worker_schema_failures_total") == 1  # counted once per event, not per delivery
    assert sample(reg, "outbox_worker_run_requests_total") == 5
    assert sample(reg, "outbox_worker_batch_seconds_count") > batches


def test_metrics_setting_is_off_by_default_and_names_its_variable(monkeypatch):
    assert load_worker_settings().metrics_port is None
    monkeypatch.setenv("OUTBOX_WORKER_METRICS_PORT", "9188")
    assert load_worker_settings().metrics_port == 9188
    monkeypatch.setenv("OUTBOX_WORKER_METRICS_PORT", "lots")
    with pytest.raises(ConfigurationError) as exc:
        load_worker_settings()
    assert exc.value.variable == "OUTBOX_WORKER_METRICS_PORT"
    monkeypatch.delenv("OUTBOX_WORKER_METRICS_PORT")
    res = CliRunner().invoke(cli_app, ["worker", "--metrics-port", "70000"], env={
        "OUTBOX_DATABASE_URL": "postgresql://x/y", "OUTBOX_REDIS_URL": "redis://127.0.0.1:1/0"})  # fmt: skip
    assert res.exit_code == 2 and "OUTBOX_WORKER_METRICS_PORT" in res.output


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.fault
def test_metrics_endpoint_of_a_worker_process(ws, rds, stream, db_url, tmp_path):
    """``outbox worker --metrics-port P``: a scrape shows the counters of the entries it processed."""
    trigger(db_url, "tenant-a", "flow")
    port = free_port()
    log = tmp_path / "worker.log"
    proc = spawn_worker(ws, log, "--metrics-port", str(port))
    try:
        first = wait_for(lambda: _try_scrape(port), timeout=60, what="metrics endpoint up")
        assert first["outbox_worker_ingested_total"] == 0
        xadd_all(rds, stream, [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)])
        xadd_all(rds, stream, [entry("tenant-a", {"tenantId": "tenant-a"})])
        wait_for(lambda: drained(rds, stream, db_url, 4), what="4 events")
        got = wait_for(lambda: (m := scrape(port))["outbox_worker_ingested_total"] == 4 and m, what="scrape")
        assert got["outbox_worker_run_requests_total"] == 3
        assert got["outbox_worker_schema_failures_total"] == 1
        assert got["outbox_worker_duplicates_total"] == 0 and got["outbox_worker_dead_lettered_total"] == 0
        assert got["outbox_worker_batch_seconds_count"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"metrics on 0.0.0.0:{port}/metrics" in log.read_text()


def _try_scrape(port: int) -> dict[str, float] | None:
    try:
        return scrape(port)
    except OSError:
        return None


# ---- run requests: migration ------------------------------------------------------------------------------


def test_migration_0004_adds_claim_columns_and_keeps_existing_requests(db_url, redis_url, stream, rds):
    """Down to outbox_0003, requests written there, up again: they are pending; the claim index exists."""
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT version_num FROM outbox_alembic_version").fetchone()[0] == "outbox_0006"
        idx = dict(c.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'workflow_run_requests'"))
    assert "WHERE (status = 'pending'::text)" in idx["workflow_run_requests_claim_idx"]
    cfg = migrate.alembic_config(db_url)
    engine = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "outbox_0003")
    engine.dispose()
    cols = {r[0] for r in q(db_url, "SELECT column_name FROM information_schema.columns"
                                    " WHERE table_name = 'workflow_run_requests'")}  # fmt: skip
    assert "status" not in cols and "claimed_by" not in cols
    trigger(db_url, "tenant-a", "flow")
    ingest(wsettings(db_url, redis_url, stream), rds, [entry("tenant-a", status_payload("tenant-a")) for _ in range(2)])
    assert count(db_url, "workflow_run_requests") == 2
    migrate.upgrade(db_url)
    rows = q(db_url, "SELECT status, claimed_at, claimed_by, attempts FROM workflow_run_requests")
    assert rows == [("pending", None, None, 0)] * 2
    with psycopg.connect(db_url) as c, pytest.raises(psycopg.errors.CheckViolation):
        c.execute("UPDATE workflow_run_requests SET status = 'running'")


# ---- run requests: claim, complete, fail -----------------------------------------------------------------


def make_requests(
    ws: WorkerSettings, rds: redis.Redis, db_url: str, events: int, workflows: int = 1
) -> list[uuid.UUID]:
    """``events`` events x ``workflows`` triggers, ingested by a real worker; the request ids, oldest first."""
    for i in range(workflows):
        trigger(db_url, "tenant-a", f"wf-{i}")
    ingest(ws, rds, [entry("tenant-a", status_payload("tenant-a")) for _ in range(events)])
    ids = [r[0] for r in q(db_url, "SELECT id FROM workflow_run_requests ORDER BY created_at, id")]
    assert len(ids) == events * workflows
    return ids


def test_claim_complete_fail_requeue(ws, rds, db_url, conn):
    ids = make_requests(ws, rds, db_url, 3, workflows=2)
    got = claim(conn, 3, "engine-1")
    conn.commit()
    assert [r.id for r in got] == ids[:3]  # oldest first
    assert all(r.status == "claimed" and r.claimed_by == "engine-1" and r.attempts == 1 and r.claimed_at for r in got)
    assert got[0].payload["tenantId"] == "tenant-a" and got[0].workflow_name in ("wf-0", "wf-1")
    other = q(db_url, "SELECT workflow_name FROM workflow_run_requests WHERE status = 'pending' LIMIT 1")[0][0]
    only_wf1 = claim(conn, 10, "engine-2", workflows=[other])
    conn.commit()
    assert {r.workflow_name for r in only_wf1} == {other} and len(only_wf1) == len({r.event_id for r in only_wf1})
    assert q(db_url, "SELECT count(*) FROM workflow_run_requests WHERE status = 'pending' AND workflow_name = %s",
             other)[0][0] == 0  # fmt: skip
    assert not {r.id for r in only_wf1} & {r.id for r in got}
    assert claim(conn, 10, "engine-3", tenant_id="tenant-z") == []

    done = complete(conn, got[0].id, claimer="engine-1")
    assert done.status == "done" and done.finished_at is not None and done.error is None
    with pytest.raises(RunRequestNotClaimed) as exc:
        complete(conn, got[0].id)  # already done
    assert exc.value.status == "done" and exc.value.field == "id"
    with pytest.raises(RunRequestNotClaimed) as exc:
        fail(conn, got[1].id, "boom", claimer="engine-2")  # someone else's
    assert exc.value.status == "claimed" and exc.value.claimed_by == "engine-1"
    failed = fail(conn, str(got[1].id), "workflow crashed: boom", claimer="engine-1")
    assert failed.status == "failed" and failed.error == "workflow crashed: boom"
    for bad in (uuid.uuid4(), "junk"):
        with pytest.raises(RunRequestNotFound):
            complete(conn, bad)
    with pytest.raises(WorkerInputError) as exc2:
        fail(conn, got[2].id, " ")
    assert exc2.value.field == "reason"
    for args, field in (((0, "e"), "limit"), ((5, ""), "claimer")):
        with pytest.raises(WorkerInputError) as exc2:
            claim(conn, *args)
        assert exc2.value.field == field
    conn.commit()

    # got[2] is still claimed by engine-1, which "died": requeued once its claim is older than the timeout
    assert requeue_stale(conn, 3600) == 0
    time.sleep(0.3)
    stale_count = 1 + len(only_wf1)
    assert requeue_stale(conn, 0.2) == stale_count
    conn.commit()
    again = claim(conn, 100, "engine-4")
    conn.commit()
    assert got[2].id in {r.id for r in again}
    assert next(r for r in again if r.id == got[2].id).attempts == 2
    assert len(again) == 6 - 2  # all but the done and the failed one
    assert counts_by_status(conn) == {"pending": 0, "claimed": 4, "done": 1, "failed": 1}
    assert {r.id for r in list_runs(conn, status="failed")} == {got[1].id}
    with pytest.raises(InvalidRunStatus):
        list_runs(conn, status="running")


def test_claim_skips_locked_requests_instead_of_waiting(ws, rds, db_url):
    """A claimer never waits for another's uncommitted claim: it takes the next requests (SKIP LOCKED)."""
    ids = make_requests(ws, rds, db_url, 10)
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        held = claim(a, 4, "a")  # not committed: rows locked
        b.execute("SET lock_timeout = '2s'")
        started = time.monotonic()
        other = claim(b, 4, "b")
        assert time.monotonic() - started < 1.5
        b.commit()
        assert [r.id for r in held] == ids[:4] and [r.id for r in other] == ids[4:8]
        a.rollback()  # a's claim never happened: its requests are pending again
    with psycopg.connect(db_url) as c:
        assert [r.id for r in claim(c, 10, "c")] == ids[:4] + ids[8:]


def test_concurrent_claimers_never_get_the_same_request(ws, rds, db_url):
    ids = make_requests(ws, rds, db_url, 60, workflows=3)  # 180 requests
    n = 8
    barrier = threading.Barrier(n)
    got: dict[str, list[uuid.UUID]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        mine: list[uuid.UUID] = []
        try:
            with psycopg.connect(db_url) as c:
                barrier.wait(10)
                while True:
                    batch = claim(c, 5, name)
                    time.sleep(0.005)  # hold the row locks a while: claims overlap
                    c.commit()
                    if not batch:
                        break
                    mine += [r.id for r in batch]
        except BaseException as exc:
            errors.append(exc)
        got[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"engine-{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    every = [i for mine in got.values() for i in mine]
    assert len(every) == len(set(every)) == len(ids)
    assert set(every) == set(ids)
    assert sum(1 for mine in got.values() if mine) >= 2  # the claimers really ran side by side
    owner = {i: name for name, mine in got.items() for i in mine}
    rows = q(db_url, "SELECT id, status, claimed_by, attempts FROM workflow_run_requests")
    assert all(st == "claimed" and owner[i] == by and att == 1 for i, st, by, att in rows)


# ---- run requests: CLI -----------------------------------------------------------------------------------


def test_runs_cli_and_status(ws, rds, stream, db_url):
    ids = make_requests(ws, rds, db_url, 3)
    with psycopg.connect(db_url) as c:
        first = claim(c, 1, "engine-1")[0]
        c.commit()
    res = cli(db_url, "runs", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["id"] for r in rows] == [str(i) for i in reversed(ids)]  # newest first
    res = cli(db_url, "runs", "--status", "claimed", "--json")
    assert [(r["id"], r["claimed_by"], r["attempts"]) for r in json.loads(res.stdout)] == [
        (str(first.id), "engine-1", 1)
    ]
    assert len(json.loads(cli(db_url, "runs", "--status", "pending", "--json").stdout)) == 2
    assert json.loads(cli(db_url, "runs", "--tenant", "tenant-b", "--json").stdout) == []
    assert len(json.loads(cli(db_url, "runs", "--limit", "1", "--json").stdout)) == 1
    human = cli(db_url, "runs")
    assert human.exit_code == 0 and "pending 2, claimed 1, done 0, failed 0" in flat(human.stdout)
    bad = cli(db_url, "runs", "--status", "running")
    assert bad.exit_code == 2 and "--status (status): 'running' is not one of" in flat(bad.output)
    res = CliRunner().invoke(cli_app, ["worker", "status", "--json"], env=worker_env(ws))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["runs_by_status"] == {"pending": 2, "claimed": 1, "done": 0, "failed": 0}
    assert pending(rds, stream) == 0
