"""Tickets: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import uuid

import pytest

from domain import tickets
from domain.base import InvalidTransition, NotFound, WrongTenant

COVERED = {"TICKET_CREATED", "TICKET_STATUS_CHANGED", "TICKET_UPDATED"}
USER = str(uuid.uuid4())


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


def test_bad_input_emits_nothing(act, published, db_url):
    tid, _ = act("t1", tickets.create_ticket, title="x", user=USER)
    with pytest.raises(NotFound):
        act("t1", tickets.change_status, str(uuid.uuid4()), "open")
    with pytest.raises(WrongTenant):
        act("t2", tickets.change_status, tid, "open")
    with pytest.raises(InvalidTransition):
        act("t1", tickets.change_status, tid, "new")
    import psycopg

    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM outbox_events").fetchone()[0] == 1
