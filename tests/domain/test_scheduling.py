"""Scheduling: appointments (with their legacy SCHEDULE_ENTRY_* twins), requests, blocks, capacity, dispatch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import domain.scheduling  # noqa: F401 - registers the scheduling tables before the engine fixture creates them
from domain import scheduling as s
from domain import tickets
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "APPOINTMENT_CREATED", "APPOINTMENT_RESCHEDULED", "APPOINTMENT_CANCELED", "APPOINTMENT_COMPLETED",
    "APPOINTMENT_NO_SHOW", "APPOINTMENT_ASSIGNED", "SCHEDULE_BLOCK_CREATED", "SCHEDULE_BLOCK_DELETED",
    "CAPACITY_THRESHOLD_REACHED", "TECHNICIAN_DISPATCHED", "TECHNICIAN_EN_ROUTE", "TECHNICIAN_ARRIVED",
    "TECHNICIAN_CHECKED_OUT", "APPOINTMENT_REQUEST_CREATED", "APPOINTMENT_REQUEST_APPROVED",
    "APPOINTMENT_REQUEST_DECLINED", "APPOINTMENT_REQUEST_CANCELLED", "SCHEDULE_ENTRY_CREATED",
    "SCHEDULE_ENTRY_UPDATED", "SCHEDULE_ENTRY_DELETED",
}  # fmt: skip
TENANT = str(uuid.uuid4())  # legacy bus payloads (SCHEDULE_ENTRY_*, APPOINTMENT_REQUEST_*) need a uuid tenant
OTHER = str(uuid.uuid4())
USER, TECH, TECH2, TEAM, CONTACT = (str(uuid.uuid4()) for _ in range(5))
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def one(emitted: list[tuple[str, uuid.UUID]], event_type: str) -> uuid.UUID:
    """The id of the single ``event_type`` event among an action's emitted events."""
    ids = [eid for et, eid in emitted if et == event_type]
    assert len(ids) == 1, (event_type, emitted)
    return ids[0]


def kinds(emitted: list[tuple[str, uuid.UUID]]) -> list[str]:
    return [et for et, _ in emitted]


def count_events(db_url: str) -> int:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM outbox_events").fetchone()
        assert row is not None
        return int(row[0])


def test_appointment_lifecycle_and_dispatch(act, published):
    tid, _ = act(TENANT, tickets.create_ticket, title="Server room AC", user=USER)
    aid, ev = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=2), timezone="Europe/Berlin",
                  ticket_id=tid, assignee_id=TECH, location="HQ, 2nd floor", user=USER)  # fmt: skip
    assert kinds(ev) == ["APPOINTMENT_CREATED", "SCHEDULE_ENTRY_CREATED"]
    got = published.expect_once("APPOINTMENT_CREATED", one(ev, "APPOINTMENT_CREATED"))
    p = got["payload"]
    assert (p["appointmentId"], p["ticketId"], p["assigneeId"], p["assigneeType"]) == (aid, tid, TECH, "user")
    assert (p["startAt"], p["endAt"], p["timezone"]) == ("2026-03-02T09:00:00.000Z", "2026-03-02T11:00:00.000Z",
                                                         "Europe/Berlin")  # fmt: skip
    assert p["createdByUserId"] == USER and p["actorUserId"] == USER and got["entry"]["to_state"] == "scheduled"
    legacy = published.expect_once("SCHEDULE_ENTRY_CREATED", one(ev, "SCHEDULE_ENTRY_CREATED"))["payload"]
    assert (legacy["entryId"], legacy["userId"], legacy["tenantId"]) == (aid, USER, TENANT)
    assert legacy["changes"]["startAt"] == "2026-03-02T09:00:00.000Z" and legacy["changes"]["status"] == "scheduled"

    _, ev = act(TENANT, s.reschedule_appointment, aid, start_at=T0 + timedelta(days=1),
                end_at=T0 + timedelta(days=1, hours=2), reason="customer asked", user=USER)  # fmt: skip
    p = published.expect_once("APPOINTMENT_RESCHEDULED", one(ev, "APPOINTMENT_RESCHEDULED"))["payload"]
    assert (p["appointmentId"], p["previousStartAt"], p["previousEndAt"], p["newStartAt"], p["newEndAt"]) == (
        aid, "2026-03-02T09:00:00.000Z", "2026-03-02T11:00:00.000Z", "2026-03-03T09:00:00.000Z",
        "2026-03-03T11:00:00.000Z")  # fmt: skip
    assert p["reason"] == "customer asked" and p["ticketId"] == tid
    legacy = published.expect_once("SCHEDULE_ENTRY_UPDATED", one(ev, "SCHEDULE_ENTRY_UPDATED"))["payload"]
    assert legacy["entryId"] == aid and legacy["userId"] == USER
    assert legacy["changes"] == {
        "endAt": {"previous": "2026-03-02T11:00:00.000Z", "new": "2026-03-03T11:00:00.000Z"},
        "startAt": {"previous": "2026-03-02T09:00:00.000Z", "new": "2026-03-03T09:00:00.000Z"},
    }

    _, ev = act(TENANT, s.assign_appointment, aid, TECH2, user=USER)
    p = published.expect_once("APPOINTMENT_ASSIGNED", one(ev, "APPOINTMENT_ASSIGNED"))["payload"]
    assert (p["previousAssigneeId"], p["previousAssigneeType"], p["newAssigneeId"], p["newAssigneeType"]) == (
        TECH, "user", TECH2, "user")  # fmt: skip
    legacy = published.expect_once("SCHEDULE_ENTRY_UPDATED", one(ev, "SCHEDULE_ENTRY_UPDATED"))["payload"]
    assert legacy["changes"] == {"assigneeId": {"previous": TECH, "new": TECH2}}

    _, ev = act(TENANT, s.dispatch_technician, aid, user=USER)
    got = published.expect_once("TECHNICIAN_DISPATCHED", one(ev, "TECHNICIAN_DISPATCHED"))
    p = got["payload"]
    assert (p["appointmentId"], p["technicianUserId"], p["dispatchedByUserId"], p["ticketId"]) == (
        aid,
        TECH2,
        USER,
        tid,
    )
    assert got["entry"]["to_state"] == "dispatched"
    eta = T0 + timedelta(days=1, minutes=-20)
    _, ev = act(TENANT, s.technician_en_route, aid, eta=eta, user=TECH2)
    got = published.expect_once("TECHNICIAN_EN_ROUTE", one(ev, "TECHNICIAN_EN_ROUTE"))
    assert got["payload"]["technicianUserId"] == TECH2 and got["payload"]["eta"] == "2026-03-03T08:40:00.000Z"
    assert got["payload"]["actorUserId"] == TECH2
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("dispatched", "en_route")
    _, ev = act(TENANT, s.technician_arrived, aid, user=TECH2)
    got = published.expect_once("TECHNICIAN_ARRIVED", one(ev, "TECHNICIAN_ARRIVED"))
    assert got["payload"]["appointmentId"] == aid and got["payload"]["location"] == "HQ, 2nd floor"
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("en_route", "on_site")
    with pytest.raises(InvalidTransition):
        act(TENANT, s.technician_arrived, aid, user=TECH2)
    _, ev = act(TENANT, s.technician_check_out, aid, work_summary="Replaced the compressor", user=TECH2)
    got = published.expect_once("TECHNICIAN_CHECKED_OUT", one(ev, "TECHNICIAN_CHECKED_OUT"))
    assert got["payload"]["workSummary"] == "Replaced the compressor" and got["payload"]["technicianUserId"] == TECH2

    _, ev = act(TENANT, s.complete_appointment, aid, outcome="fixed", user=TECH2)
    got = published.expect_once("APPOINTMENT_COMPLETED", one(ev, "APPOINTMENT_COMPLETED"))
    assert (got["payload"]["appointmentId"], got["payload"]["outcome"]) == (aid, "fixed")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("scheduled", "completed")
    legacy = published.expect_once("SCHEDULE_ENTRY_UPDATED", one(ev, "SCHEDULE_ENTRY_UPDATED"))["payload"]
    assert legacy["changes"] == {"status": {"previous": "scheduled", "new": "completed"}} and legacy["userId"] == TECH2

    # no-show and the two ways of cancelling
    b, _ = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=1), timezone="UTC", user=USER)
    _, ev = act(TENANT, s.mark_no_show, b, "customer", user=USER)
    got = published.expect_once("APPOINTMENT_NO_SHOW", one(ev, "APPOINTMENT_NO_SHOW"))
    assert (got["payload"]["appointmentId"], got["payload"]["party"]) == (b, "customer")
    assert got["entry"]["to_state"] == "no_show"
    legacy = published.expect_once("SCHEDULE_ENTRY_UPDATED", one(ev, "SCHEDULE_ENTRY_UPDATED"))["payload"]
    assert legacy["changes"] == {"status": {"previous": "scheduled", "new": "no_show"}}

    c, _ = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=1), timezone="UTC", user=USER)
    _, ev = act(TENANT, s.cancel_appointment, c, reason="duplicate", user=USER)
    assert kinds(ev) == ["APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_UPDATED"]
    got = published.expect_once("APPOINTMENT_CANCELED", one(ev, "APPOINTMENT_CANCELED"))
    assert (got["payload"]["appointmentId"], got["payload"]["reason"]) == (c, "duplicate")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("scheduled", "canceled")
    legacy = published.expect_once("SCHEDULE_ENTRY_UPDATED", one(ev, "SCHEDULE_ENTRY_UPDATED"))["payload"]
    assert legacy["changes"] == {"status": {"previous": "scheduled", "new": "canceled"}}

    d, _ = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=1), timezone="UTC", user=USER)
    _, ev = act(TENANT, s.cancel_appointment, d, delete=True, user=USER)
    assert kinds(ev) == ["APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_DELETED"]
    published.expect_once("APPOINTMENT_CANCELED", one(ev, "APPOINTMENT_CANCELED"))
    legacy = published.expect_once("SCHEDULE_ENTRY_DELETED", one(ev, "SCHEDULE_ENTRY_DELETED"))["payload"]
    assert (legacy["entryId"], legacy["userId"], legacy["changes"]["status"]) == (d, USER, "scheduled")
    with pytest.raises(NotFound):
        act(TENANT, s.complete_appointment, d, user=USER)


def test_blocks_and_team_capacity(act, published):
    bid, ev = act(TENANT, s.create_schedule_block, owner_id=TECH, start_at=T0, end_at=T0 + timedelta(hours=4),
                  timezone="UTC", reason="training", user=USER)  # fmt: skip
    p = published.expect_once("SCHEDULE_BLOCK_CREATED", one(ev, "SCHEDULE_BLOCK_CREATED"))["payload"]
    assert (p["scheduleBlockId"], p["ownerId"], p["ownerType"], p["reason"]) == (bid, TECH, "user", "training")
    assert (p["startAt"], p["endAt"]) == ("2026-03-02T09:00:00.000Z", "2026-03-02T13:00:00.000Z")
    with pytest.raises(InvalidInput, match="blocked"):  # the technician is not bookable over the block
        act(TENANT, s.create_appointment, start_at=T0 + timedelta(hours=1), end_at=T0 + timedelta(hours=2),
            timezone="UTC", assignee_id=TECH, user=USER)  # fmt: skip
    _, ev = act(TENANT, s.delete_schedule_block, bid, reason="training moved", user=USER)
    p = published.expect_once("SCHEDULE_BLOCK_DELETED", one(ev, "SCHEDULE_BLOCK_DELETED"))["payload"]
    assert (p["scheduleBlockId"], p["reason"], p["actorUserId"]) == (bid, "training moved", USER)
    act(TENANT, s.create_appointment, start_at=T0 + timedelta(hours=1), end_at=T0 + timedelta(hours=2),
        timezone="UTC", assignee_id=TECH, user=USER)  # fmt: skip

    # a team with 4 bookable hours a day in Berlin: the booking that reaches 4 h reports it, once
    act(TENANT, s.set_team_capacity, TEAM, daily_hours=4, timezone="Europe/Berlin", user=USER)
    book = {"timezone": "Europe/Berlin", "assignee_id": TEAM, "assignee_type": "team", "user": USER}
    _, ev = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=2.5), **book)
    assert "CAPACITY_THRESHOLD_REACHED" not in kinds(ev)
    late, ev = act(TENANT, s.create_appointment, start_at=T0 + timedelta(days=1),
                   end_at=T0 + timedelta(days=1, hours=1), **book)  # fmt: skip
    assert "CAPACITY_THRESHOLD_REACHED" not in kinds(ev)  # another day
    _, ev = act(TENANT, s.reschedule_appointment, late, start_at=T0 + timedelta(hours=3),
                end_at=T0 + timedelta(hours=4.5), user=USER)  # fmt: skip
    got = published.expect_once("CAPACITY_THRESHOLD_REACHED", one(ev, "CAPACITY_THRESHOLD_REACHED"))
    p = got["payload"]
    assert (p["teamId"], p["date"], p["capacityLimit"], p["currentBooked"]) == (TEAM, "2026-03-02", 4.0, 4.0)
    assert got["entry"]["tenant"] == TENANT and p["actorUserId"] == USER
    _, ev = act(TENANT, s.create_appointment, start_at=T0 + timedelta(hours=6), end_at=T0 + timedelta(hours=7), **book)
    assert "CAPACITY_THRESHOLD_REACHED" not in kinds(ev)  # already over: reported when reached, not again


def test_appointment_requests(act, published):
    req = {"service_id": str(uuid.uuid4()), "service_name": "On-site visit", "requested_date": "2026-03-04",
           "requested_time": "14:30", "requested_duration": 90, "requester_email": "ana@example.com",
           "timezone": "Europe/Berlin", "preferred_assigned_user_id": TECH, "requester_name": "Ana"}  # fmt: skip
    r1, ev = act(TENANT, s.submit_appointment_request, **req, contact=CONTACT)
    got = published.expect_once("APPOINTMENT_REQUEST_CREATED", one(ev, "APPOINTMENT_REQUEST_CREATED"))
    p = got["payload"]
    assert (p["appointmentRequestId"], p["contactId"], p["isAuthenticated"], p["requestedDuration"]) == (
        r1, CONTACT, True, 90)  # fmt: skip
    assert (p["requestedDate"], p["requestedTime"], p["preferredAssignedUserId"]) == ("2026-03-04", "14:30", TECH)
    assert got["entry"]["to_state"] == "pending"
    _, ev = act(TENANT, s.decline_appointment_request, r1, reason="no slots that day", user=USER)
    got = published.expect_once("APPOINTMENT_REQUEST_DECLINED", one(ev, "APPOINTMENT_REQUEST_DECLINED"))
    assert (got["payload"]["appointmentRequestId"], got["payload"]["declineReason"]) == (r1, "no slots that day")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "declined")
    with pytest.raises(InvalidTransition):
        act(TENANT, s.approve_appointment_request, r1, user=USER)

    # approval books the appointment: request approved + appointment created + schedule entry created
    r2, _ = act(TENANT, s.submit_appointment_request, **req)
    aid, ev = act(TENANT, s.approve_appointment_request, r2, user=USER)
    assert kinds(ev) == ["APPOINTMENT_CREATED", "SCHEDULE_ENTRY_CREATED", "APPOINTMENT_REQUEST_APPROVED"]
    p = published.expect_once("APPOINTMENT_REQUEST_APPROVED", one(ev, "APPOINTMENT_REQUEST_APPROVED"))["payload"]
    assert (p["appointmentRequestId"], p["approvedByUserId"], p["assignedUserId"], p["scheduleEntryId"]) == (
        r2, USER, TECH, aid)  # fmt: skip
    assert p["isAuthenticated"] is False
    p = published.expect_once("APPOINTMENT_CREATED", one(ev, "APPOINTMENT_CREATED"))["payload"]
    assert (p["appointmentId"], p["startAt"], p["endAt"], p["assigneeId"]) == (
        aid,
        "2026-03-04T13:30:00.000Z",
        "2026-03-04T15:00:00.000Z",
        TECH,
    )  # 14:30 in Berlin (CET)
    published.expect_once("SCHEDULE_ENTRY_CREATED", one(ev, "SCHEDULE_ENTRY_CREATED"))

    # withdrawing an approved request cancels its appointment as well
    _, ev = act(TENANT, s.cancel_appointment_request, r2, user=USER)
    assert kinds(ev) == ["APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_UPDATED", "APPOINTMENT_REQUEST_CANCELLED"]
    got = published.expect_once("APPOINTMENT_REQUEST_CANCELLED", one(ev, "APPOINTMENT_REQUEST_CANCELLED"))
    assert got["payload"]["appointmentRequestId"] == r2 and got["payload"]["scheduleEntryId"] == aid
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("approved", "cancelled")
    assert (
        published.expect_once("APPOINTMENT_CANCELED", one(ev, "APPOINTMENT_CANCELED"))["payload"]["appointmentId"]
        == aid
    )

    # ... and cancelling the appointment of an approved request cancels the request
    r3, _ = act(TENANT, s.submit_appointment_request, **req, contact=CONTACT)
    a3, _ = act(TENANT, s.approve_appointment_request, r3, assignee_id=TECH2, user=USER)
    _, ev = act(TENANT, s.cancel_appointment, a3, user=USER)
    assert kinds(ev) == ["APPOINTMENT_CANCELED", "SCHEDULE_ENTRY_UPDATED", "APPOINTMENT_REQUEST_CANCELLED"]
    p = published.expect_once("APPOINTMENT_REQUEST_CANCELLED", one(ev, "APPOINTMENT_REQUEST_CANCELLED"))["payload"]
    assert (p["appointmentRequestId"], p["assignedUserId"]) == (r3, TECH2)

    # a client withdraws a pending request without staff
    r4, _ = act(TENANT, s.submit_appointment_request, **req, contact=CONTACT)
    _, ev = act(TENANT, s.cancel_appointment_request, r4, contact=CONTACT)
    assert kinds(ev) == ["APPOINTMENT_REQUEST_CANCELLED"]
    got = published.expect_once("APPOINTMENT_REQUEST_CANCELLED", ev[0][1])
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "cancelled")


def test_bad_input_emits_nothing(act, published, db_url):
    aid, _ = act(TENANT, s.create_appointment, start_at=T0, end_at=T0 + timedelta(hours=1), timezone="UTC", user=USER)
    bad = [
        (NotFound, TENANT, s.complete_appointment, (str(uuid.uuid4()),), {}),
        (NotFound, TENANT, s.create_appointment, (),
         {"start_at": T0, "end_at": T0 + timedelta(hours=1), "timezone": "UTC", "ticket_id": str(uuid.uuid4())}),
        (WrongTenant, OTHER, s.reschedule_appointment, (aid,),
         {"start_at": T0 + timedelta(days=1), "end_at": T0 + timedelta(days=1, hours=1)}),
        (InvalidTransition, TENANT, s.technician_arrived, (aid,), {}),  # never dispatched
        (InvalidInput, TENANT, s.create_appointment, (), {"start_at": T0, "end_at": T0, "timezone": "UTC"}),
        (InvalidInput, TENANT, s.create_appointment, (),
         {"start_at": T0, "end_at": T0 + timedelta(hours=1), "timezone": "Mars/Olympus"}),
        (InvalidInput, TENANT, s.mark_no_show, (aid, "nobody"), {}),
        (InvalidInput, TENANT, s.assign_appointment, (aid, "not-a-uuid"), {}),
        (InvalidInput, "acme", s.create_appointment, (),  # the legacy SCHEDULE_ENTRY_CREATED needs a uuid tenant
         {"start_at": T0, "end_at": T0 + timedelta(hours=1), "timezone": "UTC"}),
    ]  # fmt: skip
    for err, tenant, fn, args, kw in bad:
        with pytest.raises(err):
            act(tenant, fn, *args, **kw, user=USER)
    with pytest.raises(InvalidInput, match="acting user"):  # SCHEDULE_ENTRY_UPDATED carries userId
        act(TENANT, s.complete_appointment, aid, contact=CONTACT)
    act(TENANT, s.complete_appointment, aid, user=USER)
    with pytest.raises(InvalidTransition):
        act(TENANT, s.cancel_appointment, aid, user=USER)
    with pytest.raises(InvalidTransition):
        act(TENANT, s.dispatch_technician, aid, TECH, user=USER)
    assert count_events(db_url) == 4  # created + entry created, completed + entry updated
