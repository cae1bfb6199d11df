"""JSON Schema export (schemas/json) and the evolution gate (outbox.schemas.compat, ``outbox schemas check``). No DB."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, create_model

from outbox import schemas
from outbox.schemas.base import Opt, Payload, Shape, Uuid
from outbox.schemas.compat import (
    BACKWARD,
    FORWARD,
    Baseline,
    Mode,
    Violation,
    check,
    compare,
    load_dir,
    load_git,
    next_ref,
)
from outbox.schemas.export import DEFAULT_DIR, INDEX, check_fresh, dumps, export_all, render_all
from outbox.schemas.legacy import TicketCommentAddedLegacy, TicketCommentAddedLegacyComment
from outbox.schemas.registry import Registry
from outbox.schemas.tickets import TicketAssignedV1, TicketAssignedV1ChangesValue, TicketSplitV1, TicketUnassignedV1
from tests.conftest import ROOT

UNASSIGNED = "payload.TicketUnassigned.v1"
SPLIT = "payload.TicketSplit.v1"
ASSIGNED = "payload.TicketAssigned.v1"
COMMENT = "legacy.TicketCommentAdded.v1"
ALL_MODES = list(Mode)


# --- building real variants of real contracts ---------------------------------------------------


def variant(
    model: type[BaseModel], *, drop: tuple[str, ...] = (), base: type[BaseModel] = Payload, **fields: Any
) -> Any:
    """``model`` re-declared with fields dropped/replaced/added (same name, docstring and field types)."""
    defs: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items() if n not in drop}
    defs.update(fields)
    return create_model(model.__name__, __base__=base, __doc__=model.__doc__, **defs)


class ClosedPayload(Payload):
    model_config = ConfigDict(extra="forbid")


def registry_with(ref: str, model: type[BaseModel]) -> Registry:
    """A copy of the default registry where ``ref`` is validated by ``model``."""
    reg = Registry()
    for entry in schemas.registry:
        reg.add(dataclasses.replace(entry, model=model) if entry.ref == ref else entry)
    return reg


def published(ref: str, model: type[BaseModel] | None = None) -> Baseline:
    """A baseline holding the schema of ``ref`` (as the default registry has it, or as ``model`` makes it)."""
    reg = schemas.registry if model is None else registry_with(ref, model)
    return Baseline(schemas={ref: [("", reg.json_schema(ref))]}, owners={ref: reg.owner(ref) or ""})


def gate(
    ref: str, *, old: type[BaseModel] | None = None, new: type[BaseModel] | None = None, mode: Mode
) -> list[Violation]:
    """Violations when ``ref`` was published as ``old`` (default: the real model) and is now ``new``."""
    current = schemas.registry if new is None else registry_with(ref, new)
    return check(published(ref, old), current, mode)


def found(violations: list[Violation]) -> set[tuple[str, str]]:
    return {(v.path, v.reason) for v in violations}


def paths(violations: list[Violation]) -> set[str]:
    return {v.path for v in violations}


def test_variant_of_an_unchanged_model_has_the_same_schema():
    for ref, model in ((UNASSIGNED, TicketUnassignedV1), (ASSIGNED, TicketAssignedV1), (SPLIT, TicketSplitV1)):
        assert registry_with(ref, variant(model)).json_schema(ref) == schemas.registry.json_schema(ref)
        for mode in ALL_MODES:
            assert gate(ref, new=variant(model), mode=mode) == []


# --- export -------------------------------------------------------------------------------------


def test_committed_json_schemas_are_fresh():
    problems = check_fresh(schemas.registry, DEFAULT_DIR)
    assert problems == [], f"schemas/json is stale, run `outbox schemas export`: {problems[:10]}"


def test_export_writes_one_stable_file_per_ref_and_an_index(tmp_path: Path):
    changed = export_all(schemas.registry, tmp_path)
    refs = schemas.registry.refs()
    assert any(r.startswith("legacy.") for r in refs)
    assert sorted(changed) == sorted([f"{r}.json" for r in refs] + [INDEX])
    text = (tmp_path / "payload.TicketUnassigned.v1.json").read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "$id": "payload.TicketUnassigned.v1",')
    assert json.loads(text) == schemas.registry.json_schema(UNASSIGNED)
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    index = json.loads((tmp_path / INDEX).read_text())
    assert index == {r: schemas.registry.owner(r) for r in refs}
    assert index[UNASSIGNED] == "TICKET_UNASSIGNED"
    assert export_all(schemas.registry, tmp_path) == []  # idempotent


def test_check_fresh_reports_stale_missing_and_extra_files_and_export_repairs_them(tmp_path: Path):
    export_all(schemas.registry, tmp_path)
    assert check_fresh(schemas.registry, tmp_path) == []
    (tmp_path / f"{SPLIT}.json").write_text('{"stale": true}\n')
    (tmp_path / f"{UNASSIGNED}.json").unlink()
    (tmp_path / "payload.Gone.v1.json").write_text("{}\n")
    assert check_fresh(schemas.registry, tmp_path) == [
        f"stale: {SPLIT}.json",
        f"missing: {UNASSIGNED}.json",
        "extra: payload.Gone.v1.json",
    ]
    assert sorted(export_all(schemas.registry, tmp_path)) == sorted(
        [f"{SPLIT}.json", f"{UNASSIGNED}.json", "payload.Gone.v1.json"]
    )
    assert check_fresh(schemas.registry, tmp_path) == []
    assert check_fresh(schemas.registry, tmp_path / "nowhere")[0] == f"missing: {INDEX}"
    (tmp_path / "notes.json").write_text("{}\n")  # not a ref file: neither reported nor deleted
    assert check_fresh(schemas.registry, tmp_path) == [] and export_all(schemas.registry, tmp_path) == []
    assert (tmp_path / "notes.json").exists()


def test_render_is_deterministic():
    assert render_all(schemas.registry) == render_all(schemas.registry)
    assert dumps({"b": 1, "a": "é"}) == '{\n  "a": "é",\n  "b": 1\n}\n'


# --- the gate, one kind of change at a time -----------------------------------------------------


def test_new_optional_field_is_compatible_in_the_open_model():
    new = variant(TicketUnassignedV1, teamId=(Opt[Uuid], None))
    for mode in ALL_MODES:
        assert gate(UNASSIGNED, new=new, mode=mode) == [], mode


def test_new_required_field_breaks_backward():
    new = variant(TicketUnassignedV1, teamId=(Uuid, ...))
    assert found(gate(UNASSIGNED, new=new, mode=Mode.BACKWARD)) == {("teamId", "new required field")}
    assert gate(UNASSIGNED, new=new, mode=Mode.FORWARD) == []
    [v] = gate(UNASSIGNED, new=new, mode=Mode.FULL)
    assert (v.ref, v.path, v.breaks, v.next_ref) == (UNASSIGNED, "teamId", (BACKWARD,), "payload.TicketUnassigned.v2")
    assert str(v) == (
        "payload.TicketUnassigned.v1: teamId: new required field (new readers reject old data)"
        " -> publish payload.TicketUnassigned.v2 instead"
    )


def test_optional_field_made_required_breaks_backward():
    new = variant(TicketUnassignedV1, reason=(str, ...))
    assert found(gate(UNASSIGNED, new=new, mode=Mode.FULL)) == {("reason", "optional field became required")}
    assert gate(UNASSIGNED, new=new, mode=Mode.FORWARD) == []


def test_required_field_made_optional_breaks_forward():
    new = variant(TicketUnassignedV1, previousAssigneeId=(Opt[Uuid], None))
    assert found(gate(UNASSIGNED, new=new, mode=Mode.FORWARD)) == {
        ("previousAssigneeId", "required field became optional")
    }
    assert gate(UNASSIGNED, new=new, mode=Mode.BACKWARD) == []


def test_required_field_removed_breaks_forward_only_in_the_open_model():
    new = variant(TicketUnassignedV1, drop=("previousAssigneeId",))
    assert found(gate(UNASSIGNED, new=new, mode=Mode.FULL)) == {("previousAssigneeId", "required field removed")}
    assert gate(UNASSIGNED, new=new, mode=Mode.BACKWARD) == []  # new readers keep the undeclared key


def test_optional_field_removed_breaks_forward():
    new = variant(TicketUnassignedV1, drop=("reason",))
    [v] = gate(UNASSIGNED, new=new, mode=Mode.FULL)
    assert (v.path, v.breaks) == ("reason", (FORWARD,))
    assert v.reason.startswith("field removed")
    assert gate(UNASSIGNED, new=new, mode=Mode.BACKWARD) == []


def test_field_removed_from_a_closed_model_breaks_backward_too():
    old = variant(TicketUnassignedV1, base=ClosedPayload)
    new = variant(TicketUnassignedV1, drop=("reason",), base=ClosedPayload)
    assert found(gate(UNASSIGNED, old=old, new=new, mode=Mode.BACKWARD)) == {
        ("reason", "field removed from a closed object")
    }
    # and closing an open model rejects the undeclared keys old payloads may carry
    closed = variant(TicketUnassignedV1, base=ClosedPayload)
    assert found(gate(UNASSIGNED, new=closed, mode=Mode.BACKWARD)) == {("", "object closed (undeclared keys rejected)")}
    assert gate(UNASSIGNED, new=closed, mode=Mode.FORWARD) == []
    # in a closed model even a new optional field breaks old readers
    grown = variant(TicketUnassignedV1, base=ClosedPayload, teamId=(Opt[Uuid], None))
    assert paths(gate(UNASSIGNED, old=old, new=grown, mode=Mode.FORWARD)) == {"teamId"}
    assert gate(UNASSIGNED, old=old, new=grown, mode=Mode.BACKWARD) == []


def test_type_changed_breaks_both_ways():
    new = variant(TicketUnassignedV1, reason=(Opt[int], None))
    [v] = gate(UNASSIGNED, new=new, mode=Mode.FULL)
    assert (v.path, v.reason, v.breaks) == ("reason", "type changed: string -> integer", (BACKWARD, FORWARD))
    assert len(gate(UNASSIGNED, new=new, mode=Mode.BACKWARD)) == len(gate(UNASSIGNED, new=new, mode=Mode.FORWARD)) == 1


def test_type_narrowed_and_widened():
    old = variant(TicketUnassignedV1, reason=(Opt[float], None))
    new = variant(TicketUnassignedV1, reason=(Opt[int], None))
    assert found(gate(UNASSIGNED, old=old, new=new, mode=Mode.FULL)) == {("reason", "type narrowed: number -> integer")}
    assert gate(UNASSIGNED, old=old, new=new, mode=Mode.FORWARD) == []
    assert found(gate(UNASSIGNED, old=new, new=old, mode=Mode.FULL)) == {("reason", "type widened: integer -> number")}
    assert gate(UNASSIGNED, old=new, new=old, mode=Mode.BACKWARD) == []
    anything = variant(TicketUnassignedV1, reason=(Opt[Any], None))
    assert found(gate(UNASSIGNED, old=anything, mode=Mode.BACKWARD)) == {("reason", "type narrowed: any -> string")}
    assert found(gate(UNASSIGNED, new=anything, mode=Mode.FORWARD)) == {("reason", "type widened: string -> any")}


def test_enum_narrowed_breaks_backward_and_widened_breaks_forward():
    narrowed = variant(TicketUnassignedV1, previousAssigneeType=(Literal["user"], ...))
    assert found(gate(UNASSIGNED, new=narrowed, mode=Mode.FULL)) == {
        ("previousAssigneeType", 'enum value(s) removed: "team"')
    }
    assert gate(UNASSIGNED, new=narrowed, mode=Mode.FORWARD) == []
    widened = variant(TicketUnassignedV1, previousAssigneeType=(Literal["user", "team", "org"], ...))
    assert gate(UNASSIGNED, new=widened, mode=Mode.BACKWARD) == []
    assert found(gate(UNASSIGNED, new=widened, mode=Mode.FULL)) == {
        ("previousAssigneeType", 'enum value(s) added: "org"')
    }
    as_string = variant(TicketUnassignedV1, previousAssigneeType=(str, ...))
    assert gate(UNASSIGNED, new=as_string, mode=Mode.BACKWARD) == []
    [v] = gate(UNASSIGNED, new=as_string, mode=Mode.FORWARD)
    assert v.path == "previousAssigneeType" and v.reason.startswith("enum removed")
    [v] = gate(UNASSIGNED, old=as_string, mode=Mode.BACKWARD)
    assert v.path == "previousAssigneeType" and v.reason.startswith("enum added")


def test_format_tightened_breaks_backward_and_loosened_breaks_forward():
    tightened = variant(TicketUnassignedV1, reason=(Opt[Uuid], None))
    assert found(gate(UNASSIGNED, new=tightened, mode=Mode.FULL)) == {("reason", "format tightened: none -> uuid")}
    assert gate(UNASSIGNED, new=tightened, mode=Mode.FORWARD) == []
    loosened = variant(TicketUnassignedV1, previousAssigneeId=(str, ...))
    assert found(gate(UNASSIGNED, new=loosened, mode=Mode.FULL)) == {
        ("previousAssigneeId", "format loosened: uuid -> none")
    }
    # string -> date-time also adds the 'Z$' pattern of UtcDateTime: both are reported
    from outbox.schemas.base import Email, UtcDateTime

    assert found(
        gate(UNASSIGNED, new=variant(TicketUnassignedV1, reason=(Opt[UtcDateTime], None)), mode=Mode.FULL)
    ) == {
        ("reason", "format tightened: none -> date-time"),
        ("reason", "pattern added: Z$"),
    }
    to_email = variant(TicketUnassignedV1, previousAssigneeId=(Email, ...))
    assert found(gate(UNASSIGNED, new=to_email, mode=Mode.BACKWARD)) == {
        ("previousAssigneeId", "format changed: uuid -> email")
    }


def test_nullable_removed_breaks_backward_and_added_breaks_forward():
    nullable = variant(TicketUnassignedV1, reason=(str | None, None))
    assert found(gate(UNASSIGNED, old=nullable, mode=Mode.FULL)) == {
        ("reason", "nullable removed (null no longer accepted)")
    }
    assert gate(UNASSIGNED, old=nullable, mode=Mode.FORWARD) == []
    assert found(gate(UNASSIGNED, new=nullable, mode=Mode.FULL)) == {("reason", "became nullable")}
    assert gate(UNASSIGNED, new=nullable, mode=Mode.BACKWARD) == []


def test_array_items_and_min_items():
    more = variant(TicketSplitV1, newTicketIds=(list[Uuid], Field(min_length=2)))
    assert found(gate(SPLIT, new=more, mode=Mode.FULL)) == {("newTicketIds", "minItems increased: 1 -> 2")}
    assert gate(SPLIT, new=more, mode=Mode.FORWARD) == []
    fewer = variant(TicketSplitV1, newTicketIds=(list[Uuid], ...))
    assert found(gate(SPLIT, new=fewer, mode=Mode.FULL)) == {("newTicketIds", "minItems removed (was 1)")}
    plain = variant(TicketSplitV1, newTicketIds=(list[str], Field(min_length=1)))
    assert found(gate(SPLIT, new=plain, mode=Mode.FULL)) == {("newTicketIds[]", "format loosened: uuid -> none")}
    ints = variant(TicketSplitV1, newTicketIds=(list[int], Field(min_length=1)))
    assert found(gate(SPLIT, new=ints, mode=Mode.FULL)) == {("newTicketIds[]", "type changed: string -> integer")}


def test_nested_objects_through_defs_and_refs():
    comment = variant(TicketCommentAddedLegacyComment, drop=("author",), base=Shape)
    new = variant(TicketCommentAddedLegacy, comment=(Opt[comment], None))
    assert found(gate(COMMENT, new=new, mode=Mode.FULL)) == {("comment.author", "required field removed")}
    narrowed = variant(
        TicketCommentAddedLegacyComment, authorType=(Opt[Literal["internal", "client"]], None), base=Shape
    )
    new = variant(TicketCommentAddedLegacy, comment=(Opt[narrowed], None))
    assert found(gate(COMMENT, new=new, mode=Mode.BACKWARD)) == {
        ("comment.authorType", 'enum value(s) removed: "unknown"')
    }
    required = variant(TicketCommentAddedLegacyComment, isInternal=(bool, ...), base=Shape)
    new = variant(TicketCommentAddedLegacy, comment=(Opt[required], None))
    assert found(gate(COMMENT, new=new, mode=Mode.FULL)) == {("comment.isInternal", "optional field became required")}


def test_additional_properties_maps():
    value = variant(TicketAssignedV1ChangesValue, previous=(Any, ...), base=Shape)
    new = variant(TicketAssignedV1, changes=(Opt[dict[str, value]], None))
    assert found(gate(ASSIGNED, new=new, mode=Mode.FULL)) == {("changes.*.previous", "optional field became required")}
    as_strings = variant(TicketAssignedV1, changes=(Opt[dict[str, str]], None))
    violations = gate(ASSIGNED, new=as_strings, mode=Mode.BACKWARD)
    assert paths(violations) == {"changes.*"} and violations[0].reason == "type changed: object -> string"
    any_map = variant(TicketAssignedV1, changes=(Opt[dict[str, Any]], None))
    assert gate(ASSIGNED, new=any_map, mode=Mode.BACKWARD) == []
    assert paths(gate(ASSIGNED, new=any_map, mode=Mode.FORWARD)) == {"changes.*"}


def test_annotations_do_not_matter():
    old = schemas.registry.json_schema(UNASSIGNED)
    new = copy.deepcopy(old)
    new["description"] = "Reworded."
    new["title"] = "Renamed"
    new["properties"]["reason"]["description"] = "Why it was unassigned."
    new["properties"]["reason"]["examples"] = ["holiday"]
    for mode in ALL_MODES:
        assert compare(UNASSIGNED, old, new, mode) == []


def test_pure_schema_cases_recursion_and_unions():
    node = {
        "$defs": {
            "Node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}
        },
        "$ref": "#/$defs/Node",
    }
    assert compare("payload.Tree.v1", node, copy.deepcopy(node), Mode.FULL) == []
    deeper = copy.deepcopy(node)
    deeper["$defs"]["Node"]["properties"]["name"] = {"type": "string"}
    deeper["$defs"]["Node"]["required"] = ["name"]
    assert found(compare("payload.Tree.v1", node, deeper, Mode.BACKWARD)) == {("name", "new required field")}
    union = {"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}
    just_int = {"type": "object", "properties": {"v": {"type": "integer"}}}
    assert compare("payload.U.v1", just_int, union, Mode.BACKWARD) == []  # widened
    assert paths(compare("payload.U.v1", just_int, union, Mode.FORWARD)) == {"v"}
    assert paths(compare("payload.U.v1", union, just_int, Mode.BACKWARD)) == {"v"}
    bounded = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 10}}}
    unbounded = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert found(compare("payload.U.v1", unbounded, bounded, Mode.FULL)) == {("n", "maximum added: 10")}
    assert found(compare("payload.U.v1", bounded, unbounded, Mode.FULL)) == {("n", "maximum removed (was 10)")}


def test_new_ref_is_never_a_violation_and_a_removed_ref_always_is():
    reg = Registry()
    for entry in schemas.registry:
        reg.add(entry)
    reg.add_version("TICKET_UNASSIGNED", "payload.TicketUnassigned.v2", variant(TicketUnassignedV1, teamId=(Uuid, ...)))
    assert check(published(UNASSIGNED), reg, Mode.FULL_TRANSITIVE) == []
    gone = published(UNASSIGNED)
    gone.schemas["payload.Retired.v1"] = [("", {"type": "object"})]
    [v] = check(gone, schemas.registry, Mode.BACKWARD)
    assert (v.ref, v.path, v.next_ref) == ("payload.Retired.v1", "", None)
    assert str(v).startswith("payload.Retired.v1: <payload>: ref removed from the registry")
    assert "restore payload.Retired.v1" in str(v)


def test_next_ref_skips_versions_already_taken():
    assert next_ref(UNASSIGNED) == "payload.TicketUnassigned.v2"
    assert next_ref(UNASSIGNED, ["payload.TicketUnassigned.v2", "payload.Other.v7"]) == "payload.TicketUnassigned.v3"
    assert next_ref("legacy.TicketDeleted.v1") == "legacy.TicketDeleted.v2"
    reg = registry_with(UNASSIGNED, variant(TicketUnassignedV1, teamId=(Uuid, ...)))
    reg.add_version("TICKET_UNASSIGNED", "payload.TicketUnassigned.v2", TicketUnassignedV1)
    [v] = check(published(UNASSIGNED), reg, Mode.FULL)
    assert v.next_ref == "payload.TicketUnassigned.v3"


def test_ref_moved_to_another_event_type_is_a_violation():
    baseline = published(UNASSIGNED)
    baseline.owners[UNASSIGNED] = "TICKET_ASSIGNED"
    [v] = check(baseline, schemas.registry, Mode.FULL)
    assert v.reason == "ref moved from event type TICKET_ASSIGNED to TICKET_UNASSIGNED"


def test_transitive_modes_compare_against_every_published_version():
    older = registry_with(UNASSIGNED, variant(TicketUnassignedV1, reason=(Opt[int], None))).json_schema(UNASSIGNED)
    latest = schemas.registry.json_schema(UNASSIGNED)
    baseline = Baseline(schemas={UNASSIGNED: [("", latest), ("0123456789ab", older)]})
    assert check(baseline, schemas.registry, Mode.FULL) == []
    [v] = check(baseline, schemas.registry, Mode.FULL_TRANSITIVE)
    assert (v.path, v.baseline) == ("reason", "0123456789ab")
    assert "vs version 0123456789ab" in str(v)
    assert len(check(baseline, schemas.registry, Mode.BACKWARD_TRANSITIVE)) == 1
    assert len(check(baseline, schemas.registry, Mode.FORWARD_TRANSITIVE)) == 1


def test_modes():
    assert (Mode.FULL.backward, Mode.FULL.forward, Mode.FULL.transitive) == (True, True, False)
    assert (Mode.BACKWARD.backward, Mode.BACKWARD.forward) == (True, False)
    assert (Mode.FORWARD_TRANSITIVE.backward, Mode.FORWARD_TRANSITIVE.forward) == (False, True)
    assert Mode.FULL_TRANSITIVE.transitive and Mode("backward_transitive") is Mode.BACKWARD_TRANSITIVE


def test_the_live_registry_passes_the_gate_against_the_committed_files():
    baseline = load_dir(DEFAULT_DIR)
    assert len(baseline.schemas) == len(schemas.registry.refs())
    assert baseline.owners[UNASSIGNED] == "TICKET_UNASSIGNED"
    for mode in ALL_MODES:
        assert check(baseline, schemas.registry, mode) == []


def test_git_baseline_reads_the_committed_files():
    head = load_git("HEAD")
    assert head.latest() == load_dir(DEFAULT_DIR).latest()
    assert load_git("HEAD", history=True).schemas.keys() >= head.schemas.keys()


# --- the CLI ------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "schemas", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture
def tampered(tmp_path: Path) -> Path:
    """schemas/json copied; its TicketUnassigned.v1 lacks ``previousAssigneeId`` and has a third assignee type."""
    target = tmp_path / "json"
    shutil.copytree(DEFAULT_DIR, target)
    path = target / f"{UNASSIGNED}.json"
    schema = json.loads(path.read_text())
    del schema["properties"]["previousAssigneeId"]
    schema["required"].remove("previousAssigneeId")
    schema["properties"]["previousAssigneeType"]["enum"].append("org")
    path.write_text(dumps(schema))
    return target


def test_cli_check_passes_on_the_clean_tree():
    res = run_cli("check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""
    assert "compatible" in res.stderr and "FULL" in res.stderr


def test_cli_check_fails_against_a_tampered_baseline(tampered: Path):
    res = run_cli("check", "--baseline", str(tampered))
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert (
        "payload.TicketUnassigned.v1: previousAssigneeId: new required field (new readers reject old data)"
        " -> publish payload.TicketUnassigned.v2 instead"
    ) in lines
    assert any(
        line.startswith('payload.TicketUnassigned.v1: previousAssigneeType: enum value(s) removed: "org"')
        for line in lines
    )
    assert len(lines) == 2
    assert "2 breaking change(s)" in res.stderr
    # a new required field does not bother old readers; a removed enum value neither
    res = run_cli("check", "--baseline", str(tampered), "--mode", "forward")
    assert res.returncode == 0, res.stdout + res.stderr


def test_cli_check_against_a_git_revision():
    res = run_cli("check", "--baseline-rev", "HEAD")
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("check", "--baseline-rev", "HEAD", "--mode", "full_transitive")
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_cli("check", "--baseline-rev", "no-such-rev-xyz")
    assert res.returncode == 2 and "no-such-rev-xyz" in res.stderr
    res = run_cli("check", "--baseline-rev", "HEAD", "--baseline", str(DEFAULT_DIR))
    assert res.returncode == 2


def test_cli_export_check_and_list(tmp_path: Path):
    assert run_cli("export", "--check").returncode == 0
    res = run_cli("export", "--dir", str(tmp_path))
    assert res.returncode == 0 and f"{UNASSIGNED}.json" in res.stdout.split()
    assert check_fresh(schemas.registry, tmp_path) == []
    (tmp_path / f"{UNASSIGNED}.json").write_text("{}\n")
    res = run_cli("export", "--check", "--dir", str(tmp_path))
    assert res.returncode == 1 and f"stale: {UNASSIGNED}.json" in res.stdout
    res = run_cli("list")
    assert res.returncode == 0
    assert any(line.split() == [UNASSIGNED, "TICKET_UNASSIGNED"] for line in res.stdout.splitlines())
    rows = json.loads(run_cli("list", "--json").stdout)
    assert {"ref": COMMENT, "event_type": "TICKET_COMMENT_ADDED", "kind": "legacy-bus"} in rows
