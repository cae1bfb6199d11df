"""``outbox simulate`` (placeholder until implemented)."""

from __future__ import annotations

import typer


def simulate(event_type: str) -> None:
    """Build a realistic payload for EVENT_TYPE from its schema and print it as JSON."""
    raise typer.Exit(1)
