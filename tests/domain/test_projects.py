"""Projects: lifecycle, tasks, assignment, dependencies and comments put their events on the stream once."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import domain.projects  # noqa: F401 - registers the project tables before the engine fixture creates them
from domain import projects as pr
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_STATUS_CHANGED", "PROJECT_CLOSED", "PROJECT_ASSIGNED",
    "PROJECT_TASK_CREATED", "PROJECT_TASK_ASSIGNED", "PROJECT_TASK_STATUS_CHANGED", "PROJECT_TASK_COMPLETED",
    "PROJECT_TASK_DEPENDENCY_BLOCKED", "PROJECT_TASK_DEPENDENCY_UNBLOCKED", "PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED",
    "TASK_COMMENT_ADDED", "TASK_COMMENT_UPDATED",
}  # fmt: skip
TENANT = str(uuid.uuid4())  # the legacy PROJECT_CLOSED / PROJECT_ASSIGNED / TASK_COMMENT_* need a uuid tenant
OTHER = str(uuid.uuid4())
USER, PM, PM2, DEV, DEV2, TEAM, CLIENT = (str(uuid.uuid4()) for _ in range(7))


def one(emitted: list[tuple[str, uuid.UUID]], event_type: str) -> uuid.UUID:
    """The id of the single ``event_type`` event among an action's emitted events."""
    ids = [eid for et, eid in emitted if et == event_type]
    assert len(ids) == 1, (event_type, emitted)
    return ids[0]


def kinds(emitted: list[tuple[str, uuid.UUID]]) -> list[str]:
    return [et for et, _ in emitted]


def test_project_lifecycle(act, published):
    pid, ev = act(TENANT, pr.create_project, name="Office move", client_id=CLIENT, manager_id=PM,
                  start_date="2026-04-01", settings={"billing": {"mode": "fixed", "budgetHours": 40}},
                  user=USER)  # fmt: skip
    assert kinds(ev) == ["PROJECT_CREATED", "PROJECT_ASSIGNED"]
    got = published.expect_once("PROJECT_CREATED", one(ev, "PROJECT_CREATED"))
    assert (got["payload"]["projectId"], got["payload"]["createdByUserId"]) == (pid, USER)
    assert got["entry"]["to_state"] == "planned" and got["entry"]["user_id"] == USER
    p = published.expect_once("PROJECT_ASSIGNED", one(ev, "PROJECT_ASSIGNED"))["payload"]
    assert (p["projectId"], p["userId"], p["assignedTo"]) == (pid, USER, PM)

    _, ev = act(TENANT, pr.update_project, pid, name="Office move 2026", end_date="2026-06-30",
                settings={"billing": {"mode": "fixed", "budgetHours": 60}}, user=USER)  # fmt: skip
    p = published.expect_once("PROJECT_UPDATED", one(ev, "PROJECT_UPDATED"))["payload"]
    assert p["projectId"] == pid and p["actorUserId"] == USER
    assert p["updatedFields"] == ["end_date", "name", "settings.billing.budgetHours"]
    assert p["changes"] == {
        "end_date": {"new": "2026-06-30"},
        "name": {"previous": "Office move", "new": "Office move 2026"},
        "settings.billing.budgetHours": {"previous": 40, "new": 60},
    }
    _, ev = act(TENANT, pr.update_project, pid, name="Office move 2026", user=USER)
    assert ev == []  # nothing changed, nothing to tell

    _, ev = act(TENANT, pr.assign_project, pid, PM2, user=USER)
    p = published.expect_once("PROJECT_ASSIGNED", one(ev, "PROJECT_ASSIGNED"))["payload"]
    assert (p["assignedTo"], p["changes"]) == (PM2, {"assignedTo": {"previous": PM, "new": PM2}})

    _, ev = act(TENANT, pr.change_project_status, pid, "active", user=USER)
    assert kinds(ev) == ["PROJECT_STATUS_CHANGED"]
    got = published.expect_once("PROJECT_STATUS_CHANGED", ev[0][1])
    assert (got["payload"]["previousStatus"], got["payload"]["newStatus"]) == ("planned", "active")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("planned", "active")

    _, ev = act(TENANT, pr.change_project_status, pid, "completed", user=PM2)
    assert kinds(ev) == ["PROJECT_STATUS_CHANGED", "PROJECT_CLOSED"]
    p = published.expect_once("PROJECT_STATUS_CHANGED", one(ev, "PROJECT_STATUS_CHANGED"))["payload"]
    assert (p["projectId"], p["previousStatus"], p["newStatus"]) == (pid, "active", "completed")
    p = published.expect_once("PROJECT_CLOSED", one(ev, "PROJECT_CLOSED"))["payload"]
    assert (p["projectId"], p["userId"], p["assignedTo"], p["changes"]) == (
        pid, PM2, PM2, {"status": {"is_closed": True}})  # fmt: skip
    with pytest.raises(InvalidTransition):  # a closed project takes no new tasks
        act(TENANT, pr.create_task, pid, title="late", user=USER)
    _, ev = act(TENANT, pr.change_project_status, pid, "active", user=PM2)  # reopened: no PROJECT_CLOSED
    assert kinds(ev) == ["PROJECT_STATUS_CHANGED"]


def test_tasks_assignment_dependencies_comments(act, published):
    pid, _ = act(TENANT, pr.create_project, name="Migration", user=USER)
    act(TENANT, pr.change_project_status, pid, "active", user=USER)
    design, ev = act(TENANT, pr.create_task, pid, title="Design", due_date="2026-05-01", user=USER)
    got = published.expect_once("PROJECT_TASK_CREATED", one(ev, "PROJECT_TASK_CREATED"))
    p = got["payload"]
    assert (p["taskId"], p["projectId"], p["title"], p["dueDate"], p["status"], p["createdByUserId"]) == (
        design, pid, "Design", "2026-05-01", "todo", USER)  # fmt: skip
    build, _ = act(TENANT, pr.create_task, pid, title="Build", user=USER)
    test, _ = act(TENANT, pr.create_task, pid, title="Test", user=USER)

    _, ev = act(TENANT, pr.assign_task, design, DEV, user=PM)
    p = published.expect_once("PROJECT_TASK_ASSIGNED", one(ev, "PROJECT_TASK_ASSIGNED"))["payload"]
    assert (p["taskId"], p["projectId"], p["assignedToId"], p["assignedToType"], p["assignedByUserId"]) == (
        design, pid, DEV, "user", PM)  # fmt: skip
    _, ev = act(TENANT, pr.add_task_agent, design, DEV2, user=PM)
    p = published.expect_once("PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED", ev[0][1])["payload"]
    assert (p["taskId"], p["projectId"], p["primaryAgentId"], p["additionalAgentId"], p["assignedByUserId"]) == (
        design, pid, DEV, DEV2, PM)  # fmt: skip
    act(TENANT, pr.assign_task, test, TEAM, "team", user=PM)
    with pytest.raises(InvalidTransition):  # a team-assigned task has no primary agent to help
        act(TENANT, pr.add_task_agent, test, DEV2, user=PM)

    # Build waits for Design; Test waits for Build
    _, ev = act(TENANT, pr.add_task_dependency, build, design, user=PM)
    p = published.expect_once("PROJECT_TASK_DEPENDENCY_BLOCKED", one(ev, "PROJECT_TASK_DEPENDENCY_BLOCKED"))["payload"]
    assert (p["taskId"], p["projectId"], p["blockedByTaskId"]) == (build, pid, design)
    act(TENANT, pr.add_task_dependency, test, build, user=PM)
    with pytest.raises(InvalidInput, match="cycle"):
        act(TENANT, pr.add_task_dependency, design, test, user=PM)
    with pytest.raises(InvalidTransition):  # blocked: cannot start
        act(TENANT, pr.change_task_status, build, "in_progress", user=DEV)

    _, ev = act(TENANT, pr.change_task_status, design, "in_progress", user=DEV)
    got = published.expect_once("PROJECT_TASK_STATUS_CHANGED", one(ev, "PROJECT_TASK_STATUS_CHANGED"))
    assert (got["payload"]["previousStatus"], got["payload"]["newStatus"]) == ("todo", "in_progress")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("todo", "in_progress")
    _, ev = act(TENANT, pr.complete_task, design, user=DEV)
    assert kinds(ev) == ["PROJECT_TASK_STATUS_CHANGED", "PROJECT_TASK_COMPLETED", "PROJECT_TASK_DEPENDENCY_UNBLOCKED"]
    p = published.expect_once("PROJECT_TASK_STATUS_CHANGED", one(ev, "PROJECT_TASK_STATUS_CHANGED"))["payload"]
    assert (p["previousStatus"], p["newStatus"]) == ("in_progress", "done")
    p = published.expect_once("PROJECT_TASK_COMPLETED", one(ev, "PROJECT_TASK_COMPLETED"))["payload"]
    assert (p["taskId"], p["projectId"], p["completedByUserId"]) == (design, pid, DEV)
    p = published.expect_once("PROJECT_TASK_DEPENDENCY_UNBLOCKED", one(ev, "PROJECT_TASK_DEPENDENCY_UNBLOCKED"))
    assert (p["payload"]["taskId"], p["payload"]["unblockedByTaskId"]) == (build, design)

    # reopening Design blocks Build again; dropping the link unblocks it
    _, ev = act(TENANT, pr.change_task_status, design, "review", user=PM)
    p = published.expect_once("PROJECT_TASK_DEPENDENCY_BLOCKED", one(ev, "PROJECT_TASK_DEPENDENCY_BLOCKED"))["payload"]
    assert (p["taskId"], p["blockedByTaskId"]) == (build, design)
    _, ev = act(TENANT, pr.remove_task_dependency, build, design, user=PM)
    p = published.expect_once("PROJECT_TASK_DEPENDENCY_UNBLOCKED", ev[0][1])["payload"]
    assert (p["taskId"], p["unblockedByTaskId"], p["actorUserId"]) == (build, design, PM)
    with pytest.raises(NotFound):
        act(TENANT, pr.remove_task_dependency, build, design, user=PM)
    act(TENANT, pr.change_task_status, build, "in_progress", user=DEV)

    cid, ev = act(TENANT, pr.add_task_comment, build, "Starting with the DB schema", user=DEV)
    p = published.expect_once("TASK_COMMENT_ADDED", ev[0][1])["payload"]
    assert (p["taskId"], p["projectId"], p["userId"], p["taskCommentId"], p["taskName"], p["commentContent"]) == (
        build, pid, DEV, cid, "Build", "Starting with the DB schema")  # fmt: skip
    with pytest.raises(InvalidInput, match="author"):
        act(TENANT, pr.update_task_comment, cid, "hijack", user=PM)
    _, ev = act(TENANT, pr.update_task_comment, cid, "Starting with the DB schema and API", user=DEV)
    p = published.expect_once("TASK_COMMENT_UPDATED", ev[0][1])["payload"]
    assert (p["taskCommentId"], p["oldCommentContent"], p["newCommentContent"], p["isUpdate"], p["userId"]) == (
        cid, "Starting with the DB schema", "Starting with the DB schema and API", True, DEV)  # fmt: skip


def test_bad_input_emits_nothing(act, published, db_url):
    pid, _ = act(TENANT, pr.create_project, name="P", user=USER)
    tid, _ = act(TENANT, pr.create_task, pid, title="T", user=USER)
    other_pid, _ = act(TENANT, pr.create_project, name="Q", user=USER)
    other_tid, _ = act(TENANT, pr.create_task, other_pid, title="U", user=USER)
    bad = [
        (NotFound, TENANT, pr.change_project_status, (str(uuid.uuid4()), "active")),
        (NotFound, TENANT, pr.assign_task, ("not-an-id", DEV)),
        (WrongTenant, OTHER, pr.change_task_status, (tid, "in_progress")),
        (WrongTenant, OTHER, pr.update_project, (pid,)),
        (InvalidTransition, TENANT, pr.change_project_status, (pid, "completed")),  # planned cannot complete
        (InvalidTransition, TENANT, pr.change_task_status, (tid, "todo")),
        (InvalidInput, TENANT, pr.change_task_status, (tid, "finished")),
        (InvalidInput, TENANT, pr.add_task_dependency, (tid, other_tid)),  # other project
        (InvalidInput, TENANT, pr.add_task_dependency, (tid, tid)),
        (InvalidInput, TENANT, pr.create_task, (pid,)),
    ]
    for err, tenant, fn, args in bad:
        kw = {"name": "x"} if fn is pr.update_project else ({"title": " "} if fn is pr.create_task else {})
        with pytest.raises(err):
            act(tenant, fn, *args, **kw, user=USER)
    with pytest.raises(InvalidInput, match="acting user"):  # PROJECT_CLOSED carries userId
        act(TENANT, pr.change_project_status, pid, "cancelled")
    with pytest.raises(InvalidInput, match="uuid"):
        act("acme", pr.create_project, name="x", manager_id=PM, user=USER)
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM outbox_events").fetchone()
        assert row is not None and row[0] == 4  # the two projects and two tasks created above
