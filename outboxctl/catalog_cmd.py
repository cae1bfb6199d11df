"""``outbox catalog``: list and show event types (from the code registry), sync the system catalog, export AsyncAPI."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outbox.catalog.asyncapi import DEFAULT_STREAM

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()

DbUrl = Annotated[
    str | None, typer.Option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Postgres URL (libpq PG* if unset)")
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, indent=2, ensure_ascii=False) + "\n")


def _entry(event_type: str) -> Any:
    from outbox.schemas import registry

    if registry.has_event_type(event_type):
        return registry.event_type(event_type)
    if registry.has_event_type(event_type.upper()):
        return registry.event_type(event_type.upper())
    close = difflib.get_close_matches(event_type.upper(), [e.event_type for e in registry], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    err.print(f"[red]unknown event type[/] {escape(event_type)}{hint}")
    raise typer.Exit(1)


@app.command("list")
def list_(
    category: Annotated[str | None, typer.Option("--category", help="Only this category (e.g. Tickets)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include the older bus-only types (no catalog row)")] = False,
    as_json: AsJson = False,
) -> None:
    """Event types of the catalog from the code registry (no database needed)."""
    from outbox.catalog.describe import list_rows
    from outbox.schemas import registry

    rows = list_rows((e for e in registry if all_ or e.in_system_catalog), category)
    if as_json:
        _dump(rows)
        return
    t = Table("event type", "category", "payload schema ref", "catalog only", title=f"{len(rows)} event type(s)")
    for r in rows:
        flag = "yes" if r["catalog_only"] else ("bus only" if not r["in_system_catalog"] else "")
        t.add_row(r["event_type"], r["category"] or "-", r["payload_schema_ref"], flag)
    out.print(t)


@app.command()
def show(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. TICKET_CREATED")],
    as_json: AsJson = False,
) -> None:
    """Name, category, description, contract ref, payload fields, overlaps and an example payload of TYPE."""
    from outbox.catalog.asyncapi import example_payload
    from outbox.catalog.describe import fields_of
    from outbox.schemas import registry

    e = _entry(event_type)
    schema = registry.json_schema(e.ref)
    fields = fields_of(schema)
    example = example_payload(e.event_type)
    data = {
        "event_type": e.event_type,
        "name": e.name,
        "category": e.category,
        "kind": e.kind,
        "description": e.description,
        "payload_schema_ref": e.ref,
        "in_system_catalog": e.in_system_catalog,
        "catalog_only": e.catalog_only,
        "catalog_only_reason": e.catalog_only_reason,
        "legacy_of": list(e.legacy_of),
        "legacy_overlaps": list(e.legacy_overlaps),
        "superseded_by": list(e.superseded_by),
        "accepts_legacy_payload": e.legacy_model is not None,
        "fields": [
            {"field": f.path, "type": f.type, "required": f.required, "enum": list(f.enum) or None} for f in fields
        ],
        "example": example,
    }
    if as_json:
        _dump(data)
        return
    out.print(f"[bold]{escape(e.event_type)}[/] - {escape(e.name)}")
    info = Table(show_header=False, box=None, pad_edge=False)
    info.add_row("category", escape(e.category or "-"))
    info.add_row("kind", e.kind + ("" if e.in_system_catalog else " (bus only, no catalog row)"))
    info.add_row("schema ref", e.ref)
    if e.catalog_only:
        info.add_row("catalog only", escape(e.catalog_only_reason or "yes"))
    if e.legacy_overlaps:
        info.add_row("overlaps", ", ".join(e.legacy_overlaps) + "  (both valid; no aliasing)")
    if e.superseded_by:
        info.add_row("canonical", ", ".join(e.superseded_by) + "  (this type kept for back-compat)")
    if e.legacy_model is not None:
        info.add_row("bus also accepts", "the older payload shape of this type")
    out.print(info)
    out.print(escape(e.description), soft_wrap=True)
    t = Table("field", "type", "required", "allowed values", title="payload fields")
    for f in fields:
        t.add_row(f.path, escape(f.type), "yes" if f.required else "", escape(", ".join(map(str, f.enum))))
    out.print(t)
    if example is None:
        out.print("[dim]example: unavailable (outbox.schemas.simulate not installed)[/]")
    else:
        out.print("example payload:")
        out.print_json(data=example)


@app.command()
def sync(
    database_url: DbUrl = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would change; change nothing")] = False,
    as_json: AsJson = False,
) -> None:
    """Upsert the code registry's catalog types into system_event_catalog (idempotent)."""
    from outbox.catalog.sync import sync_system_catalog
    from outbox.cli.main import _connect, _settings
    from outbox.ops import tables_required

    with _connect(_settings(database_url=database_url)) as conn, tables_required():
        report = sync_system_catalog(conn)
        if dry_run:
            conn.rollback()
    if as_json:
        _dump({**report.__dict__, "dry_run": dry_run})
        return
    verb = "would be " if dry_run else ""
    out.print(
        f"system catalog: {report.inserted} {verb}inserted, {report.updated} {verb}updated, "
        f"{report.unchanged} unchanged"
    )
    if report.changed:
        out.print("changed: " + ", ".join(report.changed))
    if report.stale:
        out.print(f"[yellow]not in the registry any more (left in place):[/] {', '.join(report.stale)}")


@app.command()
def export(
    format_: Annotated[str, typer.Option("--format", help="Document format: asyncapi (AsyncAPI 3.0.0, JSON)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout")] = None,
    stream: Annotated[
        str, typer.Option("--stream", envvar="OUTBOX_STREAM", help="Stream key (the channel address)")
    ] = DEFAULT_STREAM,
    system_only: Annotated[
        bool, typer.Option("--system-only", help="Only the system catalog's types (not the older bus-only ones)")
    ] = False,
    examples: Annotated[bool, typer.Option("--examples/--no-examples", help="Example payloads if available")] = True,
) -> None:
    """Export the event catalog as a document (AsyncAPI 3.0.0 of the global stream)."""
    from outbox.catalog.asyncapi import asyncapi_document

    if format_.lower() != "asyncapi":
        err.print(f"[red]unknown format[/] {escape(format_)!s}: the only format is asyncapi")
        raise typer.Exit(2)
    doc = asyncapi_document(stream=stream, system_only=system_only, examples=examples)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    err.print(f"wrote {output} ({len(doc['components']['messages'])} messages, AsyncAPI {doc['asyncapi']})")
