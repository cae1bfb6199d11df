"""Human-readable views of the code registry: catalog listing rows and payload fields from a JSON Schema."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from outbox.schemas.registry import EventType


@dataclass(frozen=True)
class Field:
    """One payload field: dot path, type text, whether required, allowed values."""

    path: str
    type: str
    required: bool
    enum: tuple[Any, ...] = ()
    description: str = ""


def _deref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def type_text(node: dict[str, Any], root: dict[str, Any]) -> str:
    """``string (uuid)``, ``array of object``, ``integer | null``... for a JSON Schema node."""
    node = _deref(node, root)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " | ".join(type_text(n, root) for n in node[key])
    if "const" in node:
        return f"const {node['const']!r}"
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    if kind == "array":
        items = node.get("items")
        return f"array of {type_text(items, root)}" if isinstance(items, dict) else "array"
    if kind == "object" and "properties" not in node and isinstance(node.get("additionalProperties"), dict):
        return f"map of {type_text(node['additionalProperties'], root)}"
    fmt = node.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def fields_of(schema: dict[str, Any], *, max_depth: int = 3) -> list[Field]:
    """Every property of an object schema (nested objects as ``a.b``, array items as ``a[].b``), in schema order."""
    out: list[Field] = []

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        node = _deref(node, schema)
        required = set(node.get("required", ()))
        for name, raw in node.get("properties", {}).items():
            sub = _deref(raw, schema)
            path = f"{prefix}{name}"
            enum = tuple(sub.get("enum", ()))
            out.append(Field(path, type_text(raw, schema), name in required, enum, str(sub.get("description", ""))))
            if depth < max_depth:
                if "properties" in sub:
                    walk(sub, path + ".", depth + 1)
                elif isinstance(sub.get("items"), dict) and "properties" in _deref(sub["items"], schema):
                    walk(sub["items"], path + "[].", depth + 1)

    walk(schema, "", 0)
    return out


def list_rows(registry: Iterable[EventType], category: str | None = None) -> list[dict[str, Any]]:
    """Catalog listing rows (event type, name, category, ref, kind, flags), sorted by category then type."""
    rows = [
        {
            "event_type": e.event_type,
            "name": e.name,
            "category": e.category,
            "payload_schema_ref": e.ref,
            "kind": e.kind,
            "in_system_catalog": e.in_system_catalog,
            "catalog_only": e.catalog_only,
        }
        for e in registry
        if category is None or (e.category or "").casefold() == category.casefold()
    ]
    return sorted(rows, key=lambda r: (r["category"] or "~", r["event_type"]))
