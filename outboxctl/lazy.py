"""Deferred imports for the CLI: ``outbox --help`` loads no command group, driver or contract module.

A sub-command listed in a ``lazy_group`` is a placeholder (name and help only) until it is invoked;
``module`` stands for a module that is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import CommandInfo, TyperInfo

try:  # the Click that TyperGroup is built on: typer vendors it (0.2x), older releases use Click itself
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]


@dataclass(frozen=True)
class Lazy:
    """A sub-command: ``target`` is ``"module:attr"``, a ``typer.Typer`` (a group) or a command function."""

    name: str
    target: str
    help: str
    first: bool = False  # listed before the commands defined in the group's own module


class _Placeholder(TyperCommand):
    """Stands in for a lazy sub-command in listings (its name and help); replaced when invoked."""

    def __init__(self, spec: Lazy) -> None:
        super().__init__(name=spec.name, help=spec.help)
        self.spec = spec


class _LazyGroup(TyperGroup):
    lazy: ClassVar[tuple[Lazy, ...]] = ()
    pretty_exceptions_short: ClassVar[bool] = True

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        own = dict(self.commands)
        head = {s.name: _Placeholder(s) for s in self.lazy if s.first}
        tail = {s.name: _Placeholder(s) for s in self.lazy if not s.first}
        self.commands = {**head, **own, **tail}

    def _load(self, spec: Lazy) -> click.Command:
        module, attr = spec.target.split(":")
        target = getattr(importlib.import_module(module), attr)
        if isinstance(target, typer.Typer):
            return typer.main.get_group_from_info(
                TyperInfo(target, name=spec.name, help=spec.help),
                pretty_exceptions_short=self.pretty_exceptions_short,
                suggest_commands=self.suggest_commands,
                rich_markup_mode=self.rich_markup_mode,
            )
        return typer.main.get_command_from_info(
            CommandInfo(name=spec.name, help=spec.help, callback=target),
            pretty_exceptions_short=self.pretty_exceptions_short,
            rich_markup_mode=self.rich_markup_mode,
        )

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if isinstance(cmd, _Placeholder) and name is not None:
            cmd = self.commands[name] = self._load(cmd.spec)
        return name, cmd, rest


def lazy_group(*specs: Lazy, pretty_exceptions_short: bool = True) -> type[TyperGroup]:
    """A ``typer.Typer(cls=...)`` group class that imports each of ``specs`` only when it is invoked."""
    return type("LazyGroup", (_LazyGroup,), {"lazy": specs, "pretty_exceptions_short": pretty_exceptions_short})


class module:
    """A module imported on first attribute access (``psycopg = module("psycopg")``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
