"""Email and notifications: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from domain import email, notifications, tickets  # importing registers their tables for the engine fixture
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "EMAIL_PROVIDER_CONNECTED", "EMAIL_PROVIDER_DISCONNECTED", "INBOUND_EMAIL_RECEIVED",
    "INBOUND_EMAIL_REPLY_RECEIVED", "OUTBOUND_EMAIL_QUEUED", "OUTBOUND_EMAIL_SENT", "OUTBOUND_EMAIL_FAILED",
    "EMAIL_DELIVERED", "EMAIL_BOUNCED", "EMAIL_COMPLAINT_RECEIVED", "EMAIL_UNSUBSCRIBED",
    "NOTIFICATION_SENT", "NOTIFICATION_DELIVERED", "NOTIFICATION_FAILED", "NOTIFICATION_READ",
}  # fmt: skip
TENANT = str(uuid.uuid4())
USER = str(uuid.uuid4())
CONTACT = str(uuid.uuid4())


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


def test_mailbox_and_inbound_matching(act, published, db_url):
    box, ev = act(TENANT, email.connect_mailbox, provider_type="microsoft", name="Helpdesk",
                  address="Help@Acme.example", user=USER)  # fmt: skip
    got = one(published, ev, "EMAIL_PROVIDER_CONNECTED")
    p = got["payload"]
    assert (p["providerId"], p["providerType"], p["providerName"], p["mailbox"]) == (
        box, "microsoft", "Helpdesk", "help@acme.example")  # fmt: skip
    assert got["entry"]["user_id"] == USER and got["entry"]["to_state"] == "connected"

    # a new conversation: received, no reply match, a thread of its own
    first, ev = act(TENANT, email.receive_email, box, header_id="<a1@customer.example>",
                    from_address="jane@customer.example", from_name="Jane Doe", to=["help@acme.example"],
                    cc=["boss@customer.example"], subject="Printer on fire", text="Please help",
                    attachments=[{"name": "photo.jpg", "content_type": "image/jpeg", "size": 2048}])  # fmt: skip
    assert types(ev) == ["INBOUND_EMAIL_RECEIVED"]
    p = one(published, ev, "INBOUND_EMAIL_RECEIVED")["payload"]
    data = p["emailData"]
    assert p["providerId"] == box and data["providerId"] == box and data["id"] == first
    assert data["from"] == {"email": "jane@customer.example", "name": "Jane Doe"}
    assert data["to"] == [{"email": "help@acme.example"}] and data["cc"] == [{"email": "boss@customer.example"}]
    assert (data["subject"], data["body"]) == ("Printer on fire", {"text": "Please help"})
    assert data["attachments"][0]["name"] == "photo.jpg" and data["attachments"][0]["size"] == 2048
    thread = data["threadId"]

    # the customer answers the thread: matched by In-Reply-To, same thread
    reply, ev = act(TENANT, email.receive_email, box, header_id="<a2@customer.example>",
                    from_address="jane@customer.example", to=["help@acme.example"], subject="Re: Printer on fire",
                    text="Still burning", in_reply_to="<a1@customer.example>")  # fmt: skip
    assert types(ev) == ["INBOUND_EMAIL_RECEIVED", "INBOUND_EMAIL_REPLY_RECEIVED"]
    p = one(published, ev, "INBOUND_EMAIL_REPLY_RECEIVED")["payload"]
    assert (p["messageId"], p["threadId"], p["matchedBy"], p["provider"]) == (reply, thread, "in_reply_to", "microsoft")
    assert (p["from"], p["to"], p["subject"]) == ("jane@customer.example", ["help@acme.example"], "Re: Printer on fire")
    assert "ticketId" not in p
    assert one(published, ev, "INBOUND_EMAIL_RECEIVED")["payload"]["emailData"]["inReplyTo"] == "<a1@customer.example>"

    # References only (a client that drops In-Reply-To)
    _, ev = act(TENANT, email.receive_email, box, header_id="<a3@customer.example>",
                from_address="boss@customer.example", to=["help@acme.example"], subject="Re: Re: Printer on fire",
                html="<p>Any news?</p>", references=["<a1@customer.example>", "<a2@customer.example>"])  # fmt: skip
    p = one(published, ev, "INBOUND_EMAIL_REPLY_RECEIVED")["payload"]
    assert (p["threadId"], p["matchedBy"]) == (thread, "references")

    # a re-delivered Message-ID changes nothing
    again, ev = act(TENANT, email.receive_email, box, header_id="<a2@customer.example>",
                    from_address="jane@customer.example", to=["help@acme.example"], subject="Re: Printer on fire",
                    text="Still burning")  # fmt: skip
    assert (again, ev) == (reply, [])

    # a ticket number in the subject ties a new mail to the ticket
    tid, _ = act(TENANT, tickets.create_ticket, title="VPN down", user=USER)
    with psycopg.connect(db_url) as c:
        number = c.execute("SELECT number FROM ref_tickets WHERE id = %s", (tid,)).fetchone()[0]
    mid, ev = act(TENANT, email.receive_email, box, header_id="<b1@customer.example>",
                  from_address="joe@customer.example", to=["help@acme.example"],
                  subject=f"Re: [{number}] VPN down", text="works now")  # fmt: skip
    p = one(published, ev, "INBOUND_EMAIL_REPLY_RECEIVED")["payload"]
    assert (p["messageId"], p["ticketId"], p["matchedBy"]) == (mid, tid, "ticket_number")
    assert p["threadId"] != thread

    _, ev = act(TENANT, email.disconnect_mailbox, box, reason="password changed", user=USER)
    got = one(published, ev, "EMAIL_PROVIDER_DISCONNECTED")
    p = got["payload"]
    assert (p["providerId"], p["providerType"], p["providerName"], p["reason"]) == (
        box, "microsoft", "Helpdesk", "password changed")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("connected", "disconnected")
    with pytest.raises(InvalidTransition):
        act(TENANT, email.receive_email, box, header_id="<c1@x.example>", from_address="a@x.example",
            to=["help@acme.example"], subject="hi", text="x")  # fmt: skip

    # connecting the same address again reconnects the same mailbox
    again, ev = act(TENANT, email.connect_mailbox, provider_type="microsoft", name="Helpdesk",
                    address="help@acme.example", user=USER)  # fmt: skip
    got = one(published, ev, "EMAIL_PROVIDER_CONNECTED")
    assert again == box and got["payload"]["providerId"] == box
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("disconnected", "connected")


def test_outbound_lifecycle(act, published):
    tid, _ = act(TENANT, tickets.create_ticket, title="Laptop order", user=USER)
    mid, ev = act(TENANT, email.queue_email, provider="ses", from_address="support@acme.example",
                  to=["ann@client.example", "bob@client.example"], cc=["cat@client.example"],
                  subject="Your laptop", text="It ships today", ticket_id=tid, user=USER)  # fmt: skip
    got = one(published, ev, "OUTBOUND_EMAIL_QUEUED")
    p = got["payload"]
    assert (p["messageId"], p["ticketId"], p["from"], p["provider"], p["subject"]) == (
        mid, tid, "support@acme.example", "ses", "Your laptop")  # fmt: skip
    assert p["to"] == ["ann@client.example", "bob@client.example"] and p["cc"] == ["cat@client.example"]
    assert p["threadId"] and got["entry"]["user_id"] == USER and got["entry"]["to_state"] == "queued"
    thread = p["threadId"]

    _, ev = act(TENANT, email.mark_email_sent, mid, "ses-0001")
    got = one(published, ev, "OUTBOUND_EMAIL_SENT")
    p = got["payload"]
    assert (p["messageId"], p["providerMessageId"], p["threadId"], p["ticketId"], p["provider"]) == (
        mid, "ses-0001", thread, tid, "ses")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("queued", "sent")
    with pytest.raises(InvalidTransition):
        act(TENANT, email.mark_email_sent, mid, "ses-0001")

    _, ev = act(TENANT, email.record_delivery, mid, "ann@client.example")
    got = one(published, ev, "EMAIL_DELIVERED")
    p = got["payload"]
    assert (p["messageId"], p["providerMessageId"], p["to"], p["provider"]) == (
        mid, "ses-0001", "ann@client.example", "ses")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "delivered")

    # soft bounce, then delivered after all; a hard bounce suppresses the address
    _, ev = act(TENANT, email.record_bounce, mid, "bob@client.example", "soft", smtp_code="452",
                smtp_message="mailbox full")  # fmt: skip
    got = one(published, ev, "EMAIL_BOUNCED")
    p = got["payload"]
    assert (p["messageId"], p["to"], p["bounceType"], p["smtpCode"], p["smtpMessage"]) == (
        mid, "bob@client.example", "soft", "452", "mailbox full")  # fmt: skip
    assert got["entry"]["to_state"] == "soft_bounced"
    _, ev = act(TENANT, email.record_delivery, mid, "bob@client.example")
    assert one(published, ev, "EMAIL_DELIVERED")["entry"]["from_state"] == "soft_bounced"
    _, ev = act(TENANT, email.record_bounce, mid, "cat@client.example", "hard", smtp_code="550")
    got = one(published, ev, "EMAIL_BOUNCED")
    assert (got["payload"]["to"], got["payload"]["bounceType"]) == ("cat@client.example", "hard")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "bounced")
    with pytest.raises(InvalidInput, match="suppressed"):
        act(TENANT, email.queue_email, provider="ses", from_address="support@acme.example",
            to=["cat@client.example"], subject="Again", text="x")  # fmt: skip

    # a complaint: recorded, and the address is unsubscribed
    _, ev = act(TENANT, email.record_complaint, mid, "ann@client.example", complaint_type="abuse")
    assert types(ev) == ["EMAIL_COMPLAINT_RECEIVED", "EMAIL_UNSUBSCRIBED"]
    got = one(published, ev, "EMAIL_COMPLAINT_RECEIVED")
    p = got["payload"]
    assert (p["messageId"], p["providerMessageId"], p["to"], p["complaintType"], p["provider"]) == (
        mid, "ses-0001", "ann@client.example", "abuse", "ses")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("delivered", "complained")
    p = one(published, ev, "EMAIL_UNSUBSCRIBED")["payload"]
    assert (p["recipientEmail"], p["source"], p["messageId"]) == ("ann@client.example", "complaint", mid)

    # the contact unsubscribes through the link of the message; a second click changes nothing
    done, ev = act(TENANT, email.unsubscribe, "Bob@Client.example", source="link", message_id=mid, contact=CONTACT)
    got = one(published, ev, "EMAIL_UNSUBSCRIBED")
    p = got["payload"]
    assert done is True and (p["recipientEmail"], p["source"], p["messageId"]) == ("bob@client.example", "link", mid)
    assert (p["actorContactId"], p["actorType"]) == (CONTACT, "CONTACT")
    assert act(TENANT, email.unsubscribe, "bob@client.example", contact=CONTACT) == (False, [])

    # a reply in the thread, failed by the provider (retryable), queued again, then sent
    mid2, ev = act(TENANT, email.queue_email, provider="ses", from_address="support@acme.example",
                   to=["dan@client.example"], subject="Re: Your laptop", text="Tracking: 123", thread_id=thread,
                   user=USER)  # fmt: skip
    p = one(published, ev, "OUTBOUND_EMAIL_QUEUED")["payload"]
    assert (p["threadId"], p["ticketId"]) == (thread, tid)
    _, ev = act(TENANT, email.mark_email_failed, mid2, "throttled", error_code="429", retryable=True)
    got = one(published, ev, "OUTBOUND_EMAIL_FAILED")
    p = got["payload"]
    assert (p["messageId"], p["errorMessage"], p["errorCode"], p["retryable"], p["provider"]) == (
        mid2, "throttled", "429", True, "ses")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("queued", "failed")
    _, ev = act(TENANT, email.retry_email, mid2, user=USER)
    got = one(published, ev, "OUTBOUND_EMAIL_QUEUED")
    assert got["payload"]["messageId"] == mid2
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("failed", "queued")
    _, ev = act(TENANT, email.mark_email_failed, mid2, "domain does not exist", retryable=False)
    with pytest.raises(InvalidTransition):
        act(TENANT, email.retry_email, mid2)


def test_notifications(act, published):
    act(TENANT, notifications.set_preference, CONTACT, "sms", False)
    ids, ev = act(TENANT, notifications.notify, CONTACT, title="Ticket updated", channels=["in_app", "email", "sms"],
                  template_id="ticket-updated", context_type="ticket", context_id="T-00042", user=USER)  # fmt: skip
    assert len(ids) == 2  # sms is turned off
    assert types(ev) == ["NOTIFICATION_SENT", "NOTIFICATION_DELIVERED", "NOTIFICATION_SENT"]
    in_app, by_mail = ids
    sent = [published.expect_once("NOTIFICATION_SENT", i)["payload"] for t, i in ev if t == "NOTIFICATION_SENT"]
    assert [(p["notificationId"], p["channel"]) for p in sent] == [(in_app, "in_app"), (by_mail, "email")]
    p = sent[0]
    assert (p["recipientId"], p["templateId"], p["contextType"], p["contextId"], p["actorUserId"]) == (
        CONTACT, "ticket-updated", "ticket", "T-00042", USER)  # fmt: skip
    got = one(published, ev, "NOTIFICATION_DELIVERED")
    assert (got["payload"]["notificationId"], got["payload"]["channel"]) == (in_app, "in_app")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("sent", "delivered")

    _, ev = act(TENANT, notifications.mark_delivered, by_mail, provider_message_id="ses-77")
    p = one(published, ev, "NOTIFICATION_DELIVERED")["payload"]
    assert (p["notificationId"], p["channel"], p["recipientId"], p["providerMessageId"]) == (
        by_mail, "email", CONTACT, "ses-77")  # fmt: skip

    with pytest.raises(InvalidInput):
        act(TENANT, notifications.mark_read, by_mail, user=USER)  # not the recipient
    _, ev = act(TENANT, notifications.mark_read, by_mail, client="outlook", contact=CONTACT)
    got = one(published, ev, "NOTIFICATION_READ")
    p = got["payload"]
    assert (p["notificationId"], p["channel"], p["recipientId"], p["client"], p["actorContactId"]) == (
        by_mail, "email", CONTACT, "outlook", CONTACT)  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("delivered", "read")

    read, ev = act(TENANT, notifications.mark_all_read, client="portal", contact=CONTACT)
    assert read == [in_app]
    assert one(published, ev, "NOTIFICATION_READ")["payload"]["notificationId"] == in_app

    (push,), _ = act(TENANT, notifications.notify, CONTACT, title="Approval needed", channels=["push"])
    _, ev = act(TENANT, notifications.mark_failed, push, "device token expired", error_code="unregistered")
    got = one(published, ev, "NOTIFICATION_FAILED")
    p = got["payload"]
    assert (p["notificationId"], p["channel"], p["recipientId"], p["errorMessage"], p["errorCode"], p["retryable"]) == (
        push, "push", CONTACT, "device token expired", "unregistered", False)  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("sent", "failed")
    with pytest.raises(InvalidTransition):
        act(TENANT, notifications.mark_delivered, push)


def test_bad_input_emits_nothing(act, db_url):
    box, _ = act(TENANT, email.connect_mailbox, provider_type="google", name="Sales", address="sales@acme.example")
    mid, _ = act(TENANT, email.queue_email, mailbox_id=box, to=["x@client.example"], subject="Hi", text="hello")
    nid = act(TENANT, notifications.notify, USER, title="Hello")[0][0]
    before = outbox_count(db_url)

    with pytest.raises(NotFound):
        act(TENANT, email.mark_email_sent, str(uuid.uuid4()), "p-1")
    with pytest.raises(NotFound):
        act(TENANT, email.disconnect_mailbox, "not-a-uuid")
    with pytest.raises(WrongTenant):
        act(str(uuid.uuid4()), email.mark_email_sent, mid, "p-1")
    with pytest.raises(WrongTenant):
        act("other", notifications.mark_read, nid, user=USER)
    with pytest.raises(InvalidTransition):
        act(TENANT, email.connect_mailbox, provider_type="google", name="Sales", address="sales@acme.example")
    with pytest.raises(InvalidTransition):
        act(TENANT, email.record_delivery, mid, "x@client.example")  # not sent yet
    with pytest.raises(InvalidTransition):
        act(TENANT, email.retry_email, mid)  # queued, not failed
    with pytest.raises(InvalidTransition):
        act(TENANT, notifications.mark_delivered, nid)  # in-app: delivered already
    with pytest.raises(InvalidInput):
        act(TENANT, email.connect_mailbox, provider_type="yahoo", name="X", address="x@acme.example")
    with pytest.raises(InvalidInput):
        act(TENANT, email.queue_email, mailbox_id=box, to=[], subject="Hi", text="x")
    with pytest.raises(InvalidInput):
        act(TENANT, email.queue_email, mailbox_id=box, to=["not-an-address"], subject="Hi", text="x")
    with pytest.raises(InvalidInput):
        act(TENANT, email.queue_email, to=["x@client.example"], subject="Hi", text="x")  # no mailbox nor provider
    with pytest.raises(InvalidInput):
        act(TENANT, email.unsubscribe, "x@client.example", source="carrier pigeon")
    with pytest.raises(InvalidInput):
        act(TENANT, email.receive_email, box, header_id="<z@x.example>", from_address="a@x.example",
            to=["sales@acme.example"], subject="no body")  # fmt: skip
    with pytest.raises(InvalidInput):
        act(TENANT, notifications.notify, USER, title="x", channels=["carrier_pigeon"])
    with pytest.raises(InvalidInput):
        act(TENANT, notifications.notify, "bob", title="x")
    act(TENANT, email.mark_email_sent, mid, "p-1")
    with pytest.raises(InvalidInput):
        act(TENANT, email.record_delivery, mid, "someone-else@client.example")  # not a recipient
    with pytest.raises(InvalidInput):
        act(TENANT, email.record_bounce, mid, "x@client.example", "medium")
    with pytest.raises(InvalidTransition):
        act(TENANT, email.record_complaint, mid, "x@client.example")  # not delivered
    assert outbox_count(db_url) == before + 1  # only the send
