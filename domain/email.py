"""Email: connected mailboxes, inbound mail and reply matching, the outbound send pipeline, delivery feedback
(delivered, bounced, complaint) and unsubscribes (reference actions).

Rules worth knowing:

- A mailbox (Microsoft or Google) is connected or disconnected; connecting a known address again reconnects it
  (same ``providerId``). Mail is received only through a connected mailbox.
- Every inbound email emits INBOUND_EMAIL_RECEIVED (it drives the email-to-ticket workflow). When its
  ``In-Reply-To`` or ``References`` header names a message of a known thread, or its subject carries the number
  of a ticket (``[T-12345]``), it joins that thread and INBOUND_EMAIL_REPLY_RECEIVED says how it matched
  (``matchedBy``: ``in_reply_to``, ``references``, ``ticket_number``); otherwise it starts a thread. A message
  whose ``Message-ID`` was already received is a re-delivery: nothing happens.
- Outbound: queued -> sent | failed; a retryable failure may be queued again (``retry_email``). After the send,
  each recipient is pending -> delivered | soft_bounced | bounced (hard, final); a soft bounce may still be
  delivered; a delivered recipient may complain.
- Suppression: an unsubscribe, a hard bounce or a complaint puts the address on the tenant's suppression list;
  mail to a suppressed address is refused (``InvalidInput``). A complaint also unsubscribes the address
  (EMAIL_UNSUBSCRIBED with ``source`` ``complaint``) unless it already was.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
)

from domain import tickets as _tickets
from domain.base import (
    EMAIL_RE,
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
    opt_str,
    opt_text_arg,
    text_arg,
    update_row,
    when_arg,
)

mailboxes = Table(
    "ref_email_mailboxes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("provider_type", String, nullable=False),
    Column("name", Text, nullable=False),
    Column("address", String, nullable=False),
    Column("status", String, nullable=False),  # connected | disconnected
    Column("connected_by", Uuid),
    Column("connected_at", DateTime(timezone=True), nullable=False),
    Column("disconnected_at", DateTime(timezone=True)),
    Column("disconnect_reason", Text),
    UniqueConstraint("tenant_id", "address", name="ref_email_mailboxes_address"),
)

threads = Table(
    "ref_email_threads",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("ticket_id", Uuid, index=True),
    Column("subject", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

messages = Table(
    "ref_email_messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("thread_id", Uuid, ForeignKey("ref_email_threads.id"), nullable=False, index=True),
    Column("ticket_id", Uuid),
    Column("direction", String, nullable=False),  # inbound | outbound
    Column("mailbox_id", Uuid, ForeignKey("ref_email_mailboxes.id")),
    Column("provider", String, nullable=False),
    Column("header_id", String, nullable=False),  # RFC 5322 Message-ID
    Column("in_reply_to", String),
    Column("references", JSON, nullable=False),
    Column("from_address", String, nullable=False),
    Column("from_name", Text),
    Column("to", JSON, nullable=False),
    Column("cc", JSON, nullable=False),
    Column("subject", Text),
    Column("body_text", Text),
    Column("body_html", Text),
    Column("attachments", JSON, nullable=False),
    # inbound: received; outbound: queued | sent | failed
    Column("status", String, nullable=False),
    Column("provider_message_id", String),
    Column("error_code", String),
    Column("error_message", Text),
    Column("retryable", Boolean),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    UniqueConstraint("tenant_id", "header_id", name="ref_email_messages_header"),
)

recipients = Table(
    "ref_email_recipients",
    metadata,
    Column("message_id", Uuid, ForeignKey("ref_email_messages.id", ondelete="CASCADE"), nullable=False),
    Column("address", String, nullable=False),
    Column("kind", String, nullable=False),  # to | cc
    # pending | delivered | soft_bounced | bounced | complained
    Column("status", String, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("message_id", "address", name="ref_email_recipients_pk"),
)

suppressions = Table(
    "ref_email_suppressions",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("address", String, nullable=False),
    Column("reason", String, nullable=False),  # unsubscribe | bounce | complaint
    Column("source", String, nullable=False),
    Column("message_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "address", "reason", name="ref_email_suppressions_pk"),
)

PROVIDER_TYPES = ("microsoft", "google")
BOUNCE_TYPES = ("hard", "soft")
UNSUBSCRIBE_SOURCES = ("link", "list_unsubscribe", "portal", "manual")
_TICKET_TOKEN_RE = re.compile(r"\[(T-\d{5})\]")


# ---- helpers -------------------------------------------------------------------------------------


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not EMAIL_RE.match(value.strip()):
        raise InvalidInput(f"{what} must be an e-mail address, got {value!r}")
    return value.strip().lower()


def _addresses(values: Any, what: str, *, required: bool) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list of e-mail addresses, got {values!r}")
    out = [_address(v, what) for v in values]
    if required and not out:
        raise InvalidInput(f"{what} needs at least one address")
    if len(set(out)) != len(out):
        raise InvalidInput(f"{what} has duplicates")
    return out


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    """Nested payload objects: absent instead of null (the contracts reject explicit nulls)."""
    return {k: v for k, v in d.items() if v is not None}


def _suppressed(ctx: Ctx, addresses: Sequence[str]) -> list[str]:
    rows = ctx.conn.execute(
        select(suppressions.c.address)
        .where(suppressions.c.tenant_id == ctx.tenant_id, suppressions.c.address.in_(addresses))
        .distinct()
    )
    return sorted(r[0] for r in rows)


def _unsubscribed(ctx: Ctx, address: str) -> bool:
    row = ctx.conn.execute(
        select(suppressions.c.reason).where(
            suppressions.c.tenant_id == ctx.tenant_id,
            suppressions.c.address == address,
            suppressions.c.reason.in_(("unsubscribe", "complaint")),
        )
    ).first()
    return row is not None


def _suppress(ctx: Ctx, address: str, reason: str, source: str, message_id: Any, at: datetime) -> None:
    exists = ctx.conn.execute(
        select(suppressions.c.address).where(
            suppressions.c.tenant_id == ctx.tenant_id,
            suppressions.c.address == address,
            suppressions.c.reason == reason,
        )
    ).first()
    if exists is None:
        ctx.conn.execute(
            suppressions.insert().values(tenant_id=ctx.tenant_id, address=address, reason=reason, source=source,
                                         message_id=message_id, created_at=at)
        )  # fmt: skip


# ---- mailboxes -----------------------------------------------------------------------------------


@emits("EMAIL_PROVIDER_CONNECTED")
def connect_mailbox(ctx: Ctx, *, provider_type: str, name: str, address: str) -> str:
    """Connect a Microsoft/Google mailbox (or reconnect a disconnected one of the same address); emits
    EMAIL_PROVIDER_CONNECTED and returns the mailbox (provider) id (InvalidTransition if already connected)."""
    if provider_type not in PROVIDER_TYPES:
        raise InvalidInput(f"provider_type must be one of {PROVIDER_TYPES}, got {provider_type!r}")
    name = text_arg("name", name)
    mailbox = _address(address, "address")
    at = now()
    row = ctx.conn.execute(
        mailboxes.select()
        .where(mailboxes.c.tenant_id == ctx.tenant_id, mailboxes.c.address == mailbox)
        .with_for_update()
    ).mappings().first()  # fmt: skip
    values = {"provider_type": provider_type, "name": name, "status": "connected", "connected_by": ctx.user_id,
              "connected_at": at, "disconnected_at": None, "disconnect_reason": None}  # fmt: skip
    if row is None:
        mid, previous = new_id(), None
        ctx.conn.execute(mailboxes.insert().values(id=mid, tenant_id=ctx.tenant_id, address=mailbox, **values))
    else:
        if row["status"] == "connected":
            raise InvalidTransition("mailbox", "connected", "connected")
        mid, previous = str(row["id"]), row["status"]
        ctx.conn.execute(mailboxes.update().where(mailboxes.c.id == row["id"]).values(**values))
    emit(ctx, "EMAIL_PROVIDER_CONNECTED",
         {"providerId": mid, "providerType": provider_type, "providerName": name, "mailbox": mailbox,
          "connectedAt": iso(at)},
         aggregate=f"mailbox:{mid}", from_state=previous, to_state="connected")  # fmt: skip
    return mid


@emits("EMAIL_PROVIDER_DISCONNECTED")
def disconnect_mailbox(ctx: Ctx, mailbox_id: str, *, reason: str | None = None) -> None:
    """Disconnect a connected mailbox (inbound processing stops); emits EMAIL_PROVIDER_DISCONNECTED."""
    mb = fetch(ctx, mailboxes, "mailbox", mailbox_id)
    reason = opt_text_arg("reason", reason)
    if mb["status"] != "connected":
        raise InvalidTransition("mailbox", mb["status"], "disconnected")
    at = now()
    ctx.conn.execute(
        mailboxes.update().where(mailboxes.c.id == mb["id"])
        .values(status="disconnected", disconnected_at=at, disconnect_reason=reason)
    )  # fmt: skip
    mid = str(mb["id"])
    emit(ctx, "EMAIL_PROVIDER_DISCONNECTED",
         {"providerId": mid, "providerType": mb["provider_type"], "providerName": mb["name"],
          "disconnectedAt": iso(at), "reason": reason},
         aggregate=f"mailbox:{mid}", from_state="connected", to_state="disconnected")  # fmt: skip


# ---- inbound -------------------------------------------------------------------------------------


def _attachments(values: Any) -> list[dict[str, Any]]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise InvalidInput("attachments must be a list of {name, content_type, size}")
    out = []
    for n, a in enumerate(values):
        if not isinstance(a, Mapping):
            raise InvalidInput(f"attachments[{n}] must be a mapping")
        size = a.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"attachments[{n}].size must be a non-negative integer, got {size!r}")
        name = text_arg(f"attachments[{n}].name", a.get("name"))
        ctype = text_arg(f"attachments[{n}].content_type", a.get("content_type"))
        out.append({"id": str(a.get("id") or new_id()), "name": name, "contentType": ctype, "size": size})
    return out


def _header(value: Any, what: str) -> str:
    text = text_arg(what, value)
    if any(c.isspace() for c in text):
        raise InvalidInput(f"{what} must be a single Message-ID, got {value!r}")
    return text


def _thread_of_header(ctx: Ctx, header_id: str) -> dict[str, Any] | None:
    row = ctx.conn.execute(
        select(threads)
        .join(messages, messages.c.thread_id == threads.c.id)
        .where(messages.c.tenant_id == ctx.tenant_id, messages.c.header_id == header_id)
    ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def _thread_of_ticket(ctx: Ctx, subject: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The ticket named by a ``[T-12345]`` token in the subject, and its latest thread (if any)."""
    m = _TICKET_TOKEN_RE.search(subject)
    if m is None:
        return None, None
    t = _tickets.tickets
    ticket = ctx.conn.execute(
        select(t.c.id).where(t.c.tenant_id == ctx.tenant_id, t.c.number == m.group(1))
    ).mappings().first()  # fmt: skip
    if ticket is None:
        return None, None
    row = ctx.conn.execute(
        select(threads).where(threads.c.tenant_id == ctx.tenant_id, threads.c.ticket_id == ticket["id"])
        .order_by(threads.c.created_at.desc()).limit(1)
    ).mappings().first()  # fmt: skip
    return dict(ticket), dict(row) if row else None


def _match(
    ctx: Ctx, in_reply_to: str | None, references: Sequence[str], subject: str
) -> tuple[dict[str, Any] | None, str | None, Any]:
    """(thread, matchedBy, ticket id for a new thread) of an inbound message."""
    if in_reply_to:
        th = _thread_of_header(ctx, in_reply_to)
        if th:
            return th, "in_reply_to", None
    for ref in reversed(references):
        th = _thread_of_header(ctx, ref)
        if th:
            return th, "references", None
    ticket, th = _thread_of_ticket(ctx, subject)
    if ticket is not None:
        return th, "ticket_number", ticket["id"]
    return None, None, None


def _new_thread(ctx: Ctx, subject: str | None, ticket_id: Any, at: datetime) -> dict[str, Any]:
    row = {"id": uuid.UUID(new_id()), "tenant_id": ctx.tenant_id, "ticket_id": ticket_id, "subject": subject,
           "created_at": at}  # fmt: skip
    ctx.conn.execute(threads.insert().values(**row))
    return row


@emits("INBOUND_EMAIL_RECEIVED", "INBOUND_EMAIL_REPLY_RECEIVED")
def receive_email(
    ctx: Ctx,
    mailbox_id: str,
    *,
    header_id: str,
    from_address: str,
    to: Sequence[str],
    subject: str,
    text: str | None = None,
    html: str | None = None,
    from_name: str | None = None,
    cc: Sequence[str] = (),
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[Mapping[str, Any]] = (),
    received_at: datetime | None = None,
) -> str:
    """Take in an email fetched from a connected mailbox and return its id; emits INBOUND_EMAIL_RECEIVED, and
    INBOUND_EMAIL_REPLY_RECEIVED when it matched an existing thread or ticket (a re-delivered Message-ID is a no-op
    returning the stored id)."""
    mb = fetch(ctx, mailboxes, "mailbox", mailbox_id, for_update=False)
    if mb["status"] != "connected":
        raise InvalidTransition("mailbox", mb["status"], "receiving")
    header = _header(header_id, "header_id")
    sender = _address(from_address, "from_address")
    to_list = _addresses(to, "to", required=True)
    cc_list = _addresses(cc, "cc", required=False)
    if not isinstance(subject, str):
        raise InvalidInput("subject must be a string")
    if text is None and html is None:
        raise InvalidInput("an email needs a text or an html body")
    reply_to = _header(in_reply_to, "in_reply_to") if in_reply_to is not None else None
    if isinstance(references, str | bytes):
        raise InvalidInput("references must be a list of Message-IDs")
    refs = [_header(r, "references") for r in references]
    files = _attachments(attachments)
    at = when_arg("received_at", received_at)

    seen = ctx.conn.execute(
        select(messages.c.id).where(messages.c.tenant_id == ctx.tenant_id, messages.c.header_id == header)
    ).first()
    if seen is not None:
        return str(seen[0])
    thread, matched_by, ticket_id = _match(ctx, reply_to, refs, subject)
    if thread is None:
        thread = _new_thread(ctx, subject, ticket_id, at)
    mid = new_id()
    ctx.conn.execute(
        messages.insert().values(
            id=mid, tenant_id=ctx.tenant_id, thread_id=thread["id"], ticket_id=thread["ticket_id"],
            direction="inbound", mailbox_id=mb["id"], provider=mb["provider_type"], header_id=header,
            in_reply_to=reply_to, references=refs, from_address=sender, from_name=from_name, to=to_list, cc=cc_list,
            subject=subject, body_text=text, body_html=html, attachments=files, status="received", attempts=0,
            created_at=at,
        )
    )  # fmt: skip
    tid, box = str(thread["id"]), str(mb["id"])
    data = _clean({
        "id": mid, "threadId": tid, "from": _clean({"email": sender, "name": from_name}),
        "to": [{"email": a} for a in to_list], "cc": [{"email": a} for a in cc_list] or None, "subject": subject,
        "body": _clean({"text": text, "html": html}), "inReplyTo": reply_to, "references": refs or None,
        "attachments": files or None, "receivedAt": iso(at), "tenant": ctx.tenant_id, "providerId": box,
    })  # fmt: skip
    emit(ctx, "INBOUND_EMAIL_RECEIVED", {"emailData": data, "providerId": box}, aggregate=f"email:{mid}")
    if matched_by is not None:
        emit(ctx, "INBOUND_EMAIL_REPLY_RECEIVED",
             {"messageId": mid, "threadId": tid, "ticketId": opt_str(thread["ticket_id"]), "from": sender,
              "to": to_list, "subject": subject, "receivedAt": iso(at), "provider": mb["provider_type"],
              "matchedBy": matched_by},
             aggregate=f"email:{mid}")  # fmt: skip
    return mid


# ---- outbound ------------------------------------------------------------------------------------


def _queued_payload(m: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    return {"messageId": str(m["id"]), "threadId": opt_str(m["thread_id"]), "ticketId": opt_str(m["ticket_id"]),
            "from": m["from_address"], "to": list(m["to"]), "cc": list(m["cc"]) or None, "subject": m["subject"],
            "queuedAt": iso(at), "provider": m["provider"]}  # fmt: skip


@emits("OUTBOUND_EMAIL_QUEUED")
def queue_email(
    ctx: Ctx,
    *,
    to: Sequence[str],
    subject: str,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[str] = (),
    mailbox_id: str | None = None,
    from_address: str | None = None,
    provider: str | None = None,
    ticket_id: str | None = None,
    thread_id: str | None = None,
) -> str:
    """Hand an email to the send pipeline and return its id; emits OUTBOUND_EMAIL_QUEUED. It goes out through a
    connected mailbox (``mailbox_id``: its provider and, by default, its address) or a transactional ``provider``
    with a ``from_address``; in a ``thread_id`` it replies to the thread's last message, with a ``ticket_id`` alone it
    starts a thread of the ticket. Suppressed recipients are refused (InvalidInput)."""
    to_list = _addresses(to, "to", required=True)
    cc_list = _addresses(cc, "cc", required=False)
    if set(to_list) & set(cc_list):
        raise InvalidInput("an address cannot be both in to and cc")
    subject = text_arg("subject", subject)
    if text is None and html is None:
        raise InvalidInput("an email needs a text or an html body")
    if mailbox_id is not None:
        mb = fetch(ctx, mailboxes, "mailbox", mailbox_id, for_update=False)
        if mb["status"] != "connected":
            raise InvalidTransition("mailbox", mb["status"], "sending")
        sender = _address(from_address, "from_address") if from_address is not None else mb["address"]
        via, box = mb["provider_type"], mb["id"]
    else:
        if provider is None or from_address is None:
            raise InvalidInput("an email needs a mailbox_id, or a provider and a from_address")
        sender, via, box = _address(from_address, "from_address"), text_arg("provider", provider), None
    thread = fetch(ctx, threads, "email thread", thread_id, for_update=False) if thread_id is not None else None
    ticket = None
    if ticket_id is not None:
        ticket = fetch(ctx, _tickets.tickets, "ticket", ticket_id, for_update=False)["id"]
        if thread is not None and thread["ticket_id"] != ticket:
            raise InvalidInput(f"thread {thread_id} is not a thread of ticket {ticket_id}")
    blocked = _suppressed(ctx, to_list + cc_list)
    if blocked:
        raise InvalidInput(f"suppressed recipients (unsubscribed, bounced or complained): {', '.join(blocked)}")

    at = now()
    reply_to, refs = None, []
    if thread is not None:
        last = ctx.conn.execute(
            select(messages.c.header_id, messages.c.references).where(messages.c.thread_id == thread["id"])
            .order_by(messages.c.created_at.desc()).limit(1)
        ).first()  # fmt: skip
        if last is not None:
            reply_to, refs = last[0], [*list(last[1]), last[0]]
    else:
        thread = _new_thread(ctx, subject, ticket, at)
    mid = new_id()
    domain = sender.rsplit("@", 1)[1]
    row = {"id": uuid.UUID(mid), "tenant_id": ctx.tenant_id, "thread_id": thread["id"],
           "ticket_id": thread["ticket_id"], "direction": "outbound", "mailbox_id": box, "provider": via,
           "header_id": f"<{mid}@{domain}>",
           "in_reply_to": reply_to, "references": refs, "from_address": sender, "from_name": None, "to": to_list,
           "cc": cc_list, "subject": subject, "body_text": text, "body_html": html, "attachments": [],
           "status": "queued", "attempts": 1, "created_at": at}  # fmt: skip
    ctx.conn.execute(messages.insert().values(**row))
    ctx.conn.execute(
        recipients.insert(),
        [{"message_id": mid, "address": a, "kind": kind, "status": "pending", "updated_at": at}
         for kind, addrs in (("to", to_list), ("cc", cc_list)) for a in addrs],
    )  # fmt: skip
    emit(ctx, "OUTBOUND_EMAIL_QUEUED", _queued_payload(row, at), aggregate=f"email:{mid}", to_state="queued")
    return mid


def _outbound(ctx: Ctx, message_id: str) -> dict[str, Any]:
    m = fetch(ctx, messages, "email", message_id)
    if m["direction"] != "outbound":
        raise InvalidInput(f"email {message_id} is inbound")
    return m


@emits("OUTBOUND_EMAIL_SENT")
def mark_email_sent(ctx: Ctx, message_id: str, provider_message_id: str) -> None:
    """The provider accepted a queued email (queued -> sent); emits OUTBOUND_EMAIL_SENT."""
    m = _outbound(ctx, message_id)
    pmid = text_arg("provider_message_id", provider_message_id)
    if m["status"] != "queued":
        raise InvalidTransition("email", m["status"], "sent")
    at = now()
    update_row(ctx, messages, m, status="sent", provider_message_id=pmid, sent_at=at)
    mid = str(m["id"])
    emit(ctx, "OUTBOUND_EMAIL_SENT",
         {"messageId": mid, "providerMessageId": pmid, "threadId": opt_str(m["thread_id"]),
          "ticketId": opt_str(m["ticket_id"]), "sentAt": iso(at), "provider": m["provider"]},
         aggregate=f"email:{mid}", from_state="queued", to_state="sent")  # fmt: skip


@emits("OUTBOUND_EMAIL_FAILED")
def mark_email_failed(
    ctx: Ctx, message_id: str, error_message: str, *, error_code: str | None = None, retryable: bool = False
) -> None:
    """The provider refused or could not send a queued email (queued -> failed); emits OUTBOUND_EMAIL_FAILED."""
    m = _outbound(ctx, message_id)
    error_message = text_arg("error_message", error_message)
    if not isinstance(retryable, bool):
        raise InvalidInput(f"retryable must be a boolean, got {retryable!r}")
    if m["status"] != "queued":
        raise InvalidTransition("email", m["status"], "failed")
    at = now()
    update_row(
        ctx, messages, m, status="failed", error_code=error_code, error_message=error_message, retryable=retryable
    )
    mid = str(m["id"])
    emit(ctx, "OUTBOUND_EMAIL_FAILED",
         {"messageId": mid, "threadId": opt_str(m["thread_id"]), "ticketId": opt_str(m["ticket_id"]),
          "failedAt": iso(at), "provider": m["provider"], "errorCode": error_code, "errorMessage": error_message,
          "retryable": retryable},
         aggregate=f"email:{mid}", from_state="queued", to_state="failed")  # fmt: skip


@emits("OUTBOUND_EMAIL_QUEUED")
def retry_email(ctx: Ctx, message_id: str) -> None:
    """Queue again an email whose send failed with a retryable error (failed -> queued); emits
    OUTBOUND_EMAIL_QUEUED (InvalidTransition if the failure was final or a recipient got suppressed meanwhile)."""
    m = _outbound(ctx, message_id)
    if m["status"] != "failed" or not m["retryable"]:
        raise InvalidTransition("email", f"{m['status']} (retryable={bool(m['retryable'])})", "queued")
    blocked = _suppressed(ctx, [*m["to"], *m["cc"]])
    if blocked:
        raise InvalidTransition("email", f"failed with suppressed recipients {blocked}", "queued")
    at = now()
    update_row(ctx, messages, m, status="queued", error_code=None, error_message=None, retryable=None,
                 attempts=m["attempts"] + 1)  # fmt: skip
    emit(ctx, "OUTBOUND_EMAIL_QUEUED", _queued_payload(m, at), aggregate=f"email:{m['id']}", from_state="failed",
         to_state="queued")  # fmt: skip


# ---- delivery feedback ---------------------------------------------------------------------------


def _recipient(ctx: Ctx, message_id: str, address: str, wanted: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sent email and the row of one of its recipients (locked)."""
    m = _outbound(ctx, message_id)
    to = _address(address, "recipient")
    if m["status"] != "sent":
        raise InvalidTransition("email", m["status"], wanted)
    r = ctx.conn.execute(
        recipients.select().where(recipients.c.message_id == m["id"], recipients.c.address == to).with_for_update()
    ).mappings().first()  # fmt: skip
    if r is None:
        raise InvalidInput(f"{to} is not a recipient of email {message_id}")
    return m, dict(r)


def _set_recipient(ctx: Ctx, r: Mapping[str, Any], status: str, at: datetime) -> None:
    ctx.conn.execute(
        recipients.update().where(recipients.c.message_id == r["message_id"], recipients.c.address == r["address"])
        .values(status=status, updated_at=at)
    )  # fmt: skip


@emits("EMAIL_DELIVERED")
def record_delivery(ctx: Ctx, message_id: str, recipient: str) -> None:
    """The provider confirmed a sent email reached one recipient (pending/soft_bounced -> delivered); emits
    EMAIL_DELIVERED."""
    m, r = _recipient(ctx, message_id, recipient, "delivered")
    if r["status"] not in ("pending", "soft_bounced"):
        raise InvalidTransition("email recipient", r["status"], "delivered")
    at = now()
    _set_recipient(ctx, r, "delivered", at)
    mid = str(m["id"])
    emit(ctx, "EMAIL_DELIVERED",
         {"messageId": mid, "providerMessageId": m["provider_message_id"], "to": r["address"],
          "deliveredAt": iso(at), "provider": m["provider"]},
         aggregate=f"email:{mid}", from_state=r["status"], to_state="delivered")  # fmt: skip


@emits("EMAIL_BOUNCED")
def record_bounce(
    ctx: Ctx,
    message_id: str,
    recipient: str,
    bounce_type: str,
    *,
    smtp_code: str | None = None,
    smtp_message: str | None = None,
) -> None:
    """A sent email bounced for one recipient (pending/soft_bounced -> soft_bounced | bounced); emits EMAIL_BOUNCED.
    A hard bounce suppresses the address."""
    if bounce_type not in BOUNCE_TYPES:
        raise InvalidInput(f"bounce_type must be one of {BOUNCE_TYPES}, got {bounce_type!r}")
    m, r = _recipient(ctx, message_id, recipient, "bounced")
    if r["status"] not in ("pending", "soft_bounced"):
        raise InvalidTransition("email recipient", r["status"], "bounced")
    at = now()
    status = "bounced" if bounce_type == "hard" else "soft_bounced"
    _set_recipient(ctx, r, status, at)
    if bounce_type == "hard":
        _suppress(ctx, r["address"], "bounce", "hard_bounce", m["id"], at)
    mid = str(m["id"])
    emit(ctx, "EMAIL_BOUNCED",
         {"messageId": mid, "providerMessageId": m["provider_message_id"], "to": r["address"], "bouncedAt": iso(at),
          "bounceType": bounce_type, "smtpCode": smtp_code, "smtpMessage": smtp_message, "provider": m["provider"]},
         aggregate=f"email:{mid}", from_state=r["status"], to_state=status)  # fmt: skip


@emits("EMAIL_COMPLAINT_RECEIVED", "EMAIL_UNSUBSCRIBED")
def record_complaint(ctx: Ctx, message_id: str, recipient: str, *, complaint_type: str | None = None) -> None:
    """A recipient of a delivered email marked it as spam (delivered -> complained); emits EMAIL_COMPLAINT_RECEIVED
    and, unless the address already was, EMAIL_UNSUBSCRIBED (source ``complaint``); the address is suppressed."""
    m, r = _recipient(ctx, message_id, recipient, "complained")
    if r["status"] != "delivered":
        raise InvalidTransition("email recipient", r["status"], "complained")
    at = now()
    _set_recipient(ctx, r, "complained", at)
    was_unsubscribed = _unsubscribed(ctx, r["address"])
    _suppress(ctx, r["address"], "complaint", "complaint", m["id"], at)
    mid = str(m["id"])
    emit(ctx, "EMAIL_COMPLAINT_RECEIVED",
         {"messageId": mid, "providerMessageId": m["provider_message_id"], "to": r["address"],
          "complainedAt": iso(at), "provider": m["provider"], "complaintType": complaint_type},
         aggregate=f"email:{mid}", from_state="delivered", to_state="complained")  # fmt: skip
    if not was_unsubscribed:
        emit(ctx, "EMAIL_UNSUBSCRIBED",
             {"recipientEmail": r["address"], "unsubscribedAt": iso(at), "source": "complaint", "messageId": mid},
             aggregate=f"email-address:{r['address']}")  # fmt: skip


@emits("EMAIL_UNSUBSCRIBED")
def unsubscribe(ctx: Ctx, address: str, *, source: str = "link", message_id: str | None = None) -> bool:
    """Opt an address out of this tenant's emails (e.g. the link of ``message_id``, which it must have received);
    emits EMAIL_UNSUBSCRIBED and returns True, or False if it already was unsubscribed."""
    who = _address(address, "address")
    if source not in UNSUBSCRIBE_SOURCES:
        raise InvalidInput(f"source must be one of {UNSUBSCRIBE_SOURCES}, got {source!r}")
    mid = None
    if message_id is not None:
        m = _outbound(ctx, message_id)
        if who not in (*m["to"], *m["cc"]):
            raise InvalidInput(f"{who} did not receive email {message_id}")
        mid = str(m["id"])
    if _unsubscribed(ctx, who):
        return False
    at = now()
    _suppress(ctx, who, "unsubscribe", source, mid, at)
    emit(ctx, "EMAIL_UNSUBSCRIBED", {"recipientEmail": who, "unsubscribedAt": iso(at), "source": source,
                                     "messageId": mid}, aggregate=f"email-address:{who}")  # fmt: skip
    return True
