"""``outbox schemas``: export the payload contracts as JSON Schema, list them, gate their evolution."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from outbox import schemas
from outbox.schemas.compat import DEFAULT_MODE, BaselineError, Mode, check, combine, load_dir, load_git, new_refs
from outbox.schemas.export import DEFAULT_DIR, check_fresh, export_all
from outbox.schemas.registry import Registry

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="Export directory [default: schemas/json of the schemas package]")
]


def _registry() -> Registry:
    return schemas.registry


@app.command("export")
def export(
    directory: DirOpt = None,
    check_only: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 when the files are stale (for CI)")
    ] = False,
) -> None:
    """Write one JSON Schema per ref (<ref>.json) and index.json (ref -> event type)."""
    target = directory or DEFAULT_DIR
    if check_only:
        problems = check_fresh(_registry(), target)
        for p in problems:
            sys.stdout.write(f"{p}\n")
        if problems:
            err.print(f"{len(problems)} file(s) out of date in {target}: run `outbox schemas export`")
            raise typer.Exit(1)
        err.print(f"{target} is up to date")
        return
    changed = export_all(_registry(), target)
    for name in changed:
        sys.stdout.write(f"{name}\n")
    err.print(f"{len(changed)} file(s) changed in {target}")


@app.command("list")
def list_refs(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Every registered ref with its event type and kind."""
    registry = _registry()
    rows: list[dict[str, str]] = []
    for ref in registry.refs():
        owner = registry.owner(ref) or ""
        entry = registry.event_type(owner)
        rows.append({"ref": ref, "event_type": owner, "kind": entry.kind})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    width = max((len(r["ref"]) for r in rows), default=0)
    for r in rows:
        sys.stdout.write(f"{r['ref']:<{width}}  {r['event_type']}\n")
    err.print(f"{len(rows)} ref(s)")


@app.command("check")
def check_cmd(
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Directory of published schemas [default: schemas/json]")
    ] = None,
    baseline_rev: Annotated[
        str | None,
        typer.Option(
            "--baseline-rev",
            envvar="OUTBOX_SCHEMAS_BASELINE_REV",
            help="Published schemas = schemas/json at this git revision (e.g. origin/main)",
        ),
    ] = None,
    mode: Annotated[
        Mode, typer.Option("--mode", envvar="OUTBOX_SCHEMAS_COMPAT", case_sensitive=False, help="Compatibility mode")
    ] = DEFAULT_MODE,
) -> None:
    """Fail (exit 1) when the registry breaks a published ref; a breaking change needs a new .vN+1 ref."""
    if baseline is not None and baseline_rev is not None:
        err.print("[red]give --baseline or --baseline-rev, not both[/]")
        raise typer.Exit(2)
    try:
        if baseline_rev is not None:
            published = load_git(baseline_rev, DEFAULT_DIR, history=mode.transitive)
        elif baseline is not None:
            published = load_dir(baseline)
            if mode.transitive:
                err.print("[yellow]a directory has no history: comparing against its files only[/]")
        else:
            published = load_dir(DEFAULT_DIR)
            if mode.transitive:
                published = combine(published, load_git("HEAD", DEFAULT_DIR, history=True))
    except BaselineError as exc:
        err.print(f"[red]baseline:[/] {exc}")
        raise typer.Exit(2) from None
    if not published.schemas:
        err.print(f"[yellow]nothing published in {published.source}: every ref counts as new[/]")
    registry = _registry()
    violations = check(published, registry, mode)
    for v in violations:
        sys.stdout.write(f"{v}\n")
    added = new_refs(published, registry)
    summary = f"{len(published.schemas)} published ref(s) vs the registry, mode {mode.value.upper()}"
    if added:
        summary += f"; {len(added)} new ref(s): {', '.join(added[:5])}{' ...' if len(added) > 5 else ''}"
    if violations:
        err.print(f"[red]{len(violations)} breaking change(s)[/] ({summary}, baseline {published.source})")
        raise typer.Exit(1)
    err.print(f"compatible: {summary} (baseline {published.source})")
    if baseline is None and baseline_rev is None and check_fresh(registry, DEFAULT_DIR):
        err.print("[yellow]schemas/json differs from the registry: run `outbox schemas export` and commit it[/]")
