"""Notifications: per-channel notifications to users and contacts, their delivery and read receipts, and the
recipients' channel preferences (reference actions).

Rules worth knowing:

- ``notify`` creates one notification per requested channel the recipient has not turned off (channels turned off
  are skipped; nothing is emitted for them). In-app notifications land in the recipient's inbox at once
  (NOTIFICATION_SENT and NOTIFICATION_DELIVERED); email, sms and push wait for the provider's callback.
- Status: sent -> delivered | failed; sent/delivered -> read (email opens, push taps, in-app reads; sms has no read
  receipt). Only the recipient (the acting user or contact) reads a notification.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, PrimaryKeyConstraint, String, Table, Text, Uuid, func, select

from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    emit,
    emits,
    fetch,
    iso,
    metadata,
    new_id,
    now,
    opt_text_arg,
    text_arg,
    update_row,
)

notifications = Table(
    "ref_notifications",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("recipient_id", String, nullable=False, index=True),
    Column("channel", String, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text),
    Column("template_id", String),
    Column("context_type", String),
    Column("context_id", String),
    Column("status", String, nullable=False),  # sent | delivered | failed | read
    Column("provider_message_id", String),
    Column("error_code", String),
    Column("error_message", Text),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("read_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

preferences = Table(
    "ref_notification_preferences",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("recipient_id", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("enabled", Boolean, nullable=False),
    PrimaryKeyConstraint("tenant_id", "recipient_id", "channel", name="ref_notification_preferences_pk"),
)

CHANNELS = ("email", "sms", "in_app", "push")
READABLE = ("email", "in_app", "push")


def _recipient(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidInput(f"recipient_id must be a user or contact id (UUID), got {value!r}") from None


def _channel(value: Any) -> str:
    if value not in CHANNELS:
        raise InvalidInput(f"channel must be one of {CHANNELS}, got {value!r}")
    return str(value)


def _base(n: Any) -> dict[str, Any]:
    return {"notificationId": str(n["id"]), "channel": n["channel"], "recipientId": n["recipient_id"]}


@emits()
def set_preference(ctx: Ctx, recipient_id: str, channel: str, enabled: bool) -> None:
    """Turn a channel on or off for a recipient; emits nothing."""
    who, ch = _recipient(recipient_id), _channel(channel)
    if not isinstance(enabled, bool):
        raise InvalidInput(f"enabled must be a boolean, got {enabled!r}")
    key = (preferences.c.tenant_id == ctx.tenant_id, preferences.c.recipient_id == who, preferences.c.channel == ch)
    if ctx.conn.execute(preferences.update().where(*key).values(enabled=enabled)).rowcount == 0:
        ctx.conn.execute(
            preferences.insert().values(tenant_id=ctx.tenant_id, recipient_id=who, channel=ch, enabled=enabled)
        )


@emits("NOTIFICATION_SENT", "NOTIFICATION_DELIVERED")
def notify(
    ctx: Ctx,
    recipient_id: str,
    *,
    title: str,
    channels: Sequence[str] = ("in_app",),
    body: str | None = None,
    template_id: str | None = None,
    context_type: str | None = None,
    context_id: str | None = None,
) -> list[str]:
    """Notify a user or contact on each of ``channels`` they have not turned off; emits NOTIFICATION_SENT per
    notification (plus NOTIFICATION_DELIVERED for in-app ones) and returns the notification ids, in channel order."""
    who = _recipient(recipient_id)
    if isinstance(channels, str) or not channels:
        raise InvalidInput("channels must be a non-empty list of channels")
    wanted = [_channel(c) for c in channels]
    if len(set(wanted)) != len(wanted):
        raise InvalidInput("channels has duplicates")
    title = text_arg("title", title)
    template_id = opt_text_arg("template_id", template_id)
    context_type = opt_text_arg("context_type", context_type)
    context_id = opt_text_arg("context_id", context_id)
    if (context_type is None) != (context_id is None):
        raise InvalidInput("context_type and context_id go together")
    off = {
        r[0]
        for r in ctx.conn.execute(
            select(preferences.c.channel).where(
                preferences.c.tenant_id == ctx.tenant_id, preferences.c.recipient_id == who, ~preferences.c.enabled
            )
        )
    }
    ids = []
    for ch in (c for c in wanted if c not in off):
        nid, at = new_id(), now()
        in_app = ch == "in_app"
        row = {"id": uuid.UUID(nid), "tenant_id": ctx.tenant_id, "recipient_id": who, "channel": ch, "title": title,
               "body": body, "template_id": template_id, "context_type": context_type, "context_id": context_id,
               "status": "delivered" if in_app else "sent", "sent_at": at,
               "delivered_at": at if in_app else None}  # fmt: skip
        ctx.conn.execute(notifications.insert().values(**row))
        emit(ctx, "NOTIFICATION_SENT",
             {**_base(row), "sentAt": iso(at), "templateId": template_id, "contextType": context_type,
              "contextId": context_id},
             aggregate=f"notification:{nid}", to_state="sent")  # fmt: skip
        if in_app:
            emit(ctx, "NOTIFICATION_DELIVERED", {**_base(row), "deliveredAt": iso(at)}, aggregate=f"notification:{nid}",
                 from_state="sent", to_state="delivered")  # fmt: skip
        ids.append(nid)
    return ids


@emits("NOTIFICATION_DELIVERED")
def mark_delivered(ctx: Ctx, notification_id: str, *, provider_message_id: str | None = None) -> None:
    """The channel's provider confirmed delivery (sent -> delivered); emits NOTIFICATION_DELIVERED."""
    n = fetch(ctx, notifications, "notification", notification_id)
    pmid = opt_text_arg("provider_message_id", provider_message_id)
    if n["status"] != "sent":
        raise InvalidTransition("notification", n["status"], "delivered")
    at = now()
    update_row(ctx, notifications, n, status="delivered", delivered_at=at, provider_message_id=pmid)
    emit(ctx, "NOTIFICATION_DELIVERED", {**_base(n), "deliveredAt": iso(at), "providerMessageId": pmid},
         aggregate=f"notification:{n['id']}", from_state="sent", to_state="delivered")  # fmt: skip


@emits("NOTIFICATION_FAILED")
def mark_failed(
    ctx: Ctx, notification_id: str, error_message: str, *, error_code: str | None = None, retryable: bool = False
) -> None:
    """The channel's provider could not deliver (sent -> failed); emits NOTIFICATION_FAILED."""
    n = fetch(ctx, notifications, "notification", notification_id)
    error_message = text_arg("error_message", error_message)
    error_code = opt_text_arg("error_code", error_code)
    if not isinstance(retryable, bool):
        raise InvalidInput(f"retryable must be a boolean, got {retryable!r}")
    if n["status"] != "sent":
        raise InvalidTransition("notification", n["status"], "failed")
    at = now()
    update_row(ctx, notifications, n, status="failed", error_code=error_code, error_message=error_message)
    emit(ctx, "NOTIFICATION_FAILED",
         {**_base(n), "failedAt": iso(at), "errorCode": error_code, "errorMessage": error_message,
          "retryable": retryable},
         aggregate=f"notification:{n['id']}", from_state="sent", to_state="failed")  # fmt: skip


def _reader(ctx: Ctx) -> str:
    who = ctx.user_id or ctx.contact_id
    if who is None:
        raise InvalidInput("reading a notification needs the acting user or contact")
    return _recipient(who)


def _read(ctx: Ctx, n: Any, client: str | None, at: datetime) -> None:
    update_row(ctx, notifications, n, status="read", read_at=at)
    emit(ctx, "NOTIFICATION_READ", {**_base(n), "readAt": iso(at), "client": client},
         aggregate=f"notification:{n['id']}", from_state=n["status"], to_state="read")  # fmt: skip


@emits("NOTIFICATION_READ")
def mark_read(ctx: Ctx, notification_id: str, *, client: str | None = None) -> None:
    """The recipient (the acting user or contact) opened a notification (sent/delivered -> read); emits
    NOTIFICATION_READ (InvalidInput for someone else or an sms)."""
    n = fetch(ctx, notifications, "notification", notification_id)
    if _reader(ctx) != n["recipient_id"]:
        raise InvalidInput(f"notification {notification_id} is not addressed to the acting user or contact")
    client = opt_text_arg("client", client)
    if n["channel"] not in READABLE:
        raise InvalidInput(f"a {n['channel']} notification has no read receipt")
    if n["status"] not in ("sent", "delivered"):
        raise InvalidTransition("notification", n["status"], "read")
    _read(ctx, n, client, now())


@emits("NOTIFICATION_READ")
def mark_all_read(ctx: Ctx, *, client: str | None = None) -> list[str]:
    """The acting user or contact cleared their in-app inbox; emits NOTIFICATION_READ per unread in-app
    notification and returns their ids (oldest first)."""
    who = _reader(ctx)
    client = opt_text_arg("client", client)
    rows = ctx.conn.execute(
        notifications.select()
        .where(notifications.c.tenant_id == ctx.tenant_id, notifications.c.recipient_id == who,
               notifications.c.channel == "in_app", notifications.c.status == "delivered")
        .order_by(notifications.c.sent_at, notifications.c.id)
        .with_for_update()
    ).mappings()  # fmt: skip
    at, out = now(), []
    for n in [dict(r) for r in rows]:
        _read(ctx, n, client, at)
        out.append(str(n["id"]))
    return out
