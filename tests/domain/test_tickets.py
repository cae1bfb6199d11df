"""Tickets: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from domain import tickets  # importing registers its tables for the engine fixture's create_all
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant, now

COVERED = {
    "TICKET_CREATED", "TICKET_STATUS_CHANGED", "TICKET_UPDATED", "TICKET_PRIORITY_CHANGED", "TICKET_CLOSED",
    "TICKET_REOPENED", "TICKET_DELETED", "TICKET_ASSIGNED", "TICKET_UNASSIGNED", "TICKET_ADDITIONAL_AGENT_ASSIGNED",
    "TICKET_MERGED", "TICKET_SPLIT", "TICKET_TAGS_CHANGED", "TICKET_QUEUE_CHANGED", "TICKET_ESCALATED",
    "TICKET_MESSAGE_ADDED", "TICKET_INTERNAL_NOTE_ADDED", "TICKET_CUSTOMER_REPLIED", "TICKET_COMMENT_ADDED",
    "TICKET_COMMENT_UPDATED", "TICKET_RESPONSE_STATE_CHANGED", "TICKET_SLA_STAGE_ENTERED", "TICKET_SLA_STAGE_MET",
    "TICKET_SLA_STAGE_BREACHED",
}  # fmt: skip
USER = str(uuid.uuid4())
AGENT = str(uuid.uuid4())
HELPER = str(uuid.uuid4())
CONTACT = str(uuid.uuid4())
TENANT = str(uuid.uuid4())  # legacy bus types (TICKET_COMMENT_*, TICKET_DELETED, ...) need a UUID tenant
OTHER = str(uuid.uuid4())


def types(ev):
    """The event types an action emitted, in order."""
    return [t for t, _ in ev]


def one(published, ev, event_type):
    """The single ``event_type`` among an action's events, as it reached the stream."""
    ids = [i for t, i in ev if t == event_type]
    assert len(ids) == 1, f"{event_type} emitted {len(ids)} times: {types(ev)}"
    return published.expect_once(event_type, ids[0])


def outbox_count(db_url):
    with psycopg.connect(db_url) as c:
        return c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]


def test_create_status_update(act, published):
    tid, ev = act("t1", tickets.create_ticket, title="Printer jammed", user=USER)
    got = published.expect_once("TICKET_CREATED", ev[0][1])
    assert got["payload"]["ticketId"] == tid and got["entry"]["user_id"] == USER

    _, ev = act("t1", tickets.change_status, tid, "open", user=USER)
    got = published.expect_once("TICKET_STATUS_CHANGED", ev[0][1])
    assert (got["payload"]["previousStatusId"], got["payload"]["newStatusId"]) == ("new", "open")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("new", "open")

    _, ev = act("t1", tickets.update_ticket, tid, priority="p1", user=USER)
    got = published.expect_once("TICKET_UPDATED", ev[0][1])
    assert got["payload"]["updatedFields"] == ["priority"]
    assert got["payload"]["changes"] == {"priority": {"previous": "p3", "new": "p1"}}


def test_priority_close_reopen_delete(act, published):
    tid, _ = act(TENANT, tickets.create_ticket, title="VPN drops", attributes={"impact": "single_user"}, user=USER)

    _, ev = act(TENANT, tickets.change_priority, tid, "p1", reason="CEO affected", user=USER)
    assert types(ev) == ["TICKET_UPDATED", "TICKET_PRIORITY_CHANGED"]
    p = one(published, ev, "TICKET_PRIORITY_CHANGED")["payload"]
    assert (p["ticketId"], p["previousPriorityId"], p["newPriorityId"], p["reason"]) == (
        tid,
        "p3",
        "p1",
        "CEO affected",
    )
    assert p["actorUserId"] == USER and p["actorType"] == "USER"
    p = one(published, ev, "TICKET_UPDATED")["payload"]
    assert p["updatedFields"] == ["priority"] and p["updatedByUserId"] == USER

    _, ev = act(TENANT, tickets.update_ticket, tid, attributes={"impact": "company_wide", "site": "HQ"}, user=USER)
    assert types(ev) == ["TICKET_UPDATED"]
    p = one(published, ev, "TICKET_UPDATED")["payload"]
    assert p["updatedFields"] == ["attributes.impact", "attributes.site"]
    assert p["changes"] == {
        "attributes.impact": {"previous": "single_user", "new": "company_wide"},
        "attributes.site": {"new": "HQ"},  # was unset: no "previous" (contracts reject explicit nulls)
    }

    _, ev = act(TENANT, tickets.close_ticket, tid, reason="fixed", user=USER)
    assert types(ev) == ["TICKET_STATUS_CHANGED", "TICKET_CLOSED"]
    got = one(published, ev, "TICKET_CLOSED")
    p = got["payload"]
    assert (p["ticketId"], p["closedByUserId"], p["reason"]) == (tid, USER, "fixed")
    assert p["updatedFields"] == ["closedAt", "status"]
    assert p["changes"]["status"] == {"previous": "new", "new": "closed"} and p["changes"]["closedAt"]["new"]
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("new", "closed")
    p = one(published, ev, "TICKET_STATUS_CHANGED")["payload"]
    assert (p["previousStatusId"], p["newStatusId"]) == ("new", "closed")

    _, ev = act(TENANT, tickets.reopen_ticket, tid, reason="came back", user=USER)
    assert types(ev) == ["TICKET_STATUS_CHANGED", "TICKET_REOPENED"]
    got = one(published, ev, "TICKET_REOPENED")
    p = got["payload"]
    assert (p["ticketId"], p["previousStatusId"], p["newStatusId"], p["reason"]) == (tid, "closed", "open", "came back")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("closed", "open")

    # a move into a closed status through change_status is a close too
    _, ev = act(TENANT, tickets.change_status, tid, "resolved", user=USER)
    assert types(ev) == ["TICKET_STATUS_CHANGED", "TICKET_CLOSED"]

    _, ev = act(TENANT, tickets.delete_ticket, tid, user=USER)
    got = one(published, ev, "TICKET_DELETED")
    assert got["payload"]["ticketId"] == tid and got["payload"]["userId"] == USER
    assert got["payload"]["changes"]["title"] == "VPN drops" and got["entry"]["tenant"] == TENANT
    with pytest.raises(NotFound):
        act(TENANT, tickets.change_status, tid, "open", user=USER)


def test_assignment(act, published):
    team = str(uuid.uuid4())
    tid, _ = act(TENANT, tickets.create_ticket, title="Onboard new hire", user=USER)

    _, ev = act(TENANT, tickets.assign_ticket, tid, team, assignee_type="team", user=USER)
    p = one(published, ev, "TICKET_ASSIGNED")["payload"]
    assert (p["ticketId"], p["newAssigneeId"], p["newAssigneeType"], p["assignedByUserId"]) == (tid, team, "team", USER)
    assert "previousAssigneeId" not in p and "assignedToUserId" not in p
    assert p["updatedFields"] == ["assigneeId", "assigneeType"]
    assert p["changes"]["assigneeType"] == {"new": "team"}

    _, ev = act(TENANT, tickets.assign_ticket, tid, AGENT, user=USER)
    p = one(published, ev, "TICKET_ASSIGNED")["payload"]
    assert (p["previousAssigneeId"], p["previousAssigneeType"]) == (team, "team")
    assert (p["newAssigneeId"], p["newAssigneeType"], p["assignedToUserId"]) == (AGENT, "user", AGENT)
    assert p["changes"]["assigneeId"] == {"previous": team, "new": AGENT}

    _, ev = act(TENANT, tickets.assign_ticket, tid, AGENT, user=USER)
    assert ev == []  # same assignee: nothing changes, nothing emitted

    _, ev = act(TENANT, tickets.add_additional_agent, tid, HELPER, user=USER)
    got = one(published, ev, "TICKET_ADDITIONAL_AGENT_ASSIGNED")
    p = got["payload"]
    assert (p["ticketId"], p["primaryAgentId"], p["additionalAgentId"], p["assignedByUserId"]) == (
        tid, AGENT, HELPER, USER,
    )  # fmt: skip
    assert got["entry"]["user_id"] == USER

    _, ev = act(TENANT, tickets.unassign_ticket, tid, reason="on leave", user=USER)
    p = one(published, ev, "TICKET_UNASSIGNED")["payload"]
    assert (p["ticketId"], p["previousAssigneeId"], p["previousAssigneeType"], p["reason"]) == (
        tid, AGENT, "user", "on leave",
    )  # fmt: skip
    with pytest.raises(InvalidTransition):
        act(TENANT, tickets.unassign_ticket, tid, user=USER)


def test_bundles_tags_boards(act, published):
    master, _ = act(TENANT, tickets.create_ticket, title="Email outage", user=USER)
    child1, _ = act(TENANT, tickets.create_ticket, title="Cannot send mail", user=USER)
    child2, _ = act(TENANT, tickets.create_ticket, title="Outlook offline", user=USER)

    _, ev = act(TENANT, tickets.merge_ticket, child1, master, reason="same outage", user=USER)
    p = one(published, ev, "TICKET_MERGED")["payload"]
    assert (p["sourceTicketId"], p["targetTicketId"], p["reason"]) == (child1, master, "same outage")
    act(TENANT, tickets.merge_ticket, child2, master, user=USER)
    with pytest.raises(InvalidTransition):  # a child cannot become a master
        act(TENANT, tickets.merge_ticket, master, child1, user=USER)

    _, ev = act(TENANT, tickets.split_ticket, master, [child2, child1], reason="different causes", user=USER)
    p = one(published, ev, "TICKET_SPLIT")["payload"]
    assert (p["originalTicketId"], p["newTicketIds"], p["reason"]) == (master, [child2, child1], "different causes")
    with pytest.raises(InvalidInput):  # no longer in the bundle
        act(TENANT, tickets.split_ticket, master, [child1], user=USER)

    t1, t2, t3 = (str(uuid.uuid4()) for _ in range(3))
    _, ev = act(TENANT, tickets.change_tags, master, add=[t1, t2], user=USER)
    p = one(published, ev, "TICKET_TAGS_CHANGED")["payload"]
    assert p["ticketId"] == master and p["addedTagIds"] == [t1, t2] and "removedTagIds" not in p
    _, ev = act(TENANT, tickets.change_tags, master, add=[t2, t3], remove=[t1], user=USER)
    p = one(published, ev, "TICKET_TAGS_CHANGED")["payload"]
    assert (p["addedTagIds"], p["removedTagIds"]) == ([t3], [t1])  # t2 was already there

    l1 = act(TENANT, tickets.create_board, "Service desk", tier=1)[0]
    l2 = act(TENANT, tickets.create_board, "Messaging team", tier=2)[0]
    _, ev = act(TENANT, tickets.move_to_board, master, l1, user=USER)
    p = one(published, ev, "TICKET_QUEUE_CHANGED")["payload"]
    assert p["ticketId"] == master and p["newBoardId"] == l1 and "previousBoardId" not in p

    _, ev = act(TENANT, tickets.escalate_ticket, master, l2, reason="needs Exchange admin", user=USER)
    assert types(ev) == ["TICKET_ESCALATED", "TICKET_QUEUE_CHANGED"]
    p = one(published, ev, "TICKET_ESCALATED")["payload"]
    assert (p["ticketId"], p["fromQueueId"], p["toQueueId"], p["reason"]) == (master, l1, l2, "needs Exchange admin")
    p = one(published, ev, "TICKET_QUEUE_CHANGED")["payload"]
    assert (p["previousBoardId"], p["newBoardId"]) == (l1, l2)
    with pytest.raises(InvalidTransition):  # back down is not an escalation
        act(TENANT, tickets.escalate_ticket, master, l1, user=USER)


def test_messages_and_response_state(act, published):
    tid, _ = act(TENANT, tickets.create_ticket, title="Laptop slow", contact_id=CONTACT, user=USER)

    mid, ev = act(TENANT, tickets.add_message, tid, "Can you reboot and try again?", user=AGENT)
    assert types(ev) == ["TICKET_MESSAGE_ADDED", "TICKET_COMMENT_ADDED", "TICKET_RESPONSE_STATE_CHANGED"]
    p = one(published, ev, "TICKET_MESSAGE_ADDED")["payload"]
    assert (p["ticketId"], p["messageId"], p["visibility"], p["authorId"], p["authorType"], p["channel"]) == (
        tid, mid, "public", AGENT, "user", "ui",
    )  # fmt: skip
    got = one(published, ev, "TICKET_COMMENT_ADDED")
    p = got["payload"]
    assert (p["ticketId"], p["userId"]) == (tid, AGENT) and got["entry"]["user_id"] == AGENT
    assert p["comment"] == {"id": mid, "content": "Can you reboot and try again?", "author": AGENT,
                            "isInternal": False, "authorType": "internal"}  # fmt: skip
    got = one(published, ev, "TICKET_RESPONSE_STATE_CHANGED")
    assert "previousResponseState" not in got["payload"] and got["payload"]["newResponseState"] == "awaiting_client"
    assert got["entry"]["to_state"] == "awaiting_client"

    nid, ev = act(TENANT, tickets.add_message, tid, "User is on an old image", internal=True, user=AGENT)
    assert types(ev) == ["TICKET_MESSAGE_ADDED", "TICKET_INTERNAL_NOTE_ADDED", "TICKET_COMMENT_ADDED"]
    p = one(published, ev, "TICKET_INTERNAL_NOTE_ADDED")["payload"]
    assert (p["ticketId"], p["noteId"], p["actorUserId"]) == (tid, nid, AGENT)
    assert one(published, ev, "TICKET_MESSAGE_ADDED")["payload"]["visibility"] == "internal"
    assert one(published, ev, "TICKET_COMMENT_ADDED")["payload"]["comment"]["isInternal"] is True

    rid, ev = act(
        TENANT, tickets.add_message, tid, "Still slow.", channel="email", attachments_count=1, contact=CONTACT
    )
    assert types(ev) == [
        "TICKET_MESSAGE_ADDED", "TICKET_CUSTOMER_REPLIED", "TICKET_COMMENT_ADDED", "TICKET_RESPONSE_STATE_CHANGED",
    ]  # fmt: skip
    p = one(published, ev, "TICKET_CUSTOMER_REPLIED")["payload"]
    assert (p["ticketId"], p["messageId"], p["contactId"], p["channel"], p["attachmentsCount"]) == (
        tid, rid, CONTACT, "email", 1,
    )  # fmt: skip
    assert (p["actorContactId"], p["actorType"]) == (CONTACT, "CONTACT")
    p = one(published, ev, "TICKET_MESSAGE_ADDED")["payload"]
    assert (p["authorId"], p["authorType"], p["visibility"]) == (CONTACT, "contact", "public")
    p = one(published, ev, "TICKET_COMMENT_ADDED")["payload"]
    assert p["userId"] == CONTACT and p["comment"]["authorType"] == "client"
    p = one(published, ev, "TICKET_RESPONSE_STATE_CHANGED")["payload"]
    assert (p["previousResponseState"], p["newResponseState"], p["trigger"]) == (
        "awaiting_client", "awaiting_internal", "comment",
    )  # fmt: skip

    _, ev = act(TENANT, tickets.edit_message, mid, "Can you reboot twice?", user=AGENT)
    p = one(published, ev, "TICKET_COMMENT_UPDATED")["payload"]
    assert (p["ticketId"], p["userId"]) == (tid, AGENT)
    assert (p["oldComment"]["content"], p["newComment"]["content"]) == (
        "Can you reboot and try again?",
        "Can you reboot twice?",
    )
    assert p["oldComment"]["id"] == p["newComment"]["id"] == mid
    assert p["changes"] == {"content": {"previous": "Can you reboot and try again?", "new": "Can you reboot twice?"}}
    with pytest.raises(InvalidInput):  # only its author edits a message
        act(TENANT, tickets.edit_message, mid, "hijacked", user=USER)

    _, ev = act(TENANT, tickets.set_response_state, tid, "awaiting_client", user=AGENT)
    p = one(published, ev, "TICKET_RESPONSE_STATE_CHANGED")["payload"]
    assert (p["previousResponseState"], p["newResponseState"], p["trigger"]) == (
        "awaiting_internal", "awaiting_client", "manual",
    )  # fmt: skip

    _, ev = act(TENANT, tickets.close_ticket, tid, user=AGENT)  # closing clears who the ticket waits on
    assert types(ev) == ["TICKET_STATUS_CHANGED", "TICKET_CLOSED", "TICKET_RESPONSE_STATE_CHANGED"]
    p = one(published, ev, "TICKET_RESPONSE_STATE_CHANGED")["payload"]
    assert (p["previousResponseState"], p["trigger"]) == ("awaiting_client", "close") and "newResponseState" not in p


def test_sla_stages(act, published):
    policy, _ = act(TENANT, tickets.create_sla_policy, "Gold", response_minutes=30, resolution_minutes=240)
    tid, ev = act(TENANT, tickets.create_ticket, title="Server down", priority="p1", sla_policy_id=policy, user=USER)
    assert types(ev) == ["TICKET_CREATED", "TICKET_SLA_STAGE_ENTERED", "TICKET_SLA_STAGE_ENTERED"]
    entered = [published.expect_once(t, i)["payload"] for t, i in ev[1:]]
    assert [(p["ticketId"], p["slaPolicyId"], p["stage"]) for p in entered] == [
        (tid, policy, "response"), (tid, policy, "resolution"),
    ]  # fmt: skip
    assert entered[0]["targetAt"] < entered[1]["targetAt"]

    _, ev = act(TENANT, tickets.add_message, tid, "Looking into it now.", user=AGENT)
    got = one(published, ev, "TICKET_SLA_STAGE_MET")
    p = got["payload"]
    assert (p["ticketId"], p["slaPolicyId"], p["stage"], p["targetAt"]) == (
        tid, policy, "response", entered[0]["targetAt"],
    )  # fmt: skip
    assert p["metAt"] <= p["targetAt"] and (got["entry"]["from_state"], got["entry"]["to_state"]) == ("active", "met")

    later = now() + timedelta(hours=5)
    breached, ev = act(TENANT, tickets.check_sla_breaches, at=later)
    assert breached == [(tid, "resolution")]
    got = one(published, ev, "TICKET_SLA_STAGE_BREACHED")
    p = got["payload"]
    assert (p["ticketId"], p["slaPolicyId"], p["stage"], p["targetAt"]) == (
        tid, policy, "resolution", entered[1]["targetAt"],
    )  # fmt: skip
    assert 3600 <= p["overdueBySeconds"] < 3700 and got["entry"]["to_state"] == "breached"
    assert act(TENANT, tickets.check_sla_breaches, at=later)[1] == []  # settled stages are not breached twice

    # closing settles what still runs: a fresh policy on another ticket is met at close
    t2, _ = act(TENANT, tickets.create_ticket, title="Password reset", user=USER)
    act(TENANT, tickets.apply_sla_policy, t2, policy, user=USER)
    with pytest.raises(InvalidTransition):
        act(TENANT, tickets.apply_sla_policy, t2, policy, user=USER)
    _, ev = act(TENANT, tickets.close_ticket, t2, user=AGENT)
    assert types(ev) == ["TICKET_STATUS_CHANGED", "TICKET_CLOSED", "TICKET_SLA_STAGE_MET", "TICKET_SLA_STAGE_MET"]
    assert [published.expect_once(t, i)["payload"]["stage"] for t, i in ev[2:]] == ["response", "resolution"]


def test_bad_input_emits_nothing(act, published, db_url):
    tid, _ = act("t1", tickets.create_ticket, title="x", user=USER)
    with pytest.raises(NotFound):
        act("t1", tickets.change_status, str(uuid.uuid4()), "open")
    with pytest.raises(WrongTenant):
        act("t2", tickets.change_status, tid, "open")
    with pytest.raises(InvalidTransition):
        act("t1", tickets.change_status, tid, "new")
    assert outbox_count(db_url) == 1


def test_bad_input_more(act, published, db_url):
    tid, _ = act(TENANT, tickets.create_ticket, title="x", user=USER)
    other, _ = act(OTHER, tickets.create_ticket, title="y", user=USER)
    legacy, _ = act("plain-tenant", tickets.create_ticket, title="z", user=USER)
    before = outbox_count(db_url)
    cases = [
        (InvalidInput, TENANT, tickets.create_ticket, (), {"title": "  "}),
        (InvalidInput, TENANT, tickets.create_ticket, (), {"title": "a", "priority": "urgent"}),
        (NotFound, TENANT, tickets.create_ticket, (), {"title": "a", "board_id": str(uuid.uuid4())}),
        (NotFound, TENANT, tickets.change_status, ("not-a-uuid", "open"), {}),
        (InvalidInput, TENANT, tickets.change_status, (tid, "frozen"), {}),
        (InvalidTransition, TENANT, tickets.reopen_ticket, (tid,), {}),
        (InvalidInput, TENANT, tickets.update_ticket, (tid,), {"status": "open"}),
        (InvalidTransition, TENANT, tickets.change_priority, (tid, "p3"), {}),
        (InvalidInput, TENANT, tickets.assign_ticket, (tid, "nobody"), {}),
        (
            InvalidTransition,
            TENANT,
            tickets.add_additional_agent,
            (tid, HELPER),
            {"user": USER},
        ),  # no primary agent yet
        (WrongTenant, TENANT, tickets.merge_ticket, (tid, other), {}),
        (InvalidInput, TENANT, tickets.merge_ticket, (tid, tid), {}),
        (InvalidInput, TENANT, tickets.change_tags, (tid,), {"add": ["x"]}),
        (InvalidInput, TENANT, tickets.add_message, (tid, "no author"), {}),
        (InvalidInput, TENANT, tickets.delete_ticket, (tid,), {}),  # needs a user
        (InvalidInput, "plain-tenant", tickets.delete_ticket, (legacy,), {"user": USER}),  # legacy needs a UUID tenant
        (InvalidInput, "plain-tenant", tickets.add_message, (legacy, "hi"), {"user": USER}),
        (InvalidInput, TENANT, tickets.check_sla_breaches, (), {"at": "tomorrow"}),
    ]
    for error, tenant, fn, args, kw in cases:
        with pytest.raises(error):
            act(tenant, fn, *args, **kw)
    with pytest.raises(InvalidInput):  # contacts post no internal notes
        act(TENANT, tickets.add_message, tid, "psst", internal=True, contact=CONTACT)
    assert outbox_count(db_url) == before
