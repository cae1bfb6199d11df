"""Tickets: create, status, priority, assignment (reference actions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, String, Table, Text, Uuid, func

from domain.base import Ctx, InvalidInput, InvalidTransition, diff, emit, emits, fetch, iso, metadata, new_id

tickets = Table(
    "ref_tickets",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("number", String, nullable=False),
    Column("title", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("priority", String, nullable=False),
    Column("assignee_id", Uuid),
    Column("closed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

OPEN_STATUSES = ("new", "open", "waiting")
STATUSES = (*OPEN_STATUSES, "resolved", "closed")


@emits("TICKET_CREATED")
def create_ticket(ctx: Ctx, *, title: str, priority: str = "p3", client_id: str | None = None) -> str:
    """Create a ticket; emits TICKET_CREATED."""
    if not title.strip():
        raise InvalidInput("title must not be empty")
    tid = new_id()
    number = f"T-{abs(hash(tid)) % 100000:05d}"
    ctx.conn.execute(
        tickets.insert().values(
            id=tid, tenant_id=ctx.tenant_id, number=number, title=title, status="new", priority=priority
        )
    )
    emit(ctx, "TICKET_CREATED", {"ticketId": tid, "createdByUserId": ctx.user_id, "createdAt": iso(),
                                 "ticketNumber": number, "title": title, "priority": priority, "status": "new",
                                 "clientId": client_id}, aggregate=f"ticket:{tid}")  # fmt: skip
    return tid


@emits("TICKET_STATUS_CHANGED")
def change_status(ctx: Ctx, ticket_id: str, new_status: str, *, reason: str | None = None) -> None:
    """Move a ticket to another status; emits TICKET_STATUS_CHANGED."""
    t = fetch(ctx, tickets, "ticket", ticket_id)
    if new_status not in STATUSES:
        raise InvalidInput(f"unknown status {new_status!r}")
    if new_status == t["status"] or t["status"] == "closed":
        raise InvalidTransition("ticket", t["status"], new_status)
    ctx.conn.execute(tickets.update().where(tickets.c.id == t["id"]).values(status=new_status, updated_at=func.now()))
    emit(ctx, "TICKET_STATUS_CHANGED",
         {"ticketId": ticket_id, "previousStatusId": t["status"], "newStatusId": new_status, "reason": reason,
          "changedAt": iso()},
         aggregate=f"ticket:{ticket_id}", from_state=t["status"], to_state=new_status)  # fmt: skip


@emits("TICKET_UPDATED")
def update_ticket(ctx: Ctx, ticket_id: str, **fields: Any) -> None:
    """Change title/priority; emits TICKET_UPDATED with updatedFields/changes (dot paths)."""
    t = fetch(ctx, tickets, "ticket", ticket_id)
    allowed = {"title", "priority"}
    if not fields or set(fields) - allowed:
        raise InvalidInput(f"can update only {sorted(allowed)}")
    before = {k: t[k] for k in fields}
    updated, changes = diff(before, fields)
    if not updated:
        return
    ctx.conn.execute(tickets.update().where(tickets.c.id == t["id"]).values(**fields, updated_at=func.now()))
    emit(ctx, "TICKET_UPDATED", {"ticketId": ticket_id, "updatedFields": updated, "changes": changes},
         aggregate=f"ticket:{ticket_id}")  # fmt: skip
