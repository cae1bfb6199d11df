"""Scheduling: appointments, appointment requests, schedule blocks, team capacity, technician dispatch.

Every appointment change also emits the legacy SCHEDULE_ENTRY_* event the catalog lists as overlapping
(``legacy_of``/``superseded_by``): booking -> SCHEDULE_ENTRY_CREATED, reschedule/assign/complete/no-show/cancel
-> SCHEDULE_ENTRY_UPDATED, cancel with ``delete=True`` -> SCHEDULE_ENTRY_DELETED. Approving an appointment
request books the appointment (APPOINTMENT_REQUEST_APPROVED + APPOINTMENT_CREATED + SCHEDULE_ENTRY_CREATED);
cancelling either side of an approved request cancels the other (APPOINTMENT_REQUEST_CANCELLED + APPOINTMENT_CANCELED).
Legacy bus payloads require a uuid ``tenantId`` and (schedule entries) the acting ``userId``: actions that emit
them refuse a non-uuid tenant or a missing user with ``InvalidInput`` before changing anything.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    cast,
    extract,
    func,
    select,
)

from domain import tickets as _tickets
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
    legacy_user,
    metadata,
    new_id,
    opt_str,
    opt_uuid_arg,
    uuid_arg,
)

appointments = Table(
    "ref_appointments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("ticket_id", Uuid),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("end_at", DateTime(timezone=True), nullable=False),
    Column("timezone", String, nullable=False),
    Column("location", Text),
    Column("assignee_id", Uuid, index=True),
    Column("assignee_type", String),
    Column("status", String, nullable=False),
    Column("outcome", Text),
    Column("dispatch_status", String),
    Column("technician_id", Uuid),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

appointment_requests = Table(
    "ref_appointment_requests",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("status", String, nullable=False),
    Column("client_id", Uuid),
    Column("contact_id", Uuid),
    Column("service_id", Uuid, nullable=False),
    Column("service_name", Text, nullable=False),
    Column("requested_date", Date, nullable=False),
    Column("requested_time", String, nullable=False),
    Column("requested_duration", Integer, nullable=False),
    Column("timezone", String, nullable=False),
    Column("preferred_assigned_user_id", Uuid),
    Column("is_authenticated", Boolean, nullable=False),
    Column("requester_name", Text),
    Column("requester_email", String, nullable=False),
    Column("requester_phone", String),
    Column("company_name", Text),
    Column("ticket_id", Uuid),
    Column("description", Text),
    Column("approved_by_user_id", Uuid),
    Column("assigned_user_id", Uuid),
    Column("appointment_id", Uuid, index=True),
    Column("decline_reason", Text),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

schedule_blocks = Table(
    "ref_schedule_blocks",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("owner_id", Uuid, nullable=False, index=True),
    Column("owner_type", String, nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("end_at", DateTime(timezone=True), nullable=False),
    Column("timezone", String, nullable=False),
    Column("reason", Text),
)

team_capacity = Table(
    "ref_team_capacity",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("team_id", Uuid, nullable=False),
    Column("daily_hours", Float, nullable=False),
    Column("timezone", String, nullable=False),
    PrimaryKeyConstraint("tenant_id", "team_id"),
)

ASSIGNEE_TYPES = ("user", "team")
NO_SHOW_PARTIES = ("customer", "agent")
# appointment status: scheduled -> completed | canceled | no_show (the last three are final)
# technician dispatch: (none) -> dispatched -> en_route -> on_site -> checked_out (arrival may skip en_route)
DISPATCH_NEXT = {None: ("dispatched",), "dispatched": ("en_route", "on_site"), "en_route": ("on_site",),
                 "on_site": ("checked_out",)}  # fmt: skip
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


# ---- argument checks ----------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown timezone {tz!r}") from None


def _span(start_at: datetime, end_at: datetime) -> None:
    for name, ts in (("start_at", start_at), ("end_at", end_at)):
        if not isinstance(ts, datetime) or ts.utcoffset() is None:
            raise InvalidInput(f"{name} must be a timezone-aware datetime, got {ts!r}")
    if end_at <= start_at:
        raise InvalidInput("end_at must be after start_at")


def _assignee(assignee_id: str | None, assignee_type: str | None) -> tuple[str | None, str | None]:
    if assignee_id is None:
        return None, None
    if assignee_type not in ASSIGNEE_TYPES:
        raise InvalidInput(f"assignee_type must be one of {ASSIGNEE_TYPES}, got {assignee_type!r}")
    return uuid_arg("assignee_id", assignee_id), assignee_type


def _check_ticket(ctx: Ctx, ticket_id: str | None) -> str | None:
    if ticket_id is None:
        return None
    fetch(ctx, _tickets.tickets, "ticket", ticket_id, for_update=False)
    return str(uuid.UUID(ticket_id))


def _check_free(ctx: Ctx, owner_id: str | None, start_at: datetime, end_at: datetime) -> None:
    """Refuse to book someone over one of their schedule blocks."""
    if owner_id is None:
        return
    b = schedule_blocks.c
    hit = ctx.conn.execute(
        select(b.id)
        .where(
            b.tenant_id == ctx.tenant_id, b.owner_id == uuid.UUID(owner_id), b.start_at < end_at, b.end_at > start_at
        )
        .limit(1)
    ).first()
    if hit is not None:
        raise InvalidInput(f"{owner_id} is blocked between {iso(start_at)} and {iso(end_at)} (block {hit[0]})")


# ---- team capacity --------------------------------------------------------------------------------------


class _CapacityWatch:
    """Booked team hours per local day before a change; ``emit`` reports the days whose limit was reached."""

    def __init__(self, ctx: Ctx, *bookings: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.limits: dict[tuple[str, date], tuple[float, str]] = {}
        for bk in bookings:
            if bk.get("assignee_type") != "team" or bk.get("assignee_id") is None:
                continue
            team = str(bk["assignee_id"])
            cap = (
                ctx.conn.execute(  # the lock serialises bookings of one team, so a crossing is seen once
                    team_capacity.select()
                    .where(team_capacity.c.tenant_id == ctx.tenant_id, team_capacity.c.team_id == uuid.UUID(team))
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            if cap is not None:
                day = bk["start_at"].astimezone(ZoneInfo(cap["timezone"])).date()
                self.limits[(team, day)] = (cap["daily_hours"], cap["timezone"])
        self.before = {key: self._booked(*key) for key in self.limits}

    def _booked(self, team: str, day: date) -> float:
        a = appointments.c
        tz = self.limits[(team, day)][1]
        hours = func.coalesce(func.sum(extract("epoch", a.end_at - a.start_at) / 3600.0), 0.0)
        stmt = select(hours).where(
            a.tenant_id == self.ctx.tenant_id, a.assignee_type == "team", a.assignee_id == uuid.UUID(team),
            a.status != "canceled", cast(func.timezone(tz, a.start_at), Date) == day,
        )  # fmt: skip
        return float(self.ctx.conn.execute(stmt).scalar_one())

    def emit(self) -> None:
        """After the change: CAPACITY_THRESHOLD_REACHED for each team day that went from under to at/over its limit."""
        for (team, day), (limit, _tz) in self.limits.items():
            booked = self._booked(team, day)
            if self.before[(team, day)] < limit <= booked:
                emit(self.ctx, "CAPACITY_THRESHOLD_REACHED",
                     {"teamId": team, "date": day.isoformat(), "capacityLimit": limit, "currentBooked": booked,
                      "triggeredAt": iso()},
                     aggregate=f"team:{team}")  # fmt: skip


@emits()
def set_team_capacity(ctx: Ctx, team_id: str, *, daily_hours: float, timezone: str = "UTC") -> None:
    """Set a team's bookable hours per day (in ``timezone``); emits nothing."""
    team = uuid_arg("team_id", team_id)
    _zone(timezone)
    if isinstance(daily_hours, bool) or not isinstance(daily_hours, int | float) or daily_hours <= 0:
        raise InvalidInput(f"daily_hours must be a positive number, got {daily_hours!r}")
    c = team_capacity.c
    ctx.conn.execute(team_capacity.delete().where(c.tenant_id == ctx.tenant_id, c.team_id == uuid.UUID(team)))
    ctx.conn.execute(
        team_capacity.insert().values(
            tenant_id=ctx.tenant_id, team_id=team, daily_hours=float(daily_hours), timezone=timezone
        )
    )


# ---- appointments ---------------------------------------------------------------------------------------


def _snapshot(a: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule-entry fields a legacy consumer sees (for SCHEDULE_ENTRY_* ``changes``)."""
    return {"startAt": iso(a["start_at"]), "endAt": iso(a["end_at"]), "timezone": a["timezone"],
            "assigneeId": opt_str(a["assignee_id"]), "assigneeType": a["assignee_type"], "status": a["status"],
            "ticketId": opt_str(a["ticket_id"]), "location": a["location"]}  # fmt: skip


def _entry_updated(ctx: Ctx, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    aid = str(before["id"])
    _, changes = diff(_snapshot(before), _snapshot(after))
    emit(ctx, "SCHEDULE_ENTRY_UPDATED", {"entryId": aid, "userId": ctx.user_id, "changes": changes},
         aggregate=f"appointment:{aid}")  # fmt: skip


def _book(ctx: Ctx, row: dict[str, Any]) -> None:
    """Insert an appointment row and emit APPOINTMENT_CREATED + SCHEDULE_ENTRY_CREATED (+ capacity)."""
    _check_free(ctx, opt_str(row["assignee_id"]), row["start_at"], row["end_at"])
    watch = _CapacityWatch(ctx, row)
    ctx.conn.execute(appointments.insert().values(**row))
    aid, ts = str(row["id"]), iso()
    emit(ctx, "APPOINTMENT_CREATED",
         {"appointmentId": aid, "ticketId": opt_str(row["ticket_id"]), "startAt": iso(row["start_at"]),
          "endAt": iso(row["end_at"]), "timezone": row["timezone"], "assigneeId": opt_str(row["assignee_id"]),
          "assigneeType": row["assignee_type"], "createdByUserId": ctx.user_id, "createdAt": ts,
          "location": row["location"]},
         aggregate=f"appointment:{aid}", to_state="scheduled")  # fmt: skip
    emit(ctx, "SCHEDULE_ENTRY_CREATED", {"entryId": aid, "userId": ctx.user_id, "changes": _snapshot(row)},
         aggregate=f"appointment:{aid}")  # fmt: skip
    watch.emit()


@emits("APPOINTMENT_CREATED", "SCHEDULE_ENTRY_CREATED", "CAPACITY_THRESHOLD_REACHED")
def create_appointment(
    ctx: Ctx,
    *,
    start_at: datetime,
    end_at: datetime,
    timezone: str,
    ticket_id: str | None = None,
    assignee_id: str | None = None,
    assignee_type: str | None = "user",
    location: str | None = None,
) -> str:
    """Book an appointment; emits APPOINTMENT_CREATED, SCHEDULE_ENTRY_CREATED (and CAPACITY_THRESHOLD_REACHED)."""
    legacy_user(ctx, "booking an appointment")
    _span(start_at, end_at)
    _zone(timezone)
    who, kind = _assignee(assignee_id, assignee_type)
    ticket = _check_ticket(ctx, ticket_id)
    aid = new_id()
    _book(ctx, {"id": aid, "tenant_id": ctx.tenant_id, "ticket_id": ticket, "start_at": start_at, "end_at": end_at,
                "timezone": timezone, "location": location, "assignee_id": who, "assignee_type": kind,
                "status": "scheduled"})  # fmt: skip
    return aid


def _scheduled(ctx: Ctx, appointment_id: str, wanted: str) -> dict[str, Any]:
    a = fetch(ctx, appointments, "appointment", appointment_id)
    if a["status"] != "scheduled":
        raise InvalidTransition("appointment", a["status"], wanted)
    return a


@emits("APPOINTMENT_RESCHEDULED", "SCHEDULE_ENTRY_UPDATED", "CAPACITY_THRESHOLD_REACHED")
def reschedule_appointment(
    ctx: Ctx, appointment_id: str, *, start_at: datetime, end_at: datetime, reason: str | None = None
) -> None:
    """Move a scheduled appointment; emits APPOINTMENT_RESCHEDULED + SCHEDULE_ENTRY_UPDATED (and capacity)."""
    legacy_user(ctx, "rescheduling an appointment")
    a = _scheduled(ctx, appointment_id, "rescheduled")
    _span(start_at, end_at)
    if (start_at, end_at) == (a["start_at"], a["end_at"]):
        raise InvalidInput("the appointment is already at that time")
    _check_free(ctx, opt_str(a["assignee_id"]), start_at, end_at)
    after = {**a, "start_at": start_at, "end_at": end_at}
    watch = _CapacityWatch(ctx, a, after)
    ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                     .values(start_at=start_at, end_at=end_at, updated_at=func.now()))  # fmt: skip
    aid = str(a["id"])
    emit(ctx, "APPOINTMENT_RESCHEDULED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "previousStartAt": iso(a["start_at"]),
          "previousEndAt": iso(a["end_at"]), "newStartAt": iso(start_at), "newEndAt": iso(end_at),
          "timezone": a["timezone"], "rescheduledAt": iso(), "reason": reason},
         aggregate=f"appointment:{aid}")  # fmt: skip
    _entry_updated(ctx, a, after)
    watch.emit()


@emits("APPOINTMENT_ASSIGNED", "SCHEDULE_ENTRY_UPDATED", "CAPACITY_THRESHOLD_REACHED")
def assign_appointment(ctx: Ctx, appointment_id: str, assignee_id: str, assignee_type: str = "user") -> None:
    """Give a scheduled appointment to a user or team; emits APPOINTMENT_ASSIGNED + SCHEDULE_ENTRY_UPDATED."""
    legacy_user(ctx, "assigning an appointment")
    a = _scheduled(ctx, appointment_id, "assigned")
    who, kind = _assignee(assignee_id, assignee_type)
    if (who, kind) == (opt_str(a["assignee_id"]), a["assignee_type"]):
        raise InvalidInput(f"appointment is already assigned to {kind} {who}")
    _check_free(ctx, who, a["start_at"], a["end_at"])
    after = {**a, "assignee_id": uuid.UUID(str(who)), "assignee_type": kind}
    watch = _CapacityWatch(ctx, a, after)
    ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                     .values(assignee_id=who, assignee_type=kind, updated_at=func.now()))  # fmt: skip
    aid = str(a["id"])
    emit(ctx, "APPOINTMENT_ASSIGNED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "previousAssigneeId": opt_str(a["assignee_id"]),
          "previousAssigneeType": a["assignee_type"], "newAssigneeId": who, "newAssigneeType": kind,
          "assignedAt": iso()},
         aggregate=f"appointment:{aid}")  # fmt: skip
    _entry_updated(ctx, a, after)
    watch.emit()


def _request_of(ctx: Ctx, appointment_id: Any) -> dict[str, Any] | None:
    r = appointment_requests.c
    row = (
        ctx.conn.execute(
            appointment_requests.select()
            .where(r.tenant_id == ctx.tenant_id, r.appointment_id == appointment_id, r.status == "approved")
            .with_for_update()
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def _cancel(ctx: Ctx, a: dict[str, Any], reason: str | None, delete: bool) -> None:
    """Cancel (or delete) a scheduled appointment: APPOINTMENT_CANCELED + SCHEDULE_ENTRY_UPDATED/DELETED."""
    aid = str(a["id"])
    if delete:
        ctx.conn.execute(appointments.delete().where(appointments.c.id == a["id"]))
    else:
        ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                         .values(status="canceled", updated_at=func.now()))  # fmt: skip
    emit(ctx, "APPOINTMENT_CANCELED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "canceledAt": iso(), "reason": reason},
         aggregate=f"appointment:{aid}", from_state="scheduled", to_state="canceled")  # fmt: skip
    if delete:
        emit(ctx, "SCHEDULE_ENTRY_DELETED", {"entryId": aid, "userId": ctx.user_id, "changes": _snapshot(a)},
             aggregate=f"appointment:{aid}")  # fmt: skip
    else:
        _entry_updated(ctx, a, {**a, "status": "canceled"})


@emits("APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_UPDATED", "SCHEDULE_ENTRY_DELETED", "APPOINTMENT_REQUEST_CANCELLED")
def cancel_appointment(ctx: Ctx, appointment_id: str, *, reason: str | None = None, delete: bool = False) -> None:
    """Call off a scheduled appointment; emits APPOINTMENT_CANCELED + SCHEDULE_ENTRY_UPDATED (DELETED if ``delete``).

    An appointment booked from a request also cancels that request (APPOINTMENT_REQUEST_CANCELLED).
    """
    legacy_user(ctx, "cancelling an appointment")
    a = _scheduled(ctx, appointment_id, "canceled")
    req = _request_of(ctx, a["id"])
    _cancel(ctx, a, reason, delete)
    if req is not None:
        _request_cancelled(ctx, req)


@emits("APPOINTMENT_COMPLETED", "SCHEDULE_ENTRY_UPDATED")
def complete_appointment(ctx: Ctx, appointment_id: str, *, outcome: str | None = None) -> None:
    """Mark a scheduled appointment done; emits APPOINTMENT_COMPLETED + SCHEDULE_ENTRY_UPDATED."""
    legacy_user(ctx, "completing an appointment")
    a = _scheduled(ctx, appointment_id, "completed")
    ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                     .values(status="completed", outcome=outcome, updated_at=func.now()))  # fmt: skip
    aid = str(a["id"])
    emit(ctx, "APPOINTMENT_COMPLETED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "completedAt": iso(), "outcome": outcome},
         aggregate=f"appointment:{aid}", from_state="scheduled", to_state="completed")  # fmt: skip
    _entry_updated(ctx, a, {**a, "status": "completed"})


@emits("APPOINTMENT_NO_SHOW", "SCHEDULE_ENTRY_UPDATED")
def mark_no_show(ctx: Ctx, appointment_id: str, party: str) -> None:
    """Record that the customer or the agent did not turn up; emits APPOINTMENT_NO_SHOW + SCHEDULE_ENTRY_UPDATED."""
    legacy_user(ctx, "marking a no-show")
    if party not in NO_SHOW_PARTIES:
        raise InvalidInput(f"party must be one of {NO_SHOW_PARTIES}, got {party!r}")
    a = _scheduled(ctx, appointment_id, "no_show")
    ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                     .values(status="no_show", updated_at=func.now()))  # fmt: skip
    aid = str(a["id"])
    emit(ctx, "APPOINTMENT_NO_SHOW",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "markedAt": iso(), "party": party},
         aggregate=f"appointment:{aid}", from_state="scheduled", to_state="no_show")  # fmt: skip
    _entry_updated(ctx, a, {**a, "status": "no_show"})


# ---- technician dispatch ----------------------------------------------------------------------------------


def _dispatch_step(ctx: Ctx, appointment_id: str, wanted: str) -> dict[str, Any]:
    """The appointment row, checked that its technician visit may move to ``wanted``."""
    a = fetch(ctx, appointments, "appointment", appointment_id)
    current = a["dispatch_status"]
    if a["status"] != "scheduled" or wanted not in DISPATCH_NEXT.get(current, ()):
        raise InvalidTransition("technician visit", current or a["status"], wanted)
    return a


def _advance(ctx: Ctx, a: Mapping[str, Any], wanted: str, **values: Any) -> None:
    ctx.conn.execute(appointments.update().where(appointments.c.id == a["id"])
                     .values(dispatch_status=wanted, **values, updated_at=func.now()))  # fmt: skip


@emits("TECHNICIAN_DISPATCHED")
def dispatch_technician(ctx: Ctx, appointment_id: str, technician_user_id: str | None = None) -> None:
    """Send a technician (default: the appointment's user assignee) out; emits TECHNICIAN_DISPATCHED."""
    a = _dispatch_step(ctx, appointment_id, "dispatched")
    if technician_user_id is None:
        if a["assignee_type"] != "user":
            raise InvalidInput("the appointment has no user assignee: name the technician to dispatch")
        technician_user_id = str(a["assignee_id"])
    tech = uuid_arg("technician_user_id", technician_user_id)
    _advance(ctx, a, "dispatched", technician_id=tech)
    aid = str(a["id"])
    emit(ctx, "TECHNICIAN_DISPATCHED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "technicianUserId": tech,
          "dispatchedByUserId": ctx.user_id, "dispatchedAt": iso()},
         aggregate=f"appointment:{aid}", from_state=None, to_state="dispatched")  # fmt: skip


@emits("TECHNICIAN_EN_ROUTE")
def technician_en_route(ctx: Ctx, appointment_id: str, *, eta: datetime | None = None) -> None:
    """The dispatched technician sets off; emits TECHNICIAN_EN_ROUTE."""
    if eta is not None and (not isinstance(eta, datetime) or eta.utcoffset() is None):
        raise InvalidInput(f"eta must be a timezone-aware datetime, got {eta!r}")
    a = _dispatch_step(ctx, appointment_id, "en_route")
    _advance(ctx, a, "en_route")
    aid = str(a["id"])
    emit(ctx, "TECHNICIAN_EN_ROUTE",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "technicianUserId": str(a["technician_id"]),
          "startedAt": iso(), "eta": iso(eta) if eta else None},
         aggregate=f"appointment:{aid}", from_state=a["dispatch_status"], to_state="en_route")  # fmt: skip


@emits("TECHNICIAN_ARRIVED")
def technician_arrived(ctx: Ctx, appointment_id: str, *, location: str | None = None) -> None:
    """The technician reached the site; emits TECHNICIAN_ARRIVED."""
    a = _dispatch_step(ctx, appointment_id, "on_site")
    _advance(ctx, a, "on_site")
    aid = str(a["id"])
    emit(ctx, "TECHNICIAN_ARRIVED",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "technicianUserId": str(a["technician_id"]),
          "arrivedAt": iso(), "location": location or a["location"]},
         aggregate=f"appointment:{aid}", from_state=a["dispatch_status"], to_state="on_site")  # fmt: skip


@emits("TECHNICIAN_CHECKED_OUT")
def technician_check_out(ctx: Ctx, appointment_id: str, *, work_summary: str | None = None) -> None:
    """The technician finished on site; emits TECHNICIAN_CHECKED_OUT."""
    a = _dispatch_step(ctx, appointment_id, "checked_out")
    _advance(ctx, a, "checked_out")
    aid = str(a["id"])
    emit(ctx, "TECHNICIAN_CHECKED_OUT",
         {"appointmentId": aid, "ticketId": opt_str(a["ticket_id"]), "technicianUserId": str(a["technician_id"]),
          "checkedOutAt": iso(), "workSummary": work_summary},
         aggregate=f"appointment:{aid}", from_state="on_site", to_state="checked_out")  # fmt: skip


# ---- schedule blocks -------------------------------------------------------------------------------------


@emits("SCHEDULE_BLOCK_CREATED")
def create_schedule_block(
    ctx: Ctx,
    *,
    owner_id: str,
    start_at: datetime,
    end_at: datetime,
    timezone: str,
    owner_type: str = "user",
    reason: str | None = None,
) -> str:
    """Block time on a user's or team's calendar; emits SCHEDULE_BLOCK_CREATED."""
    owner, kind = _assignee(owner_id, owner_type)
    _span(start_at, end_at)
    _zone(timezone)
    bid = new_id()
    ctx.conn.execute(
        schedule_blocks.insert().values(id=bid, tenant_id=ctx.tenant_id, owner_id=owner, owner_type=kind,
                                        start_at=start_at, end_at=end_at, timezone=timezone, reason=reason)
    )  # fmt: skip
    emit(ctx, "SCHEDULE_BLOCK_CREATED",
         {"scheduleBlockId": bid, "ownerId": owner, "ownerType": kind, "startAt": iso(start_at),
          "endAt": iso(end_at), "timezone": timezone, "createdAt": iso(), "reason": reason},
         aggregate=f"schedule_block:{bid}")  # fmt: skip
    return bid


@emits("SCHEDULE_BLOCK_DELETED")
def delete_schedule_block(ctx: Ctx, block_id: str, *, reason: str | None = None) -> None:
    """Remove a schedule block; emits SCHEDULE_BLOCK_DELETED."""
    b = fetch(ctx, schedule_blocks, "schedule block", block_id)
    ctx.conn.execute(schedule_blocks.delete().where(schedule_blocks.c.id == b["id"]))
    emit(ctx, "SCHEDULE_BLOCK_DELETED", {"scheduleBlockId": str(b["id"]), "deletedAt": iso(), "reason": reason},
         aggregate=f"schedule_block:{b['id']}")  # fmt: skip


# ---- appointment requests (client portal / public booking) ---------------------------------------------


def _request_payload(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "appointmentRequestId": str(r["id"]), "clientId": opt_str(r["client_id"]),
        "contactId": opt_str(r["contact_id"]),
        "serviceId": str(r["service_id"]), "serviceName": r["service_name"],
        "requestedDate": r["requested_date"].isoformat(), "requestedTime": r["requested_time"],
        "requestedDuration": r["requested_duration"],
        "preferredAssignedUserId": opt_str(r["preferred_assigned_user_id"]), "isAuthenticated": r["is_authenticated"],
        "requesterName": r["requester_name"], "requesterEmail": r["requester_email"],
        "requesterPhone": r["requester_phone"], "companyName": r["company_name"], "ticketId": opt_str(r["ticket_id"]),
        "description": r["description"], "approvedByUserId": opt_str(r["approved_by_user_id"]),
        "assignedUserId": opt_str(r["assigned_user_id"]), "scheduleEntryId": opt_str(r["appointment_id"]),
        "declineReason": r["decline_reason"],
    }  # fmt: skip


def _request_event(ctx: Ctx, event_type: str, r: Mapping[str, Any], old: str | None, new: str) -> None:
    emit(ctx, event_type, _request_payload(r), aggregate=f"appointment_request:{r['id']}", from_state=old,
         to_state=new)  # fmt: skip


@emits("APPOINTMENT_REQUEST_CREATED")
def submit_appointment_request(
    ctx: Ctx,
    *,
    service_id: str,
    service_name: str,
    requested_date: str,
    requested_time: str,
    requested_duration: int,
    requester_email: str,
    timezone: str = "UTC",
    client_id: str | None = None,
    preferred_assigned_user_id: str | None = None,
    requester_name: str | None = None,
    requester_phone: str | None = None,
    company_name: str | None = None,
    ticket_id: str | None = None,
    description: str | None = None,
) -> str:
    """A client asks for an appointment (portal or public booking); emits APPOINTMENT_REQUEST_CREATED."""
    legacy_tenant(ctx, "scheduling events")
    if not _DATE_RE.match(requested_date):
        raise InvalidInput(f"requested_date must be YYYY-MM-DD, got {requested_date!r}")
    try:
        day = date.fromisoformat(requested_date)
    except ValueError:
        raise InvalidInput(f"no such date {requested_date!r}") from None
    if not _TIME_RE.match(requested_time):
        raise InvalidInput(f"requested_time must be HH:MM, got {requested_time!r}")
    if isinstance(requested_duration, bool) or not isinstance(requested_duration, int) or requested_duration <= 0:
        raise InvalidInput(f"requested_duration must be a positive number of minutes, got {requested_duration!r}")
    if "@" not in requester_email or not service_name.strip():
        raise InvalidInput("requester_email must be an e-mail address and service_name must not be empty")
    _zone(timezone)
    rid = new_id()
    row = {
        "id": rid, "tenant_id": ctx.tenant_id, "status": "pending",
        "client_id": opt_uuid_arg("client_id", client_id), "contact_id": ctx.contact_id,
        "service_id": uuid_arg("service_id", service_id), "service_name": service_name, "requested_date": day,
        "requested_time": requested_time, "requested_duration": requested_duration, "timezone": timezone,
        "preferred_assigned_user_id": opt_uuid_arg("preferred_assigned_user_id", preferred_assigned_user_id),
        "is_authenticated": bool(ctx.contact_id or ctx.user_id), "requester_name": requester_name,
        "requester_email": requester_email, "requester_phone": requester_phone, "company_name": company_name,
        "ticket_id": _check_ticket(ctx, ticket_id), "description": description, "approved_by_user_id": None,
        "assigned_user_id": None, "appointment_id": None, "decline_reason": None,
    }  # fmt: skip
    ctx.conn.execute(appointment_requests.insert().values(**row))
    _request_event(ctx, "APPOINTMENT_REQUEST_CREATED", row, None, "pending")
    return rid


def _pending(ctx: Ctx, request_id: str, wanted: str) -> dict[str, Any]:
    r = fetch(ctx, appointment_requests, "appointment request", request_id)
    if r["status"] != "pending":
        raise InvalidTransition("appointment request", r["status"], wanted)
    return r


@emits("APPOINTMENT_REQUEST_APPROVED", "APPOINTMENT_CREATED", "SCHEDULE_ENTRY_CREATED", "CAPACITY_THRESHOLD_REACHED")
def approve_appointment_request(
    ctx: Ctx, request_id: str, *, assignee_id: str | None = None, location: str | None = None
) -> str:
    """Approve a pending request and book it; emits APPOINTMENT_REQUEST_APPROVED, APPOINTMENT_CREATED and
    SCHEDULE_ENTRY_CREATED. The assignee defaults to the preferred user; returns the appointment id."""
    user = legacy_user(ctx, "approving an appointment request")
    r = _pending(ctx, request_id, "approved")
    who = uuid_arg("assignee_id", assignee_id) if assignee_id else opt_str(r["preferred_assigned_user_id"])
    tz = _zone(r["timezone"])
    hh, mm = (int(x) for x in r["requested_time"].split(":"))
    start = datetime.combine(r["requested_date"], time(hh, mm), tzinfo=tz)
    aid = new_id()
    _book(ctx, {"id": aid, "tenant_id": ctx.tenant_id, "ticket_id": r["ticket_id"], "start_at": start,
                "end_at": start + timedelta(minutes=r["requested_duration"]), "timezone": r["timezone"],
                "location": location, "assignee_id": who, "assignee_type": "user" if who else None,
                "status": "scheduled"})  # fmt: skip
    done = {"status": "approved", "approved_by_user_id": user, "assigned_user_id": who, "appointment_id": aid}
    ctx.conn.execute(appointment_requests.update().where(appointment_requests.c.id == r["id"])
                     .values(**done, updated_at=func.now()))  # fmt: skip
    _request_event(ctx, "APPOINTMENT_REQUEST_APPROVED", {**r, **done}, "pending", "approved")
    return aid


@emits("APPOINTMENT_REQUEST_DECLINED")
def decline_appointment_request(ctx: Ctx, request_id: str, *, reason: str) -> None:
    """Decline a pending request with a reason; emits APPOINTMENT_REQUEST_DECLINED."""
    legacy_tenant(ctx, "scheduling events")
    if not reason.strip():
        raise InvalidInput("a decline needs a reason")
    r = _pending(ctx, request_id, "declined")
    ctx.conn.execute(appointment_requests.update().where(appointment_requests.c.id == r["id"])
                     .values(status="declined", decline_reason=reason, updated_at=func.now()))  # fmt: skip
    _request_event(ctx, "APPOINTMENT_REQUEST_DECLINED", {**r, "decline_reason": reason}, "pending", "declined")


def _request_cancelled(ctx: Ctx, r: dict[str, Any]) -> None:
    ctx.conn.execute(appointment_requests.update().where(appointment_requests.c.id == r["id"])
                     .values(status="cancelled", updated_at=func.now()))  # fmt: skip
    _request_event(ctx, "APPOINTMENT_REQUEST_CANCELLED", r, r["status"], "cancelled")


@emits("APPOINTMENT_REQUEST_CANCELLED", "APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_UPDATED")
def cancel_appointment_request(ctx: Ctx, request_id: str, *, reason: str | None = None) -> None:
    """Withdraw a pending or approved request; emits APPOINTMENT_REQUEST_CANCELLED (an approved one's appointment
    is cancelled too: APPOINTMENT_CANCELED + SCHEDULE_ENTRY_UPDATED, which needs an acting user)."""
    legacy_tenant(ctx, "scheduling events")
    r = fetch(ctx, appointment_requests, "appointment request", request_id)
    if r["status"] not in ("pending", "approved"):
        raise InvalidTransition("appointment request", r["status"], "cancelled")
    appt = None
    if r["status"] == "approved" and r["appointment_id"] is not None:
        legacy_user(ctx, "cancelling an approved appointment request")
        found = (
            ctx.conn.execute(appointments.select().where(appointments.c.id == r["appointment_id"]).with_for_update())
            .mappings()
            .first()
        )
        if found is not None and found["status"] not in ("scheduled", "canceled"):
            raise InvalidTransition("appointment request", f"approved ({found['status']})", "cancelled")
        appt = dict(found) if found is not None and found["status"] == "scheduled" else None
    if appt is not None:
        _cancel(ctx, appt, reason, delete=False)
    _request_cancelled(ctx, r)
