"""``outbox worker``: run the workflow worker; ``outbox worker status``: lag, pending, DLQ, runs.

Every flag has an environment variable (``OUTBOX_WORKER_*``; URLs, stream and log level share ``OUTBOX_*``).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import psycopg
import redis
import typer
from rich.console import Console
from rich.table import Table

from outbox.errors import ConfigurationError
from worker.settings import WorkerSettings, load_worker_settings

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
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


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
    log_level: Annotated[str | None, typer.Option(envvar="OUTBOX_LOG_LEVEL", help="Logging level")] = None,
    once: Annotated[bool, typer.Option("--once", help="Process what is there (and claimable), then exit")] = False,
) -> None:
    """Run the workflow worker until SIGTERM/SIGINT (finishes the entries in hand, exits 0)."""
    if ctx.invoked_subcommand is not None:
        return
    from worker.cli import serve

    settings = _settings(
        database_url=database_url, redis_url=redis_url, stream=stream, group=group, dlq_stream=dlq_stream,
        consumer=consumer, start_id=start_id, batch_size=batch_size, block_ms=block_ms, claim_idle=claim_idle,
        claim_interval=claim_interval, max_deliveries=max_deliveries, catalog_cache_ttl=catalog_cache_ttl,
        log_level=log_level,
    )  # fmt: skip
    try:
        settings.require_database()
        settings.require_redis()
    except ConfigurationError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
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
    from worker.status import status as collect

    settings = _settings(
        database_url=database_url, redis_url=redis_url, stream=stream, group=group, dlq_stream=dlq_stream
    )
    try:
        dsn = settings.require_database()
        url = settings.require_redis()
    except ConfigurationError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, application_name="outbox-cli")
    except psycopg.OperationalError as exc:
        err.print(f"[red]database unavailable:[/] {str(exc).strip()}")
        raise typer.Exit(3) from None
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=3)
    try:
        with conn:
            data = collect(client, conn, settings)
    except redis.RedisError as exc:
        err.print(f"[red]redis unavailable:[/] {exc}")
        raise typer.Exit(3) from None
    except psycopg.errors.UndefinedTable:
        err.print("[red]the workflow tables are missing:[/] run `outbox migrate`")
        raise typer.Exit(1) from None
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
