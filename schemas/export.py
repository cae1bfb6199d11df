"""JSON Schema export of every payload contract: one file per ref plus ``index.json`` (ref -> event type).

The files under ``schemas/json/`` are generated (``outbox schemas export``) and committed: they are
what other teams read, and the baseline the evolution gate (``outbox.schemas.compat``) compares the live
registry against. Formatting is stable (sorted keys, 2-space indent, trailing newline) so a diff shows
only real contract changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from outbox.schemas.registry import REF_RE, Registry

DEFAULT_DIR = Path(__file__).resolve().parent / "json"
INDEX = "index.json"


def dumps(document: Any) -> str:
    """The stable text form of a JSON document: sorted keys, indent 2, non-ASCII kept, trailing newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def filename(ref: str) -> str:
    """The export file name of a ref, e.g. ``payload.TicketCreated.v1.json``."""
    return f"{ref}.json"


def ref_of(name: str) -> str | None:
    """The ref an export file name stands for, or ``None`` when it is not a ref file."""
    ref = name.removesuffix(".json")
    return ref if name.endswith(".json") and REF_RE.match(ref) else None


def render_all(registry: Registry) -> dict[str, str]:
    """Every export file of the registry, file name -> text (index included)."""
    files = {filename(ref): dumps(registry.json_schema(ref)) for ref in registry.refs()}
    files[INDEX] = dumps({ref: registry.owner(ref) for ref in registry.refs()})
    return files


def export_all(registry: Registry, directory: str | Path = DEFAULT_DIR) -> list[str]:
    """Write the registry's export files into ``directory``, delete ref files it no longer has; return names changed."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    wanted = render_all(registry)
    changed: list[str] = []
    for name, text in wanted.items():
        path = target / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    for path in target.glob("*.json"):
        if path.name not in wanted and ref_of(path.name) is not None:
            path.unlink()
            changed.append(path.name)
    return sorted(changed)


def check_fresh(registry: Registry, directory: str | Path = DEFAULT_DIR) -> list[str]:
    """What ``export_all`` would change in ``directory``: ``"missing: f"``, ``"stale: f"``, ``"extra: f"``; [] when fresh."""
    target = Path(directory)
    wanted = render_all(registry)
    problems: list[str] = []
    for name, text in sorted(wanted.items()):
        path = target / name
        if not path.exists():
            problems.append(f"missing: {name}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {name}")
    if target.is_dir():
        extra = [p.name for p in sorted(target.glob("*.json")) if p.name not in wanted and ref_of(p.name) is not None]
        problems += [f"extra: {name}" for name in extra]
    return problems
