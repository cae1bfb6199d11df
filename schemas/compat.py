"""Schema evolution gate: a published ``.vN`` may only change compatibly; otherwise publish ``.vN+1``.

``check(baseline, registry, mode)`` compares the published JSON Schemas (the committed
``schemas/json/`` files, or those at a git revision) with the live registry and returns one
``Violation`` per breaking change, naming the ref, the field path and the reason.

Modes, as in a schema registry (writer = who produced the data, reader = who validates/consumes it):

- ``BACKWARD``: consumers on the *new* schema read data written under the *old* one (stored rows,
  the stream's history, ``outbox replay`` re-validating dead letters against current schemas).
  Every payload the old schema accepts must be accepted by the new one.
- ``FORWARD``: consumers still on the *old* schema read data written under the *new* one (producers
  deploy first). Every payload the new schema accepts must be accepted by the old one.
- ``FULL``: both. ``*_TRANSITIVE``: the same against every earlier published version of the ref (its
  git history), not only the latest.

The default is ``FULL``. In an outbox, producers and consumers deploy independently and in any
order, events outlive deployments (stored, retained on the stream, replayed), and consumers we do not
know of read the bus: any change that is not safe in both directions needs a new ref. A new ref
(``.v2``) is never a violation of ``.v1``; a ref that disappeared from the registry always is
(published contracts must stay registered).

Open content model. Payload objects declare ``additionalProperties: true``: undeclared keys are
accepted and kept. Strictly, that makes every new declaration a narrowing (an old payload could carry
the same key, undeclared, with another shape). The gate follows the platform rule instead
(README, "Undeclared keys"): *a declared key is a promise and its name stays reserved; the undeclared
space carries no promise.* Hence:

- new optional field: compatible both ways (old readers ignore it; nothing old used the name);
- field removed: BACKWARD-compatible while the object stays open, breaking when it is closed
  (``additionalProperties: false``); always FORWARD-breaking, because old readers still rely on the
  promise "if present, it has this type" that the new contract no longer makes (and a required field
  removed may simply be missing);
- new required field / optional -> required: BACKWARD-breaking (old payloads lack it);
- type, enum, format, pattern, length/item/number bounds: narrowing breaks BACKWARD, widening breaks
  FORWARD, an unrelated change breaks both; ``nullable`` removed breaks BACKWARD, added breaks FORWARD;
- annotations (title, description, examples, default) never matter.

The comparison recurses into properties, ``$ref``/``$defs``, array ``items``, ``additionalProperties``
maps (path ``field.*``) and ``anyOf``/``oneOf`` branches. Paths are dotted; array items add ``[]``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from outbox.errors import OutboxError
from outbox.schemas.export import DEFAULT_DIR, INDEX, ref_of
from outbox.schemas.registry import REF_RE, Registry

Schema = Any  # a JSON Schema: dict, or True/False


class Mode(StrEnum):
    """Compatibility mode (what must keep working when a published ref changes)."""

    BACKWARD = "backward"
    FORWARD = "forward"
    FULL = "full"
    BACKWARD_TRANSITIVE = "backward_transitive"
    FORWARD_TRANSITIVE = "forward_transitive"
    FULL_TRANSITIVE = "full_transitive"

    @property
    def backward(self) -> bool:
        """New readers must accept old data."""
        return self.value.startswith(("backward", "full"))

    @property
    def forward(self) -> bool:
        """Old readers must accept new data."""
        return self.value.startswith(("forward", "full"))

    @property
    def transitive(self) -> bool:
        """Compare against every published version, not only the latest."""
        return self.value.endswith("_transitive")


DEFAULT_MODE = Mode.FULL

BACKWARD = "backward"
FORWARD = "forward"
_WHO = {
    (BACKWARD,): "new readers reject old data",
    (FORWARD,): "old readers reject new data",
    (BACKWARD, FORWARD): "breaks readers both ways",
}


class BaselineError(OutboxError):
    """The baseline schemas cannot be read (no such directory or git revision, malformed JSON)."""


@dataclass(frozen=True)
class Violation:
    """One breaking change of a published ref: ``path`` is a dot path ("" = the payload), ``breaks`` the directions."""

    ref: str
    path: str
    reason: str
    breaks: tuple[str, ...]
    next_ref: str | None  # the ref to publish instead; None when the ref itself disappeared
    baseline: str = ""  # which published version it breaks, when not the latest (transitive modes)

    def __str__(self) -> str:
        who = _WHO.get(self.breaks, "/".join(self.breaks))
        if self.baseline:
            who += f"; vs version {self.baseline}"
        line = f"{self.ref}: {self.path or '<payload>'}: {self.reason} ({who})"
        if self.next_ref is None:
            return f"{line} -> restore {self.ref} (published contracts must stay registered)"
        return f"{line} -> publish {self.next_ref} instead"


@dataclass
class Baseline:
    """Published schemas: ref -> versions newest first as (label, schema); ref -> event type; a description."""

    schemas: dict[str, list[tuple[str, Schema]]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def latest(self) -> dict[str, Schema]:
        """Ref -> the newest published schema."""
        return {ref: versions[0][1] for ref, versions in self.schemas.items() if versions}

    def add(self, ref: str, label: str, schema: Schema) -> None:
        """Append an older version of ``ref`` (identical schemas are kept once)."""
        versions = self.schemas.setdefault(ref, [])
        if all(_canon(schema) != _canon(s) for _, s in versions):
            versions.append((label, schema))


def next_ref(ref: str, taken: Iterable[str] = ()) -> str:
    """The ref to publish instead of a broken ``ref``: same name, first version above every one ``taken``."""
    m = REF_RE.match(ref)
    if m is None:
        raise ValueError(f"malformed schema ref {ref!r}")
    kind, name, version = m.group(1), m.group(2), int(m.group(3))
    for other in taken:
        o = REF_RE.match(other)
        if o and o.group(1) == kind and o.group(2) == name:
            version = max(version, int(o.group(3)))
    return f"{kind}.{name}.v{version + 1}"


def compare(
    ref: str, old: Schema, new: Schema, mode: Mode = DEFAULT_MODE, *, taken: Iterable[str] = (), baseline: str = ""
) -> list[Violation]:
    """Breaking changes from the published schema ``old`` to ``new`` of ``ref`` under ``mode``."""
    found: dict[tuple[str, str], list[str]] = {}
    if mode.backward:
        for path, reason in _Walk(old, new, writer_is_old=True).run():
            found.setdefault((path, reason), []).append(BACKWARD)
    if mode.forward:
        for path, reason in _Walk(new, old, writer_is_old=False).run():
            found.setdefault((path, reason), []).append(FORWARD)
    target = next_ref(ref, taken)
    return [Violation(ref, p, r, tuple(d), target, baseline) for (p, r), d in found.items()]


def check(baseline: Baseline, registry: Registry, mode: Mode = DEFAULT_MODE) -> list[Violation]:
    """Every violation of the published ``baseline`` by the live ``registry``; [] when it may be released as is."""
    current = set(registry.refs())
    taken = current | set(baseline.schemas)
    out: list[Violation] = []
    seen: set[tuple[str, str, str, tuple[str, ...]]] = set()
    for ref in sorted(baseline.schemas):
        versions = baseline.schemas[ref]
        if ref not in current:
            out.append(Violation(ref, "", "ref removed from the registry", (BACKWARD, FORWARD), None))
            continue
        owner, now = baseline.owners.get(ref), registry.owner(ref)
        if owner is not None and owner != now:
            reason = f"ref moved from event type {owner} to {now}"
            out.append(Violation(ref, "", reason, (BACKWARD, FORWARD), next_ref(ref, taken)))
        schema = registry.json_schema(ref)
        for i, (label, old) in enumerate(versions if mode.transitive else versions[:1]):
            for v in compare(ref, old, schema, mode, taken=taken, baseline=label if i else ""):
                key = (v.ref, v.path, v.reason, v.breaks)
                if key not in seen:
                    seen.add(key)
                    out.append(v)
    return out


def new_refs(baseline: Baseline, registry: Registry) -> list[str]:
    """Refs of the registry that the baseline has not published yet (never a violation)."""
    return [ref for ref in registry.refs() if ref not in baseline.schemas]


# --- baselines -------------------------------------------------------------------------------------


def load_dir(directory: str | Path = DEFAULT_DIR) -> Baseline:
    """The baseline held by an export directory (``<ref>.json`` files and ``index.json``)."""
    target = Path(directory)
    if not target.is_dir():
        raise BaselineError(f"baseline directory {target} does not exist")
    baseline = Baseline(source=str(target))
    for path in sorted(target.glob("*.json")):
        if path.name == INDEX:
            baseline.owners = _parse(path.read_bytes(), str(path))
        elif (ref := ref_of(path.name)) is not None:
            baseline.add(ref, "", _parse(path.read_bytes(), str(path)))
    return baseline


def load_git(rev: str, directory: str | Path = DEFAULT_DIR, *, history: bool = False) -> Baseline:
    """The baseline committed at git ``rev`` under ``directory``; with ``history``, every earlier version too."""
    top, rel = _git_location(Path(directory))
    sha = _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    listing = _git(top, "ls-tree", "--name-only", sha, "--", rel + "/").decode().splitlines()
    names = [Path(p).name for p in listing]
    blobs = _cat(top, [(sha, f"{rel}/{n}") for n in names])
    baseline = Baseline(source=f"{rel}/ at {rev}")
    for name in names:
        data = blobs.get((sha, f"{rel}/{name}"))
        if data is None:
            continue
        if name == INDEX:
            baseline.owners = _parse(data, f"{rev}:{rel}/{name}")
        elif (ref := ref_of(name)) is not None:
            baseline.add(ref, "", _parse(data, f"{rev}:{rel}/{name}"))
    if history:
        for commit, path, data in _history(top, sha, rel):
            if (ref := ref_of(Path(path).name)) is not None:
                baseline.add(ref, commit[:12], _parse(data, f"{commit}:{path}"))
        baseline.source += " and its history"
    return baseline


def combine(first: Baseline, *more: Baseline) -> Baseline:
    """One baseline: ``first``'s versions (and owners) before the others' for each ref."""
    out = Baseline(owners=dict(first.owners), source=" + ".join(b.source for b in (first, *more)))
    for b in (first, *more):
        for ref, versions in b.schemas.items():
            for label, schema in versions:
                out.add(ref, label, schema)
        for ref, owner in b.owners.items():
            out.owners.setdefault(ref, owner)
    return out


def _parse(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BaselineError(f"{where}: not valid JSON ({exc})") from None


def _git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise BaselineError(f"cannot run git: {exc}") from None
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip() or f"git {' '.join(args)} failed"
        if args[:1] == ("rev-parse",) and "--verify" in args:
            msg = f"unknown git revision {args[-1].removesuffix('^{commit}')!r}"
        raise BaselineError(msg)
    return res.stdout


def _git_location(directory: Path) -> tuple[Path, str]:
    directory = directory.resolve()
    probe = directory
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent
    top = Path(_git(probe, "rev-parse", "--show-toplevel").decode().strip()).resolve()
    try:
        return top, directory.relative_to(top).as_posix()
    except ValueError:
        raise BaselineError(f"{directory} is not inside the git work tree {top}") from None


def _cat(top: Path, objects: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """Blob contents of ``(commit, path)`` pairs in one ``git cat-file --batch``; missing ones are left out."""
    if not objects:
        return {}
    raw = _git(top, "cat-file", "--batch", stdin="".join(f"{c}:{p}\n" for c, p in objects).encode())
    out: dict[tuple[str, str], bytes] = {}
    pos = 0
    for obj in objects:
        end = raw.index(b"\n", pos)
        header = raw[pos:end].split()
        pos = end + 1
        if len(header) == 3 and header[1] == b"blob":
            size = int(header[2])
            out[obj] = raw[pos : pos + size]
            pos += size + 1
    return out


def _history(top: Path, sha: str, rel: str) -> Iterator[tuple[str, str, bytes]]:
    """``(commit, path, content)`` of every committed version of the files under ``rel``, newest first."""
    log = _git(top, "log", "--format=commit %H", "--name-only", "--no-renames", sha, "--", rel + "/").decode()
    objects: list[tuple[str, str]] = []
    commit = ""
    for line in log.splitlines():
        if line.startswith("commit "):
            commit = line.split()[1]
        elif line.strip() and commit:
            objects.append((commit, line.strip()))
    blobs = _cat(top, objects)
    for obj in objects:
        if obj in blobs:
            yield obj[0], obj[1], blobs[obj]


# --- the comparison --------------------------------------------------------------------------------

_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly",
     "$id", "$schema", "$defs", "definitions", "discriminator", "contentMediaType", "contentEncoding"}
)  # fmt: skip
_LOWER = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum", "minContains")
_UPPER = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum", "maxContains")
_HANDLED = frozenset(
    {"type", "enum", "const", "format", "pattern", "multipleOf", "uniqueItems", "properties", "required",
     "additionalProperties", "items", "anyOf", "oneOf", "allOf", "$ref", *_LOWER, *_UPPER}
)  # fmt: skip
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _is_any(s: Schema) -> bool:
    return s is True or (isinstance(s, dict) and not (set(s) - _ANNOTATIONS))


def _is_never(s: Schema) -> bool:
    return s is False or (isinstance(s, dict) and s.get("not") in ({}, True) and len(set(s) - _ANNOTATIONS) == 1)


def _types(s: dict[str, Any]) -> set[str] | None:
    t = s.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return set(t)
    values = _enum(s)
    if values is not None:
        return {"null" if v is None else _JSON_TYPES.get(type(v), "string") for v in values}
    return None


def _enum(s: dict[str, Any]) -> list[Any] | None:
    if "const" in s:
        return [s["const"]]
    e = s.get("enum")
    return list(e) if isinstance(e, list) else None


def _accepts(types: set[str] | None, t: str) -> bool:
    return types is None or t in types or (t == "integer" and "number" in types)


def _show_types(types: set[str] | None) -> str:
    return "any" if types is None else "|".join(sorted(types))


def _show(values: Iterable[Any]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _value_fits(value: Any, s: dict[str, Any]) -> bool:
    """Whether one enum value of the writer meets the reader's scalar constraints (pattern, lengths, bounds)."""
    if isinstance(value, str):
        try:
            if "pattern" in s and not re.search(s["pattern"], value):
                return False
        except re.error:
            pass  # not a Python regex: no opinion
        if len(value) < s.get("minLength", 0) or len(value) > s.get("maxLength", len(value)):
            return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if ("minimum" in s and value < s["minimum"]) or ("maximum" in s and value > s["maximum"]):
            return False
        if ("exclusiveMinimum" in s and value <= s["exclusiveMinimum"]) or (
            "exclusiveMaximum" in s and value >= s["exclusiveMaximum"]
        ):
            return False
    return True


class _Walk:
    """Where data valid under ``writer`` may be rejected by ``reader``; reasons worded as changes old -> new."""

    def __init__(self, writer: Schema, reader: Schema, *, writer_is_old: bool) -> None:
        self.writer_root, self.reader_root = writer, reader
        self.writer_is_old = writer_is_old
        self.issues: list[tuple[str, str]] = []
        self.active: set[tuple[str, str]] = set()

    def run(self) -> list[tuple[str, str]]:
        self.sub(self.writer_root, self.reader_root, "")
        return list(dict.fromkeys(self.issues))

    def fork(self) -> _Walk:
        other = _Walk(self.writer_root, self.reader_root, writer_is_old=self.writer_is_old)
        other.active = set(self.active)
        return other

    def issue(self, path: str, reason: str) -> None:
        self.issues.append((path, reason))

    def said(self, when_writer_old: str, when_writer_new: str) -> str:
        return when_writer_old if self.writer_is_old else when_writer_new

    def old_new(self, w: Any, r: Any) -> tuple[Any, Any]:
        return (w, r) if self.writer_is_old else (r, w)

    # resolution

    def resolve(self, s: Schema, root: Schema, path: str) -> tuple[Schema, str]:
        refs: list[str] = []
        for _ in range(64):
            if not (isinstance(s, dict) and isinstance(s.get("$ref"), str)):
                break
            ref = s["$ref"]
            refs.append(ref)
            target = _pointer(root, ref)
            if target is None:
                self.issue(path, f"unresolvable $ref {ref}")
                return True, ref
            rest = {k: v for k, v in s.items() if k != "$ref"}
            s = {**target, **rest} if rest and isinstance(target, dict) else target
        if isinstance(s, dict) and isinstance(s.get("allOf"), list):
            merged = {k: v for k, v in s.items() if k != "allOf"}
            for part in s["allOf"]:
                part, _ = self.resolve(part, root, path)
                if part is False:
                    return False, "|".join(refs)
                if isinstance(part, dict):
                    merged = {**part, **merged}
            s = merged
        return s, "|".join(refs)

    def split_null(self, s: Schema, root: Schema, path: str) -> tuple[bool, Schema]:
        """(accepts null, the schema without null)."""
        if not isinstance(s, dict):
            return s is True, s
        t = s.get("type")
        if t == "null":
            return True, False
        if isinstance(t, list) and "null" in t:
            rest = [x for x in t if x != "null"]
            if not rest:
                return True, False
            return True, {**s, "type": rest[0] if len(rest) == 1 else rest}
        values = _enum(s)
        if values is not None and None in values:
            out = {k: v for k, v in s.items() if k not in ("enum", "const")}
            kept = [v for v in values if v is not None]
            if not kept:
                return True, False
            return True, {**out, "enum": kept}
        for key in ("anyOf", "oneOf"):
            branches = s.get(key)
            if not isinstance(branches, list):
                continue
            nullable = False
            kept_branches = []
            for b in branches:
                resolved, _ = self.resolve(b, root, path)
                b_null, b_rest = self.split_null(resolved, root, path)
                nullable = nullable or b_null
                if b_rest is not False:
                    kept_branches.append(b_rest if b_null else b)
            if not nullable:
                continue
            outer = {k: v for k, v in s.items() if k != key}
            if not kept_branches:
                return True, False
            if len(kept_branches) == 1:
                only, _ = self.resolve(kept_branches[0], root, path)
                return True, ({**outer, **only} if isinstance(only, dict) else only)
            return True, {**outer, key: kept_branches}
        return False, s

    # the walk

    def sub(self, w: Schema, r: Schema, path: str) -> None:
        w, w_ref = self.resolve(w, self.writer_root, path)
        r, r_ref = self.resolve(r, self.reader_root, path)
        key = (w_ref, r_ref)
        if w_ref and r_ref:
            if key in self.active:
                return
            self.active.add(key)
        try:
            self._sub(w, r, path)
        finally:
            if w_ref and r_ref:
                self.active.discard(key)

    def _sub(self, w: Schema, r: Schema, path: str) -> None:
        if _is_any(r) or _is_never(w):
            return
        if _is_never(r):
            self.issue(path, "no value is allowed any more" if self.writer_is_old else "values now allowed")
            return
        if _is_any(w):
            old, new = self.old_new("any", _show_types(_types(r) if isinstance(r, dict) else None))
            self.issue(path, f"type {'narrowed' if self.writer_is_old else 'widened'}: {old} -> {new}")
            return
        w_null, w = self.split_null(w, self.writer_root, path)
        r_null, r = self.split_null(r, self.reader_root, path)
        if w_null and not r_null:
            self.issue(path, "nullable removed (null no longer accepted)" if self.writer_is_old else "became nullable")
        if _is_never(w) or _is_any(r):
            return
        if _is_never(r):
            self.issue(path, "only null is allowed any more" if self.writer_is_old else "non-null values now allowed")
            return
        for key in ("anyOf", "oneOf"):
            if isinstance(w.get(key), list):
                outer = {k: v for k, v in w.items() if k != key}
                for b in w[key]:
                    b, _ = self.resolve(b, self.writer_root, path)
                    self.sub({**outer, **b} if isinstance(b, dict) else b, r, path)
                return
        for key in ("anyOf", "oneOf"):
            if isinstance(r.get(key), list):
                self._into_union(w, r, key, path)
                return
        self._leaf(w, r, path)

    def _into_union(self, w: dict[str, Any], r: dict[str, Any], key: str, path: str) -> None:
        outer = {k: v for k, v in r.items() if k != key}
        best: _Walk | None = None
        for b in r[key]:
            b, _ = self.resolve(b, self.reader_root, path)
            trial = self.fork()
            trial.sub(w, {**outer, **b} if isinstance(b, dict) else b, path)
            if not trial.issues:
                return
            if best is None or len(trial.issues) < len(best.issues):
                best = trial
        if best is not None:
            self.issues += best.issues

    def _leaf(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        wt, rt = _types(w), _types(r)
        if rt is not None:
            lost = wt is None or not all(_accepts(rt, t) for t in wt)
            if lost:
                old, new = self.old_new(wt, rt)
                old_in_new = old is not None and all(_accepts(new, t) for t in old)
                new_in_old = new is not None and all(_accepts(old, t) for t in new)
                verb = "widened" if old_in_new else "narrowed" if new_in_old or old is None else "changed"
                self.issue(path, f"type {verb}: {_show_types(old)} -> {_show_types(new)}")
                return
        w_enum, r_enum = _enum(w), _enum(r)
        if r_enum is not None:
            if w_enum is None:
                if self.writer_is_old:
                    self.issue(path, f"enum added (values now restricted to {_show(r_enum)})")
                else:
                    self.issue(path, f"enum removed (any value now allowed, was {_show(r_enum)})")
            else:
                allowed = {_canon(v) for v in r_enum}
                extra = [v for v in w_enum if _canon(v) not in allowed]
                if extra:
                    self.issue(path, f"enum value(s) {'removed' if self.writer_is_old else 'added'}: {_show(extra)}")
        if w_enum is not None:
            bad = [v for v in w_enum if not _value_fits(v, r)]
            if bad:
                self.issue(path, f"enum value(s) {_show(bad)} {'no longer' if self.writer_is_old else 'not'} valid")
            return  # the writer's values are listed: the other scalar keywords were checked on them
        self._scalars(w, r, path)
        types = wt if wt is not None else rt
        if types is None or "object" in types:
            self._object(w, r, path)
        if types is None or "array" in types:
            self._array(w, r, path)
        for k, rv in r.items():
            if k not in _HANDLED and k not in _ANNOTATIONS and _canon(w.get(k)) != _canon(rv):
                old, new = self.old_new(w.get(k), rv)
                self.issue(path, f"constraint {k} changed: {_canon(old)} -> {_canon(new)}")

    def _scalars(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        wf, rf = w.get("format"), r.get("format")
        if rf is not None and rf != wf:
            old, new = self.old_new(wf, rf)
            verb = "tightened" if old is None else "loosened" if new is None else "changed"
            self.issue(path, f"format {verb}: {old or 'none'} -> {new or 'none'}")
        wp, rp = w.get("pattern"), r.get("pattern")
        if rp is not None and rp != wp:
            old, new = self.old_new(wp, rp)
            if old is None:
                self.issue(path, f"pattern added: {new}")
            elif new is None:
                self.issue(path, f"pattern removed: {old}")
            else:
                self.issue(path, f"pattern changed: {old} -> {new}")
        for k in _LOWER:
            if k in r and (k not in w or w[k] < r[k]):
                self.issue(path, self._bound(k, w.get(k), r[k]))
        for k in _UPPER:
            if k in r and (k not in w or w[k] > r[k]):
                self.issue(path, self._bound(k, w.get(k), r[k]))
        rm = r.get("multipleOf")
        if rm is not None and (w.get("multipleOf") is None or w["multipleOf"] % rm != 0):
            old, new = self.old_new(w.get("multipleOf"), rm)
            self.issue(path, f"multipleOf changed: {old} -> {new}")
        if r.get("uniqueItems") is True and w.get("uniqueItems") is not True:
            self.issue(path, "uniqueItems added" if self.writer_is_old else "uniqueItems removed")

    def _bound(self, k: str, w: Any, r: Any) -> str:
        old, new = self.old_new(w, r)
        if old is None:
            return f"{k} added: {new}"
        if new is None:
            return f"{k} removed (was {old})"
        return f"{k} {'increased' if new > old else 'decreased'}: {old} -> {new}"

    def _object(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        wp: dict[str, Any] = w.get("properties") or {}
        rp: dict[str, Any] = r.get("properties") or {}
        w_req, r_req = set(w.get("required") or ()), list(r.get("required") or ())
        w_ap, r_ap = w.get("additionalProperties", True), r.get("additionalProperties", True)
        gone: set[str] = set()
        for name in r_req:
            if name in w_req:
                continue
            if name in wp:
                reason = "optional field became required" if self.writer_is_old else "required field became optional"
            else:
                reason = "new required field" if self.writer_is_old else "required field removed"
                gone.add(name)
            self.issue(_join(path, name), reason)
        for name, rs in rp.items():
            p = _join(path, name)
            if name in wp:
                self.sub(wp[name], rs, p)
            elif name in gone or w_ap is False:
                continue
            elif _is_any(w_ap):
                if not self.writer_is_old:  # a declared key withdrawn; new optional keys are fine (module doc)
                    self.issue(p, "field removed (old readers still rely on its declared type)")
            else:
                self.sub(w_ap, rs, p)
        for name, ws in wp.items():
            if name in rp:
                continue
            p = _join(path, name)
            if r_ap is False:
                self.issue(
                    p, self.said("field removed from a closed object", "new field, old readers' object is closed")
                )
            elif not _is_any(r_ap):
                self.sub(ws, r_ap, p)
        if w_ap is not False:
            if r_ap is False:
                self.issue(
                    path, self.said("object closed (undeclared keys rejected)", "object opened (undeclared keys)")
                )
            elif not _is_any(r_ap):
                self.sub(w_ap, r_ap, _join(path, "*"))

    def _array(self, w: dict[str, Any], r: dict[str, Any], path: str) -> None:
        ri = r.get("items")
        if ri is not None and not _is_any(ri):
            self.sub(w.get("items", True), ri, path + "[]")


def _pointer(root: Schema, ref: str) -> Schema | None:
    """The subschema a local ``$ref`` (``#/...``) points to, or ``None``."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
