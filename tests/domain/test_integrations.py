"""Integrations: each action puts its events on the stream once, valid for their contracts."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import psycopg
import pytest

from domain import assets, billing, crm, integrations, scheduling, tickets  # registers their tables
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant, now

COVERED = {
    "INTEGRATION_CONNECTED", "INTEGRATION_DISCONNECTED", "INTEGRATION_SYNC_STARTED", "INTEGRATION_SYNC_COMPLETED",
    "INTEGRATION_SYNC_FAILED", "INTEGRATION_WEBHOOK_RECEIVED", "INTEGRATION_TOKEN_EXPIRING",
    "INTEGRATION_TOKEN_REFRESH_FAILED", "EXTERNAL_MAPPING_CHANGED",
    "RMM_SYNC_STARTED", "RMM_SYNC_COMPLETED", "RMM_SYNC_FAILED", "RMM_DEVICE_CREATED", "RMM_DEVICE_UPDATED",
    "RMM_DEVICE_DELETED", "RMM_DEVICE_ONLINE", "RMM_DEVICE_OFFLINE", "RMM_ALERT_TRIGGERED", "RMM_ALERT_RESOLVED",
    "RMM_WEBHOOK_RECEIVED",
    "CALENDAR_SYNC_STARTED", "CALENDAR_SYNC_COMPLETED", "CALENDAR_SYNC_FAILED", "CALENDAR_CONFLICT_DETECTED",
    "ACCOUNTING_EXPORT_COMPLETED", "ACCOUNTING_EXPORT_FAILED",
}  # fmt: skip
TENANT = str(uuid.uuid4())  # RMM, calendar and accounting events are legacy bus types: a UUID tenant
USER = str(uuid.uuid4())


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


def test_connection_sync_tokens_webhooks_mappings(act, published):
    iid, ev = act("t1", integrations.install_integration, "hubspot", user=USER)  # any tenant id: no legacy types
    assert ev == []
    expires = now() + timedelta(days=3)
    cid, ev = act("t1", integrations.connect_integration, iid, token_expires_at=expires, user=USER)
    got = one(published, ev, "INTEGRATION_CONNECTED")
    p = got["payload"]
    assert (p["integrationId"], p["provider"], p["connectionId"], p["connectedByUserId"]) == (iid, "hubspot", cid, USER)
    assert got["entry"]["to_state"] == "connected" and got["entry"]["user_id"] == USER

    sid, ev = act("t1", integrations.start_sync, iid, scope="contacts", user=USER)
    assert types(ev) == ["INTEGRATION_SYNC_STARTED"]
    got = one(published, ev, "INTEGRATION_SYNC_STARTED")
    p = got["payload"]
    assert (p["integrationId"], p["provider"], p["connectionId"], p["syncId"], p["scope"], p["initiatedByUserId"]) == (
        iid, "hubspot", cid, sid, "contacts", USER)  # fmt: skip
    assert got["entry"]["to_state"] == "running"
    with pytest.raises(InvalidTransition):
        act("t1", integrations.start_sync, iid)  # one running job at a time
    _, ev = act("t1", integrations.complete_sync, sid, created=3, updated=2, warnings=["1 contact without email"])
    got = one(published, ev, "INTEGRATION_SYNC_COMPLETED")
    p = got["payload"]
    assert (p["syncId"], p["connectionId"], p["summary"], p["warnings"]) == (
        sid, cid, {"created": 3, "updated": 2, "deleted": 0, "skipped": 0}, ["1 contact without email"])  # fmt: skip
    assert p["durationMs"] >= 0 and p["startedAt"] <= p["completedAt"]
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("running", "completed")

    sid2, _ = act("t1", integrations.start_sync, iid)
    _, ev = act("t1", integrations.fail_sync, sid2, "rate limited", error_code="429")
    got = one(published, ev, "INTEGRATION_SYNC_FAILED")
    p = got["payload"]
    assert (p["syncId"], p["errorMessage"], p["errorCode"], p["retryable"]) == (sid2, "rate limited", "429", True)
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("running", "failed")

    wid, ev = act("t1", integrations.receive_webhook, iid, "hs-evt-1", "contact.propertyChange", {"objectId": 42})
    p = one(published, ev, "INTEGRATION_WEBHOOK_RECEIVED")["payload"]
    assert (p["integrationId"], p["connectionId"], p["webhookId"], p["eventName"]) == (
        iid, cid, "hs-evt-1", "contact.propertyChange")  # fmt: skip
    assert p["rawPayloadRef"] == f"integration-webhooks/{wid}"
    assert act("t1", integrations.receive_webhook, iid, "hs-evt-1", "contact.propertyChange", {}) == (None, [])

    client, _ = act("t1", crm.create_client, name="Acme", user=USER)
    mid, ev = act("t1", integrations.set_mapping, iid, "client", client, "hs-company-1", user=USER)
    p = one(published, ev, "EXTERNAL_MAPPING_CHANGED")["payload"]
    assert (p["provider"], p["mappingType"], p["mappingId"], p["newValue"]) == (
        "hubspot", "client", mid, {"localId": client, "externalId": "hs-company-1"})  # fmt: skip
    assert "previousValue" not in p and p["actorUserId"] == USER
    again, ev = act("t1", integrations.set_mapping, iid, "client", client, "hs-company-2", user=USER)
    p = one(published, ev, "EXTERNAL_MAPPING_CHANGED")["payload"]
    assert again == mid and (p["previousValue"]["externalId"], p["newValue"]["externalId"]) == (
        "hs-company-1", "hs-company-2")  # fmt: skip
    assert act("t1", integrations.set_mapping, iid, "client", client, "hs-company-2") == (mid, [])
    _, ev = act("t1", integrations.remove_mapping, mid, user=USER)
    p = one(published, ev, "EXTERNAL_MAPPING_CHANGED")["payload"]
    assert p["previousValue"] == {"localId": client, "externalId": "hs-company-2"} and "newValue" not in p

    # token health: warned once per expiry; a refresh moves the expiry out of the window
    warned, ev = act("t1", integrations.check_tokens)
    assert warned == [iid]
    p = one(published, ev, "INTEGRATION_TOKEN_EXPIRING")["payload"]
    assert (p["integrationId"], p["connectionId"], p["daysUntilExpiry"]) == (iid, cid, 2)
    assert p["expiresAt"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    assert act("t1", integrations.check_tokens) == ([], [])
    act("t1", integrations.token_refreshed, iid, expires_at=now() + timedelta(days=60))
    assert act("t1", integrations.check_tokens) == ([], [])

    running, _ = act("t1", integrations.start_sync, iid)
    _, ev = act("t1", integrations.token_refresh_failed, iid, "provider timeout", error_code="504")
    assert types(ev) == ["INTEGRATION_TOKEN_REFRESH_FAILED"]
    p = one(published, ev, "INTEGRATION_TOKEN_REFRESH_FAILED")["payload"]
    assert (p["integrationId"], p["connectionId"], p["errorMessage"], p["errorCode"], p["retryable"]) == (
        iid, cid, "provider timeout", "504", True)  # fmt: skip
    # a revoked grant is final: the running job fails and the connection goes
    _, ev = act("t1", integrations.token_refresh_failed, iid, "invalid_grant", retryable=False)
    assert types(ev) == ["INTEGRATION_TOKEN_REFRESH_FAILED", "INTEGRATION_SYNC_FAILED", "INTEGRATION_DISCONNECTED"]
    p = one(published, ev, "INTEGRATION_SYNC_FAILED")["payload"]
    assert (p["syncId"], p["errorCode"], p["retryable"]) == (running, "connection_removed", False)
    got = one(published, ev, "INTEGRATION_DISCONNECTED")
    assert (got["payload"]["connectionId"], got["payload"]["reason"]) == (cid, "token refresh failed: invalid_grant")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("connected", "disconnected")
    with pytest.raises(InvalidTransition):
        act("t1", integrations.start_sync, iid)

    cid2, ev = act("t1", integrations.connect_integration, iid, user=USER)
    assert cid2 != cid and one(published, ev, "INTEGRATION_CONNECTED")["payload"]["connectionId"] == cid2
    _, ev = act("t1", integrations.disconnect_integration, iid, reason="moving to Salesforce", user=USER)
    p = one(published, ev, "INTEGRATION_DISCONNECTED")["payload"]
    assert (p["connectionId"], p["disconnectedByUserId"], p["reason"]) == (cid2, USER, "moving to Salesforce")


def test_rmm_devices_alerts_and_syncs(act, published):
    iid, _ = act(TENANT, integrations.install_integration, "ninjaone", user=USER)
    act(TENANT, integrations.connect_integration, iid, user=USER)
    asset, _ = act(TENANT, assets.create_asset, name="Reception PC", asset_type="workstation", user=USER)

    sid, ev = act(TENANT, integrations.start_sync, iid, scope="devices", user=USER)
    assert types(ev) == ["INTEGRATION_SYNC_STARTED", "RMM_SYNC_STARTED"]
    p = one(published, ev, "RMM_SYNC_STARTED")["payload"]
    assert (p["integrationId"], p["provider"], p["syncType"]) == (iid, "ninjaone", "devices")

    dev, ev = act(TENANT, integrations.upsert_rmm_device, iid, "ninja-101", name="RECEPTION-01",
                  device_type="workstation", external_org_id="org-7", asset_id=asset)  # fmt: skip
    p = one(published, ev, "RMM_DEVICE_CREATED")["payload"]
    assert (p["integrationId"], p["externalDeviceId"], p["deviceName"], p["deviceType"], p["assetId"]) == (
        iid, "ninja-101", "RECEPTION-01", "workstation", asset)  # fmt: skip
    assert (p["externalOrganizationId"], p["deviceId"]) == ("org-7", dev)
    again, ev = act(TENANT, integrations.upsert_rmm_device, iid, "ninja-101", name="RECEPTION-02")
    p = one(published, ev, "RMM_DEVICE_UPDATED")["payload"]
    assert again == dev and p["changes"] == {"deviceName": {"previous": "RECEPTION-01", "new": "RECEPTION-02"}}
    assert (p["deviceName"], p["assetId"]) == ("RECEPTION-02", asset)
    assert act(TENANT, integrations.upsert_rmm_device, iid, "ninja-101", name="RECEPTION-02") == (dev, [])

    _, ev = act(TENANT, integrations.complete_sync, sid, created=1, updated=1, failed=1)
    assert types(ev) == ["INTEGRATION_SYNC_COMPLETED", "RMM_SYNC_COMPLETED"]
    p = one(published, ev, "RMM_SYNC_COMPLETED")["payload"]
    assert (p["syncType"], p["itemsProcessed"], p["itemsCreated"], p["itemsUpdated"], p["itemsFailed"]) == (
        "devices", 3, 1, 1, 1)  # fmt: skip

    changed, ev = act(TENANT, integrations.set_device_status, dev, "online")
    got = one(published, ev, "RMM_DEVICE_ONLINE")
    p = got["payload"]
    assert changed and (p["externalDeviceId"], p["currentStatus"], p["assetId"]) == ("ninja-101", "online", asset)
    assert "previousStatus" not in p and p["lastSeenAt"]
    _, ev = act(TENANT, integrations.set_device_status, dev, "offline")
    got = one(published, ev, "RMM_DEVICE_OFFLINE")
    assert (got["payload"]["previousStatus"], got["payload"]["currentStatus"]) == ("online", "offline")
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("online", "offline")
    assert act(TENANT, integrations.set_device_status, dev, "offline") == (False, [])

    _, ev = act(TENANT, integrations.receive_webhook, iid, "wh-9", "device.offline",
                {"deviceId": "ninja-101", "status": "offline"})  # fmt: skip
    assert types(ev) == ["INTEGRATION_WEBHOOK_RECEIVED", "RMM_WEBHOOK_RECEIVED"]
    p = one(published, ev, "RMM_WEBHOOK_RECEIVED")["payload"]
    assert (p["integrationId"], p["webhookEventType"], p["externalDeviceId"], p["assetId"]) == (
        iid, "device.offline", "ninja-101", asset)  # fmt: skip
    assert p["rawPayload"] == {"deviceId": "ninja-101", "status": "offline"}

    alert, ev = act(TENANT, integrations.trigger_rmm_alert, iid, "ninja-alert-5", severity="critical",
                    message="Disk C: 98% full", external_device_id="ninja-101", alert_class="disk")  # fmt: skip
    got = one(published, ev, "RMM_ALERT_TRIGGERED")
    p = got["payload"]
    assert (p["alertId"], p["externalAlertId"], p["externalDeviceId"], p["assetId"], p["severity"]) == (
        alert, "ninja-alert-5", "ninja-101", asset, "critical")  # fmt: skip
    assert (p["message"], p["alertClass"]) == ("Disk C: 98% full", "disk") and "resolvedAt" not in p
    assert act(TENANT, integrations.trigger_rmm_alert, iid, "ninja-alert-5", severity="critical") == (alert, [])
    tid, _ = act(TENANT, tickets.create_ticket, title="Disk full on RECEPTION-02", user=USER)
    act(TENANT, integrations.link_alert_ticket, alert, tid, user=USER)
    _, ev = act(TENANT, integrations.resolve_rmm_alert, alert)
    got = one(published, ev, "RMM_ALERT_RESOLVED")
    p = got["payload"]
    assert (p["alertId"], p["ticketId"], p["severity"]) == (alert, tid, "critical") and p["resolvedAt"]
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("active", "resolved")
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.resolve_rmm_alert, alert)

    sid2, _ = act(TENANT, integrations.start_sync, iid, scope="alerts")
    _, ev = act(TENANT, integrations.fail_sync, sid2, "API unavailable", error_code="503")
    assert types(ev) == ["INTEGRATION_SYNC_FAILED", "RMM_SYNC_FAILED"]
    p = one(published, ev, "RMM_SYNC_FAILED")["payload"]
    assert (p["syncType"], p["error"]) == ("alerts", {"message": "API unavailable", "code": "503"})

    _, ev = act(TENANT, integrations.delete_rmm_device, dev)
    got = one(published, ev, "RMM_DEVICE_DELETED")
    assert (got["payload"]["externalDeviceId"], got["payload"]["assetId"]) == ("ninja-101", asset)
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.set_device_status, dev, "online")
    back, ev = act(TENANT, integrations.upsert_rmm_device, iid, "ninja-101", name="RECEPTION-03")
    assert back == dev and types(ev) == ["RMM_DEVICE_CREATED"]  # reported again: the same device comes back


def test_calendar_sync_conflicts_and_accounting_exports(act, published):
    cal, _ = act(TENANT, integrations.install_integration, "google_calendar", user=USER)
    act(TENANT, integrations.connect_integration, cal, user=USER)
    start = now().replace(microsecond=0) + timedelta(days=2)
    appt, _ = act(TENANT, scheduling.create_appointment, start_at=start, end_at=start + timedelta(hours=1),
                  timezone="Europe/Paris", user=USER)  # fmt: skip
    mid, ev = act(TENANT, integrations.set_mapping, cal, "schedule_entry", appt, "gcal-evt-1", user=USER)
    p = one(published, ev, "EXTERNAL_MAPPING_CHANGED")["payload"]
    assert (p["provider"], p["mappingType"], p["newValue"]) == (
        "google_calendar", "schedule_entry", {"localId": appt, "externalId": "gcal-evt-1"})  # fmt: skip

    sid, ev = act(TENANT, integrations.start_sync, cal, direction="to_external", schedule_entry_id=appt, user=USER)
    assert types(ev) == ["INTEGRATION_SYNC_STARTED", "CALENDAR_SYNC_STARTED"]
    p = one(published, ev, "CALENDAR_SYNC_STARTED")["payload"]
    assert (p["calendarProviderId"], p["scheduleEntryId"], p["externalEventId"], p["syncDirection"]) == (
        cal, appt, "gcal-evt-1", "to_external")  # fmt: skip
    _, ev = act(TENANT, integrations.complete_sync, sid, updated=1)
    p = one(published, ev, "CALENDAR_SYNC_COMPLETED")["payload"]
    assert (p["calendarProviderId"], p["scheduleEntryId"], p["syncDirection"]) == (cal, appt, "to_external")
    assert "error" not in p

    # changed only in the external calendar since the sync: no conflict, the next sync pulls it
    assert act(TENANT, integrations.external_event_changed, cal, "gcal-evt-1", modified_at=now()) == ("pull", [])
    # changed on both sides: conflict
    act(TENANT, scheduling.reschedule_appointment, appt, start_at=start + timedelta(hours=2),
        end_at=start + timedelta(hours=3), user=USER)  # fmt: skip
    ext_modified = now()
    verdict, ev = act(TENANT, integrations.external_event_changed, cal, "gcal-evt-1", modified_at=ext_modified)
    assert verdict == "conflict"
    p = one(published, ev, "CALENDAR_CONFLICT_DETECTED")["payload"]
    assert (p["mappingId"], p["calendarProviderId"], p["scheduleEntryId"], p["externalEventId"]) == (
        mid, cal, appt, "gcal-evt-1")  # fmt: skip
    assert p["externalLastModified"].startswith(ext_modified.strftime("%Y-%m-%dT%H:%M:%S"))
    assert p["algaLastModified"] <= p["externalLastModified"]

    sid2, ev = act(TENANT, integrations.start_sync, cal, user=USER)
    assert one(published, ev, "CALENDAR_SYNC_STARTED")["payload"]["syncDirection"] == "bidirectional"
    _, ev = act(TENANT, integrations.fail_sync, sid2, "calendar not found", error_code="404", retryable=False)
    assert types(ev) == ["INTEGRATION_SYNC_FAILED", "CALENDAR_SYNC_FAILED"]
    p = one(published, ev, "CALENDAR_SYNC_FAILED")["payload"]
    assert (p["calendarProviderId"], p["syncDirection"], p["error"]) == (
        cal, "bidirectional", {"message": "calendar not found", "code": "404"})  # fmt: skip
    assert "scheduleEntryId" not in p

    # accounting: a batch delivered in part, then the rest failing
    qb, _ = act(TENANT, integrations.install_integration, "quickbooks_online", user=USER)
    act(TENANT, integrations.connect_integration, qb, user=USER)
    client, _ = act(TENANT, crm.create_client, name="Acme", status="active", user=USER)
    invoices = []
    for price in ("100.00", "250.00"):
        inv, _ = act(TENANT, billing.generate_invoice, client, due_date=date.today() + timedelta(days=30),
                     lines=[{"description": "Support", "quantity": 1, "unit_price": price}], user=USER)  # fmt: skip
        act(TENANT, billing.finalize_invoice, inv, user=USER)
        invoices.append(inv)
    batch, ev = act(TENANT, integrations.create_accounting_export, qb, invoices, user=USER)
    assert ev == []
    delivered, ev = act(TENANT, integrations.complete_accounting_export, batch, failed_invoice_ids=[invoices[1]],
                        error_message="customer not found in QuickBooks")  # fmt: skip
    got = one(published, ev, "ACCOUNTING_EXPORT_COMPLETED")
    p = got["payload"]
    assert (p["batchId"], p["adapterType"], p["deliveredLineIds"]) == (batch, "quickbooks_online", delivered)
    assert len(delivered) == 1
    assert p["error"] == {"message": "customer not found in QuickBooks", "code": "partial_delivery"}
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "partially_delivered")
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.create_accounting_export, qb, [invoices[0]])  # delivered already

    batch2, _ = act(TENANT, integrations.create_accounting_export, qb, [invoices[1]], user=USER)
    _, ev = act(TENANT, integrations.fail_accounting_export, batch2, "QuickBooks unavailable", code="ECONNRESET",
                status="503")  # fmt: skip
    got = one(published, ev, "ACCOUNTING_EXPORT_FAILED")
    p = got["payload"]
    assert (p["batchId"], p["adapterType"]) == (batch2, "quickbooks_online")
    assert p["error"] == {"message": "QuickBooks unavailable", "code": "ECONNRESET", "status": "503"}
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("pending", "failed")
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.complete_accounting_export, batch2)


def test_bad_input_emits_nothing(act, db_url):
    iid, _ = act(TENANT, integrations.install_integration, "ninjaone")
    act(TENANT, integrations.connect_integration, iid, user=USER)
    hs, _ = act(TENANT, integrations.install_integration, "hubspot")
    sid, _ = act(TENANT, integrations.start_sync, iid)
    before = outbox_count(db_url)

    with pytest.raises(NotFound):
        act(TENANT, integrations.connect_integration, str(uuid.uuid4()))
    with pytest.raises(NotFound):
        act(TENANT, integrations.complete_sync, "sync-1")
    with pytest.raises(NotFound):
        act(TENANT, integrations.set_mapping, iid, "client", str(uuid.uuid4()), "ext-1")  # no such client
    with pytest.raises(NotFound):
        act(TENANT, integrations.set_device_status, str(uuid.uuid4()), "online")
    with pytest.raises(WrongTenant):
        act(str(uuid.uuid4()), integrations.fail_sync, sid, "boom")
    with pytest.raises(WrongTenant):
        act("t2", integrations.disconnect_integration, iid)
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.connect_integration, iid)  # connected already
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.start_sync, hs)  # not connected
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.disconnect_integration, hs)
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.receive_webhook, hs, "w-1", "x", {})
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.install_integration, "myspace")
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.start_sync, iid, scope="everything")
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.complete_sync, sid, created=-1)
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.upsert_rmm_device, hs, "dev-1")  # not an RMM integration
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.trigger_rmm_alert, iid, "a-1", severity="apocalyptic")
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.receive_webhook, iid, "w-1", "x", ["not", "an", "object"])
    with pytest.raises(InvalidInput):
        act(TENANT, integrations.set_mapping, iid, "spaceship", "x", "y")
    with pytest.raises(InvalidInput):
        act("t1", integrations.install_integration, "ninjaone")  # RMM events are legacy bus types: UUID tenants
    act(TENANT, integrations.complete_sync, sid)
    with pytest.raises(InvalidTransition):
        act(TENANT, integrations.fail_sync, sid, "too late")
    assert outbox_count(db_url) == before + 2  # the completed sync and its RMM twin
