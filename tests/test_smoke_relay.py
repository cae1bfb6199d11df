"""End-to-end: record in a committed transaction, the relay publishes it once in the wire format."""

from __future__ import annotations

import json
import uuid

import psycopg

import outbox
from tests.conftest import relay_thread, stream_entries, wait_for


def test_record_then_relay_publishes_wire_format(settings, rds, stream, db_url):
    user = str(uuid.uuid4())
    ticket = str(uuid.uuid4())
    execution = str(uuid.uuid4())  # the platform's reader takes a UUID or nothing
    with psycopg.connect(db_url) as conn:
        eid = outbox.record(
            conn, "TICKET_STATUS_CHANGED",
            {"ticketId": ticket, "previousStatusId": "open", "newStatusId": "closed"},
            tenant_id="tenant-a", actor=user, correlation="corr-1", execution_id=execution,
            from_state="open", to_state="closed", event_name="ticket.closed",
        )  # fmt: skip
        conn.commit()
    with relay_thread(settings):
        entries = wait_for(lambda: stream_entries(rds, stream), what="stream entry")
    assert len(entries) == 1
    sid, f = entries[0]
    assert set(f) == {
        "event_id", "execution_id", "event_name", "event_type", "tenant", "timestamp", "user_id",
        "from_state", "to_state", "payload_json", "workflow_correlation_key",
    }  # fmt: skip
    assert f["event_id"] == str(eid)
    assert f["execution_id"] == execution
    assert f["event_name"] == "ticket.closed"
    assert f["event_type"] == "TICKET_STATUS_CHANGED"
    assert f["tenant"] == "tenant-a"
    assert f["timestamp"].endswith("Z") and "T" in f["timestamp"]
    assert f["user_id"] == user
    assert (f["from_state"], f["to_state"]) == ("open", "closed")
    assert f["workflow_correlation_key"] == "corr-1"
    payload = json.loads(f["payload_json"])
    assert payload["ticketId"] == ticket and payload["tenantId"] == "tenant-a"
    assert payload["actorUserId"] == user and payload["actorType"] == "USER"
    assert payload["occurredAt"].endswith("Z")
    with psycopg.connect(db_url) as conn:
        status, stream_id = conn.execute(
            "SELECT status, stream_id FROM outbox_events WHERE event_id = %s", (eid,)
        ).fetchone()
    assert status == "published" and stream_id == sid
