"""``outbox worker``: run the workflow worker; ``status``: lag, pending, DLQ, runs; ``triggers``: list, add,
enable, disable, remove a tenant's workflow triggers; ``runs``: list run requests.

Every flag has an environment variable (``OUTBOX_WORKER_*``; URLs, stream and log level share ``OUTBOX_*``).
Exit codes: 0 done, 1 not found / refused, 2 invalid input or configuration, 3 unavailable, 4 tables missing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import psycopg
import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outbox.cli.exits import config_exit, postgres_exit
from outbox.errors import ConfigurationError
from outbox.retry import redis_config_error
from outbox.worker import sql
from outbox.worker.errors import InvalidRunStatus, InvalidTrigger, WorkerInputError
from outbox.worker.settings import WorkerSettings, load_worker_settings

app = typer.Typer(
    help="Workflow worker: ingest the stream, start runs for matching triggers. `status` reports on it.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()

DbUrl = Annotated[
    str | None, typer.Option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Postgres URL (libpq PG* if unset)")
]
RedisUrl = Annotated[str | None, typer.Option("--redis-url", envvar="OUTBOX_REDIS_URL", help="Redis URL")]
Stream = Annotated[str | None, typer.Option("--stream", envvar="OUTBOX_STREAM", help="Stream key")]
Group = Annotated[str | None, typer.Option("--group", envvar="OUTBOX_WORKER_GROUP", help="Consumer group")]
Dlq = Annotated[
    str | None,
    typer.Option("--dlq-stream", envvar="OUTBOX_WORKER_DLQ_STREAM", help="Dead-letter stream (<stream>:dlq)"),
]


def _settings(**overrides: Any) -> WorkerSettings:
    try:
        return load_worker_settings(**overrides)
    except ConfigurationError as exc:
        raise config_exit(exc) from None


@app.callback()
def run(
    ctx: typer.Context,
    database_url: DbUrl = None,
    redis_url: RedisUrl = None,
    stream: Stream = None,
    group: Group = None,
    dlq_stream: Dlq = None,
    consumer: Annotated[
        str | None, typer.Option(envvar="OUTBOX_WORKER_CONSUMER", help="Consumer name (default hostname-pid-random)")
    ] = None,
    start_id: Annotated[
        str | None,
        typer.Option(envvar="OUTBOX_WORKER_START_ID", help="New group starts at 0 (whole stream) or $ (new only)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(envvar="OUTBOX_WORKER_BATCH_SIZE", help="Entries per read and transaction")
    ] = None,
    block_ms: Annotated[int | None, typer.Option(envvar="OUTBOX_WORKER_BLOCK_MS", help="XREADGROUP BLOCK (ms)")] = None,
    claim_idle: Annotated[
        float | None, typer.Option(envvar="OUTBOX_WORKER_CLAIM_IDLE", help="Claim entries pending this long (s)")
    ] = None,
    claim_interval: Annotated[
        float | None, typer.Option(envvar="OUTBOX_WORKER_CLAIM_INTERVAL", help="Seconds between claim sweeps")
    ] = None,
    max_deliveries: Annotated[
        int | None, typer.Option(envvar="OUTBOX_WORKER_MAX_DELIVERIES", help="Failed deliveries before the DLQ")
    ] = None,
    catalog_cache_ttl: Annotated[
        float | None, typer.Option(envvar="OUTBOX_WORKER_CATALOG_CACHE_TTL", help="Schema resolution cache (s)")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar="OUTBOX_WORKER_METRICS_PORT", help="Serve Prometheus metrics on this port (off if unset)"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(envvar="OUTBOX_LOG_LEVEL", help="Logging level")] = None,
    once: Annotated[bool, typer.Option("--once", help="Process what is there (and claimable), then exit")] = False,
) -> None:
    """Run the workflow worker until SIGTERM/SIGINT (finishes the entries in hand, exits 0)."""
    if ctx.invoked_subcommand is not None:
        return
    from outbox.worker.cli import serve

    settings = _settings(
        database_url=database_url, redis_url=redis_url, stream=stream, group=group, dlq_stream=dlq_stream,
        consumer=consumer, start_id=start_id, batch_size=batch_size, block_ms=block_ms, claim_idle=claim_idle,
        claim_interval=claim_interval, max_deliveries=max_deliveries, catalog_cache_ttl=catalog_cache_ttl,
        metrics_port=metrics_port, log_level=log_level,
    )  # fmt: skip
    try:
        settings.require_database()
        settings.require_redis()
    except ConfigurationError as exc:
        raise config_exit(exc) from None
    raise typer.Exit(serve(settings, once=once))


@app.command()
def status(
    database_url: DbUrl = None,
    redis_url: RedisUrl = None,
    stream: Stream = None,
    group: Group = None,
    dlq_stream: Dlq = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")] = False,
) -> None:
    """Group lag, pending entries per consumer, DLQ length, events ingested and runs started (per tenant)."""
    from outbox.worker.status import status as collect

    settings = _settings(
        database_url=database_url, redis_url=redis_url, stream=stream, group=group, dlq_stream=dlq_stream
    )
    try:
        url = settings.require_redis()
    except ConfigurationError as exc:
        raise config_exit(exc) from None
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=3)
    try:
        with _db(settings) as conn:
            data = collect(client, conn, settings)
    except redis.RedisError as exc:
        refused = redis_config_error(exc)
        if refused is not None:
            raise config_exit(refused) from None
        err.print(f"[red]redis unavailable:[/] {exc}")
        raise typer.Exit(3) from None
    finally:
        client.close()
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")
        return
    t = Table(title=f"worker status ({data['stream']}, group {data['group']})", show_header=False)
    lag = data.get("lag")
    t.add_row("group exists", str(data.get("group_exists")))
    t.add_row("stream length", str(data.get("length", 0)))
    t.add_row("lag (not yet delivered)", "-" if lag is None else f"{lag}{'+' if data.get('lag_capped') else ''}")
    t.add_row("pending (delivered, not acked)", str(data.get("pending", 0)))
    t.add_row(f"dead letters ({data['dlq']['stream']})", str(data["dlq"]["length"]))
    t.add_row("events ingested", str(data["events_ingested"]))
    t.add_row("events invalid", str(data["events_invalid"]))
    t.add_row("runs started", str(data["runs_started"]))
    by = data.get("runs_by_status") or {}
    t.add_row("runs pending/claimed/done/failed", "/".join(str(by.get(k, 0)) for k in sql.RUN_STATUSES))
    out.print(t)
    if data.get("consumers"):
        ct = Table("consumer", "pending", "idle", title="consumers")
        for c in data["consumers"]:
            ct.add_row(c["name"], str(c["pending"]), f"{c['idle_ms'] / 1000:.1f}s")
        out.print(ct)
    if data["tenants"]:
        tt = Table("tenant", "ingested", "invalid", "runs started", title="per tenant")
        for r in data["tenants"]:
            tt.add_row(r["tenant_id"], str(r["ingested"]), str(r["invalid"]), str(r["runs_started"]))
        out.print(tt)


# ---- triggers ---------------------------------------------------------------------------------------------

triggers_app = typer.Typer(
    help="A tenant's workflow triggers: list, add, enable, disable, remove.", no_args_is_help=True, add_completion=False
)
app.add_typer(triggers_app, name="triggers")

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]
TriggerId = Annotated[str, typer.Argument(help="Trigger id (from `outbox worker triggers list`)", show_default=False)]

# the CLI spelling of each field a typed error can name
_FLAGS = {
    "tenant_id": "--tenant",
    "event_type": "--event-type",
    "workflow_name": "--workflow",
    "payload_filter": "--filter",
    "payload_schema_ref": "--schema-ref",
    "status": "--status",
    "limit": "--limit",
    "id": "ID",
}


@contextmanager
def _db(settings: WorkerSettings) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one command; typed input errors, missing tables and outages become exit codes."""
    from outbox.ops import tables_required

    try:
        dsn = settings.require_database()
    except ConfigurationError as exc:
        raise config_exit(exc) from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, application_name="outbox-cli")
    except psycopg.OperationalError as exc:
        raise postgres_exit(exc) from None
    try:
        with conn, tables_required():  # missing tables: SchemaNotInstalled, exit code 4 (outbox.cli.main)
            yield conn
    except WorkerInputError as exc:
        flag = _FLAGS.get(exc.field, exc.field)
        err.print(f"[red]error:[/] {escape(flag)} ({exc.field}): {escape(exc.reason)}")
        raise typer.Exit(2 if isinstance(exc, InvalidTrigger | InvalidRunStatus) else 1) from None


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")


def _compact(value: Any) -> str:
    return "-" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@triggers_app.command("list")
def triggers_list(
    database_url: DbUrl = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's triggers")] = None,
    as_json: AsJson = False,
) -> None:
    """Triggers (of one tenant, or all), oldest first."""
    from outbox.worker.triggers import list_triggers

    with _db(_settings(database_url=database_url)) as conn:
        found = list_triggers(conn, tenant)
    if as_json:
        _dump([t.to_dict() for t in found])
        return
    t = Table(
        "id", "tenant", "event type", "workflow", "filter", "schema ref", "enabled", title=f"{len(found)} trigger(s)"
    )
    for tr in found:
        t.add_row(str(tr.id), escape(tr.tenant_id), escape(tr.event_type), escape(tr.workflow_name),
                  escape(_compact(tr.payload_filter)), escape(tr.payload_schema_ref or "-"),
                  "yes" if tr.enabled else "no")  # fmt: skip
    out.print(t)


@triggers_app.command("add")
def triggers_add(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id", show_default=False)],
    event_type: Annotated[str, typer.Option("--event-type", help="Event type (resolvable for the tenant)")],
    workflow: Annotated[str, typer.Option("--workflow", help="Workflow name to request a run of")],
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help='JSON object contained in the payload, e.g. \'{"newStatusId":"closed"}\''),
    ] = None,
    schema_ref: Annotated[
        str | None, typer.Option("--schema-ref", help="Only events resolving to this payload schema ref")
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
    database_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Attach a trigger; prints its id. The event type must resolve for the tenant, the filter be a JSON object."""
    from outbox.worker.triggers import create_trigger

    with _db(_settings(database_url=database_url)) as conn:
        tr = create_trigger(conn, tenant, event_type, workflow, payload_filter=filter_, payload_schema_ref=schema_ref,
                            enabled=not disabled)  # fmt: skip
        conn.commit()
    if as_json:
        _dump(tr.to_dict())
    else:
        sys.stdout.write(f"{tr.id}\n")
        err.print(f"trigger {tr.id} added ({'enabled' if tr.enabled else 'disabled'})")


def _toggle(trigger_id: str, database_url: str | None, enabled: bool, as_json: bool) -> None:
    from outbox.worker.triggers import disable_trigger, enable_trigger

    with _db(_settings(database_url=database_url)) as conn:
        tr = (enable_trigger if enabled else disable_trigger)(conn, trigger_id)
        conn.commit()
    if as_json:
        _dump(tr.to_dict())
    else:
        out.print(f"trigger {tr.id} {'enabled' if enabled else 'disabled'}")


@triggers_app.command("enable")
def triggers_enable(trigger_id: TriggerId, database_url: DbUrl = None, as_json: AsJson = False) -> None:
    """Enable a trigger: events ingested from now on can start its workflow."""
    _toggle(trigger_id, database_url, True, as_json)


@triggers_app.command("disable")
def triggers_disable(trigger_id: TriggerId, database_url: DbUrl = None, as_json: AsJson = False) -> None:
    """Disable a trigger: events ingested from now on start no run of it."""
    _toggle(trigger_id, database_url, False, as_json)


@triggers_app.command("remove")
def triggers_remove(trigger_id: TriggerId, database_url: DbUrl = None, as_json: AsJson = False) -> None:
    """Delete a trigger that has no run requests (and its skip records); one with requests: disable it."""
    from outbox.worker.triggers import remove_trigger

    with _db(_settings(database_url=database_url)) as conn:
        tr = remove_trigger(conn, trigger_id)
        conn.commit()
    if as_json:
        _dump(tr.to_dict())
    else:
        out.print(f"trigger {tr.id} removed")


# ---- run requests -----------------------------------------------------------------------------------------


@app.command("runs")
def runs_list(
    database_url: DbUrl = None,
    status_: Annotated[str | None, typer.Option("--status", help="pending, claimed, done or failed")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant")] = None,
    workflow: Annotated[str | None, typer.Option("--workflow", help="Only this workflow")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most requests to list (newest first)")] = 100,
    as_json: AsJson = False,
) -> None:
    """Run requests, newest first, with their claim status (pending, claimed, done, failed)."""
    from outbox.worker.runs import counts_by_status, list_runs

    with _db(_settings(database_url=database_url)) as conn:
        found = list_runs(conn, status=status_, tenant_id=tenant, workflow=workflow, limit=limit)
        counts = counts_by_status(conn)
    if as_json:
        _dump([r.to_dict() for r in found])
        return
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    t = Table("id", "tenant", "workflow", "status", "attempts", "created", "claimed by", "error",
              title=f"{len(found)} run request(s) shown; all: {summary}")  # fmt: skip
    for r in found:
        t.add_row(str(r.id), escape(r.tenant_id), escape(r.workflow_name), r.status, str(r.attempts),
                  r.created_at.isoformat(timespec="seconds"), escape(r.claimed_by or "-"),
                  escape((r.error or "")[:80]))  # fmt: skip
    out.print(t)
