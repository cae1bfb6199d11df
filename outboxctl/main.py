"""``outbox`` CLI. Every flag has an ``OUTBOX_*`` environment variable, named in ``--help``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from outbox.cli.exits import config_exit, postgres_exit
from outbox.cli.lazy import Lazy, lazy_group, module
from outbox.errors import EXIT_TABLES_MISSING, ConfigurationError, OutboxError, SchemaNotInstalled

# Start-up time: the driver, the operator queries (and with them the contracts) and the sub-command
# groups are imported when a command needs them, not for `outbox --help` (bench/startup.py).
if TYPE_CHECKING:
    import psycopg

    from outbox import ops
    from outbox.settings import Settings
else:
    psycopg = module("psycopg")
    ops = module("outbox.ops")


def load_settings(**overrides: Any) -> Settings:
    """``outbox.settings.load_settings``, imported on first use."""
    from outbox.settings import load_settings as load

    return load(**overrides)


app = typer.Typer(
    help="Transactional outbox: migrate, run the relay, inspect and replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=lazy_group(
        Lazy(
            "simulate",
            "outbox.cli.simulate_cmd:simulate",
            "Build a realistic (or deliberately invalid) payload from an event's schema.",
            first=True,
        ),
        Lazy("schemas", "outbox.cli.schemas_cmd:app", "Payload contracts: export JSON Schemas, check evolution."),
        Lazy("catalog", "outbox.cli.catalog_cmd:app", "Event catalog: sync, list, show, export."),
        Lazy("worker", "outbox.cli.worker_cmd:app", "Workflow worker: ingest, request runs; status, triggers, runs."),
    ),
)
err = Console(stderr=True)
out = Console()

DbUrl = Annotated[
    str | None, typer.Option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Postgres URL (libpq PG* if unset)")
]
RedisUrl = Annotated[str | None, typer.Option("--redis-url", envvar="OUTBOX_REDIS_URL", help="Redis URL")]
Stream = Annotated[str | None, typer.Option("--stream", envvar="OUTBOX_STREAM", help="Stream key")]
Capture = Annotated[
    str | None, typer.Option("--capture", envvar="OUTBOX_CAPTURE", help="poll (outbox table, default) or wal (slot)")
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigurationError as exc:
        raise config_exit(exc) from None


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(settings.require_database(), connect_timeout=5, application_name="outbox-cli")
    except ConfigurationError as exc:
        raise config_exit(exc) from None
    except psycopg.OperationalError as exc:
        raise postgres_exit(exc) from None


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")


@app.command()
def migrate(
    database_url: DbUrl = None,
    sql: Annotated[bool, typer.Option("--sql", help="Print the DDL instead of applying it")] = False,
    versions_path: Annotated[
        bool, typer.Option("--versions-path", help="Print the directory of our Alembic revisions and exit")
    ] = False,
    capture: Capture = None,
    recreate_slot: Annotated[
        bool, typer.Option("--recreate-slot", help="WAL mode: drop the slot first (after it was invalidated)")
    ] = False,
) -> None:
    """Create or upgrade the outbox tables and sync the system catalog (idempotent).

    With ``--capture wal`` (or OUTBOX_CAPTURE=wal) also create the publication and the logical replication slot
    the WAL mode reads, unless they exist (needs wal_level=logical).

    If your own Alembic history holds the outbox revisions (README: Tables and migrations), this changes no
    schema: it checks that history is not behind this release.
    """
    from outbox import migrate as migrations
    from outbox import migrations as revisions

    if versions_path:
        sys.stdout.write(revisions.VERSIONS + "\n")
        return
    if sql:
        migrations.sql()
        return
    settings = _settings(database_url=database_url, capture=capture)
    # Refused credentials (exit 2) and an unreachable server (exit 3) are told apart here, as by every
    # command; the upgrade below reports any failure as "migration failed" (exit 1).
    _connect(settings).close()
    try:
        done = migrations.upgrade(settings.database_url or "postgresql://")
    except migrations.HostHistoryBehind as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # alembic wraps driver errors in many ways
        err.print(f"[red]migration failed:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    if done.host_table is not None:
        at = f" at {', '.join(done.after)}" if done.after else ""
        what = f"outbox tables are managed by your Alembic history ({done.host_table}{at}): schema unchanged"
    elif done.before == done.after:
        what = f"outbox tables are up to date ({', '.join(done.after)})"
    else:
        what = f"outbox tables upgraded from {', '.join(done.before) or 'nothing'} to {', '.join(done.after)}"
    cat = done.catalog
    assert cat is not None
    err.print(f"{what}; system catalog: {cat.inserted} new, {cat.updated} updated", markup=False, soft_wrap=True)
    if settings.capture == "wal":
        _setup_wal(settings, recreate_slot)


def _setup_wal(settings: Settings, recreate_slot: bool) -> None:
    from outbox.errors import WalStreamError
    from outbox.relay.setup import setup_wal

    try:
        url, slot, pub = settings.require_database(), settings.wal_slot, settings.wal_publication
        done = setup_wal(url, slot, pub, recreate_slot=recreate_slot)
    except WalStreamError as exc:
        err.print(f"[red]error:[/] WAL capture cannot be set up: {escape(str(exc))}", soft_wrap=True)
        if exc.sqlstate == "55000":
            err.print("set wal_level = logical in postgresql.conf and restart Postgres, then run this again")
        raise typer.Exit(2) from None
    except psycopg.Error as exc:
        err.print(f"[red]error:[/] WAL capture setup failed: {escape(str(exc).strip())}", soft_wrap=True)
        raise typer.Exit(1) from None
    slot = "recreated" if done.slot_recreated else ("created" if done.slot_created else "exists")
    pub = "created" if done.publication_created else "exists"
    err.print(f"WAL capture: slot {done.slot} {slot}, publication {done.publication} {pub}", markup=False)


@app.command()
def relay(
    database_url: DbUrl = None,
    redis_url: RedisUrl = None,
    stream: Stream = None,
    batch_size: Annotated[int | None, typer.Option(envvar="OUTBOX_BATCH_SIZE", help="Rows per batch")] = None,
    wake: Annotated[
        str | None, typer.Option(envvar="OUTBOX_WAKE", help="notify (LISTEN when idle) or poll (PgBouncer)")
    ] = None,
    poll_interval: Annotated[float | None, typer.Option(envvar="OUTBOX_POLL_INTERVAL", help="Busy poll (s)")] = None,
    idle_poll_interval: Annotated[
        float | None, typer.Option(envvar="OUTBOX_IDLE_POLL_INTERVAL", help="Idle fallback poll (s)")
    ] = None,
    lease_ttl: Annotated[float | None, typer.Option(envvar="OUTBOX_LEASE_TTL", help="Leader lease (s)")] = None,
    trim_maxlen: Annotated[int | None, typer.Option(envvar="OUTBOX_TRIM_MAXLEN", help="XADD MAXLEN ~ N")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(envvar="OUTBOX_METRICS_PORT", help="Serve Prometheus metrics")
    ] = None,
    log_level: Annotated[str | None, typer.Option(envvar="OUTBOX_LOG_LEVEL", help="Logging level")] = None,
    once: Annotated[bool, typer.Option("--once", help="Drain what is pending, then exit")] = False,
    capture: Capture = None,
) -> None:
    """Run the relay daemon until SIGTERM/SIGINT."""
    from outbox.relay.cli import serve

    settings = _settings(
        database_url=database_url, redis_url=redis_url, stream=stream, batch_size=batch_size, wake=wake,
        poll_interval=poll_interval, idle_poll_interval=idle_poll_interval, lease_ttl=lease_ttl,
        trim_maxlen=trim_maxlen, metrics_port=metrics_port, log_level=log_level, capture=capture,
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
    by_tenant: Annotated[bool, typer.Option("--by-tenant", help="Break down per tenant")] = False,
    as_json: AsJson = False,
) -> None:
    """Pending rows and the age of the oldest, dead letters, failures, recent throughput, relay leader."""
    settings = _settings(database_url=database_url)
    with _connect(settings) as conn, ops.tables_required():
        data = ops.status(conn, by_tenant=by_tenant)
        wal = ops.wal_status(conn, settings.wal_slot, settings.wal_publication)
    if wal is not None and (wal["slot_exists"] or settings.capture == "wal"):
        data["wal"] = wal
    if as_json:
        _dump(data)
        return
    t = Table(title="outbox status", show_header=False)
    age = data.get("oldest_pending_age")
    t.add_row("pending", str(data["pending"]))
    t.add_row("oldest pending age", f"{age:.1f}s" if age is not None else "-")
    t.add_row("dead-lettered", str(data["dead"]))
    t.add_row("failed", str(data["failed"]))
    t.add_row("published, last minute", str(data["published_last_minute"]))
    t.add_row("published, retained", str(data["published_retained"]))
    bage = data.get("oldest_open_batch_age")
    t.add_row("relay batches open", f"{data['open_batches']}" + (f" (oldest {bage:.1f}s)" if bage is not None else ""))
    t.add_row("relay leader", f"{data['leader'] or '-'} (epoch {data['epoch']}, alive={bool(data['leader_alive'])})")
    t.add_row("relay idle/listening", str(bool(data["relay_idle"])))
    warnings = _wal_rows(t, data.get("wal"), settings)
    out.print(t)
    for line in warnings:
        err.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if by_tenant:
        tt = Table("tenant", "pending", "oldest age", "dead", "failed", "published/min", title="per tenant")
        for r in data["tenants"]:
            a = r["oldest_pending_age"]
            tt.add_row(r["tenant_id"], str(r["pending"]), f"{a:.1f}s" if a else "-", str(r["dead"]),
                       str(r["failed"]), str(r["published_last_minute"]))  # fmt: skip
        out.print(tt)


def _wal_rows(t: Table, wal: dict[str, Any] | None, settings: Settings) -> list[str]:
    """The WAL capture slot's rows of `outbox status`; returns the warnings to print under the table."""
    if wal is None:
        return []
    warnings: list[str] = []
    slot = wal["slot"]
    if not wal["slot_exists"]:
        t.add_row("capture slot", f"{slot}: MISSING")
        return [f"slot {slot} does not exist: WAL-mode writers are refused; create it with "
                "`outbox migrate --capture wal`"]  # fmt: skip
    state = "INVALIDATED (wal_status lost)" if wal["wal_status"] == "lost" else f"wal_status {wal['wal_status']}"
    t.add_row("capture slot", f"{slot}: {'active' if wal['slot_active'] else 'inactive'}, {state}")
    retained = wal["retained_wal_bytes"]
    safe = wal["safe_wal_size"]
    t.add_row("retained WAL", "-" if retained is None else f"{retained / 2**20:.1f} MiB"
              + ("" if safe is None else f" ({safe / 2**20:.0f} MiB before invalidation)"))  # fmt: skip
    age = wal["oldest_unconfirmed_age"]
    src = {"relay": "reported by the WAL relay", "peek": "peeked, no WAL relay running"}.get(
        wal["oldest_unconfirmed_source"] or "", "unknown"
    )
    t.add_row("oldest unconfirmed event", ("-" if age is None else f"{age:.1f}s") + f" ({src})")
    t.add_row("WAL relay leader", f"{wal['wal_leader'] or '-'} (alive={bool(wal['wal_leader_alive'])})")
    if wal["wal_status"] == "lost":
        warnings.append(f"slot {slot} is invalidated: events since its last confirmed position were not captured; "
                        "recreate it with `outbox migrate --capture wal --recreate-slot`")  # fmt: skip
    if retained is not None and retained > settings.wal_warn_retained_bytes:
        warnings.append(f"slot {slot} retains {retained / 2**20:.0f} MiB of WAL (above OUTBOX_WAL_WARN_RETAINED_BYTES)")
    if age is not None and age > settings.wal_warn_age:
        warnings.append(f"the oldest unconfirmed event is {age:.0f}s old (above OUTBOX_WAL_WARN_AGE)")
    return warnings


def _filter(
    status_: str, event_ids: list[str] | None, event_type: str | None, tenant: str | None,
    since: datetime | None, until: datetime | None,
) -> ops.Filter:  # fmt: skip
    statuses = ops.FAILED_STATUSES if status_ == "all" else (status_,)
    if status_ not in ("all", *ops.FAILED_STATUSES):
        err.print(f"[red]--status must be dead, failed or all[/], got {status_!r}")
        raise typer.Exit(2)
    return ops.Filter(
        statuses=statuses, event_ids=event_ids or None, event_type=event_type, tenant=tenant, since=since, until=until
    )


StatusOpt = Annotated[str, typer.Option("--status", help="dead, failed or all")]
IdsOpt = Annotated[list[str] | None, typer.Option("--id", help="Event id (repeatable)")]
TypeOpt = Annotated[str | None, typer.Option("--event-type", help="Only this event type")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant")]
SinceOpt = Annotated[datetime | None, typer.Option("--since", help="occurred_at >= (ISO-8601)")]
UntilOpt = Annotated[datetime | None, typer.Option("--until", help="occurred_at < (ISO-8601)")]


@app.command("dead-letters")
def dead_letters(
    database_url: DbUrl = None,
    status_: StatusOpt = "all",
    event_id: IdsOpt = None,
    event_type: TypeOpt = None,
    tenant: TenantOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="Most rows to list")] = 100,
    as_json: AsJson = False,
) -> None:
    """List dead-lettered and failed rows with their reasons."""
    flt = _filter(status_, event_id, event_type, tenant, since, until)
    with _connect(_settings(database_url=database_url)) as conn, ops.tables_required():
        rows = ops.dead_letters(conn, flt, limit=limit)
    if as_json:
        _dump(rows)
        return
    t = Table("event id", "tenant", "event type", "status", "tries", "reason", title=f"{len(rows)} row(s)")
    for r in rows:
        t.add_row(str(r["event_id"]), r["tenant_id"], r["event_type"], r["status"], str(r["attempts"]),
                  escape(r["last_error"] or ""))  # fmt: skip
    out.print(t)


@app.command()
def replay(
    database_url: DbUrl = None,
    status_: StatusOpt = "all",
    event_id: IdsOpt = None,
    event_type: TypeOpt = None,
    tenant: TenantOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; change nothing")] = False,
    as_json: AsJson = False,
) -> None:
    """Queue dead-lettered/failed rows again after re-validating them against the current schemas."""
    flt = _filter(status_, event_id, event_type, tenant, since, until)
    with _connect(_settings(database_url=database_url)) as conn, ops.tables_required():
        total = ops.count_replayable(conn, flt)
        if not (event_id or event_type or tenant or since or until or status_ != "all"):
            err.print("[yellow]no filter given: replaying every dead-lettered and failed row[/]")
        with Progress(
            TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, disable=as_json or total < 1000,
        ) as bar:  # fmt: skip
            task = bar.add_task("replay", total=total)
            report = ops.replay(conn, flt, dry_run=dry_run, progress=lambda n: bar.advance(task, n))
    if as_json:
        _dump(report.__dict__)
        return
    verb = "would requeue" if dry_run else "requeued"
    out.print(f"matched {report.matched}; {verb} {len(report.requeued)}; still invalid {len(report.still_invalid)}")
    for eid, why in list(report.still_invalid.items())[:20]:
        out.print(f"  still invalid {eid}: {why}", markup=False)
    if report.already_published:
        out.print(f"already published (not replayed): {', '.join(report.already_published)}")
    if report.not_found:
        out.print(f"not found: {', '.join(report.not_found)}")
    if report.in_open_batch:
        out.print(
            f"in a relay batch not closed yet (not replayed; run the replay again shortly): "
            f"{', '.join(report.in_open_batch)}"
        )


def _iso(value: str, option: str) -> datetime:
    """An ISO-8601 time from the command line; without an offset it is UTC."""
    from datetime import UTC

    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        err.print(f"[red]{option} must be an ISO-8601 time[/] (e.g. 2026-01-31T08:00:00Z), got {value!r}")
        raise typer.Exit(2) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command()
def republish(
    since: Annotated[str, typer.Option("--since", help="Published at or after (ISO-8601; UTC if no offset)")],
    until: Annotated[str | None, typer.Option("--until", help="Published before (ISO-8601; default now)")] = None,
    database_url: DbUrl = None,
    redis_url: RedisUrl = None,
    stream: Stream = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what is missing; change nothing")] = False,
    as_json: AsJson = False,
) -> None:
    """After Redis lost data: queue again the rows published in a window whose entries the stream no longer
    holds. The relay publishes them once more (new positions, through the fence); entries still on the
    stream, or trimmed from it, are left alone, so running it twice duplicates nothing."""
    from datetime import UTC

    from outbox import sql, wire
    from outbox.errors import BrokerError
    from outbox.relay.publisher import RedisStreamPublisher, fence_key
    from outbox.relay.republish import republish as run_republish

    start = _iso(since, "--since")
    end = _iso(until, "--until") if until else datetime.now(UTC)
    settings = _settings(database_url=database_url, redis_url=redis_url, stream=stream)
    try:
        url = settings.require_redis()
    except ConfigurationError as exc:
        raise config_exit(exc) from None
    with _connect(settings) as conn, ops.tables_required():
        row = conn.execute(sql.INSTANCE_ID).fetchone()
        conn.rollback()
        if row is None:
            err.print("[red]error:[/] no outbox_relay row: run `outbox migrate`")
            raise typer.Exit(1)
        publisher = RedisStreamPublisher.from_url(url, settings.stream, fence_key(settings.stream, row[0]), wire.FIELDS)
        try:
            report = run_republish(conn, publisher, start, end, dry_run=dry_run)
        except BrokerError as exc:
            err.print(f"[red]broker unavailable:[/] {exc}", markup=False, highlight=False)
            raise typer.Exit(3) from None
        finally:
            publisher.close()
    if as_json:
        _dump(report.__dict__)
        return
    verb = "would requeue" if dry_run else "requeued"
    out.print(
        f"published in [{report.since}, {report.until}): {report.matched}; still on the stream: {report.on_stream}; "
        f"trimmed (left alone): {report.trimmed}; lost, {verb}: {len(report.requeued)}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    if report.requeued and not dry_run:
        out.print("the relay publishes them again, each once (`outbox status` shows them pending until then)")
    if report.in_open_batch:
        out.print(f"in a relay batch not closed yet (run the republish again shortly): {len(report.in_open_batch)}")


@app.command()
def demo(
    transactions: Annotated[int, typer.Option(help="Business transactions in the burst")] = 2000,
    writers: Annotated[int, typer.Option(help="Concurrent writer threads")] = 8,
    database_url: DbUrl = None,
    redis_url: RedisUrl = None,
    capture: Annotated[
        str, typer.Option("--capture", help="poll (outbox table) or wal (logical slot; embedded server runs logical)")
    ] = "poll",
) -> None:
    """Start throwaway Postgres+Redis (unless URLs are set), run a realistic burst, relay it and check it."""
    from outbox.cli.demo import run_demo

    if capture not in ("poll", "wal"):
        err.print(f"[red]--capture must be poll or wal[/], got {capture!r}")
        raise typer.Exit(2)
    raise typer.Exit(run_demo(transactions=transactions, writers=writers, database_url=database_url,
                              redis_url=redis_url, console=out, capture=capture))  # fmt: skip


def main() -> int:
    """Console-script entry point."""
    try:
        app()
    except SchemaNotInstalled as exc:  # from any command (ops.tables_required): one line, exit code 4
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return EXIT_TABLES_MISSING
    except ConfigurationError as exc:  # found while running (e.g. Redis refused the credentials): exit code 2
        return config_exit(exc).exit_code
    except OutboxError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 1
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
