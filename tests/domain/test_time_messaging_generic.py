"""Time entries, internal messaging and custom events: each action puts its events on the stream once, valid."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from domain import (
    generic,
    messaging,
    projects,
    tickets,
    time_entries,
)  # importing registers their tables for create_all
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "TICKET_TIME_ENTRY_ADDED",
    "TIME_ENTRY_SUBMITTED",
    "TIME_ENTRY_APPROVED",
    "MESSAGE_SENT",
    "CUSTOM_EVENT",
    "UNKNOWN",
}
TENANT = str(uuid.uuid4())  # these are legacy bus types: the tenant must be a UUID
OTHER = str(uuid.uuid4())
TECH = str(uuid.uuid4())
MANAGER = str(uuid.uuid4())


def only(published, ev, event_type):
    """The action emitted exactly one event, of ``event_type``; return it as it reached the stream."""
    assert [t for t, _ in ev] == [event_type]
    return published.expect_once(event_type, ev[0][1])


def outbox_count(db_url):
    with psycopg.connect(db_url) as c:
        return c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]


def test_time_entry_lifecycle(act, published):
    tid, _ = act(TENANT, tickets.create_ticket, title="Replace switch", user=MANAGER)

    eid, ev = act(TENANT, time_entries.add_time_entry, "TICKET", tid, minutes=45, billable=False, user=TECH)
    got = only(published, ev, "TICKET_TIME_ENTRY_ADDED")
    p = got["payload"]
    assert (p["ticketId"], p["timeEntryId"], p["minutes"], p["billable"]) == (tid, eid, 45, False)
    assert (p["actorUserId"], got["entry"]["user_id"]) == (TECH, TECH)

    with pytest.raises(InvalidTransition):  # approval needs a submitted entry
        act(TENANT, time_entries.approve_time_entry, eid, user=MANAGER)
    with pytest.raises(InvalidInput):  # only the owner submits
        act(TENANT, time_entries.submit_time_entry, eid, user=MANAGER)

    _, ev = act(TENANT, time_entries.submit_time_entry, eid, user=TECH)
    got = only(published, ev, "TIME_ENTRY_SUBMITTED")
    p = got["payload"]
    assert (p["timeEntryId"], p["userId"], p["workItemId"], p["workItemType"]) == (eid, TECH, tid, "TICKET")
    assert (got["entry"]["from_state"], got["entry"]["to_state"], got["entry"]["tenant"]) == (
        "draft",
        "submitted",
        TENANT,
    )

    _, ev = act(TENANT, time_entries.approve_time_entry, eid, user=MANAGER)
    got = only(published, ev, "TIME_ENTRY_APPROVED")
    p = got["payload"]
    assert (p["timeEntryId"], p["userId"], p["ownerUserId"], p["workItemId"], p["workItemType"]) == (
        eid, MANAGER, TECH, tid, "TICKET",
    )  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("submitted", "approved")
    with pytest.raises(InvalidTransition):
        act(TENANT, time_entries.approve_time_entry, eid, user=MANAGER)

    # time on a project task: no ticket event, the same approval flow
    project, _ = act(TENANT, projects.create_project, name="Network refresh", user=MANAGER)
    task, _ = act(TENANT, projects.create_task, project, title="Cable rack 3", user=MANAGER)
    pid, ev = act(TENANT, time_entries.add_time_entry, "PROJECT_TASK", task, minutes=90, user=TECH)
    assert ev == []
    _, ev = act(TENANT, time_entries.submit_time_entry, pid, user=TECH)
    p = only(published, ev, "TIME_ENTRY_SUBMITTED")["payload"]
    assert (p["timeEntryId"], p["workItemId"], p["workItemType"], p["minutes"]) == (pid, task, "PROJECT_TASK", 90)


def test_message_sent(act, published):
    cid, ev = act(TENANT, messaging.start_conversation, {TECH: "Ana Tech", MANAGER: "Max Manager"}, user=TECH)
    assert ev == []
    body = "Switch in rack 3 is replaced; " + "details follow. " * 20
    mid, ev = act(TENANT, messaging.send_message, cid, MANAGER, body, user=TECH)
    got = only(published, ev, "MESSAGE_SENT")
    p = got["payload"]
    assert (p["messageId"], p["senderId"], p["recipientId"], p["conversationId"], p["senderName"]) == (
        mid, TECH, MANAGER, cid, "Ana Tech",
    )  # fmt: skip
    assert p["messagePreview"].startswith("Switch in rack 3 is replaced;") and len(p["messagePreview"]) == 120
    assert got["entry"]["user_id"] == TECH

    with pytest.raises(InvalidInput):  # the recipient must be another member
        act(TENANT, messaging.send_message, cid, str(uuid.uuid4()), "hi", user=TECH)
    with pytest.raises(InvalidInput):  # and so must the sender
        act(TENANT, messaging.send_message, cid, MANAGER, "hi", user=str(uuid.uuid4()))


def test_custom_and_unknown_events(act, published):
    act(TENANT, generic.define_custom_event, "backup.completed", description="nightly backup finished")
    lid, ev = act(TENANT, generic.emit_custom_event, "backup.completed", {"sizeGb": 42, "host": "nas-1"}, user=TECH)
    got = only(published, ev, "CUSTOM_EVENT")
    p = got["payload"]
    assert (p["eventName"], p["customEventId"], p["userId"], p["sizeGb"], p["host"]) == (
        "backup.completed", lid, TECH, 42, "nas-1",
    )  # fmt: skip
    assert got["entry"]["user_id"] == TECH and got["entry"]["tenant"] == TENANT

    lid, ev = act(TENANT, generic.emit_custom_event, "printer.toner_low", {"level": 5})
    p = only(published, ev, "UNKNOWN")["payload"]  # never defined for this tenant
    assert (p["eventName"], p["customEventId"], p["level"]) == ("printer.toner_low", lid, 5) and "userId" not in p

    # a definition is per tenant
    _, ev = act(OTHER, generic.emit_custom_event, "backup.completed", user=TECH)
    assert [t for t, _ in ev] == ["UNKNOWN"]
    published.expect_once("UNKNOWN", ev[0][1])


def test_bad_input_emits_nothing(act, published, db_url):
    tid, _ = act(TENANT, tickets.create_ticket, title="x", user=MANAGER)
    eid, _ = act(TENANT, time_entries.add_time_entry, "TICKET", tid, minutes=10, user=TECH)
    cid, _ = act(TENANT, messaging.start_conversation, {TECH: "Ana", MANAGER: "Max"}, user=TECH)
    act(TENANT, generic.define_custom_event, "known")
    before = outbox_count(db_url)
    cases = [
        (NotFound, TENANT, time_entries.add_time_entry, ("TICKET", str(uuid.uuid4())), {"minutes": 5, "user": TECH}),
        (WrongTenant, OTHER, time_entries.add_time_entry, ("TICKET", tid), {"minutes": 5, "user": TECH}),
        (InvalidInput, TENANT, time_entries.add_time_entry, ("PROJECT", tid), {"minutes": 5, "user": TECH}),
        (InvalidInput, TENANT, time_entries.add_time_entry, ("TICKET", tid), {"minutes": 0, "user": TECH}),
        (InvalidInput, TENANT, time_entries.add_time_entry, ("TICKET", tid), {"minutes": 5}),  # no user
        (NotFound, TENANT, time_entries.submit_time_entry, (str(uuid.uuid4()),), {"user": TECH}),
        (WrongTenant, OTHER, time_entries.submit_time_entry, (eid,), {"user": TECH}),
        (NotFound, TENANT, messaging.send_message, (str(uuid.uuid4()), MANAGER, "hi"), {"user": TECH}),
        (WrongTenant, OTHER, messaging.send_message, (cid, MANAGER, "hi"), {"user": TECH}),
        (InvalidInput, TENANT, messaging.send_message, (cid, MANAGER, "  "), {"user": TECH}),
        (InvalidInput, TENANT, messaging.send_message, (cid, TECH, "me"), {"user": TECH}),
        (InvalidInput, TENANT, generic.emit_custom_event, ("", {}), {}),
        (InvalidInput, TENANT, generic.emit_custom_event, ("known", {"tenantId": OTHER}), {}),
        (InvalidInput, TENANT, generic.emit_custom_event, ("known", {"x": object()}), {}),
        (InvalidInput, TENANT, generic.define_custom_event, ("known",), {}),
        (InvalidInput, "plain-tenant", generic.emit_custom_event, ("known", {}), {}),  # legacy needs a UUID tenant
    ]
    for error, tenant, fn, args, kw in cases:
        with pytest.raises(error):
            act(tenant, fn, *args, **kw)
    assert outbox_count(db_url) == before
