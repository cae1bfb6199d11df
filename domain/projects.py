"""Projects: lifecycle, tasks, assignment, additional agents, dependencies, task comments (reference actions).

Project approvals (PROJECT_APPROVAL_REQUESTED/GRANTED/REJECTED) are catalog-only: no action performs them.
Closing a project (moving it to a closed status) also emits the legacy PROJECT_CLOSED; setting its manager emits
the legacy PROJECT_ASSIGNED. Legacy bus payloads need a uuid tenant and the acting ``userId``: actions that emit
one refuse a non-uuid tenant or a missing user with ``InvalidInput`` before changing anything.

Dependencies: "task B is blocked by task A". A link blocks while A is not done: adding such a link emits
PROJECT_TASK_DEPENDENCY_BLOCKED; completing A (or removing the link) emits PROJECT_TASK_DEPENDENCY_UNBLOCKED for
each dependent not yet done; reopening A blocks them again. A blocked task cannot start or finish.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    func,
    select,
)

from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    NotFound,
    diff,
    emit,
    emits,
    fetch,
    iso,
    legacy_user,
    metadata,
    new_id,
    opt_str,
    opt_uuid_arg,
    uuid_arg,
)

projects = Table(
    "ref_projects",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("client_id", Uuid),
    Column("manager_id", Uuid),
    Column("status", String, nullable=False),
    Column("start_date", Date),
    Column("end_date", Date),
    Column("settings", JSON, nullable=False, default=dict),
    Column("closed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

tasks = Table(
    "ref_project_tasks",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("due_date", Date),
    Column("assignee_id", Uuid),
    Column("assignee_type", String),
    Column("completed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

task_agents = Table(
    "ref_project_task_agents",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("task_id", Uuid, nullable=False),
    Column("user_id", Uuid, nullable=False),
    PrimaryKeyConstraint("task_id", "user_id"),
)

dependencies = Table(
    "ref_project_task_dependencies",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("task_id", Uuid, nullable=False),  # the dependent task ...
    Column("blocked_by_task_id", Uuid, nullable=False, index=True),  # ... waits for this one
    PrimaryKeyConstraint("task_id", "blocked_by_task_id"),
)

comments = Table(
    "ref_project_task_comments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("task_id", Uuid, nullable=False, index=True),
    Column("author_id", Uuid, nullable=False),
    Column("content", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

CLOSED_STATUSES = ("completed", "cancelled")
PROJECT_NEXT = {
    "planned": ("active", "on_hold", "cancelled"),
    "active": ("on_hold", "completed", "cancelled"),
    "on_hold": ("active", "cancelled"),
    "completed": ("active",),  # reopen
    "cancelled": (),
}
TASK_STATUSES = ("todo", "in_progress", "review", "done")
ASSIGNEE_TYPES = ("user", "team")
UPDATABLE = ("name", "description", "client_id", "start_date", "end_date", "settings")


# ---- helpers -------------------------------------------------------------------------------------------


def _day(name: str, value: date | str | None) -> date | None:
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a date (YYYY-MM-DD), got {value!r}")


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``diff`` with unset sides left out (the contracts' ``previous``/``new`` may be absent, not null)."""
    fields, changes = diff(before, after)
    return fields, {path: {k: v for k, v in c.items() if v is not None} for path, c in changes.items()}


def _shown(key: str, value: Any) -> Any:
    """A project column's value as events show it (uuids and dates as strings)."""
    if isinstance(value, date):
        return value.isoformat()
    return opt_str(value) if key == "client_id" else value


def _open_project(ctx: Ctx, project_id: Any, wanted: str) -> dict[str, Any]:
    p = fetch(ctx, projects, "project", project_id)
    if p["status"] in CLOSED_STATUSES:
        raise InvalidTransition("project", p["status"], wanted)
    return p


def _task(ctx: Ctx, task_id: str, wanted: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task (locked) and its project, which must be open."""
    t = fetch(ctx, tasks, "project task", task_id)
    return t, _open_project(ctx, t["project_id"], wanted)


def _blockers(ctx: Ctx, task_id: Any) -> list[str]:
    """Ids of the unfinished tasks ``task_id`` waits for."""
    d, t = dependencies.c, tasks.c
    rows = ctx.conn.execute(
        select(t.id).join(dependencies, d.blocked_by_task_id == t.id).where(d.task_id == task_id, t.status != "done")
    )
    return [str(r[0]) for r in rows]


def _dependents(ctx: Ctx, task_id: Any) -> list[str]:
    """Ids of the unfinished tasks that wait for ``task_id``."""
    d, t = dependencies.c, tasks.c
    rows = ctx.conn.execute(
        select(t.id)
        .join(dependencies, d.task_id == t.id)
        .where(d.blocked_by_task_id == task_id, t.status != "done")
        .order_by(t.id)
    )
    return [str(r[0]) for r in rows]


def _blocked(ctx: Ctx, project_id: Any, task_id: str, blocker_id: str) -> None:
    emit(ctx, "PROJECT_TASK_DEPENDENCY_BLOCKED",
         {"taskId": task_id, "projectId": str(project_id), "blockedByTaskId": blocker_id, "blockedAt": iso()},
         aggregate=f"project:{project_id}")  # fmt: skip


def _unblocked(ctx: Ctx, project_id: Any, task_id: str, blocker_id: str) -> None:
    emit(ctx, "PROJECT_TASK_DEPENDENCY_UNBLOCKED",
         {"taskId": task_id, "projectId": str(project_id), "unblockedByTaskId": blocker_id, "unblockedAt": iso()},
         aggregate=f"project:{project_id}")  # fmt: skip


# ---- projects -------------------------------------------------------------------------------------------


@emits("PROJECT_CREATED", "PROJECT_ASSIGNED")
def create_project(
    ctx: Ctx,
    *,
    name: str,
    client_id: str | None = None,
    manager_id: str | None = None,
    description: str | None = None,
    start_date: date | str | None = None,
    end_date: date | str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """Create a planned project; emits PROJECT_CREATED (and the legacy PROJECT_ASSIGNED when it has a manager)."""
    if not name.strip():
        raise InvalidInput("name must not be empty")
    start, end = _day("start_date", start_date), _day("end_date", end_date)
    if start and end and end < start:
        raise InvalidInput("end_date must not be before start_date")
    manager = opt_uuid_arg("manager_id", manager_id)
    if manager:
        legacy_user(ctx, "creating a project with a manager")
    pid = new_id()
    ctx.conn.execute(
        projects.insert().values(
            id=pid, tenant_id=ctx.tenant_id, name=name, description=description, status="planned",
            client_id=opt_uuid_arg("client_id", client_id), manager_id=manager, start_date=start,
            end_date=end, settings=dict(settings or {}),
        )
    )  # fmt: skip
    emit(ctx, "PROJECT_CREATED", {"projectId": pid, "createdByUserId": ctx.user_id, "createdAt": iso()},
         aggregate=f"project:{pid}", to_state="planned")  # fmt: skip
    if manager:
        emit(ctx, "PROJECT_ASSIGNED",
             {"projectId": pid, "userId": ctx.user_id, "assignedTo": manager,
              "changes": {"assignedTo": {"new": manager}}},
             aggregate=f"project:{pid}")  # fmt: skip
    return pid


@emits("PROJECT_UPDATED")
def update_project(ctx: Ctx, project_id: str, **fields: Any) -> None:
    """Edit name/description/client/dates/settings; emits PROJECT_UPDATED with updatedFields/changes (dot paths)."""
    if not fields or set(fields) - set(UPDATABLE):
        raise InvalidInput(f"can update only {list(UPDATABLE)}")
    p = _open_project(ctx, project_id, "updated")
    new = dict(fields)
    if "name" in new and not str(new["name"]).strip():
        raise InvalidInput("name must not be empty")
    for k in ("start_date", "end_date"):
        if k in new:
            new[k] = _day(k, new[k])
    if "client_id" in new and new["client_id"] is not None:
        new["client_id"] = uuid.UUID(uuid_arg("client_id", new["client_id"]))
    if "settings" in new and not isinstance(new["settings"], Mapping):
        raise InvalidInput("settings must be a mapping")
    start, end = new.get("start_date", p["start_date"]), new.get("end_date", p["end_date"])
    if start and end and end < start:
        raise InvalidInput("end_date must not be before start_date")
    before = {k: _shown(k, p[k]) for k in new}
    updated, changes = _diff(before, {k: _shown(k, v) for k, v in new.items()})
    if not updated:
        return
    ctx.conn.execute(projects.update().where(projects.c.id == p["id"]).values(**new, updated_at=func.now()))
    emit(ctx, "PROJECT_UPDATED",
         {"projectId": str(p["id"]), "updatedAt": iso(), "updatedFields": updated, "changes": changes},
         aggregate=f"project:{p['id']}")  # fmt: skip


@emits("PROJECT_ASSIGNED")
def assign_project(ctx: Ctx, project_id: str, manager_id: str) -> None:
    """Make a user the project's manager; emits the legacy PROJECT_ASSIGNED (userId: who did it)."""
    user = legacy_user(ctx, "assigning a project")
    manager = uuid_arg("manager_id", manager_id)
    p = _open_project(ctx, project_id, "assigned")
    old = opt_str(p["manager_id"])
    if old == manager:
        raise InvalidInput(f"project is already managed by {manager}")
    ctx.conn.execute(
        projects.update().where(projects.c.id == p["id"]).values(manager_id=manager, updated_at=func.now())
    )
    _, changes = _diff({"assignedTo": old}, {"assignedTo": manager})
    emit(ctx, "PROJECT_ASSIGNED", {"projectId": str(p["id"]), "userId": user, "assignedTo": manager,
                                   "changes": changes}, aggregate=f"project:{p['id']}")  # fmt: skip


@emits("PROJECT_STATUS_CHANGED", "PROJECT_CLOSED")
def change_project_status(ctx: Ctx, project_id: str, new_status: str) -> None:
    """Move a project along its lifecycle; emits PROJECT_STATUS_CHANGED (and the legacy PROJECT_CLOSED on closing)."""
    if new_status not in PROJECT_NEXT:
        raise InvalidInput(f"unknown project status {new_status!r}")
    p = fetch(ctx, projects, "project", project_id)
    old = p["status"]
    if new_status not in PROJECT_NEXT[old]:
        raise InvalidTransition("project", old, new_status)
    closing = new_status in CLOSED_STATUSES
    user = legacy_user(ctx, "closing a project") if closing else None
    ctx.conn.execute(
        projects.update()
        .where(projects.c.id == p["id"])
        .values(status=new_status, closed_at=func.now() if closing else None, updated_at=func.now())
    )
    pid = str(p["id"])
    emit(ctx, "PROJECT_STATUS_CHANGED",
         {"projectId": pid, "previousStatus": old, "newStatus": new_status, "changedAt": iso()},
         aggregate=f"project:{pid}", from_state=old, to_state=new_status)  # fmt: skip
    if closing:
        emit(ctx, "PROJECT_CLOSED",
             {"projectId": pid, "userId": user, "changes": {"status": {"is_closed": True}},
              "assignedTo": opt_str(p["manager_id"])},
             aggregate=f"project:{pid}", from_state=old, to_state=new_status)  # fmt: skip


# ---- tasks ----------------------------------------------------------------------------------------------


@emits("PROJECT_TASK_CREATED")
def create_task(ctx: Ctx, project_id: str, *, title: str, due_date: date | str | None = None) -> str:
    """Add a to-do task to an open project; emits PROJECT_TASK_CREATED."""
    if not title.strip():
        raise InvalidInput("title must not be empty")
    due = _day("due_date", due_date)
    p = _open_project(ctx, project_id, "task created")
    tid = new_id()
    ctx.conn.execute(tasks.insert().values(id=tid, tenant_id=ctx.tenant_id, project_id=p["id"], title=title,
                                           status="todo", due_date=due))  # fmt: skip
    emit(ctx, "PROJECT_TASK_CREATED",
         {"taskId": tid, "projectId": str(p["id"]), "createdByUserId": ctx.user_id, "createdAt": iso(),
          "title": title, "dueDate": due.isoformat() if due else None, "status": "todo"},
         aggregate=f"project:{p['id']}", to_state="todo")  # fmt: skip
    return tid


@emits("PROJECT_TASK_ASSIGNED")
def assign_task(ctx: Ctx, task_id: str, assignee_id: str, assignee_type: str = "user") -> None:
    """Give a task to a user or team (its primary assignee); emits PROJECT_TASK_ASSIGNED."""
    if assignee_type not in ASSIGNEE_TYPES:
        raise InvalidInput(f"assignee_type must be one of {ASSIGNEE_TYPES}, got {assignee_type!r}")
    who = uuid_arg("assignee_id", assignee_id)
    t, p = _task(ctx, task_id, "task assigned")
    if (opt_str(t["assignee_id"]), t["assignee_type"]) == (who, assignee_type):
        raise InvalidInput(f"task is already assigned to {assignee_type} {who}")
    ctx.conn.execute(tasks.update().where(tasks.c.id == t["id"])
                     .values(assignee_id=who, assignee_type=assignee_type, updated_at=func.now()))  # fmt: skip
    emit(ctx, "PROJECT_TASK_ASSIGNED",
         {"taskId": str(t["id"]), "projectId": str(p["id"]), "assignedToId": who, "assignedToType": assignee_type,
          "assignedByUserId": ctx.user_id, "assignedAt": iso()},
         aggregate=f"project:{p['id']}")  # fmt: skip


@emits("PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED")
def add_task_agent(ctx: Ctx, task_id: str, user_id: str) -> None:
    """Add a helping agent to a task that has a user assignee; emits PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED."""
    by = legacy_user(ctx, "adding an agent to a task")
    agent = uuid_arg("user_id", user_id)
    t, p = _task(ctx, task_id, "agent added")
    if t["assignee_type"] != "user":
        raise InvalidTransition("project task", "without a user assignee", "additional agent")
    if agent == str(t["assignee_id"]):
        raise InvalidInput(f"{agent} is already the task's assignee")
    a = task_agents.c
    if ctx.conn.execute(select(a.user_id).where(a.task_id == t["id"], a.user_id == uuid.UUID(agent))).first():
        raise InvalidInput(f"{agent} already works on this task")
    ctx.conn.execute(task_agents.insert().values(tenant_id=ctx.tenant_id, task_id=t["id"], user_id=agent))
    emit(ctx, "PROJECT_TASK_ADDITIONAL_AGENT_ASSIGNED",
         {"projectId": str(p["id"]), "taskId": str(t["id"]), "primaryAgentId": str(t["assignee_id"]),
          "additionalAgentId": agent, "assignedByUserId": by},
         aggregate=f"project:{p['id']}")  # fmt: skip


@emits(
    "PROJECT_TASK_STATUS_CHANGED",
    "PROJECT_TASK_COMPLETED",
    "PROJECT_TASK_DEPENDENCY_UNBLOCKED",
    "PROJECT_TASK_DEPENDENCY_BLOCKED",
)
def change_task_status(ctx: Ctx, task_id: str, new_status: str) -> None:
    """Move a task to another status; emits PROJECT_TASK_STATUS_CHANGED, plus PROJECT_TASK_COMPLETED and
    PROJECT_TASK_DEPENDENCY_UNBLOCKED for its waiting dependents when it is done (BLOCKED again on reopening)."""
    if new_status not in TASK_STATUSES:
        raise InvalidInput(f"unknown task status {new_status!r}")
    t, p = _task(ctx, task_id, new_status)
    old = t["status"]
    if new_status == old:
        raise InvalidTransition("project task", old, new_status)
    if new_status != "todo" and _blockers(ctx, t["id"]):
        raise InvalidTransition("project task", f"{old} (blocked)", new_status)
    done = new_status == "done"
    ctx.conn.execute(tasks.update().where(tasks.c.id == t["id"])
                     .values(status=new_status, completed_at=func.now() if done else None,
                             updated_at=func.now()))  # fmt: skip
    tid, pid = str(t["id"]), str(p["id"])
    emit(ctx, "PROJECT_TASK_STATUS_CHANGED",
         {"taskId": tid, "projectId": pid, "previousStatus": old, "newStatus": new_status, "changedAt": iso()},
         aggregate=f"project:{pid}", from_state=old, to_state=new_status)  # fmt: skip
    if done:
        emit(ctx, "PROJECT_TASK_COMPLETED",
             {"taskId": tid, "projectId": pid, "completedByUserId": ctx.user_id, "completedAt": iso()},
             aggregate=f"project:{pid}", from_state=old, to_state="done")  # fmt: skip
        for dependent in _dependents(ctx, t["id"]):
            _unblocked(ctx, pid, dependent, tid)
    elif old == "done":
        for dependent in _dependents(ctx, t["id"]):
            _blocked(ctx, pid, dependent, tid)


@emits("PROJECT_TASK_STATUS_CHANGED", "PROJECT_TASK_COMPLETED", "PROJECT_TASK_DEPENDENCY_UNBLOCKED")
def complete_task(ctx: Ctx, task_id: str) -> None:
    """Finish a task (``change_task_status`` to done)."""
    change_task_status(ctx, task_id, "done")


def _waits_for(ctx: Ctx, start: Any, target: Any) -> bool:
    """Whether ``start`` (transitively) waits for ``target``."""
    seen, todo = set(), [start]
    d = dependencies.c
    while todo:
        cur = todo.pop()
        if cur == target:
            return True
        if cur in seen:
            continue
        seen.add(cur)
        todo += [r[0] for r in ctx.conn.execute(select(d.blocked_by_task_id).where(d.task_id == cur))]
    return False


@emits("PROJECT_TASK_DEPENDENCY_BLOCKED")
def add_task_dependency(ctx: Ctx, task_id: str, blocked_by_task_id: str) -> None:
    """Make a task wait for another of its project; emits PROJECT_TASK_DEPENDENCY_BLOCKED while that one is not done."""
    t, p = _task(ctx, task_id, "dependency added")
    b = fetch(ctx, tasks, "project task", blocked_by_task_id)
    if b["project_id"] != t["project_id"]:
        raise InvalidInput("a task can only wait for a task of the same project")
    if b["id"] == t["id"] or _waits_for(ctx, b["id"], t["id"]):
        raise InvalidInput("that dependency would make a cycle")
    d = dependencies.c
    if ctx.conn.execute(select(d.task_id).where(d.task_id == t["id"], d.blocked_by_task_id == b["id"])).first():
        raise InvalidInput("the task already waits for that task")
    ctx.conn.execute(dependencies.insert().values(tenant_id=ctx.tenant_id, task_id=t["id"], blocked_by_task_id=b["id"]))
    if b["status"] != "done" and t["status"] != "done":
        _blocked(ctx, p["id"], str(t["id"]), str(b["id"]))


@emits("PROJECT_TASK_DEPENDENCY_UNBLOCKED")
def remove_task_dependency(ctx: Ctx, task_id: str, blocked_by_task_id: str) -> None:
    """Drop a dependency link; emits PROJECT_TASK_DEPENDENCY_UNBLOCKED if it was blocking the task."""
    t, p = _task(ctx, task_id, "dependency removed")
    b = fetch(ctx, tasks, "project task", blocked_by_task_id)
    d = dependencies.c
    gone = ctx.conn.execute(
        dependencies.delete().where(d.task_id == t["id"], d.blocked_by_task_id == b["id"]).returning(d.task_id)
    ).first()
    if gone is None:
        raise NotFound("task dependency", f"{task_id} -> {blocked_by_task_id}")
    if b["status"] != "done" and t["status"] != "done":
        _unblocked(ctx, p["id"], str(t["id"]), str(b["id"]))


# ---- task comments (legacy bus events) -----------------------------------------------------------------


@emits("TASK_COMMENT_ADDED")
def add_task_comment(ctx: Ctx, task_id: str, content: str) -> str:
    """Comment on a task; emits the legacy TASK_COMMENT_ADDED (userId: the author)."""
    user = legacy_user(ctx, "commenting on a task")
    if not content.strip():
        raise InvalidInput("a comment must not be empty")
    t = fetch(ctx, tasks, "project task", task_id, for_update=False)
    cid = new_id()
    ctx.conn.execute(comments.insert().values(id=cid, tenant_id=ctx.tenant_id, task_id=t["id"], author_id=user,
                                              content=content))  # fmt: skip
    emit(ctx, "TASK_COMMENT_ADDED",
         {"taskId": str(t["id"]), "projectId": str(t["project_id"]), "userId": user, "taskCommentId": cid,
          "taskName": t["title"], "commentContent": content, "isUpdate": False},
         aggregate=f"project:{t['project_id']}")  # fmt: skip
    return cid


@emits("TASK_COMMENT_UPDATED")
def update_task_comment(ctx: Ctx, comment_id: str, content: str) -> None:
    """The author edits a task comment; emits the legacy TASK_COMMENT_UPDATED with old and new content."""
    user = legacy_user(ctx, "editing a task comment")
    if not content.strip():
        raise InvalidInput("a comment must not be empty")
    c = fetch(ctx, comments, "task comment", comment_id)
    if str(c["author_id"]) != user:
        raise InvalidInput("only the author may edit a comment")
    if c["content"] == content:
        raise InvalidInput("the comment already says that")
    t = fetch(ctx, tasks, "project task", c["task_id"], for_update=False)
    ctx.conn.execute(comments.update().where(comments.c.id == c["id"]).values(content=content, updated_at=func.now()))
    emit(ctx, "TASK_COMMENT_UPDATED",
         {"taskId": str(t["id"]), "projectId": str(t["project_id"]), "userId": user, "taskCommentId": str(c["id"]),
          "taskName": t["title"], "oldCommentContent": c["content"], "newCommentContent": content, "isUpdate": True},
         aggregate=f"project:{t['project_id']}")  # fmt: skip
