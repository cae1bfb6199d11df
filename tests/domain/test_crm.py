"""CRM: clients, contacts, interactions, notes and tags put their events on the stream once, valid."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

import domain.crm  # noqa: F401 - registers the crm tables before the engine fixture creates them
from domain import crm, tickets
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "CLIENT_CREATED",
    "COMPANY_CREATED",
    "CLIENT_UPDATED",
    "COMPANY_UPDATED",
    "CLIENT_STATUS_CHANGED",
    "CLIENT_OWNER_ASSIGNED",
    "CLIENT_ARCHIVED",
    "CONTACT_CREATED",
    "CONTACT_UPDATED",
    "CONTACT_PRIMARY_SET",
    "CONTACT_ARCHIVED",
    "INTERACTION_LOGGED",
    "NOTE_CREATED",
    "TAG_DEFINITION_CREATED",
    "TAG_DEFINITION_UPDATED",
    "TAG_APPLIED",
    "TAG_REMOVED",
}
USER = str(uuid.uuid4())
OWNER_A, OWNER_B = str(uuid.uuid4()), str(uuid.uuid4())


def only(emitted, event_type):
    """The id of the single event of this type an action emitted."""
    ids = [eid for et, eid in emitted if et == event_type]
    assert len(ids) == 1, f"{event_type} emitted {len(ids)} times: {emitted}"
    return ids[0]


def outbox_count(db_url):
    with psycopg.connect(db_url) as c:
        return c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]


def test_client_lifecycle(act, published):
    cid, ev = act("t1", crm.create_client, name="Acme Dental", owner_user_id=OWNER_A, user=USER)
    assert [et for et, _ in ev] == ["CLIENT_CREATED", "COMPANY_CREATED"]
    got = published.expect_once("CLIENT_CREATED", only(ev, "CLIENT_CREATED"))
    p = got["payload"]
    assert (p["clientId"], p["clientName"], p["status"], p["createdByUserId"]) == (cid, "Acme Dental", "prospect", USER)
    assert got["entry"]["user_id"] == USER and p["actorType"] == "USER"
    p = published.expect_once("COMPANY_CREATED", only(ev, "COMPANY_CREATED"))["payload"]
    assert (p["companyId"], p["companyName"]) == (cid, "Acme Dental")

    fields, ev = act("t1", crm.update_client, cid, website="https://acme.example",
                     address={"city": "Lyon", "country": "FR"}, user=USER)  # fmt: skip
    assert fields == ["address.city", "address.country", "website"]
    for et in ("CLIENT_UPDATED", "COMPANY_UPDATED"):
        p = published.expect_once(et, only(ev, et))["payload"]
        assert p["clientId" if et == "CLIENT_UPDATED" else "companyId"] == cid
        assert p["updatedFields"] == ["address.city", "address.country", "website"]
        assert p["changes"] == {"address.city": {"new": "Lyon"}, "address.country": {"new": "FR"},
                                "website": {"new": "https://acme.example"}}  # fmt: skip
        assert p["updatedByUserId"] == USER
    _, ev = act("t1", crm.update_client, cid, address={"city": "Paris"}, name="Acme Dental SA", user=USER)
    p = published.expect_once("CLIENT_UPDATED", only(ev, "CLIENT_UPDATED"))["payload"]
    assert p["updatedFields"] == ["address.city", "name"]
    assert p["changes"] == {"address.city": {"previous": "Lyon", "new": "Paris"},
                            "name": {"previous": "Acme Dental", "new": "Acme Dental SA"}}  # fmt: skip

    _, ev = act("t1", crm.change_client_status, cid, "active", user=USER)
    got = published.expect_once("CLIENT_STATUS_CHANGED", only(ev, "CLIENT_STATUS_CHANGED"))
    assert (got["payload"]["clientId"], got["payload"]["previousStatus"], got["payload"]["newStatus"]) == (
        cid, "prospect", "active")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("prospect", "active")

    _, ev = act("t1", crm.assign_owner, cid, OWNER_B, user=USER)
    p = published.expect_once("CLIENT_OWNER_ASSIGNED", only(ev, "CLIENT_OWNER_ASSIGNED"))["payload"]
    assert (p["clientId"], p["previousOwnerUserId"], p["newOwnerUserId"], p["assignedByUserId"]) == (
        cid, OWNER_A, OWNER_B, USER)  # fmt: skip

    _, ev = act("t1", crm.archive_client, cid, reason="churned", user=USER)
    assert {et for et, _ in ev} == {"CLIENT_STATUS_CHANGED", "CLIENT_ARCHIVED"}
    p = published.expect_once("CLIENT_STATUS_CHANGED", only(ev, "CLIENT_STATUS_CHANGED"))["payload"]
    assert (p["previousStatus"], p["newStatus"]) == ("active", "archived")
    got = published.expect_once("CLIENT_ARCHIVED", only(ev, "CLIENT_ARCHIVED"))
    p = got["payload"]
    assert (p["clientId"], p["reason"], p["archivedByUserId"]) == (cid, "churned", USER)
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("active", "archived")


def test_contacts_primary_and_self_service(act, published):
    cid, _ = act("t1", crm.create_client, name="Globex", user=USER)
    k1, ev = act("t1", crm.create_contact, cid, full_name="Hank Scorpio", email="hank@globex.example", user=USER)
    p = published.expect_once("CONTACT_CREATED", only(ev, "CONTACT_CREATED"))["payload"]
    assert (p["contactId"], p["clientId"], p["fullName"], p["email"], p["createdByUserId"]) == (
        k1, cid, "Hank Scorpio", "hank@globex.example", USER)  # fmt: skip
    assert "phoneNumber" not in p
    k2, _ = act("t1", crm.create_contact, cid, full_name="Homer Simpson", user=USER)

    _, ev = act("t1", crm.set_primary_contact, cid, k1, user=USER)
    p = published.expect_once("CONTACT_PRIMARY_SET", only(ev, "CONTACT_PRIMARY_SET"))["payload"]
    assert (p["clientId"], p["contactId"], p["setByUserId"]) == (cid, k1, USER)
    assert "previousPrimaryContactId" not in p
    _, ev = act("t1", crm.set_primary_contact, cid, k2, user=USER)
    got = published.expect_once("CONTACT_PRIMARY_SET", only(ev, "CONTACT_PRIMARY_SET"))
    assert (got["payload"]["contactId"], got["payload"]["previousPrimaryContactId"]) == (k2, k1)
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == (k1, k2)

    # the contact edits its own details through the portal: the actor is the contact, no user
    _, ev = act("t1", crm.update_contact, k1, phone="+1 555 0100", email="h.scorpio@globex.example", contact=k1)
    got = published.expect_once("CONTACT_UPDATED", only(ev, "CONTACT_UPDATED"))
    p = got["payload"]
    assert (p["contactId"], p["clientId"], p["updatedFields"]) == (k1, cid, ["email", "phone"])
    assert p["changes"] == {"email": {"previous": "hank@globex.example", "new": "h.scorpio@globex.example"},
                            "phone": {"new": "+1 555 0100"}}  # fmt: skip
    assert (p["actorContactId"], p["actorType"]) == (k1, "CONTACT")
    assert "updatedByUserId" not in p and got["entry"]["user_id"] == ""

    _, ev = act("t1", crm.archive_contact, k2, reason="left the company", user=USER)
    p = published.expect_once("CONTACT_ARCHIVED", only(ev, "CONTACT_ARCHIVED"))["payload"]
    assert (p["contactId"], p["clientId"], p["reason"], p["archivedByUserId"]) == (k2, cid, "left the company", USER)
    # the archived primary contact is no longer primary: k1 can become primary again, with no previous one
    _, ev = act("t1", crm.set_primary_contact, cid, k1, user=USER)
    p = published.expect_once("CONTACT_PRIMARY_SET", only(ev, "CONTACT_PRIMARY_SET"))["payload"]
    assert p["contactId"] == k1 and "previousPrimaryContactId" not in p


def test_interactions_notes_and_tags(act, published):
    cid, _ = act("t1", crm.create_client, name="Initech", user=USER)
    kid, _ = act("t1", crm.create_contact, cid, full_name="Bill Lumbergh", user=USER)
    when = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    iid, ev = act("t1", crm.log_interaction, cid, interaction_type="call", channel="phone", contact_id=kid,
                  occurred_at=when, subject="TPS reports", outcome="follow-up", user=USER)  # fmt: skip
    p = published.expect_once("INTERACTION_LOGGED", only(ev, "INTERACTION_LOGGED"))["payload"]
    assert (p["interactionId"], p["clientId"], p["contactId"], p["interactionType"], p["channel"]) == (
        iid, cid, kid, "call", "phone")  # fmt: skip
    assert (p["interactionOccurredAt"], p["loggedByUserId"], p["outcome"]) == ("2026-03-02T15:30:00.000Z", USER,
                                                                               "follow-up")  # fmt: skip

    body = "Prefers e-mail after 5pm. " * 10
    nid, ev = act("t1", crm.add_note, "contact", kid, body, user=USER)
    p = published.expect_once("NOTE_CREATED", only(ev, "NOTE_CREATED"))["payload"]
    assert (p["noteId"], p["entityType"], p["entityId"], p["visibility"], p["createdByUserId"]) == (
        nid, "contact", kid, "internal", USER)  # fmt: skip
    assert len(p["bodyPreview"]) == crm.BODY_PREVIEW and body.startswith(p["bodyPreview"][:-1])

    tag, ev = act("t1", crm.create_tag, "vip", user=USER)
    p = published.expect_once("TAG_DEFINITION_CREATED", only(ev, "TAG_DEFINITION_CREATED"))["payload"]
    assert (p["tagId"], p["tagName"], p["createdByUserId"]) == (tag, "vip", USER)
    _, ev = act("t1", crm.rename_tag, tag, "VIP", user=USER)
    got = published.expect_once("TAG_DEFINITION_UPDATED", only(ev, "TAG_DEFINITION_UPDATED"))
    p = got["payload"]
    assert (p["tagId"], p["previousName"], p["newName"], p["updatedByUserId"]) == (tag, "vip", "VIP", USER)
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("vip", "VIP")

    _, ev = act("t1", crm.apply_tag, tag, "client", cid, user=USER)
    p = published.expect_once("TAG_APPLIED", only(ev, "TAG_APPLIED"))["payload"]
    assert (p["tagId"], p["entityType"], p["entityId"], p["appliedByUserId"]) == (tag, "client", cid, USER)
    tid, _ = act("t1", tickets.create_ticket, title="Badge reader broken", user=USER)
    _, ev = act("t1", crm.apply_tag, tag, "ticket", tid, user=USER)
    p = published.expect_once("TAG_APPLIED", only(ev, "TAG_APPLIED"))["payload"]
    assert (p["entityType"], p["entityId"]) == ("ticket", tid)
    _, ev = act("t1", crm.remove_tag, tag, "client", cid, user=USER)
    p = published.expect_once("TAG_REMOVED", only(ev, "TAG_REMOVED"))["payload"]
    assert (p["tagId"], p["entityType"], p["entityId"], p["removedByUserId"]) == (tag, "client", cid, USER)


def test_bad_input_emits_nothing(act, published, db_url):
    cid, _ = act("t1", crm.create_client, name="Umbrella", user=USER)
    kid, _ = act("t1", crm.create_contact, cid, full_name="Albert Wesker", user=USER)
    tag, _ = act("t1", crm.create_tag, "critical", user=USER)
    before = outbox_count(db_url)

    with pytest.raises(NotFound):
        act("t1", crm.change_client_status, str(uuid.uuid4()), "active")
    with pytest.raises(NotFound):
        act("t1", crm.update_contact, "not-a-uuid", phone="1")
    with pytest.raises(WrongTenant):
        act("t2", crm.update_client, cid, name="Hijacked")
    with pytest.raises(WrongTenant):
        act("t2", crm.apply_tag, tag, "client", cid)
    with pytest.raises(InvalidTransition):
        act("t1", crm.change_client_status, cid, "prospect")  # already prospect
    with pytest.raises(InvalidInput):
        act("t1", crm.change_client_status, cid, "archived")  # archiving is archive_client
    with pytest.raises(InvalidInput):
        act("t1", crm.update_client, cid, status="active")  # not an editable field
    with pytest.raises(InvalidInput):
        act("t1", crm.update_contact, kid, email="not-an-email")
    with pytest.raises(InvalidInput):
        act("t1", crm.create_tag, "CRITICAL")  # names are unique case-insensitively
    with pytest.raises(InvalidInput):
        act("t1", crm.add_note, "ticket", cid, "x")  # notes go on clients or contacts
    with pytest.raises(InvalidInput):
        act("t1", crm.assign_owner, cid, "bob")
    assert outbox_count(db_url) == before

    other, _ = act("t1", crm.create_client, name="Other", user=USER)
    before = outbox_count(db_url)
    with pytest.raises(InvalidInput):
        act("t1", crm.set_primary_contact, other, kid)  # kid belongs to Umbrella
    with pytest.raises(NotFound):
        act("t1", crm.remove_tag, tag, "client", cid)  # not applied
    act("t1", crm.set_primary_contact, cid, kid, user=USER)
    with pytest.raises(InvalidTransition):
        act("t1", crm.set_primary_contact, cid, kid)  # already primary
    act("t1", crm.archive_client, cid, user=USER)
    with pytest.raises(InvalidTransition):
        act("t1", crm.update_client, cid, name="Umbrella Corp")
    with pytest.raises(InvalidTransition):
        act("t1", crm.create_contact, cid, full_name="Jill Valentine")
    assert outbox_count(db_url) == before + 3  # primary set, status changed, archived: nothing from the refusals
