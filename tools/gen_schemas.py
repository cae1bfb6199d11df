"""Generate the payload contract modules in ``schemas/`` from the catalog facts.

Usage: python tools/gen_schemas.py [path/to/events.json]

The facts file (``tools/catalog-facts/events.json``, the project's copy) describes each event type's payload fields in a
small type language; this script turns each into a pydantic model class, one module per domain,
plus ``schemas/legacy.py`` for the older bus-only types. Descriptions come from
``tools/event_descriptions.json`` (our own wording). Re-running is deterministic; a test checks the
committed modules still match the facts.
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "tools" / "catalog-facts" / "events.json"
RESERVED = {"schema", "json", "copy", "dict", "fields", "construct", "validate", "model_config", "register"}


def pascal(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in s.replace("-", "_").split("_") if p)


class ModuleWriter:
    def __init__(self) -> None:
        self.classes: list[str] = []
        self.uses: set[str] = set()

    def type_of(self, spec: dict[str, Any], owner: str, fname: str, *, legacy: bool, top: bool) -> str:
        t = spec["type"]
        if t == "string":
            if spec.get("enum"):
                self.uses.add("Literal")
                out = "Literal[" + ", ".join(json.dumps(v) for v in spec["enum"]) + "]"
            elif spec.get("format") == "email":
                self.uses.add("Email")
                out = "Email"
            elif top and fname == "tenantId" and not legacy:
                self.uses.add("NonEmptyStr")
                out = "NonEmptyStr"
            else:
                out = "str"
        elif t == "uuid":
            self.uses.add("Uuid")
            out = "Uuid"
        elif t == "datetime":
            self.uses.add("UtcDateTime")
            out = "UtcDateTime"
        elif t == "number":
            out = "int" if spec.get("integer") else "float"
        elif t == "boolean":
            out = "bool"
        elif t == "any":
            self.uses.add("Any")
            out = "Any"
        elif t == "array":
            inner = self.type_of(spec["items"], owner, fname + "Item", legacy=legacy, top=False)
            out = f"list[{inner}]"
        elif t == "object":
            if "properties" in spec:
                cls = owner + pascal(fname)
                self.write_model(cls, spec["properties"], base="Shape", doc=None, legacy=legacy, top=False)
                out = cls
            elif "values" in spec:
                inner = self.type_of(spec["values"], owner, fname + "Value", legacy=legacy, top=False)
                out = f"dict[str, {inner}]"
            else:
                self.uses.add("Any")
                out = "dict[str, Any]"
        else:
            raise ValueError(f"unknown field type {t!r} in {owner}.{fname}")
        if spec.get("nullable"):
            out = f"{out} | None"
        return out

    def write_model(
        self, cls: str, fields: dict[str, Any], *, base: str, doc: str | None, legacy: bool, top: bool
    ) -> None:
        lines: list[str] = []
        for fname, spec in fields.items():
            ann = self.type_of(spec, cls, fname, legacy=legacy, top=top)
            attr = fname
            extra: list[str] = []
            if not fname.isidentifier() or keyword.iskeyword(fname) or fname in RESERVED:
                attr = fname + "_"
                extra.append(f"alias={fname!r}")
            if spec.get("type") == "array" and spec.get("minItems"):
                extra.append(f"min_length={spec['minItems']}")
            if spec.get("required"):
                rhs = f" = Field({', '.join(extra)})" if extra else ""
            else:
                if not spec.get("nullable"):
                    self.uses.add("Opt")
                    ann = f"Opt[{ann}]"
                rhs = " = Field(" + ", ".join(["default=None", *extra]) + ")" if extra else " = None"
            lines.append(f"    {attr}: {ann}{rhs}")
        body = [f"class {cls}({base}):"]
        if doc:
            body.append(f'    """{doc}"""')
            body.append("")
        body.extend(lines or ["    pass"])
        self.classes.append("\n".join(body))


# Legacy bus types whose payload the platform's runtime contracts require to carry ``occurredAt`` (UTC
# date-time), as its own publishers always send it; the catalog facts do not list the field for them.
# Declared here so that ``record`` fills it as for the v2 types, and the platform's reader accepts the event.
# Declared OPTIONAL in .v1: making it required would be a breaking change of a published ref (the
# evolution gate says so), and rows recorded before this release without it, still pending at upgrade,
# would be dead-lettered. record always fills it, so every event recorded from now on carries it.
LEGACY_OCCURRED_AT = frozenset(
    {
        "APPOINTMENT_REQUEST_APPROVED", "APPOINTMENT_REQUEST_CANCELLED", "APPOINTMENT_REQUEST_CREATED",
        "APPOINTMENT_REQUEST_DECLINED", "PROJECT_ASSIGNED", "PROJECT_CLOSED", "PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED",
        "SCHEDULE_ENTRY_CREATED", "SCHEDULE_ENTRY_DELETED", "SCHEDULE_ENTRY_UPDATED", "TASK_COMMENT_ADDED",
        "TASK_COMMENT_UPDATED", "TICKET_ADDITIONAL_AGENT_ASSIGNED", "TICKET_COMMENT_ADDED", "TIME_ENTRY_APPROVED",
        "TIME_ENTRY_SUBMITTED",
    }
)  # fmt: skip


def payload_fields(e: dict[str, Any]) -> dict[str, Any]:
    """The event's payload fields, with ``occurredAt`` (optional, after ``tenantId``) for ``LEGACY_OCCURRED_AT``."""
    fields = e["payload_fields"]
    if e["event_type"] not in LEGACY_OCCURRED_AT or "occurredAt" in fields:
        return fields
    items = list(fields.items())
    at = 1 if items and items[0][0] == "tenantId" else 0
    items.insert(at, ("occurredAt", {"type": "datetime", "required": False}))
    return dict(items)


def render(module: str, events: list[dict[str, Any]], descriptions: dict[str, str]) -> str:
    w = ModuleWriter()
    entries: list[str] = []
    for e in events:
        et = e["event_type"]
        legacy_only = e["kind"] == "legacy-bus"
        ref = e["payload_schema_ref"] or f"legacy.{pascal(et.lower())}.v1"
        cls = pascal(et.lower()) + ("Legacy" if legacy_only else "V1")
        desc = descriptions.get(et, e["summary"])
        w.write_model(cls, payload_fields(e), base="Payload", doc=f"{ref}: {e['name']}.", legacy=legacy_only, top=True)
        legacy_cls = None
        if e.get("legacy_payload_fields"):
            legacy_cls = pascal(et.lower()) + "Legacy"
            w.write_model(
                legacy_cls,
                e["legacy_payload_fields"],
                base="Payload",
                doc=f"Older payload shape of {et}, still accepted on the bus.",
                legacy=True,
                top=True,
            )
        args = [
            f"event_type={et!r}",
            f"ref={ref!r}",
            f"model={cls}",
            f"name={e['name']!r}",
            f"category={e['category']!r}",
            f"module={e['module']!r}",
            f"description={desc!r}",
            f"kind={e['kind']!r}",
            f"in_system_catalog={e['in_system_catalog']!r}",
        ]
        if e.get("catalog_only"):
            args += ["catalog_only=True", f"catalog_only_reason={e.get('catalog_only_reason')!r}"]
        if legacy_cls:
            args.append(f"legacy_model={legacy_cls}")
        for key in ("legacy_of", "legacy_overlaps", "superseded_by"):
            val = e.get(key)
            if val:
                vals = tuple(val) if isinstance(val, list) else (val,)
                args.append(f"{key}={vals!r}")
        entries.append("    EventType(\n" + "".join(f"        {a},\n" for a in args) + "    ),")
    base_names = {"Payload", "Shape"} & {c.split("(")[1].split(")")[0] for c in w.classes}
    names = sorted((w.uses & {"Email", "NonEmptyStr", "Opt", "Uuid", "UtcDateTime"}) | base_names)
    typing_names = sorted(w.uses & {"Any", "Literal"})
    head = [
        f'"""Payload contracts: {module}. Generated by tools/gen_schemas.py from the catalog facts."""',
        "",
        "from __future__ import annotations",
        "",
    ]
    if typing_names:
        head.append(f"from typing import {', '.join(typing_names)}")
        head.append("")
    if any("Field(" in c for c in w.classes):
        head.append("from pydantic import Field")
        head.append("")
    head.append(f"from outbox.schemas.base import {', '.join(names)}")
    head.append("from outbox.schemas.registry import EventType")
    head.append("")
    text = "\n".join(head) + "\n\n" + "\n\n\n".join(w.classes) + "\n\n\nEVENTS: list[EventType] = [\n"
    text += "\n".join(entries) + "\n]\n"
    return text


def render_all(facts: Path) -> dict[Path, str]:
    """Every generated file's path and text."""
    events = json.loads(facts.read_text())["events"]
    desc_path = ROOT / "tools" / "event_descriptions.json"
    descriptions = json.loads(desc_path.read_text()) if desc_path.exists() else {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        mod = "legacy" if e["kind"] == "legacy-bus" else e["module"]
        groups.setdefault(mod, []).append(e)
    files = {ROOT / "schemas" / f"{mod}.py": render(mod, evs, descriptions) for mod, evs in sorted(groups.items())}
    index = {e["event_type"]: mod for mod, evs in groups.items() for e in evs}
    files[ROOT / "schemas" / "_modules.py"] = (
        '"""Domain modules holding payload contracts, and the module of each event type (generated)."""\n\n'
        + "MODULES = "
        + repr(tuple(sorted(groups)))
        + "\n\n# Lets the registry import one contract module per event type on first use instead of all at start.\n"
        + "EVENT_MODULES: dict[str, str] = "
        + repr(dict(sorted(index.items())))
        + "\n"
    )
    return files


def _formatted(files: dict[Path, str]) -> dict[Path, str]:
    """Run ruff format over the rendered text, as the committed files are formatted."""
    import subprocess
    import tempfile

    out: dict[Path, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in files.items():
            (Path(tmp) / path.name).write_text(text)
        ruff = Path(sys.executable).with_name("ruff")
        subprocess.run([str(ruff), "format", "-q", "--config", str(ROOT / "pyproject.toml"), tmp], check=True)
        for path in files:
            out[path] = (Path(tmp) / path.name).read_text()
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    facts = Path(args[0]) if args else FACTS
    files = _formatted(render_all(facts))
    if "--check" in argv:
        stale = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print("stale generated schema modules: " + ", ".join(stale) + " (run tools/gen_schemas.py)")
            return 1
        print(f"{len(files)} generated files are fresh")
        return 0
    for path, text in files.items():
        path.write_text(text)
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
