"""How a command stops on a bad setting or an unreachable database: one line on stderr, an exit code."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def config_exit(exc: BaseException) -> typer.Exit:
    """Print ``configuration error: <exc>`` as one line; the ``typer.Exit(2)`` to raise."""
    err.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(2)


def postgres_exit(exc: Exception) -> typer.Exit:
    """A failed Postgres connect: refused credentials are a configuration error (2), anything else an outage (3)."""
    from outbox.retry import postgres_config_error

    refused = postgres_config_error(exc)  # wrong password, unknown role...: the setting, not an outage
    if refused is not None:
        return config_exit(refused)
    one_line = " ".join(str(exc).split())  # libpq adds a hint on a line of its own
    err.print(f"[red]database unavailable:[/] {escape(one_line)}", soft_wrap=True)
    return typer.Exit(3)
