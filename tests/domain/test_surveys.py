"""Surveys and CSAT alerts: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import psycopg
import pytest

from domain import crm, surveys, tickets  # importing registers their tables for the engine fixture
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant, now

COVERED = {
    "SURVEY_SENT", "SURVEY_INVITATION_SENT", "SURVEY_REMINDER_SENT", "SURVEY_EXPIRED", "SURVEY_RESPONSE_RECEIVED",
    "SURVEY_RESPONSE_SUBMITTED", "SURVEY_NEGATIVE_RESPONSE", "CSAT_ALERT_TRIGGERED",
}  # fmt: skip
TENANT = str(uuid.uuid4())  # ticket surveys emit legacy bus types: a UUID tenant
USER = str(uuid.uuid4())
AGENT = str(uuid.uuid4())
TEAM = str(uuid.uuid4())


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


def closed_ticket(act, client, contact, title):
    """A ticket of the contact, assigned to AGENT and closed."""
    tid, _ = act(TENANT, tickets.create_ticket, title=title, client_id=client, contact_id=contact, user=USER)
    act(TENANT, tickets.assign_ticket, tid, AGENT, user=USER)
    act(TENANT, tickets.close_ticket, tid, user=AGENT)
    return tid


def test_ticket_survey_responses_and_csat_alerts(act, published, db_url):
    client, _ = act(TENANT, crm.create_client, name="Acme Dental", user=USER)
    contact, _ = act(TENANT, crm.create_contact, client, full_name="Jane Doe", email="jane@acme.example", user=USER)
    tpl, ev = act(TENANT, surveys.create_template, "Ticket CSAT", user=USER)
    assert ev == []
    open_tid, _ = act(TENANT, tickets.create_ticket, title="Open", contact_id=contact, user=USER)
    with pytest.raises(InvalidTransition):
        act(TENANT, surveys.send_survey, tpl, ticket_id=open_tid)  # only resolved/closed tickets are surveyed

    tid = closed_ticket(act, client, contact, "Printer jammed")
    (sid, token), ev = act(TENANT, surveys.send_survey, tpl, ticket_id=tid)
    assert types(ev) == ["SURVEY_SENT", "SURVEY_INVITATION_SENT"]
    got = one(published, ev, "SURVEY_SENT")
    p = got["payload"]
    assert (p["surveyId"], p["surveyType"], p["recipientId"], p["ticketId"], p["channel"], p["templateId"]) == (
        sid, "csat", contact, tid, "email", tpl)  # fmt: skip
    assert p["actorType"] == "SYSTEM" and got["entry"]["to_state"] == "sent"
    p = one(published, ev, "SURVEY_INVITATION_SENT")["payload"]
    assert (p["invitationId"], p["ticketId"], p["companyId"], p["contactId"]) == (sid, tid, client, contact)
    assert p["surveyTokenHash"] == hashlib.sha256(token.encode()).hexdigest()
    with pytest.raises(InvalidTransition):
        act(TENANT, surveys.send_survey, tpl, ticket_id=tid)  # one open survey per ticket and template

    n, ev = act(TENANT, surveys.remind_survey, sid, user=USER)
    p = one(published, ev, "SURVEY_REMINDER_SENT")["payload"]
    assert n == 1 and (p["surveyId"], p["recipientId"], p["ticketId"], p["channel"], p["reminderNumber"]) == (
        sid, contact, tid, "email", 1)  # fmt: skip

    with pytest.raises(InvalidInput):
        act(TENANT, surveys.submit_response, sid, "forged-token", 5, contact=contact)
    rid, ev = act(TENANT, surveys.submit_response, sid, token, 2, comment="Took days", contact=contact)
    assert types(ev) == ["SURVEY_RESPONSE_RECEIVED", "SURVEY_RESPONSE_SUBMITTED", "SURVEY_NEGATIVE_RESPONSE"]
    got = one(published, ev, "SURVEY_RESPONSE_RECEIVED")
    p = got["payload"]
    assert (p["surveyId"], p["responseId"], p["recipientId"], p["ticketId"], p["score"], p["comment"]) == (
        sid, rid, contact, tid, 2, "Took days")  # fmt: skip
    assert (p["actorContactId"], p["actorType"]) == (contact, "CONTACT")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("sent", "responded")
    p = one(published, ev, "SURVEY_RESPONSE_SUBMITTED")["payload"]
    assert (p["responseId"], p["ticketId"], p["companyId"], p["rating"], p["hasComment"]) == (rid, tid, client, 2, True)
    p = one(published, ev, "SURVEY_NEGATIVE_RESPONSE")["payload"]
    with psycopg.connect(db_url) as c:
        number = c.execute("SELECT number FROM ref_tickets WHERE id = %s", (tid,)).fetchone()[0]
    assert (p["responseId"], p["ticketId"], p["ticketNumber"], p["rating"], p["comment"], p["assignedTo"]) == (
        rid, tid, number, 2, "Took days", AGENT)  # fmt: skip
    assert (p["companyId"], p["companyName"], p["contactName"]) == (client, "Acme Dental", "Jane Doe")
    with pytest.raises(InvalidTransition):
        act(TENANT, surveys.submit_response, sid, token, 5, contact=contact)  # answered already

    # a good score: no negative-response alert
    tid2 = closed_ticket(act, client, contact, "New laptop")
    (sid2, token2), _ = act(TENANT, surveys.send_survey, tpl, ticket_id=tid2, channel="in_app")
    rid2, ev = act(TENANT, surveys.submit_response, sid2, token2, 4, contact=contact)
    assert types(ev) == ["SURVEY_RESPONSE_RECEIVED", "SURVEY_RESPONSE_SUBMITTED"]
    p = one(published, ev, "SURVEY_RESPONSE_SUBMITTED")["payload"]
    assert (p["responseId"], p["rating"], p["hasComment"]) == (rid2, 4, False)

    # CSAT alert rules: the agent's weekly average (2 and 4 -> 3.0) is below 3.5; the org's daily average, once
    # the first answer is a day old, is 4 against 4.5, with the previous day's 2 as baseline; the team has no answers
    act(TENANT, surveys.create_alert_rule, window="weekly", threshold=3.5, scope_type="agent",
        scope_id=AGENT, user=USER)  # fmt: skip
    act(TENANT, surveys.create_alert_rule, window="daily", threshold=4.5, user=USER)
    act(TENANT, surveys.create_alert_rule, window="weekly", threshold=5, scope_type="team", scope_id=TEAM, user=USER)
    with psycopg.connect(db_url) as c:
        c.execute("UPDATE ref_survey_responses SET responded_at = responded_at - interval '1 day' WHERE id = %s",
                  (rid,))  # fmt: skip
    at = now() + timedelta(minutes=1)
    fired, ev = act(TENANT, surveys.evaluate_csat_alerts, at=at)
    assert len(fired) == 2 and types(ev) == ["CSAT_ALERT_TRIGGERED"] * 2
    alerts = {}
    for _, eid in ev:
        p = published.expect_once("CSAT_ALERT_TRIGGERED", eid)["payload"]
        alerts[p["scopeType"]] = p
    p = alerts["agent"]
    assert (p["window"], p["scopeId"], p["score"], p["threshold"], p["responseCount"]) == ("weekly", AGENT, 3.0, 3.5, 2)
    assert "baseline" not in p and "delta" not in p
    p = alerts["org"]
    assert (p["window"], p["score"], p["baseline"], p["delta"], p["threshold"]) == ("daily", 4.0, 2.0, 2.0, 4.5)
    assert "scopeId" not in p and p["actorType"] == "SYSTEM"
    assert act(TENANT, surveys.evaluate_csat_alerts, at=at + timedelta(hours=1)) == ([], [])  # once per window


def test_reminders_expiry_and_standalone_surveys(act, published):
    contact = str(uuid.uuid4())
    tpl, _ = act("t1", surveys.create_template, "Quarterly NPS", survey_type="nps", reminder_after_hours=24,
                 max_reminders=1, expires_after_days=3)  # fmt: skip
    (sid, token), ev = act("t1", surveys.send_survey, tpl, contact_id=contact, channel="sms", user=USER)
    assert types(ev) == ["SURVEY_SENT"]  # no ticket: no legacy invitation (and any tenant id works)
    p = one(published, ev, "SURVEY_SENT")["payload"]
    assert (p["surveyId"], p["surveyType"], p["recipientId"], p["channel"], p["actorUserId"]) == (
        sid, "nps", contact, "sms", USER)  # fmt: skip
    assert "ticketId" not in p
    (sid2, token2), _ = act("t1", surveys.send_survey, tpl, contact_id=contact)

    start = now()
    out, ev = act("t1", surveys.sweep_surveys, at=start + timedelta(hours=1))
    assert (out, ev) == ({"expired": [], "reminded": []}, [])
    out, ev = act("t1", surveys.sweep_surveys, at=start + timedelta(hours=25))
    assert out == {"expired": [], "reminded": [sid, sid2]}
    reminders = {}
    for _, eid in ev:
        p = published.expect_once("SURVEY_REMINDER_SENT", eid)["payload"]
        reminders[p["surveyId"]] = p
    assert (reminders[sid]["reminderNumber"], reminders[sid]["channel"], reminders[sid]["recipientId"]) == (
        1, "sms", contact)  # fmt: skip
    assert act("t1", surveys.sweep_surveys, at=start + timedelta(hours=60)) == ({"expired": [], "reminded": []}, [])
    with pytest.raises(InvalidTransition):
        act("t1", surveys.remind_survey, sid)  # the template allows one reminder

    rid, ev = act("t1", surveys.submit_response, sid2, token2, 9, comment="  ", contact=contact)
    assert types(ev) == ["SURVEY_RESPONSE_RECEIVED"]
    p = one(published, ev, "SURVEY_RESPONSE_RECEIVED")["payload"]
    assert (p["surveyId"], p["responseId"], p["score"]) == (sid2, rid, 9) and "comment" not in p

    out, ev = act("t1", surveys.sweep_surveys, at=start + timedelta(days=4))
    assert out == {"expired": [sid], "reminded": []}
    got = one(published, ev, "SURVEY_EXPIRED")
    p = got["payload"]
    assert (p["surveyId"], p["recipientId"]) == (sid, contact) and "ticketId" not in p and p["expiredAt"]
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("sent", "expired")
    with pytest.raises(InvalidTransition):
        act("t1", surveys.submit_response, sid, token, 10, contact=contact)


def test_bad_input_emits_nothing(act, db_url):
    tpl, _ = act(TENANT, surveys.create_template, "CSAT")
    (sid, token), _ = act(TENANT, surveys.send_survey, tpl, contact_id=str(uuid.uuid4()))
    before = outbox_count(db_url)
    with pytest.raises(NotFound):
        act(TENANT, surveys.send_survey, str(uuid.uuid4()), contact_id=str(uuid.uuid4()))
    with pytest.raises(NotFound):
        act(TENANT, surveys.send_survey, tpl, ticket_id=str(uuid.uuid4()))
    with pytest.raises(NotFound):
        act(TENANT, surveys.remind_survey, "nope")
    with pytest.raises(WrongTenant):
        act(str(uuid.uuid4()), surveys.submit_response, sid, token, 5)
    with pytest.raises(WrongTenant):
        act("t2", surveys.send_survey, tpl, contact_id=str(uuid.uuid4()))
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.submit_response, sid, token, 6)  # off the 1-5 scale
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.submit_response, sid, token, True)
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.send_survey, tpl)  # nobody to ask
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.send_survey, tpl, contact_id=str(uuid.uuid4()), channel="fax")
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.create_template, "X", survey_type="custom")  # custom needs a scale
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.create_alert_rule, window="hourly", threshold=3)
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.create_alert_rule, window="daily", threshold=3, scope_type="agent")
    with pytest.raises(InvalidInput):
        act(TENANT, surveys.evaluate_csat_alerts, at=now().replace(tzinfo=None))
    act(TENANT, surveys.submit_response, sid, token, 5)
    with pytest.raises(InvalidTransition):
        act(TENANT, surveys.remind_survey, sid)
    with pytest.raises(InvalidTransition):
        act(TENANT, surveys.submit_response, sid, token, 4)
    assert outbox_count(db_url) == before + 1  # only the accepted response
