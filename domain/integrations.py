"""Integrations: installed providers and their connections, sync jobs, token health, inbound webhooks, mappings
between local and external entities, RMM devices and alerts, calendar conflicts, accounting exports (reference
actions).

Rules worth knowing:

- An integration is one installed provider (``PROVIDERS`` gives its category: accounting, rmm, calendar, crm). It
  has at most one active connection; connecting emits INTEGRATION_CONNECTED, disconnecting (by a user, or after a
  final token-refresh failure) INTEGRATION_DISCONNECTED and fails a running sync.
- Sync jobs: running -> completed | failed, one running job per integration, only while connected. Besides
  INTEGRATION_SYNC_*, an RMM integration's jobs emit the legacy RMM_SYNC_* (``scope`` is the RMM sync type) and a
  calendar integration's jobs the legacy CALENDAR_SYNC_* (with the sync direction, optionally for one schedule
  entry); a completed calendar sync marks its mappings synced.
- Token health: ``check_tokens`` (scheduler) emits INTEGRATION_TOKEN_EXPIRING once per token expiry within the
  warning window; a failed refresh emits INTEGRATION_TOKEN_REFRESH_FAILED and, when not retryable, disconnects.
- Webhooks are stored and emit INTEGRATION_WEBHOOK_RECEIVED (the raw body is referenced, not carried), plus the
  legacy RMM_WEBHOOK_RECEIVED (raw body included) for an RMM provider; a re-delivered webhook id is a no-op.
- Mappings link a local entity (checked to exist for the types in ``MAPPED_TABLES``) to an external id; every change
  emits EXTERNAL_MAPPING_CHANGED with previous/new ``{localId, externalId}``. A calendar event changed externally
  while its mapped schedule entry (appointment) was also changed since the last sync is a conflict
  (CALENDAR_CONFLICT_DETECTED).
- RMM devices and alerts, calendar and accounting events are legacy bus types: they need a UUID tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    select,
)

from domain import assets as _assets
from domain import billing as _billing
from domain import crm as _crm
from domain import scheduling as _scheduling
from domain import tickets as _tickets
from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    NotFound,
    aware_arg,
    diff,
    emit,
    emits,
    fetch,
    iso,
    legacy_tenant,
    metadata,
    new_id,
    now,
    opt_str,
    opt_text_arg,
    text_arg,
    uuid_arg,
    when_arg,
)

integrations = Table(
    "ref_integrations",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("provider", String, nullable=False),
    Column("category", String, nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

connections = Table(
    "ref_integration_connections",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False, index=True),
    Column("status", String, nullable=False),  # active | disconnected
    Column("connected_by", Uuid),
    Column("connected_at", DateTime(timezone=True), nullable=False),
    Column("token_expires_at", DateTime(timezone=True)),
    Column("token_warned_for", DateTime(timezone=True)),  # the expiry last reported as close
    Column("disconnected_at", DateTime(timezone=True)),
    Column("disconnect_reason", Text),
)

syncs = Table(
    "ref_integration_syncs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False, index=True),
    Column("connection_id", Uuid, nullable=False),
    Column("scope", String),
    Column("direction", String),
    Column("schedule_entry_id", Uuid),
    Column("status", String, nullable=False),  # running | completed | failed
    Column("initiated_by", Uuid),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("summary", JSON),
    Column("warnings", JSON),
    Column("error_code", String),
    Column("error_message", Text),
)

webhooks = Table(
    "ref_integration_webhooks",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False),
    Column("webhook_id", String, nullable=False),
    Column("event_name", String, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("integration_id", "webhook_id", name="ref_integration_webhooks_delivery"),
)

mappings = Table(
    "ref_external_mappings",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False),
    Column("mapping_type", String, nullable=False),
    Column("local_id", String, nullable=False),
    Column("external_id", String, nullable=False),
    Column("status", String, nullable=False),  # synced | conflict
    Column("last_synced_at", DateTime(timezone=True), nullable=False),
    Column("external_modified_at", DateTime(timezone=True)),
    UniqueConstraint("integration_id", "mapping_type", "local_id", name="ref_external_mappings_local"),
    UniqueConstraint("integration_id", "mapping_type", "external_id", name="ref_external_mappings_external"),
)

rmm_devices = Table(
    "ref_rmm_devices",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False),
    Column("external_device_id", String, nullable=False),
    Column("external_org_id", String),
    Column("name", Text),
    Column("device_type", String),
    Column("asset_id", Uuid),
    Column("status", String),  # online | offline (None until first reported)
    Column("last_seen_at", DateTime(timezone=True)),
    Column("deleted_at", DateTime(timezone=True)),
    UniqueConstraint("integration_id", "external_device_id", name="ref_rmm_devices_external"),
)

rmm_alerts = Table(
    "ref_rmm_alerts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False),
    Column("external_alert_id", String, nullable=False),
    Column("external_device_id", String),
    Column("asset_id", Uuid),
    Column("ticket_id", Uuid),
    Column("severity", String, nullable=False),
    Column("priority", String),
    Column("message", Text),
    Column("source_type", String),
    Column("alert_class", String),
    Column("status", String, nullable=False),  # active | resolved
    Column("triggered_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
)

exports = Table(
    "ref_accounting_exports",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("integration_id", Uuid, ForeignKey("ref_integrations.id"), nullable=False),
    Column("status", String, nullable=False),  # pending | delivered | partially_delivered | failed
    Column("created_by", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Column("error", JSON),
)

export_lines = Table(
    "ref_accounting_export_lines",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("batch_id", Uuid, ForeignKey("ref_accounting_exports.id"), nullable=False, index=True),
    Column("integration_id", Uuid, nullable=False),
    Column("invoice_id", Uuid, nullable=False),
    Column("status", String, nullable=False),  # pending | delivered | failed
)

PROVIDERS = {
    "quickbooks_online": "accounting", "xero": "accounting",
    "ninjaone": "rmm", "datto_rmm": "rmm", "connectwise_automate": "rmm",
    "google_calendar": "calendar", "microsoft_calendar": "calendar",
    "hubspot": "crm", "salesforce": "crm",
}  # fmt: skip
LEGACY_CATEGORIES = ("rmm", "calendar", "accounting")  # their events include legacy bus types (UUID tenant)
RMM_SYNC_TYPES = ("full", "incremental", "organizations", "devices", "alerts")
SYNC_DIRECTIONS = ("to_external", "from_external", "bidirectional")
DEVICE_STATUSES = ("online", "offline")
ALERT_SEVERITIES = ("critical", "major", "moderate", "minor", "none")
TOKEN_WARNING_DAYS = 7
# mapping types whose local id must be an entity of this tenant, and the table it lives in
MAPPED_TABLES: dict[str, Table] = {
    "client": _crm.clients, "contact": _crm.contacts, "asset": _assets.assets, "invoice": _billing.invoices,
    "ticket": _tickets.tickets, "schedule_entry": _scheduling.appointments,
}  # fmt: skip
FREE_MAPPING_TYPES = ("user", "service", "tax_code", "payment_term", "organization")


# ---- helpers -------------------------------------------------------------------------------------


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


def _integration(ctx: Ctx, integration_id: Any, *, category: str | None = None) -> dict[str, Any]:
    i = fetch(ctx, integrations, "integration", integration_id, for_update=False)
    if category is not None and i["category"] != category:
        raise InvalidInput(f"integration {integration_id} is a {i['category']} integration, not {category}")
    if i["category"] in LEGACY_CATEGORIES:
        legacy_tenant(ctx)
    return i


def _active(ctx: Ctx, i: Mapping[str, Any], wanted: str) -> dict[str, Any]:
    """The active connection of an integration (locked); InvalidTransition if it is not connected."""
    row = ctx.conn.execute(
        connections.select().where(connections.c.integration_id == i["id"], connections.c.status == "active")
        .with_for_update()
    ).mappings().first()  # fmt: skip
    if row is None:
        raise InvalidTransition("integration", "disconnected", wanted)
    return dict(row)


def _base(i: Mapping[str, Any]) -> dict[str, Any]:
    return {"integrationId": str(i["id"]), "provider": i["provider"]}


# ---- integrations and connections ----------------------------------------------------------------


@emits()
def install_integration(ctx: Ctx, provider: str, *, name: str | None = None) -> str:
    """Install a provider (one of ``PROVIDERS``) for this tenant, not yet connected; emits nothing."""
    if provider not in PROVIDERS:
        raise InvalidInput(f"unknown provider {provider!r} (one of {', '.join(PROVIDERS)})")
    if PROVIDERS[provider] in LEGACY_CATEGORIES:
        legacy_tenant(ctx)
    iid = new_id()
    ctx.conn.execute(
        integrations.insert().values(id=iid, tenant_id=ctx.tenant_id, provider=provider, category=PROVIDERS[provider],
                                     name=opt_text_arg("name", name) or provider, created_at=now())
    )  # fmt: skip
    return iid


@emits("INTEGRATION_CONNECTED")
def connect_integration(ctx: Ctx, integration_id: str, *, token_expires_at: datetime | None = None) -> str:
    """Establish a connection (OAuth grant) to the provider; emits INTEGRATION_CONNECTED and returns the connection
    id (InvalidTransition if already connected)."""
    i = _integration(ctx, integration_id)
    expires = aware_arg("token_expires_at", token_expires_at) if token_expires_at is not None else None
    ctx.conn.execute(select(integrations.c.id).where(integrations.c.id == i["id"]).with_for_update())
    if ctx.conn.execute(
        select(connections.c.id).where(connections.c.integration_id == i["id"], connections.c.status == "active")
    ).first():
        raise InvalidTransition("integration", "connected", "connected")
    cid, at = new_id(), now()
    ctx.conn.execute(
        connections.insert().values(id=cid, tenant_id=ctx.tenant_id, integration_id=i["id"], status="active",
                                    connected_by=ctx.user_id, connected_at=at, token_expires_at=expires)
    )  # fmt: skip
    emit(ctx, "INTEGRATION_CONNECTED",
         {**_base(i), "connectionId": cid, "connectedAt": iso(at), "connectedByUserId": ctx.user_id},
         aggregate=f"integration:{i['id']}", to_state="connected")  # fmt: skip
    return cid


def _disconnect(ctx: Ctx, i: Mapping[str, Any], c: Mapping[str, Any], reason: str | None, at: datetime) -> None:
    running = ctx.conn.execute(
        syncs.select().where(syncs.c.integration_id == i["id"], syncs.c.status == "running").with_for_update()
    ).mappings().first()  # fmt: skip
    if running is not None:
        _fail(ctx, i, dict(running), "the connection was removed", "connection_removed", False, at)
    ctx.conn.execute(
        connections.update().where(connections.c.id == c["id"])
        .values(status="disconnected", disconnected_at=at, disconnect_reason=reason)
    )  # fmt: skip
    emit(ctx, "INTEGRATION_DISCONNECTED",
         {**_base(i), "connectionId": str(c["id"]), "disconnectedAt": iso(at), "disconnectedByUserId": ctx.user_id,
          "reason": reason},
         aggregate=f"integration:{i['id']}", from_state="connected", to_state="disconnected")  # fmt: skip


_DISCONNECT_EVENTS = ("INTEGRATION_DISCONNECTED", "INTEGRATION_SYNC_FAILED", "RMM_SYNC_FAILED", "CALENDAR_SYNC_FAILED")


@emits(*_DISCONNECT_EVENTS)
def disconnect_integration(ctx: Ctx, integration_id: str, *, reason: str | None = None) -> None:
    """Remove the provider connection; emits INTEGRATION_DISCONNECTED (a running sync fails first:
    INTEGRATION_SYNC_FAILED and its legacy twin). InvalidTransition if not connected."""
    i = _integration(ctx, integration_id)
    c = _active(ctx, i, "disconnected")
    _disconnect(ctx, i, c, opt_text_arg("reason", reason), now())


# ---- token health --------------------------------------------------------------------------------


@emits("INTEGRATION_TOKEN_EXPIRING")
def check_tokens(ctx: Ctx, *, at: datetime | None = None, within_days: int = TOKEN_WARNING_DAYS) -> list[str]:
    """Scheduler sweep as of ``at`` (default now): emits INTEGRATION_TOKEN_EXPIRING once per token expiry of an active
    connection due within ``within_days``; returns the integration ids warned."""
    when = when_arg("at", at)
    days = _count(within_days, "within_days")
    rows = ctx.conn.execute(
        select(connections, integrations.c.provider)
        .join(integrations, integrations.c.id == connections.c.integration_id)
        .where(connections.c.tenant_id == ctx.tenant_id, connections.c.status == "active",
               connections.c.token_expires_at.is_not(None),
               connections.c.token_expires_at <= when + timedelta(days=days))
        .order_by(connections.c.token_expires_at)
        .with_for_update(of=connections, skip_locked=True)
    ).mappings()  # fmt: skip
    out = []
    for c in [dict(r) for r in rows]:
        if c["token_warned_for"] == c["token_expires_at"]:
            continue
        ctx.conn.execute(
            connections.update().where(connections.c.id == c["id"]).values(token_warned_for=c["token_expires_at"])
        )
        left = max(0, (c["token_expires_at"] - when) // timedelta(days=1))
        iid = str(c["integration_id"])
        emit(ctx, "INTEGRATION_TOKEN_EXPIRING",
             {"integrationId": iid, "provider": c["provider"], "connectionId": str(c["id"]),
              "expiresAt": iso(c["token_expires_at"]), "daysUntilExpiry": left, "notifiedAt": iso(when)},
             aggregate=f"integration:{iid}")  # fmt: skip
        out.append(iid)
    return out


@emits()
def token_refreshed(ctx: Ctx, integration_id: str, *, expires_at: datetime) -> None:
    """Record a successful token refresh (new expiry); emits nothing."""
    i = _integration(ctx, integration_id)
    c = _active(ctx, i, "refreshed")
    expires = aware_arg("expires_at", expires_at)
    ctx.conn.execute(connections.update().where(connections.c.id == c["id"]).values(token_expires_at=expires))


@emits("INTEGRATION_TOKEN_REFRESH_FAILED", *_DISCONNECT_EVENTS)
def token_refresh_failed(
    ctx: Ctx, integration_id: str, error_message: str, *, error_code: str | None = None, retryable: bool = True
) -> None:
    """Record a failed token refresh; emits INTEGRATION_TOKEN_REFRESH_FAILED and, when the failure is final
    (``retryable=False``, e.g. a revoked grant), disconnects: INTEGRATION_DISCONNECTED (and a running sync fails)."""
    i = _integration(ctx, integration_id)
    c = _active(ctx, i, "token refresh")
    error_message = text_arg("error_message", error_message)
    error_code = opt_text_arg("error_code", error_code)
    if not isinstance(retryable, bool):
        raise InvalidInput(f"retryable must be a boolean, got {retryable!r}")
    at = now()
    emit(ctx, "INTEGRATION_TOKEN_REFRESH_FAILED",
         {**_base(i), "connectionId": str(c["id"]), "failedAt": iso(at), "errorCode": error_code,
          "errorMessage": error_message, "retryable": retryable},
         aggregate=f"integration:{i['id']}")  # fmt: skip
    if not retryable:
        _disconnect(ctx, i, c, f"token refresh failed: {error_message}", at)


# ---- sync jobs -----------------------------------------------------------------------------------


def _calendar_legacy(ctx: Ctx, event_type: str, i: Mapping[str, Any], s: Mapping[str, Any], **extra: Any) -> None:
    external = None
    if s["schedule_entry_id"] is not None:
        external = ctx.conn.execute(
            select(mappings.c.external_id).where(
                mappings.c.integration_id == i["id"], mappings.c.mapping_type == "schedule_entry",
                mappings.c.local_id == str(s["schedule_entry_id"]))
        ).scalar()  # fmt: skip
    emit(ctx, event_type,
         {"calendarProviderId": str(i["id"]), "scheduleEntryId": opt_str(s["schedule_entry_id"]),
          "externalEventId": external, "syncDirection": s["direction"], **extra},
         aggregate=f"integration:{i['id']}")  # fmt: skip


@emits("INTEGRATION_SYNC_STARTED", "RMM_SYNC_STARTED", "CALENDAR_SYNC_STARTED")
def start_sync(
    ctx: Ctx,
    integration_id: str,
    *,
    scope: str | None = None,
    direction: str | None = None,
    schedule_entry_id: str | None = None,
) -> str:
    """Start a sync job with the provider and return its id; emits INTEGRATION_SYNC_STARTED, plus RMM_SYNC_STARTED
    (``scope``: an RMM sync type, default full) or CALENDAR_SYNC_STARTED (``direction``, default bidirectional;
    optionally one ``schedule_entry_id``). InvalidTransition when not connected or a job is already running."""
    i = _integration(ctx, integration_id)
    scope = opt_text_arg("scope", scope)
    if i["category"] == "rmm":
        scope = scope or "full"
        if scope not in RMM_SYNC_TYPES:
            raise InvalidInput(f"an RMM sync scope is one of {RMM_SYNC_TYPES}, got {scope!r}")
    if i["category"] == "calendar":
        direction = direction or "bidirectional"
        if direction not in SYNC_DIRECTIONS:
            raise InvalidInput(f"direction must be one of {SYNC_DIRECTIONS}, got {direction!r}")
    elif direction is not None or schedule_entry_id is not None:
        raise InvalidInput("direction and schedule_entry_id are for calendar integrations")
    entry = None
    if schedule_entry_id is not None:
        entry = fetch(ctx, _scheduling.appointments, "schedule entry", schedule_entry_id, for_update=False)["id"]
    c = _active(ctx, i, "syncing")
    if ctx.conn.execute(
        select(syncs.c.id).where(syncs.c.integration_id == i["id"], syncs.c.status == "running").limit(1)
    ).first():
        raise InvalidTransition("integration sync", "running", "running")
    sid, at = new_id(), now()
    row = {"id": uuid.UUID(sid), "tenant_id": ctx.tenant_id, "integration_id": i["id"], "connection_id": c["id"],
           "scope": scope, "direction": direction, "schedule_entry_id": entry, "status": "running",
           "initiated_by": ctx.user_id, "started_at": at}  # fmt: skip
    ctx.conn.execute(syncs.insert().values(**row))
    emit(ctx, "INTEGRATION_SYNC_STARTED",
         {**_base(i), "connectionId": str(c["id"]), "syncId": sid, "scope": scope, "initiatedByUserId": ctx.user_id,
          "startedAt": iso(at)},
         aggregate=f"integration:{i['id']}", to_state="running")  # fmt: skip
    if i["category"] == "rmm":
        emit(
            ctx, "RMM_SYNC_STARTED", {**_base(i), "syncType": scope, "syncId": sid}, aggregate=f"integration:{i['id']}"
        )
    elif i["category"] == "calendar":
        _calendar_legacy(ctx, "CALENDAR_SYNC_STARTED", i, row, syncId=sid)
    return sid


def _running(ctx: Ctx, sync_id: str, wanted: str) -> tuple[dict[str, Any], dict[str, Any]]:
    s = fetch(ctx, syncs, "sync", sync_id)
    i = _integration(ctx, s["integration_id"])
    if s["status"] != "running":
        raise InvalidTransition("integration sync", s["status"], wanted)
    return i, s


@emits("INTEGRATION_SYNC_COMPLETED", "RMM_SYNC_COMPLETED", "CALENDAR_SYNC_COMPLETED")
def complete_sync(
    ctx: Ctx,
    sync_id: str,
    *,
    created: int = 0,
    updated: int = 0,
    deleted: int = 0,
    skipped: int = 0,
    failed: int = 0,
    warnings: Sequence[str] = (),
) -> None:
    """Finish a running sync job with its counts (running -> completed); emits INTEGRATION_SYNC_COMPLETED, plus
    RMM_SYNC_COMPLETED (item counts) or CALENDAR_SYNC_COMPLETED (and its schedule-entry mappings count as synced)."""
    i, s = _running(ctx, sync_id, "completed")
    counts = {k: _count(v, k) for k, v in
              (("created", created), ("updated", updated), ("deleted", deleted), ("skipped", skipped))}  # fmt: skip
    failed = _count(failed, "failed")
    if isinstance(warnings, str) or not all(isinstance(w, str) and w for w in warnings):
        raise InvalidInput("warnings must be a list of non-empty strings")
    notes = list(warnings)
    at = now()
    summary = {**counts, "failed": failed}
    ctx.conn.execute(
        syncs.update().where(syncs.c.id == s["id"])
        .values(status="completed", ended_at=at, summary=summary, warnings=notes)
    )  # fmt: skip
    sid = str(s["id"])
    emit(ctx, "INTEGRATION_SYNC_COMPLETED",
         {**_base(i), "connectionId": str(s["connection_id"]), "syncId": sid, "startedAt": iso(s["started_at"]),
          "completedAt": iso(at), "durationMs": _ms(s["started_at"], at), "summary": counts, "warnings": notes or None},
         aggregate=f"integration:{i['id']}", from_state="running", to_state="completed")  # fmt: skip
    if i["category"] == "rmm":
        emit(ctx, "RMM_SYNC_COMPLETED",
             {**_base(i), "syncType": s["scope"], "syncId": sid, "itemsProcessed": sum(counts.values()) + failed,
              "itemsCreated": counts["created"], "itemsUpdated": counts["updated"], "itemsFailed": failed},
             aggregate=f"integration:{i['id']}")  # fmt: skip
    elif i["category"] == "calendar":
        cond = [mappings.c.integration_id == i["id"], mappings.c.mapping_type == "schedule_entry"]
        if s["schedule_entry_id"] is not None:
            cond.append(mappings.c.local_id == str(s["schedule_entry_id"]))
        ctx.conn.execute(mappings.update().where(*cond).values(status="synced", last_synced_at=at))
        _calendar_legacy(ctx, "CALENDAR_SYNC_COMPLETED", i, s, syncId=sid)


def _fail(
    ctx: Ctx, i: Mapping[str, Any], s: Mapping[str, Any], message: str, code: str | None, retryable: bool,
    at: datetime,
) -> None:  # fmt: skip
    ctx.conn.execute(
        syncs.update().where(syncs.c.id == s["id"])
        .values(status="failed", ended_at=at, error_code=code, error_message=message)
    )  # fmt: skip
    sid = str(s["id"])
    emit(ctx, "INTEGRATION_SYNC_FAILED",
         {**_base(i), "connectionId": str(s["connection_id"]), "syncId": sid, "startedAt": iso(s["started_at"]),
          "failedAt": iso(at), "durationMs": _ms(s["started_at"], at), "errorCode": code, "errorMessage": message,
          "retryable": retryable},
         aggregate=f"integration:{i['id']}", from_state="running", to_state="failed")  # fmt: skip
    error = {k: v for k, v in (("message", message), ("code", code)) if v is not None}
    if i["category"] == "rmm":
        emit(ctx, "RMM_SYNC_FAILED", {**_base(i), "syncType": s["scope"], "syncId": sid, "error": error},
             aggregate=f"integration:{i['id']}")  # fmt: skip
    elif i["category"] == "calendar":
        _calendar_legacy(ctx, "CALENDAR_SYNC_FAILED", i, s, syncId=sid, error=error)


@emits("INTEGRATION_SYNC_FAILED", "RMM_SYNC_FAILED", "CALENDAR_SYNC_FAILED")
def fail_sync(
    ctx: Ctx, sync_id: str, error_message: str, *, error_code: str | None = None, retryable: bool = True
) -> None:
    """End a running sync job in error (running -> failed); emits INTEGRATION_SYNC_FAILED, plus RMM_SYNC_FAILED or
    CALENDAR_SYNC_FAILED (with the error) for RMM and calendar integrations."""
    i, s = _running(ctx, sync_id, "failed")
    message = text_arg("error_message", error_message)
    code = opt_text_arg("error_code", error_code)
    if not isinstance(retryable, bool):
        raise InvalidInput(f"retryable must be a boolean, got {retryable!r}")
    _fail(ctx, i, s, message, code, retryable, now())


# ---- webhooks ------------------------------------------------------------------------------------


@emits("INTEGRATION_WEBHOOK_RECEIVED", "RMM_WEBHOOK_RECEIVED")
def receive_webhook(
    ctx: Ctx, integration_id: str, webhook_id: str, event_name: str, payload: Mapping[str, Any]
) -> str | None:
    """Store a webhook delivery from a connected provider and return its stored id; emits
    INTEGRATION_WEBHOOK_RECEIVED (and RMM_WEBHOOK_RECEIVED with the raw body for an RMM provider). A webhook id
    already received is a re-delivery: None, nothing emitted."""
    i = _integration(ctx, integration_id)
    delivery = text_arg("webhook_id", webhook_id)
    name = text_arg("event_name", event_name)
    if not isinstance(payload, Mapping):
        raise InvalidInput("a webhook payload must be a JSON object")
    c = _active(ctx, i, "receiving webhooks")
    if ctx.conn.execute(
        select(webhooks.c.id).where(webhooks.c.integration_id == i["id"], webhooks.c.webhook_id == delivery)
    ).first():
        return None
    wid, at = new_id(), now()
    ctx.conn.execute(
        webhooks.insert().values(id=wid, tenant_id=ctx.tenant_id, integration_id=i["id"], webhook_id=delivery,
                                 event_name=name, payload=dict(payload), received_at=at)
    )  # fmt: skip
    emit(ctx, "INTEGRATION_WEBHOOK_RECEIVED",
         {**_base(i), "connectionId": str(c["id"]), "webhookId": delivery, "eventName": name, "receivedAt": iso(at),
          "rawPayloadRef": f"integration-webhooks/{wid}"},
         aggregate=f"integration:{i['id']}")  # fmt: skip
    if i["category"] == "rmm":
        device_ref = payload.get("deviceId")
        device = _device_by_external(ctx, i, str(device_ref)) if device_ref is not None else None
        emit(ctx, "RMM_WEBHOOK_RECEIVED",
             {**_base(i), "webhookEventType": name, "externalDeviceId": opt_str(device_ref),
              "assetId": opt_str(device and device["asset_id"]), "rawPayload": dict(payload)},
             aggregate=f"integration:{i['id']}")  # fmt: skip
    return wid


# ---- mappings ------------------------------------------------------------------------------------


def _mapping_value(m: Mapping[str, Any]) -> dict[str, str]:
    return {"localId": str(m["local_id"]), "externalId": str(m["external_id"])}


def _emit_mapping(
    ctx: Ctx, i: Mapping[str, Any], mapping_id: Any, mapping_type: str, old: Any, new: Any, at: datetime
) -> None:
    emit(ctx, "EXTERNAL_MAPPING_CHANGED",
         {"provider": i["provider"], "integrationId": str(i["id"]), "mappingType": mapping_type,
          "mappingId": str(mapping_id), "changedAt": iso(at), "previousValue": old, "newValue": new},
         aggregate=f"mapping:{mapping_id}")  # fmt: skip


@emits("EXTERNAL_MAPPING_CHANGED")
def set_mapping(ctx: Ctx, integration_id: str, mapping_type: str, local_id: str, external_id: str) -> str:
    """Link a local entity to an external one (or re-link it) and return the mapping id; emits
    EXTERNAL_MAPPING_CHANGED with previous/new {localId, externalId} (no-op if unchanged)."""
    i = _integration(ctx, integration_id)
    if mapping_type in MAPPED_TABLES:
        local = str(fetch(ctx, MAPPED_TABLES[mapping_type], mapping_type.replace("_", " "), local_id,
                          for_update=False)["id"])  # fmt: skip
    elif mapping_type in FREE_MAPPING_TYPES:
        local = text_arg("local_id", local_id)
    else:
        raise InvalidInput(f"unknown mapping type {mapping_type!r} ({sorted([*MAPPED_TABLES, *FREE_MAPPING_TYPES])})")
    external = text_arg("external_id", external_id)
    taken = ctx.conn.execute(
        select(mappings.c.local_id).where(mappings.c.integration_id == i["id"], mappings.c.mapping_type == mapping_type,
                                          mappings.c.external_id == external, mappings.c.local_id != local)
    ).first()  # fmt: skip
    if taken is not None:
        raise InvalidInput(f"external {mapping_type} {external} is already mapped to {taken[0]}")
    found = ctx.conn.execute(
        mappings.select().where(mappings.c.integration_id == i["id"], mappings.c.mapping_type == mapping_type,
                                mappings.c.local_id == local).with_for_update()
    ).mappings().first()  # fmt: skip
    m = dict(found) if found is not None else None
    at = now()
    if m is not None and m["external_id"] == external:
        return str(m["id"])
    if m is None:
        mid, old = new_id(), None
        ctx.conn.execute(
            mappings.insert().values(id=mid, tenant_id=ctx.tenant_id, integration_id=i["id"],
                                     mapping_type=mapping_type, local_id=local, external_id=external, status="synced",
                                     last_synced_at=at)
        )  # fmt: skip
    else:
        mid, old = str(m["id"]), _mapping_value(m)
        ctx.conn.execute(
            mappings.update().where(mappings.c.id == m["id"])
            .values(external_id=external, status="synced", last_synced_at=at, external_modified_at=None)
        )  # fmt: skip
    _emit_mapping(ctx, i, mid, mapping_type, old, {"localId": local, "externalId": external}, at)
    return mid


@emits("EXTERNAL_MAPPING_CHANGED")
def remove_mapping(ctx: Ctx, mapping_id: str) -> None:
    """Unlink a local entity from its external one; emits EXTERNAL_MAPPING_CHANGED with only previousValue."""
    m = fetch(ctx, mappings, "mapping", mapping_id)
    i = _integration(ctx, m["integration_id"])
    ctx.conn.execute(mappings.delete().where(mappings.c.id == m["id"]))
    _emit_mapping(ctx, i, m["id"], m["mapping_type"], _mapping_value(m), None, now())


@emits("CALENDAR_CONFLICT_DETECTED")
def external_event_changed(ctx: Ctx, integration_id: str, external_event_id: str, *, modified_at: datetime) -> str:
    """The external calendar reports a change to a mapped event; returns ``"conflict"`` and emits
    CALENDAR_CONFLICT_DETECTED when the schedule entry was also changed locally since the last sync (the mapping is
    marked in conflict), else ``"pull"`` (the next sync takes the external change) with nothing emitted."""
    i = _integration(ctx, integration_id, category="calendar")
    external = text_arg("external_event_id", external_event_id)
    modified = aware_arg("modified_at", modified_at)
    m = ctx.conn.execute(
        mappings.select().where(mappings.c.integration_id == i["id"], mappings.c.mapping_type == "schedule_entry",
                                mappings.c.external_id == external).with_for_update()
    ).mappings().first()  # fmt: skip
    if m is None:
        raise NotFound("calendar event mapping", external)
    entry = fetch(ctx, _scheduling.appointments, "schedule entry", m["local_id"], for_update=False)
    ctx.conn.execute(mappings.update().where(mappings.c.id == m["id"]).values(external_modified_at=modified))
    if not (entry["updated_at"] > m["last_synced_at"] and modified > m["last_synced_at"]):
        return "pull"
    ctx.conn.execute(mappings.update().where(mappings.c.id == m["id"]).values(status="conflict"))
    emit(ctx, "CALENDAR_CONFLICT_DETECTED",
         {"mappingId": str(m["id"]), "calendarProviderId": str(i["id"]), "scheduleEntryId": str(entry["id"]),
          "externalEventId": external, "algaLastModified": iso(entry["updated_at"]),
          "externalLastModified": iso(modified)},
         aggregate=f"mapping:{m['id']}")  # fmt: skip
    return "conflict"


# ---- RMM devices and alerts ----------------------------------------------------------------------


def _device_by_external(ctx: Ctx, i: Mapping[str, Any], external_device_id: str) -> dict[str, Any] | None:
    row = ctx.conn.execute(
        rmm_devices.select().where(rmm_devices.c.integration_id == i["id"],
                                   rmm_devices.c.external_device_id == external_device_id).with_for_update()
    ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def _device_payload(i: Mapping[str, Any], d: Mapping[str, Any]) -> dict[str, Any]:
    return {**_base(i), "deviceId": str(d["id"]), "assetId": opt_str(d["asset_id"]),
            "externalDeviceId": d["external_device_id"], "externalOrganizationId": d["external_org_id"],
            "deviceName": d["name"], "deviceType": d["device_type"]}  # fmt: skip


def _device_agg(d: Mapping[str, Any]) -> str:
    return f"rmm-device:{d['id']}"


@emits("RMM_DEVICE_CREATED", "RMM_DEVICE_UPDATED")
def upsert_rmm_device(
    ctx: Ctx,
    integration_id: str,
    external_device_id: str,
    *,
    name: str | None = None,
    device_type: str | None = None,
    external_org_id: str | None = None,
    asset_id: str | None = None,
) -> str:
    """Take in a device the RMM reported (fields left None keep their value) and return its id; emits
    RMM_DEVICE_CREATED for a new (or previously deleted) device, RMM_DEVICE_UPDATED with ``changes``
    ({field: {previous, new}}) for a changed one, nothing if unchanged. ``asset_id`` links a local asset."""
    i = _integration(ctx, integration_id, category="rmm")
    external = text_arg("external_device_id", external_device_id)
    asset = fetch(ctx, _assets.assets, "asset", asset_id, for_update=False)["id"] if asset_id is not None else None
    given = {"name": opt_text_arg("name", name), "device_type": opt_text_arg("device_type", device_type),
             "external_org_id": opt_text_arg("external_org_id", external_org_id), "asset_id": asset}  # fmt: skip
    _active(ctx, i, "reporting devices")
    d = _device_by_external(ctx, i, external)
    if d is None or d["deleted_at"] is not None:
        values = {**given, "status": None, "last_seen_at": None, "deleted_at": None}
        if d is None:
            row = {"id": uuid.UUID(new_id()), "tenant_id": ctx.tenant_id, "integration_id": i["id"],
                   "external_device_id": external, **values}  # fmt: skip
            ctx.conn.execute(rmm_devices.insert().values(**row))
        else:
            row = {**d, **values}
            ctx.conn.execute(rmm_devices.update().where(rmm_devices.c.id == d["id"]).values(**values))
        emit(ctx, "RMM_DEVICE_CREATED", _device_payload(i, row), aggregate=_device_agg(row), to_state="active")
        return str(row["id"])
    after = {k: (v if v is not None else d[k]) for k, v in given.items()}
    labels = {"name": "deviceName", "device_type": "deviceType", "external_org_id": "externalOrganizationId",
              "asset_id": "assetId"}  # fmt: skip
    _, changes = diff({labels[k]: opt_str(d[k]) for k in after}, {labels[k]: opt_str(v) for k, v in after.items()})
    if changes:
        ctx.conn.execute(rmm_devices.update().where(rmm_devices.c.id == d["id"]).values(**after))
        emit(ctx, "RMM_DEVICE_UPDATED", {**_device_payload(i, {**d, **after}), "changes": changes},
             aggregate=_device_agg(d))  # fmt: skip
    return str(d["id"])


def _live_device(ctx: Ctx, device_id: str, wanted: str) -> tuple[dict[str, Any], dict[str, Any]]:
    d = fetch(ctx, rmm_devices, "RMM device", device_id)
    i = _integration(ctx, d["integration_id"], category="rmm")
    if d["deleted_at"] is not None:
        raise InvalidTransition("RMM device", "deleted", wanted)
    return i, d


@emits("RMM_DEVICE_ONLINE", "RMM_DEVICE_OFFLINE")
def set_device_status(ctx: Ctx, device_id: str, status: str, *, last_seen_at: datetime | None = None) -> bool:
    """The RMM reports a device online or offline; emits RMM_DEVICE_ONLINE / RMM_DEVICE_OFFLINE with previous and
    current status and returns True, or False if the status did not change."""
    if status not in DEVICE_STATUSES:
        raise InvalidInput(f"status must be one of {DEVICE_STATUSES}, got {status!r}")
    i, d = _live_device(ctx, device_id, status)
    seen = aware_arg("last_seen_at", last_seen_at) if last_seen_at is not None else None
    if seen is None and status == "online":
        seen = now()
    if d["status"] == status:
        if seen is not None:
            ctx.conn.execute(rmm_devices.update().where(rmm_devices.c.id == d["id"]).values(last_seen_at=seen))
        return False
    ctx.conn.execute(
        rmm_devices.update().where(rmm_devices.c.id == d["id"])
        .values(status=status, last_seen_at=seen or d["last_seen_at"])
    )  # fmt: skip
    emit(ctx, "RMM_DEVICE_ONLINE" if status == "online" else "RMM_DEVICE_OFFLINE",
         {**_device_payload(i, d), "previousStatus": d["status"], "currentStatus": status,
          "lastSeenAt": iso(seen or d["last_seen_at"]) if (seen or d["last_seen_at"]) else None},
         aggregate=_device_agg(d), from_state=d["status"], to_state=status)  # fmt: skip
    return True


@emits("RMM_DEVICE_DELETED")
def delete_rmm_device(ctx: Ctx, device_id: str) -> None:
    """The RMM reports a device removed; emits RMM_DEVICE_DELETED (InvalidTransition if already deleted)."""
    i, d = _live_device(ctx, device_id, "deleted")
    ctx.conn.execute(rmm_devices.update().where(rmm_devices.c.id == d["id"]).values(deleted_at=now()))
    emit(ctx, "RMM_DEVICE_DELETED", _device_payload(i, d), aggregate=_device_agg(d), from_state="active",
         to_state="deleted")  # fmt: skip


def _alert_payload(i: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    return {**_base(i), "alertId": str(a["id"]), "externalAlertId": a["external_alert_id"],
            "externalDeviceId": a["external_device_id"], "assetId": opt_str(a["asset_id"]),
            "ticketId": opt_str(a["ticket_id"]),
            "severity": a["severity"], "priority": a["priority"], "message": a["message"],
            "sourceType": a["source_type"], "alertClass": a["alert_class"], "triggeredAt": iso(a["triggered_at"]),
            "resolvedAt": iso(a["resolved_at"]) if a["resolved_at"] else None}  # fmt: skip


@emits("RMM_ALERT_TRIGGERED")
def trigger_rmm_alert(
    ctx: Ctx,
    integration_id: str,
    external_alert_id: str,
    *,
    severity: str,
    message: str | None = None,
    external_device_id: str | None = None,
    priority: str | None = None,
    source_type: str | None = None,
    alert_class: str | None = None,
) -> str:
    """The RMM raised an alert (optionally for a known device: its asset is linked) and return its id; emits
    RMM_ALERT_TRIGGERED (an alert id still active is a re-delivery: its id, nothing emitted)."""
    i = _integration(ctx, integration_id, category="rmm")
    external = text_arg("external_alert_id", external_alert_id)
    if severity not in ALERT_SEVERITIES:
        raise InvalidInput(f"severity must be one of {ALERT_SEVERITIES}, got {severity!r}")
    device_ref = opt_text_arg("external_device_id", external_device_id)
    _active(ctx, i, "raising alerts")
    active = ctx.conn.execute(
        select(rmm_alerts.c.id).where(rmm_alerts.c.integration_id == i["id"],
                                      rmm_alerts.c.external_alert_id == external, rmm_alerts.c.status == "active")
    ).first()  # fmt: skip
    if active is not None:
        return str(active[0])
    device = _device_by_external(ctx, i, device_ref) if device_ref is not None else None
    row = {"id": uuid.UUID(new_id()), "tenant_id": ctx.tenant_id, "integration_id": i["id"],
           "external_alert_id": external, "external_device_id": device_ref,
           "asset_id": device["asset_id"] if device else None, "ticket_id": None, "severity": severity,
           "priority": opt_text_arg("priority", priority), "message": opt_text_arg("message", message),
           "source_type": opt_text_arg("source_type", source_type),
           "alert_class": opt_text_arg("alert_class", alert_class),
           "status": "active", "triggered_at": now(), "resolved_at": None}  # fmt: skip
    ctx.conn.execute(rmm_alerts.insert().values(**row))
    emit(ctx, "RMM_ALERT_TRIGGERED", _alert_payload(i, row), aggregate=f"rmm-alert:{row['id']}", to_state="active")
    return str(row["id"])


@emits()
def link_alert_ticket(ctx: Ctx, alert_id: str, ticket_id: str) -> None:
    """Record the ticket opened for an RMM alert (carried by its later events); emits nothing."""
    a = fetch(ctx, rmm_alerts, "RMM alert", alert_id)
    ticket = fetch(ctx, _tickets.tickets, "ticket", ticket_id, for_update=False)
    ctx.conn.execute(rmm_alerts.update().where(rmm_alerts.c.id == a["id"]).values(ticket_id=ticket["id"]))


@emits("RMM_ALERT_RESOLVED")
def resolve_rmm_alert(ctx: Ctx, alert_id: str) -> None:
    """The RMM cleared an alert (active -> resolved); emits RMM_ALERT_RESOLVED."""
    a = fetch(ctx, rmm_alerts, "RMM alert", alert_id)
    i = _integration(ctx, a["integration_id"], category="rmm")
    if a["status"] != "active":
        raise InvalidTransition("RMM alert", a["status"], "resolved")
    at = now()
    ctx.conn.execute(rmm_alerts.update().where(rmm_alerts.c.id == a["id"]).values(status="resolved", resolved_at=at))
    emit(ctx, "RMM_ALERT_RESOLVED", _alert_payload(i, {**a, "resolved_at": at}), aggregate=f"rmm-alert:{a['id']}",
         from_state="active", to_state="resolved")  # fmt: skip


# ---- accounting exports --------------------------------------------------------------------------


@emits()
def create_accounting_export(ctx: Ctx, integration_id: str, invoice_ids: Iterable[str]) -> str:
    """Put issued invoices (not draft or void, not already exported or pending to this integration) in an export
    batch for a connected accounting integration and return the batch id; emits nothing until the adapter reports."""
    i = _integration(ctx, integration_id, category="accounting")
    if isinstance(invoice_ids, str | bytes):
        raise InvalidInput("invoice_ids must be a list of invoice ids")
    ids = [uuid_arg("invoice_ids", v) for v in invoice_ids]
    if not ids or len(set(ids)) != len(ids):
        raise InvalidInput("invoice_ids must name at least one invoice, without duplicates")
    for v in ids:
        inv = fetch(ctx, _billing.invoices, "invoice", v, for_update=False)
        if inv["status"] in ("draft", "void"):
            raise InvalidInput(f"invoice {v} is {inv['status']}: only issued invoices are exported")
    busy = ctx.conn.execute(
        select(export_lines.c.invoice_id).where(export_lines.c.integration_id == i["id"],
                                                export_lines.c.invoice_id.in_(ids),
                                                export_lines.c.status.in_(("pending", "delivered")))
    ).first()  # fmt: skip
    if busy is not None:
        raise InvalidInput(f"invoice {busy[0]} is already exported (or pending) to this integration")
    _active(ctx, i, "exporting")
    bid = new_id()
    ctx.conn.execute(
        exports.insert().values(id=bid, tenant_id=ctx.tenant_id, integration_id=i["id"], status="pending",
                                created_by=ctx.user_id, created_at=now())
    )  # fmt: skip
    ctx.conn.execute(
        export_lines.insert(),
        [{"id": new_id(), "tenant_id": ctx.tenant_id, "batch_id": bid, "integration_id": i["id"], "invoice_id": v,
          "status": "pending"} for v in ids],
    )  # fmt: skip
    return bid


def _pending_export(ctx: Ctx, batch_id: str, wanted: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    b = fetch(ctx, exports, "accounting export", batch_id)
    i = _integration(ctx, b["integration_id"], category="accounting")
    if b["status"] != "pending":
        raise InvalidTransition("accounting export", b["status"], wanted)
    lines = {str(inv): str(lid) for lid, inv in ctx.conn.execute(
        select(export_lines.c.id, export_lines.c.invoice_id).where(export_lines.c.batch_id == b["id"]))}  # fmt: skip
    return i, b, lines


@emits("ACCOUNTING_EXPORT_COMPLETED")
def complete_accounting_export(
    ctx: Ctx, batch_id: str, *, failed_invoice_ids: Iterable[str] = (), error_message: str | None = None
) -> list[str]:
    """The adapter delivered a pending batch, all of it or all but ``failed_invoice_ids`` (pending -> delivered |
    partially_delivered); emits ACCOUNTING_EXPORT_COMPLETED with the delivered line ids (and the error of a partial
    delivery) and returns them."""
    i, b, lines = _pending_export(ctx, batch_id, "delivered")
    if isinstance(failed_invoice_ids, str | bytes):
        raise InvalidInput("failed_invoice_ids must be a list of invoice ids")
    failed = {uuid_arg("failed_invoice_ids", v) for v in failed_invoice_ids}
    if failed - set(lines):
        raise InvalidInput(f"invoices {sorted(failed - set(lines))} are not in batch {batch_id}")
    if failed == set(lines):
        raise InvalidInput("nothing was delivered: report the batch with fail_accounting_export")
    message = opt_text_arg("error_message", error_message)
    if failed and message is None:
        raise InvalidInput("a partial delivery needs the error_message of the failed invoices")
    delivered = [lines[v] for v in sorted(lines) if v not in failed]
    error = {"message": message, "code": "partial_delivery"} if failed else None
    at = now()
    ctx.conn.execute(export_lines.update().where(export_lines.c.id.in_(delivered)).values(status="delivered"))
    if failed:
        ctx.conn.execute(
            export_lines.update().where(export_lines.c.id.in_([lines[v] for v in failed])).values(status="failed")
        )
    status = "partially_delivered" if failed else "delivered"
    ctx.conn.execute(
        exports.update().where(exports.c.id == b["id"]).values(status=status, completed_at=at, error=error)
    )
    emit(ctx, "ACCOUNTING_EXPORT_COMPLETED",
         {"batchId": str(b["id"]), "adapterType": i["provider"], "deliveredLineIds": delivered, "error": error},
         aggregate=f"accounting-export:{b['id']}", from_state="pending", to_state=status)  # fmt: skip
    return delivered


@emits("ACCOUNTING_EXPORT_FAILED")
def fail_accounting_export(
    ctx: Ctx, batch_id: str, message: str, *, code: str | None = None, status: str | None = None
) -> None:
    """The adapter could not deliver a pending batch (pending -> failed; its invoices may be exported again); emits
    ACCOUNTING_EXPORT_FAILED with the error (message, adapter code, HTTP status)."""
    i, b, _ = _pending_export(ctx, batch_id, "failed")
    error = {k: v for k, v in (("message", text_arg("message", message)), ("code", opt_text_arg("code", code)),
                               ("status", opt_text_arg("status", status))) if v is not None}  # fmt: skip
    ctx.conn.execute(export_lines.update().where(export_lines.c.batch_id == b["id"]).values(status="failed"))
    ctx.conn.execute(exports.update().where(exports.c.id == b["id"]).values(status="failed", completed_at=now(),
                                                                            error=error))  # fmt: skip
    emit(ctx, "ACCOUNTING_EXPORT_FAILED", {"batchId": str(b["id"]), "adapterType": i["provider"], "error": error},
         aggregate=f"accounting-export:{b['id']}", from_state="pending", to_state="failed")  # fmt: skip
