"""``outbox simulate``: a realistic (or deliberately invalid) payload for an event type, optionally recorded."""

from __future__ import annotations

import difflib
import json
import sys
from typing import Annotated, Any, cast

import typer

from outbox import schemas
from outbox.errors import ConfigurationError, OutboxError, PayloadValidationError, UnknownEventType
from outbox.schemas import simulate as sim

DbUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Postgres URL for --record (libpq PG* if unset)"),
]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _say(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def _fail(message: str, code: int) -> typer.Exit:
    _say(message)
    return typer.Exit(code)


def _error_json(exc: PayloadValidationError) -> dict[str, Any]:
    return {
        "field": exc.field,
        "reason": exc.reason,
        "errors": [{"field": e.field, "reason": e.reason} for e in exc.errors],
    }


def _check_event_type(event_type: str) -> None:
    if schemas.registry.has_event_type(event_type):
        return
    known = [e.event_type for e in schemas.registry]
    close = difflib.get_close_matches(event_type.upper(), known, n=3, cutoff=0.6)
    hint = (
        f" Did you mean: {', '.join(close)}?"
        if close
        else " Event types are SCREAMING_SNAKE_CASE, e.g. TICKET_CREATED."
    )
    raise _fail(f"error: unknown event type {event_type!r} (not in the event catalog / bus list).{hint}", 2)


def _record(event_type: str, payload: dict[str, Any], database_url: str | None) -> str:
    import psycopg

    import outbox
    from outbox.errors import SchemaNotInstalled
    from outbox.ops import tables_required
    from outbox.settings import load_settings

    try:
        dsn = load_settings(database_url=database_url).require_database()
    except ConfigurationError as exc:
        raise _fail(f"configuration error: {exc}", 2) from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, application_name="outbox-simulate")
    except psycopg.OperationalError as exc:
        raise _fail(f"database unavailable: {str(exc).strip()}", 3) from None
    try:
        with conn, tables_required():  # commits on success, rolls back on error
            event_id = outbox.record(conn, event_type, payload, tenant_id=str(payload.get("tenantId") or "") or None)
    except SchemaNotInstalled:
        raise  # one line, exit code 4 (outbox.cli.main)
    except OutboxError as exc:
        raise _fail(f"error: not recorded: {exc}", 1) from None
    except psycopg.Error as exc:
        raise _fail(f"error: not recorded: {str(exc).strip()}", 1) from None
    return str(event_id)


def simulate(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. TICKET_CREATED")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help=f"tenantId of the payload (default {sim.DEFAULT_TENANT})")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE, FIELD a dot path (changes.status.new=closed, applications.0.amountApplied=10.00); "
            "VALUE is JSON when it parses, else a string. Repeatable.",
        ),
    ] = None,
    invalid: Annotated[
        bool, typer.Option("--invalid", help="Print deliberately invalid variants and the error each produces")
    ] = False,
    record: Annotated[
        bool, typer.Option("--record", help="Record the payload with outbox.record in a committed transaction")
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Make the output reproducible")] = None,
    optional: Annotated[
        str, typer.Option("--optional", help="Optional keys to include: some (realistic subset), all or none")
    ] = "some",
    database_url: DbUrl = None,
) -> None:
    """Build a realistic payload for EVENT_TYPE from its schema and print it as JSON (validated first)."""
    _check_event_type(event_type)
    if optional not in ("some", "all", "none"):
        raise _fail(f"error: --optional must be some, all or none, got {optional!r}", 2)
    if invalid and (record or set_):
        raise _fail("error: --invalid cannot be combined with --record or --set", 2)
    try:
        overrides = sim.parse_assignments(set_ or [], event_type)
    except sim.SimulationError as exc:
        raise _fail(f"error: --set: {exc}", 2) from None

    if invalid:
        try:
            variants = sim.invalid_variants(event_type, tenant_id=tenant, seed=seed, verify=False)
        except PayloadValidationError as exc:  # the base example itself (e.g. a --tenant the contract refuses)
            raise _fail(f"error: {exc}", 1) from None
        report = []
        for v in variants:
            try:
                schemas.validate(event_type, v.payload)
                actual: dict[str, Any] | None = None
            except PayloadValidationError as exc:
                actual = _error_json(exc)
            report.append(
                {
                    "description": v.description,
                    "payload": v.payload,
                    "expected": {"field": v.expected_field, "reason_contains": v.expected_reason_substring},
                    "error": actual,
                }
            )
        _print_json(report)
        return

    try:
        payload = sim.example(
            event_type,
            tenant_id=tenant,
            overrides=overrides,
            seed=seed,
            optional=cast(sim.OptionalMode, optional),
        )
    except (sim.SimulationError, UnknownEventType) as exc:
        raise _fail(f"error: {exc}", 2) from None
    except PayloadValidationError as exc:
        lines = "\n".join(f"  {e}" for e in exc.errors)
        raise _fail(f"error: the simulated payload is invalid for {event_type}:\n{lines}", 1) from None
    _print_json(payload)
    if record:
        event_id = _record(event_type, payload, database_url)
        _say(f"recorded {event_type} event {event_id}")
