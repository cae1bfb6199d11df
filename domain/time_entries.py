"""Time entries: log work on a ticket or project task, submit for approval, approve (reference actions).

Lifecycle: ``draft`` --submit--> ``submitted`` --approve--> ``approved``. TIME_ENTRY_SUBMITTED/APPROVED are legacy
bus types (UUID tenant; ``userId`` is the acting user: the submitter, then the approver). Work items are tickets
(``TICKET``) and project tasks (``PROJECT_TASK``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, Text, Uuid

from domain import projects, tickets
from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    emit,
    emits,
    fetch,
    iso,
    legacy_tenant,
    metadata,
    new_id,
    now,
)

time_entries = Table(
    "ref_time_entries",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("user_id", Uuid, nullable=False),
    Column("work_item_type", String, nullable=False),
    Column("work_item_id", Uuid, nullable=False, index=True),
    Column("minutes", Integer, nullable=False),
    Column("billable", Boolean, nullable=False),
    Column("notes", Text),
    Column("status", String, nullable=False),  # draft | submitted | approved
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("submitted_at", DateTime(timezone=True)),
    Column("approved_at", DateTime(timezone=True)),
    Column("approved_by", Uuid),
)

# work item type (as the legacy payloads name it) -> (table, kind shown in errors)
WORK_ITEMS: dict[str, tuple[Table, str]] = {
    "TICKET": (tickets.tickets, "ticket"),
    "PROJECT_TASK": (projects.tasks, "project task"),
}


def _user(ctx: Ctx, what: str) -> str:
    if not ctx.user_id:
        raise InvalidInput(f"{what} needs an acting user")
    return ctx.user_id


@emits("TICKET_TIME_ENTRY_ADDED")
def add_time_entry(
    ctx: Ctx,
    work_item_type: str,
    work_item_id: str,
    *,
    minutes: int,
    billable: bool = True,
    notes: str | None = None,
) -> str:
    """Log the acting user's minutes on a work item as a draft; emits TICKET_TIME_ENTRY_ADDED for tickets."""
    if work_item_type not in WORK_ITEMS:
        raise InvalidInput(f"work_item_type must be one of {sorted(WORK_ITEMS)}, got {work_item_type!r}")
    table, kind = WORK_ITEMS[work_item_type]
    item = fetch(ctx, table, kind, work_item_id, for_update=False)
    user = _user(ctx, "logging time")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 < minutes <= 24 * 60:
        raise InvalidInput(f"minutes must be an integer in 1..1440, got {minutes!r}")
    if not isinstance(billable, bool):
        raise InvalidInput(f"billable must be a boolean, got {billable!r}")
    eid, at = new_id(), now()
    ctx.conn.execute(
        time_entries.insert().values(
            id=eid, tenant_id=ctx.tenant_id, user_id=user, work_item_type=work_item_type, work_item_id=item["id"],
            minutes=minutes, billable=billable, notes=notes, status="draft", created_at=at,
        )
    )  # fmt: skip
    if work_item_type == "TICKET":
        tid = str(item["id"])
        emit(ctx, "TICKET_TIME_ENTRY_ADDED",
             {"ticketId": tid, "timeEntryId": eid, "minutes": minutes, "billable": billable, "createdAt": iso(at)},
             aggregate=f"ticket:{tid}")  # fmt: skip
    return eid


def _entry_payload(e: dict[str, Any]) -> dict[str, Any]:
    return {"timeEntryId": str(e["id"]), "workItemId": str(e["work_item_id"]), "workItemType": e["work_item_type"],
            "minutes": e["minutes"], "billable": e["billable"], "ownerUserId": str(e["user_id"])}  # fmt: skip


@emits("TIME_ENTRY_SUBMITTED")
def submit_time_entry(ctx: Ctx, time_entry_id: str) -> None:
    """The owner submits a draft entry for approval; emits the legacy TIME_ENTRY_SUBMITTED (userId: submitter)."""
    e = fetch(ctx, time_entries, "time entry", time_entry_id)
    user = _user(ctx, "submitting time")
    if str(e["user_id"]) != user.lower():
        raise InvalidInput("only the owner of a time entry can submit it")
    if e["status"] != "draft":
        raise InvalidTransition("time entry", e["status"], "submitted")
    legacy_tenant(ctx)
    at = now()
    ctx.conn.execute(
        time_entries.update().where(time_entries.c.id == e["id"]).values(status="submitted", submitted_at=at)
    )
    emit(ctx, "TIME_ENTRY_SUBMITTED", {**_entry_payload(e), "submittedAt": iso(at)},
         aggregate=f"time_entry:{e['id']}", from_state="draft", to_state="submitted")  # fmt: skip


@emits("TIME_ENTRY_APPROVED")
def approve_time_entry(ctx: Ctx, time_entry_id: str) -> None:
    """Approve a submitted entry; emits the legacy TIME_ENTRY_APPROVED (userId: approver, ownerUserId: owner)."""
    e = fetch(ctx, time_entries, "time entry", time_entry_id)
    user = _user(ctx, "approving time")
    if e["status"] != "submitted":
        raise InvalidTransition("time entry", e["status"], "approved")
    legacy_tenant(ctx)
    at = now()
    ctx.conn.execute(
        time_entries.update()
        .where(time_entries.c.id == e["id"])
        .values(status="approved", approved_at=at, approved_by=user)
    )
    emit(ctx, "TIME_ENTRY_APPROVED", {**_entry_payload(e), "approvedAt": iso(at)},
         aggregate=f"time_entry:{e['id']}", from_state="submitted", to_state="approved")  # fmt: skip
