"""Tickets: lifecycle, assignment, bundles, tags, boards, messages, response state, SLA stages (reference actions).

Rules worth knowing:

- Statuses ``new``/``open``/``waiting`` are open, ``resolved``/``closed`` are closed. Moving from an open to a
  closed status is a close (TICKET_CLOSED, response state cleared, running SLA stages settled); moving from a
  closed to an open status is a reopen (TICKET_REOPENED). Every move emits TICKET_STATUS_CHANGED.
- A message by a user is an agent message (public or internal note); a message by a contact is a customer
  reply. Each emits TICKET_MESSAGE_ADDED, its specific v2 type, and the legacy TICKET_COMMENT_ADDED that the
  catalog keeps beside them (``superseded_by``). Legacy bus types need a UUID tenant and a ``userId``: for a
  contact's reply the legacy ``userId`` carries the contact id (``comment.authorType`` says ``client``).
- ``add_message`` emits TICKET_MESSAGE_ADDED; then TICKET_INTERNAL_NOTE_ADDED (note) or TICKET_CUSTOMER_REPLIED
  (contact); then TICKET_COMMENT_ADDED; then TICKET_RESPONSE_STATE_CHANGED when who the ticket waits on flips
  (public agent reply: ``awaiting_client``, customer reply: ``awaiting_internal``; closing clears it); then, for
  an agent's first public reply, TICKET_SLA_STAGE_MET (before target) or _BREACHED for the response stage.
- SLA: a policy's response/resolution stages are entered at create (``sla_policy_id``) or by
  ``apply_sla_policy``; closing settles every running stage (met or breached); ``check_sla_breaches`` (a
  scheduler sweep) breaches running stages past their target, with ``overdueBySeconds``.
- Changes carry ``updatedFields``/``changes`` (dot paths); a side that was or is unset is omitted, since the
  contracts reject explicit nulls. Re-applying the current value (assignee, board, tags, text) is a no-op.
- Bundles: merging attaches a ticket (not itself a master, not already bundled) to a master that is not a
  child; splitting detaches children from their master.
- Time logged on a ticket is recorded by ``domain.time_entries.add_time_entry`` (TICKET_TIME_ENTRY_ADDED).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Integer,
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
    diff,
    emit,
    emits,
    fetch,
    iso,
    legacy_tenant,
    metadata,
    new_id,
    now,
    opt_str,
    update_row,
    uuid_arg,
    when_arg,
)

boards = Table(
    "ref_ticket_boards",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("tier", Integer, nullable=False),
)

sla_policies = Table(
    "ref_sla_policies",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("response_minutes", Integer),
    Column("resolution_minutes", Integer),
)

tickets = Table(
    "ref_tickets",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("number", String, nullable=False),
    Column("title", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("priority", String, nullable=False),
    Column("client_id", Uuid),
    Column("contact_id", Uuid),
    Column("board_id", Uuid, ForeignKey("ref_ticket_boards.id")),
    Column("assignee_id", Uuid),
    Column("assignee_type", String),
    Column("response_state", String),
    Column("master_ticket_id", Uuid, ForeignKey("ref_tickets.id"), index=True),
    Column("attributes", JSON, nullable=False),
    Column("created_by", Uuid),
    Column("closed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

ticket_tags = Table(
    "ref_ticket_tags",
    metadata,
    Column("ticket_id", Uuid, ForeignKey("ref_tickets.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False),
)

ticket_agents = Table(
    "ref_ticket_agents",
    metadata,
    Column("ticket_id", Uuid, ForeignKey("ref_tickets.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("added_by", Uuid, nullable=False),
)

messages = Table(
    "ref_ticket_messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("ticket_id", Uuid, ForeignKey("ref_tickets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("content", Text, nullable=False),
    Column("visibility", String, nullable=False),
    Column("author_id", Uuid, nullable=False),
    Column("author_type", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("attachments_count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

sla_stages = Table(
    "ref_ticket_sla_stages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("ticket_id", Uuid, ForeignKey("ref_tickets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("policy_id", Uuid, ForeignKey("ref_sla_policies.id"), nullable=False),
    Column("stage", String, nullable=False),
    Column("status", String, nullable=False),  # active | met | breached
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("target_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)

OPEN_STATUSES = ("new", "open", "waiting")
CLOSED_STATUSES = ("resolved", "closed")
STATUSES = (*OPEN_STATUSES, *CLOSED_STATUSES)
PRIORITIES = ("p1", "p2", "p3", "p4")
ASSIGNEE_TYPES = ("user", "team")
CHANNELS = ("email", "portal", "ui", "api")
RESPONSE_STATES = ("awaiting_client", "awaiting_internal")
UPDATABLE = ("title", "priority", "attributes")


# ---- helpers -----------------------------------------------------------------------------------------


def _uuids(name: str, values: Iterable[Any]) -> list[str]:
    if isinstance(values, str | bytes):
        raise InvalidInput(f"{name} must be a list of UUIDs, got {values!r}")
    out = [uuid_arg(name, v) for v in values]
    if len(set(out)) != len(out):
        raise InvalidInput(f"{name} has duplicates")
    return out


def changeset(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``diff`` without null sides: the contracts reject explicit nulls, an absent side means "was/is unset"."""
    fields, changes = diff(before, after)
    return fields, {p: {k: v for k, v in c.items() if v is not None} for p, c in changes.items()}


def _ticket(ctx: Ctx, ticket_id: Any) -> dict[str, Any]:
    return fetch(ctx, tickets, "ticket", ticket_id)


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise InvalidInput(f"unknown priority {priority!r} (one of {', '.join(PRIORITIES)})")


# ---- boards and SLA policies (setup, no events) -------------------------------------------------------


@emits()
def create_board(ctx: Ctx, name: str, *, tier: int = 1) -> str:
    """Create a board (queue) at a support tier; emits nothing."""
    if not name.strip():
        raise InvalidInput("board name must not be empty")
    if isinstance(tier, bool) or not isinstance(tier, int) or tier < 1:
        raise InvalidInput(f"tier must be a positive integer, got {tier!r}")
    bid = new_id()
    ctx.conn.execute(boards.insert().values(id=bid, tenant_id=ctx.tenant_id, name=name, tier=tier))
    return bid


@emits()
def create_sla_policy(
    ctx: Ctx, name: str, *, response_minutes: int | None = None, resolution_minutes: int | None = None
) -> str:
    """Create an SLA policy with response/resolution targets in minutes; emits nothing."""
    if not name.strip():
        raise InvalidInput("policy name must not be empty")
    for label, minutes in (("response_minutes", response_minutes), ("resolution_minutes", resolution_minutes)):
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 0):
            raise InvalidInput(f"{label} must be a non-negative integer, got {minutes!r}")
    if response_minutes is None and resolution_minutes is None:
        raise InvalidInput("an SLA policy needs a response or a resolution target")
    pid = new_id()
    ctx.conn.execute(
        sla_policies.insert().values(
            id=pid,
            tenant_id=ctx.tenant_id,
            name=name,
            response_minutes=response_minutes,
            resolution_minutes=resolution_minutes,
        )
    )
    return pid


# ---- create, update, status ---------------------------------------------------------------------------


@emits("TICKET_CREATED", "TICKET_SLA_STAGE_ENTERED")
def create_ticket(
    ctx: Ctx,
    *,
    title: str,
    priority: str = "p3",
    client_id: str | None = None,
    contact_id: str | None = None,
    board_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    sla_policy_id: str | None = None,
) -> str:
    """Create a ticket; emits TICKET_CREATED (and TICKET_SLA_STAGE_ENTERED per stage of ``sla_policy_id``)."""
    if not title.strip():
        raise InvalidInput("title must not be empty")
    _check_priority(priority)
    client = uuid_arg("client_id", client_id) if client_id is not None else None
    contact = uuid_arg("contact_id", contact_id) if contact_id is not None else None
    board = fetch(ctx, boards, "board", board_id, for_update=False) if board_id is not None else None
    policy = None
    if sla_policy_id is not None:
        policy = fetch(ctx, sla_policies, "SLA policy", sla_policy_id, for_update=False)
    attrs = _attributes({}, attributes or {})
    tid = new_id()
    number = f"T-{uuid.UUID(tid).int % 100000:05d}"
    at = now()
    ctx.conn.execute(
        tickets.insert().values(
            id=tid, tenant_id=ctx.tenant_id, number=number, title=title, status="new", priority=priority,
            client_id=client, contact_id=contact, board_id=board["id"] if board else None, attributes=attrs,
            created_by=ctx.user_id,
        )
    )  # fmt: skip
    emit(ctx, "TICKET_CREATED", {"ticketId": tid, "createdByUserId": ctx.user_id, "createdAt": iso(at),
                                 "ticketNumber": number, "title": title, "priority": priority, "status": "new",
                                 "clientId": client, "contactId": contact, "boardId": opt_str(board and board["id"])},
         aggregate=f"ticket:{tid}", to_state="new")  # fmt: skip
    if policy:
        _enter_sla(ctx, tid, policy, at)
    return tid


def _attributes(current: Mapping[str, Any], given: Any) -> dict[str, Any]:
    if not isinstance(given, Mapping) or not all(isinstance(k, str) and k for k in given):
        raise InvalidInput("attributes must be a mapping with non-empty string keys")
    merged = {**current, **given}
    return {k: v for k, v in merged.items() if v is not None}


@emits("TICKET_UPDATED", "TICKET_PRIORITY_CHANGED")
def update_ticket(ctx: Ctx, ticket_id: str, **fields: Any) -> None:
    """Change title/priority/attributes (merged); emits TICKET_UPDATED (+ TICKET_PRIORITY_CHANGED if it changed)."""
    t = _ticket(ctx, ticket_id)
    _update(ctx, t, fields, reason=None)


@emits("TICKET_UPDATED", "TICKET_PRIORITY_CHANGED")
def change_priority(ctx: Ctx, ticket_id: str, priority: str, *, reason: str | None = None) -> None:
    """Set another priority; emits TICKET_UPDATED and TICKET_PRIORITY_CHANGED (InvalidTransition if unchanged)."""
    t = _ticket(ctx, ticket_id)
    _check_priority(priority)
    if priority == t["priority"]:
        raise InvalidTransition("ticket priority", t["priority"], priority)
    _update(ctx, t, {"priority": priority}, reason=reason)


def _update(ctx: Ctx, t: Mapping[str, Any], fields: Mapping[str, Any], *, reason: str | None) -> None:
    if not fields or set(fields) - set(UPDATABLE):
        raise InvalidInput(f"can update only {list(UPDATABLE)}")
    if "title" in fields and (not isinstance(fields["title"], str) or not fields["title"].strip()):
        raise InvalidInput("title must not be empty")
    if "priority" in fields:
        _check_priority(fields["priority"])
    after = dict(fields)
    if "attributes" in fields:
        after["attributes"] = _attributes(t["attributes"], fields["attributes"])
    before = {k: t[k] for k in after}
    updated, changes = changeset(before, after)
    if not updated:
        return
    update_row(ctx, tickets, t, **after)
    tid = str(t["id"])
    emit(ctx, "TICKET_UPDATED", {"ticketId": tid, "updatedByUserId": ctx.user_id, "updatedFields": updated,
                                 "changes": changes}, aggregate=f"ticket:{tid}")  # fmt: skip
    if "priority" in updated:
        emit(ctx, "TICKET_PRIORITY_CHANGED",
             {"ticketId": tid, "previousPriorityId": t["priority"], "newPriorityId": after["priority"],
              "reason": reason, "changedAt": iso()},
             aggregate=f"ticket:{tid}", from_state=t["priority"], to_state=after["priority"])  # fmt: skip


_STATUS_EVENTS = ("TICKET_STATUS_CHANGED", "TICKET_CLOSED", "TICKET_REOPENED", "TICKET_RESPONSE_STATE_CHANGED",
                  "TICKET_SLA_STAGE_MET", "TICKET_SLA_STAGE_BREACHED")  # fmt: skip


@emits(*_STATUS_EVENTS)
def change_status(ctx: Ctx, ticket_id: str, new_status: str, *, reason: str | None = None) -> None:
    """Move a ticket to another status; emits TICKET_STATUS_CHANGED (+ TICKET_CLOSED / TICKET_REOPENED, see top)."""
    t = _ticket(ctx, ticket_id)
    if new_status not in STATUSES:
        raise InvalidInput(f"unknown status {new_status!r}")
    if new_status in (t["status"], "new"):
        raise InvalidTransition("ticket", t["status"], new_status)
    _move(ctx, t, new_status, reason)


@emits(*_STATUS_EVENTS)
def close_ticket(ctx: Ctx, ticket_id: str, *, reason: str | None = None, status: str = "closed") -> None:
    """Close an open ticket (``status``: closed or resolved); emits TICKET_STATUS_CHANGED and TICKET_CLOSED."""
    t = _ticket(ctx, ticket_id)
    if status not in CLOSED_STATUSES:
        raise InvalidInput(f"{status!r} is not a closed status ({', '.join(CLOSED_STATUSES)})")
    if t["status"] in CLOSED_STATUSES:
        raise InvalidTransition("ticket", t["status"], status)
    _move(ctx, t, status, reason)


@emits("TICKET_STATUS_CHANGED", "TICKET_REOPENED")
def reopen_ticket(ctx: Ctx, ticket_id: str, *, reason: str | None = None, status: str = "open") -> None:
    """Put a closed/resolved ticket back to an open status; emits TICKET_STATUS_CHANGED and TICKET_REOPENED."""
    t = _ticket(ctx, ticket_id)
    if status not in ("open", "waiting"):
        raise InvalidInput(f"a ticket reopens to 'open' or 'waiting', not {status!r}")
    if t["status"] not in CLOSED_STATUSES:
        raise InvalidTransition("ticket", t["status"], status)
    _move(ctx, t, status, reason)


def _move(ctx: Ctx, t: Mapping[str, Any], new_status: str, reason: str | None) -> None:
    tid, old = str(t["id"]), t["status"]
    closing = old in OPEN_STATUSES and new_status in CLOSED_STATUSES
    reopening = old in CLOSED_STATUSES and new_status in OPEN_STATUSES
    at = now()
    values: dict[str, Any] = {"status": new_status}
    if closing:
        values.update(closed_at=at, response_state=None)
    if reopening:
        values["closed_at"] = None
    update_row(ctx, tickets, t, **values)
    emit(ctx, "TICKET_STATUS_CHANGED",
         {"ticketId": tid, "previousStatusId": old, "newStatusId": new_status, "reason": reason, "changedAt": iso(at)},
         aggregate=f"ticket:{tid}", from_state=old, to_state=new_status)  # fmt: skip
    if closing:
        updated, changes = changeset(
            {"status": old, "closedAt": t["closed_at"]}, {"status": new_status, "closedAt": at}
        )
        emit(ctx, "TICKET_CLOSED", {"ticketId": tid, "closedByUserId": ctx.user_id, "closedAt": iso(at),
                                    "reason": reason, "updatedFields": updated, "changes": changes},
             aggregate=f"ticket:{tid}", from_state=old, to_state=new_status)  # fmt: skip
        if t["response_state"] is not None:
            _emit_response_state(ctx, tid, t["response_state"], None, "close")
        _settle_sla(ctx, tid, ("response", "resolution"), at)
    if reopening:
        emit(ctx, "TICKET_REOPENED", {"ticketId": tid, "previousStatusId": old, "newStatusId": new_status,
                                      "reopenedAt": iso(at), "reason": reason},
             aggregate=f"ticket:{tid}", from_state=old, to_state=new_status)  # fmt: skip


@emits("TICKET_DELETED")
def delete_ticket(ctx: Ctx, ticket_id: str) -> None:
    """Delete a ticket (not a bundle master with children); emits the legacy TICKET_DELETED."""
    t = _ticket(ctx, ticket_id)
    if not ctx.user_id:
        raise InvalidInput("deleting a ticket needs an acting user")
    legacy_tenant(ctx)
    if ctx.conn.execute(select(tickets.c.id).where(tickets.c.master_ticket_id == t["id"]).limit(1)).first():
        raise InvalidTransition("ticket", "bundle master with children", "deleted")
    ctx.conn.execute(tickets.delete().where(tickets.c.id == t["id"]))
    tid = str(t["id"])
    snapshot = {"ticketNumber": t["number"], "title": t["title"], "status": t["status"], "priority": t["priority"]}
    emit(
        ctx, "TICKET_DELETED", {"ticketId": tid, "changes": snapshot}, aggregate=f"ticket:{tid}", from_state=t["status"]
    )


# ---- assignment -----------------------------------------------------------------------------------------


@emits("TICKET_ASSIGNED")
def assign_ticket(ctx: Ctx, ticket_id: str, assignee_id: str, *, assignee_type: str = "user") -> None:
    """Make a user or team the primary assignee; emits TICKET_ASSIGNED with previous/new (no-op if same)."""
    t = _ticket(ctx, ticket_id)
    if assignee_type not in ASSIGNEE_TYPES:
        raise InvalidInput(f"assignee_type must be one of {ASSIGNEE_TYPES}, got {assignee_type!r}")
    new = uuid_arg("assignee_id", assignee_id)
    old, old_type = opt_str(t["assignee_id"]), t["assignee_type"]
    if (old, old_type) == (new, assignee_type):
        return
    update_row(ctx, tickets, t, assignee_id=new, assignee_type=assignee_type)
    if assignee_type == "user":
        ctx.conn.execute(
            ticket_agents.delete().where(ticket_agents.c.ticket_id == t["id"], ticket_agents.c.user_id == new)
        )
    tid = str(t["id"])
    updated, changes = changeset(
        {"assigneeId": old, "assigneeType": old_type}, {"assigneeId": new, "assigneeType": assignee_type}
    )
    emit(ctx, "TICKET_ASSIGNED",
         {"ticketId": tid, "assignedToUserId": new if assignee_type == "user" else None,
          "assignedByUserId": ctx.user_id, "previousAssigneeId": old, "previousAssigneeType": old_type,
          "newAssigneeId": new, "newAssigneeType": assignee_type, "assignedAt": iso(),
          "updatedFields": updated, "changes": changes},
         aggregate=f"ticket:{tid}")  # fmt: skip


@emits("TICKET_UNASSIGNED")
def unassign_ticket(ctx: Ctx, ticket_id: str, *, reason: str | None = None) -> None:
    """Clear the primary assignee; emits TICKET_UNASSIGNED (InvalidTransition if nobody is assigned)."""
    t = _ticket(ctx, ticket_id)
    if t["assignee_id"] is None:
        raise InvalidTransition("ticket assignment", "unassigned", "unassigned")
    update_row(ctx, tickets, t, assignee_id=None, assignee_type=None)
    tid = str(t["id"])
    emit(ctx, "TICKET_UNASSIGNED",
         {"ticketId": tid, "previousAssigneeId": str(t["assignee_id"]), "previousAssigneeType": t["assignee_type"],
          "unassignedAt": iso(), "reason": reason},
         aggregate=f"ticket:{tid}")  # fmt: skip


@emits("TICKET_ADDITIONAL_AGENT_ASSIGNED")
def add_additional_agent(ctx: Ctx, ticket_id: str, agent_id: str) -> None:
    """Add a secondary agent beside the primary user; emits the legacy TICKET_ADDITIONAL_AGENT_ASSIGNED."""
    t = _ticket(ctx, ticket_id)
    agent = uuid_arg("agent_id", agent_id)
    if not ctx.user_id:
        raise InvalidInput("adding an agent needs an acting user")
    legacy_tenant(ctx)
    if t["assignee_id"] is None or t["assignee_type"] != "user":
        raise InvalidTransition("ticket", "without a primary agent", "with an additional agent")
    primary = str(t["assignee_id"])
    if agent == primary:
        raise InvalidInput(f"{agent} is already the primary agent")
    have = ctx.conn.execute(
        select(ticket_agents.c.user_id).where(ticket_agents.c.ticket_id == t["id"], ticket_agents.c.user_id == agent)
    ).first()
    if have:
        return
    ctx.conn.execute(
        ticket_agents.insert().values(ticket_id=t["id"], user_id=agent, tenant_id=ctx.tenant_id, added_by=ctx.user_id)
    )
    tid = str(t["id"])
    emit(ctx, "TICKET_ADDITIONAL_AGENT_ASSIGNED",
         {"ticketId": tid, "primaryAgentId": primary, "additionalAgentId": agent, "assignedByUserId": ctx.user_id,
          "userId": ctx.user_id},  # undeclared but kept: the stream entry's user_id
         aggregate=f"ticket:{tid}")  # fmt: skip


# ---- bundles, tags, boards --------------------------------------------------------------------------------


def _has_children(ctx: Ctx, ticket_id: Any) -> bool:
    row = ctx.conn.execute(select(tickets.c.id).where(tickets.c.master_ticket_id == ticket_id).limit(1)).first()
    return row is not None


@emits("TICKET_MERGED")
def merge_ticket(ctx: Ctx, source_ticket_id: str, target_ticket_id: str, *, reason: str | None = None) -> None:
    """Fold ``source`` into ``target``'s bundle (source becomes its child); emits TICKET_MERGED."""
    src_id, tgt_id = uuid_arg("source_ticket_id", source_ticket_id), uuid_arg("target_ticket_id", target_ticket_id)
    if src_id == tgt_id:
        raise InvalidInput("a ticket cannot be merged into itself")
    locked = {i: _ticket(ctx, i) for i in sorted((src_id, tgt_id))}  # stable lock order
    src, tgt = locked[src_id], locked[tgt_id]
    if src["master_ticket_id"] is not None:
        raise InvalidTransition("ticket bundle", f"child of {src['master_ticket_id']}", f"child of {tgt_id}")
    if _has_children(ctx, src["id"]):
        raise InvalidTransition("ticket bundle", "master", "child")
    if tgt["master_ticket_id"] is not None:
        raise InvalidTransition("ticket bundle", "child", "master")
    update_row(ctx, tickets, src, master_ticket_id=tgt["id"])
    emit(ctx, "TICKET_MERGED",
         {"sourceTicketId": src_id, "targetTicketId": tgt_id, "mergedAt": iso(), "reason": reason},
         aggregate=f"ticket:{src_id}")  # fmt: skip


@emits("TICKET_SPLIT")
def split_ticket(
    ctx: Ctx, master_ticket_id: str, child_ticket_ids: Sequence[str], *, reason: str | None = None
) -> None:
    """Detach children from their bundle master; emits TICKET_SPLIT (InvalidInput if one is not its child)."""
    master = _ticket(ctx, master_ticket_id)
    ids = _uuids("child_ticket_ids", child_ticket_ids)
    if not ids:
        raise InvalidInput("child_ticket_ids must name at least one ticket")
    children = {i: _ticket(ctx, i) for i in sorted(ids)}
    for i in ids:
        if children[i]["master_ticket_id"] != master["id"]:
            raise InvalidInput(f"ticket {i} is not in the bundle of {master['id']}")
    for i in ids:
        update_row(ctx, tickets, children[i], master_ticket_id=None)
    mid = str(master["id"])
    emit(ctx, "TICKET_SPLIT", {"originalTicketId": mid, "newTicketIds": ids, "splitAt": iso(), "reason": reason},
         aggregate=f"ticket:{mid}")  # fmt: skip


@emits("TICKET_TAGS_CHANGED")
def change_tags(ctx: Ctx, ticket_id: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
    """Add and/or remove tag ids; emits TICKET_TAGS_CHANGED with what actually changed (no-op if nothing did)."""
    t = _ticket(ctx, ticket_id)
    to_add, to_remove = _uuids("add", add), _uuids("remove", remove)
    if set(to_add) & set(to_remove):
        raise InvalidInput("a tag cannot be added and removed at once")
    have = {str(r[0]) for r in ctx.conn.execute(select(ticket_tags.c.tag_id).where(ticket_tags.c.ticket_id == t["id"]))}
    added = [x for x in to_add if x not in have]
    removed = [x for x in to_remove if x in have]
    if not added and not removed:
        return
    if added:
        ctx.conn.execute(
            ticket_tags.insert(), [{"ticket_id": t["id"], "tag_id": x, "tenant_id": ctx.tenant_id} for x in added]
        )
    if removed:
        ctx.conn.execute(
            ticket_tags.delete().where(ticket_tags.c.ticket_id == t["id"], ticket_tags.c.tag_id.in_(removed))
        )
    update_row(ctx, tickets, t)
    tid = str(t["id"])
    emit(ctx, "TICKET_TAGS_CHANGED",
         {"ticketId": tid, "addedTagIds": added or None, "removedTagIds": removed or None, "changedAt": iso()},
         aggregate=f"ticket:{tid}")  # fmt: skip


@emits("TICKET_QUEUE_CHANGED")
def move_to_board(ctx: Ctx, ticket_id: str, board_id: str) -> None:
    """Move a ticket to another board/queue; emits TICKET_QUEUE_CHANGED (no-op if already there)."""
    t = _ticket(ctx, ticket_id)
    board = fetch(ctx, boards, "board", board_id, for_update=False)
    if board["id"] == t["board_id"]:
        return
    update_row(ctx, tickets, t, board_id=board["id"])
    _emit_queue_changed(ctx, t, board)


def _emit_queue_changed(ctx: Ctx, t: Mapping[str, Any], board: Mapping[str, Any]) -> None:
    tid = str(t["id"])
    emit(ctx, "TICKET_QUEUE_CHANGED",
         {"ticketId": tid, "previousBoardId": opt_str(t["board_id"]), "newBoardId": str(board["id"]),
          "changedAt": iso()},
         aggregate=f"ticket:{tid}")  # fmt: skip


@emits("TICKET_ESCALATED", "TICKET_QUEUE_CHANGED")
def escalate_ticket(ctx: Ctx, ticket_id: str, board_id: str, *, reason: str | None = None) -> None:
    """Move a ticket to a board of a higher tier; emits TICKET_ESCALATED and TICKET_QUEUE_CHANGED."""
    t = _ticket(ctx, ticket_id)
    board = fetch(ctx, boards, "board", board_id, for_update=False)
    current_tier = 0
    if t["board_id"] is not None:
        current_tier = ctx.conn.execute(select(boards.c.tier).where(boards.c.id == t["board_id"])).scalar_one()
    if board["tier"] <= current_tier:
        raise InvalidTransition("ticket tier", current_tier, board["tier"])
    update_row(ctx, tickets, t, board_id=board["id"])
    tid = str(t["id"])
    emit(ctx, "TICKET_ESCALATED",
         {"ticketId": tid, "fromQueueId": opt_str(t["board_id"]), "toQueueId": str(board["id"]), "escalatedAt": iso(),
          "reason": reason, "fromTier": current_tier, "toTier": board["tier"]},
         aggregate=f"ticket:{tid}")  # fmt: skip
    _emit_queue_changed(ctx, t, board)


# ---- messages and response state ----------------------------------------------------------------------------


def _comment(m: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": str(m["id"]), "content": m["content"], "author": str(m["author_id"]),
            "isInternal": m["visibility"] == "internal"}  # fmt: skip


@emits("TICKET_MESSAGE_ADDED", "TICKET_INTERNAL_NOTE_ADDED", "TICKET_CUSTOMER_REPLIED", "TICKET_COMMENT_ADDED",
       "TICKET_RESPONSE_STATE_CHANGED", "TICKET_SLA_STAGE_MET", "TICKET_SLA_STAGE_BREACHED")  # fmt: skip
def add_message(
    ctx: Ctx,
    ticket_id: str,
    content: str,
    *,
    internal: bool = False,
    channel: str | None = None,
    attachments_count: int = 0,
) -> str:
    """Post a reply or note (user) or a customer reply (contact); emits the message events (see top)."""
    t = _ticket(ctx, ticket_id)
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("message content must not be empty")
    if ctx.user_id:
        author, author_type = uuid_arg("user_id", ctx.user_id), "user"
    elif ctx.contact_id:
        author, author_type = uuid_arg("contact_id", ctx.contact_id), "contact"
        if internal:
            raise InvalidInput("a contact cannot post an internal note")
    else:
        raise InvalidInput("a message needs an acting user or contact")
    channel = channel or ("ui" if author_type == "user" else "portal")
    if channel not in CHANNELS:
        raise InvalidInput(f"channel must be one of {CHANNELS}, got {channel!r}")
    if isinstance(attachments_count, bool) or not isinstance(attachments_count, int) or attachments_count < 0:
        raise InvalidInput(f"attachments_count must be a non-negative integer, got {attachments_count!r}")
    legacy_tenant(ctx)

    mid, at = new_id(), now()
    visibility = "internal" if internal else "public"
    row = {"id": mid, "tenant_id": ctx.tenant_id, "ticket_id": t["id"], "content": content, "visibility": visibility,
           "author_id": author, "author_type": author_type, "channel": channel,
           "attachments_count": attachments_count, "created_at": at, "updated_at": at}  # fmt: skip
    ctx.conn.execute(messages.insert().values(**row))
    tid = str(t["id"])
    emit(ctx, "TICKET_MESSAGE_ADDED",
         {"ticketId": tid, "messageId": mid, "visibility": visibility, "authorId": author, "authorType": author_type,
          "channel": channel, "createdAt": iso(at), "attachmentsCount": attachments_count},
         aggregate=f"ticket:{tid}")  # fmt: skip
    if internal:
        emit(ctx, "TICKET_INTERNAL_NOTE_ADDED", {"ticketId": tid, "noteId": mid, "createdAt": iso(at)},
             aggregate=f"ticket:{tid}")  # fmt: skip
    if author_type == "contact":
        emit(ctx, "TICKET_CUSTOMER_REPLIED",
             {"ticketId": tid, "messageId": mid, "contactId": author, "channel": channel, "receivedAt": iso(at),
              "attachmentsCount": attachments_count},
             aggregate=f"ticket:{tid}")  # fmt: skip
    comment = {**_comment(row), "authorType": "internal" if author_type == "user" else "client"}
    emit(
        ctx, "TICKET_COMMENT_ADDED", {"ticketId": tid, "userId": author, "comment": comment}, aggregate=f"ticket:{tid}"
    )

    if not internal and t["status"] in OPEN_STATUSES:
        wanted = "awaiting_client" if author_type == "user" else "awaiting_internal"
        if t["response_state"] != wanted:
            update_row(ctx, tickets, t, response_state=wanted)
            _emit_response_state(ctx, tid, t["response_state"], wanted, "comment")
        if author_type == "user":
            _settle_sla(ctx, tid, ("response",), at)
    return mid


@emits("TICKET_COMMENT_UPDATED")
def edit_message(ctx: Ctx, message_id: str, content: str) -> None:
    """Change the text of one's own message; emits the legacy TICKET_COMMENT_UPDATED with old/new comment."""
    m = fetch(ctx, messages, "ticket message", message_id)
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("message content must not be empty")
    author = ctx.user_id or ctx.contact_id
    if author is None or str(m["author_id"]) != str(author).lower():
        raise InvalidInput("only its author can edit a message")
    legacy_tenant(ctx)
    if content == m["content"]:
        return
    at = now()
    ctx.conn.execute(messages.update().where(messages.c.id == m["id"]).values(content=content, updated_at=at))
    _, changes = changeset({"content": m["content"]}, {"content": content})
    old, new = _comment(m), {**_comment(m), "content": content}
    tid = str(m["ticket_id"])
    emit(ctx, "TICKET_COMMENT_UPDATED",
         {"ticketId": tid, "userId": author, "comment": new, "oldComment": old, "newComment": new, "changes": changes},
         aggregate=f"ticket:{tid}")  # fmt: skip


def _emit_response_state(ctx: Ctx, ticket_id: str, old: str | None, new: str | None, trigger: str) -> None:
    emit(ctx, "TICKET_RESPONSE_STATE_CHANGED",
         {"ticketId": ticket_id, "previousResponseState": old, "newResponseState": new, "trigger": trigger},
         aggregate=f"ticket:{ticket_id}", from_state=old, to_state=new)  # fmt: skip


@emits("TICKET_RESPONSE_STATE_CHANGED")
def set_response_state(ctx: Ctx, ticket_id: str, state: str | None) -> None:
    """Set who the ticket waits on (or None); emits TICKET_RESPONSE_STATE_CHANGED (no-op if unchanged)."""
    t = _ticket(ctx, ticket_id)
    if state is not None and state not in RESPONSE_STATES:
        raise InvalidInput(f"response state must be one of {RESPONSE_STATES} or None, got {state!r}")
    if state is not None and t["status"] in CLOSED_STATUSES:
        raise InvalidTransition("ticket response state", t["status"], state)
    if state == t["response_state"]:
        return
    update_row(ctx, tickets, t, response_state=state)
    _emit_response_state(ctx, str(t["id"]), t["response_state"], state, "manual")


# ---- SLA stages -----------------------------------------------------------------------------------------


def _enter_sla(ctx: Ctx, ticket_id: str, policy: Mapping[str, Any], at: datetime) -> None:
    for stage in ("response", "resolution"):
        minutes = policy[f"{stage}_minutes"]
        if minutes is None:
            continue
        target = at + timedelta(minutes=minutes)
        ctx.conn.execute(
            sla_stages.insert().values(
                id=new_id(), tenant_id=ctx.tenant_id, ticket_id=ticket_id, policy_id=policy["id"], stage=stage,
                status="active", entered_at=at, target_at=target,
            )
        )  # fmt: skip
        emit(ctx, "TICKET_SLA_STAGE_ENTERED",
             {"ticketId": ticket_id, "slaPolicyId": str(policy["id"]), "stage": stage, "enteredAt": iso(at),
              "targetAt": iso(target)},
             aggregate=f"ticket:{ticket_id}", to_state="active")  # fmt: skip


def _settle_sla(ctx: Ctx, ticket_id: str, stages: Sequence[str], at: datetime) -> None:
    rows = ctx.conn.execute(
        sla_stages.select()
        .where(sla_stages.c.ticket_id == ticket_id, sla_stages.c.status == "active", sla_stages.c.stage.in_(stages))
        .order_by(sla_stages.c.target_at)
        .with_for_update()
    ).mappings()
    for r in [dict(x) for x in rows]:
        if at <= r["target_at"]:
            ctx.conn.execute(sla_stages.update().where(sla_stages.c.id == r["id"]).values(status="met", ended_at=at))
            emit(ctx, "TICKET_SLA_STAGE_MET",
                 {"ticketId": ticket_id, "slaPolicyId": str(r["policy_id"]), "stage": r["stage"], "metAt": iso(at),
                  "targetAt": iso(r["target_at"])},
                 aggregate=f"ticket:{ticket_id}", from_state="active", to_state="met")  # fmt: skip
        else:
            _breach(ctx, r, at)


def _breach(ctx: Ctx, r: Mapping[str, Any], at: datetime) -> None:
    ctx.conn.execute(sla_stages.update().where(sla_stages.c.id == r["id"]).values(status="breached", ended_at=at))
    tid = str(r["ticket_id"])
    emit(ctx, "TICKET_SLA_STAGE_BREACHED",
         {"ticketId": tid, "slaPolicyId": str(r["policy_id"]), "stage": r["stage"], "breachedAt": iso(at),
          "targetAt": iso(r["target_at"]), "overdueBySeconds": int((at - r["target_at"]).total_seconds())},
         aggregate=f"ticket:{tid}", from_state="active", to_state="breached")  # fmt: skip


@emits("TICKET_SLA_STAGE_ENTERED")
def apply_sla_policy(ctx: Ctx, ticket_id: str, policy_id: str) -> None:
    """Start an SLA policy's stages on an open ticket without running ones; emits TICKET_SLA_STAGE_ENTERED."""
    t = _ticket(ctx, ticket_id)
    policy = fetch(ctx, sla_policies, "SLA policy", policy_id, for_update=False)
    if t["status"] in CLOSED_STATUSES:
        raise InvalidTransition("ticket", t["status"], "under SLA")
    running = ctx.conn.execute(
        select(sla_stages.c.id).where(sla_stages.c.ticket_id == t["id"], sla_stages.c.status == "active").limit(1)
    ).first()
    if running:
        raise InvalidTransition("ticket SLA", "running", "entered")
    _enter_sla(ctx, str(t["id"]), policy, now())


@emits("TICKET_SLA_STAGE_BREACHED")
def check_sla_breaches(ctx: Ctx, *, at: datetime | None = None) -> list[tuple[str, str]]:
    """Sweep: breach running stages past target as of ``at``; emits TICKET_SLA_STAGE_BREACHED; returns them."""
    when = when_arg("time", at)
    rows = ctx.conn.execute(
        sla_stages.select()
        .where(sla_stages.c.tenant_id == ctx.tenant_id, sla_stages.c.status == "active", sla_stages.c.target_at < when)
        .order_by(sla_stages.c.target_at)
        .with_for_update(skip_locked=True)
    ).mappings()
    out = []
    for r in [dict(x) for x in rows]:
        _breach(ctx, r, when)
        out.append((str(r["ticket_id"]), r["stage"]))
    return out
