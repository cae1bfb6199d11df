"""Internal messaging: conversations between users and direct messages in them (reference actions).

MESSAGE_SENT is a legacy bus type: it needs a UUID tenant; ``senderName`` comes from the sender's membership in
the conversation, ``messagePreview`` is the start of the text, and ``userId`` (undeclared, kept) names the sender
so the stream entry carries the acting user.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Column, DateTime, ForeignKey, String, Table, Text, Uuid, select

from domain.base import Ctx, InvalidInput, emit, emits, fetch, iso, legacy_tenant, metadata, new_id, now, uuid_arg

PREVIEW_CHARS = 120

conversations = Table(
    "ref_conversations",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("created_by", Uuid, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_message_at", DateTime(timezone=True)),
)

members = Table(
    "ref_conversation_members",
    metadata,
    Column("conversation_id", Uuid, ForeignKey("ref_conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Uuid, primary_key=True),
    Column("display_name", Text, nullable=False),
)

direct_messages = Table(
    "ref_direct_messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("conversation_id", Uuid, ForeignKey("ref_conversations.id", ondelete="CASCADE"), nullable=False),
    Column("sender_id", Uuid, nullable=False),
    Column("recipient_id", Uuid, nullable=False),
    Column("body", Text, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
)


def _acting_user(ctx: Ctx) -> str:
    if not ctx.user_id:
        raise InvalidInput("messaging needs an acting user")
    return uuid_arg("user_id", ctx.user_id)


@emits()
def start_conversation(ctx: Ctx, participants: Mapping[str, str]) -> str:
    """Open a conversation of the acting user and others ({user id: display name}); emits nothing."""
    me = _acting_user(ctx)
    if not isinstance(participants, Mapping):
        raise InvalidInput("participants must map user ids to display names")
    people = {uuid_arg("participant", k): v for k, v in participants.items()}
    if me not in people:
        raise InvalidInput("the acting user must be a participant (with a display name)")
    if len(people) < 2:
        raise InvalidInput("a conversation needs at least two participants")
    if not all(isinstance(v, str) and v.strip() for v in people.values()):
        raise InvalidInput("every participant needs a display name")
    cid = new_id()
    ctx.conn.execute(conversations.insert().values(id=cid, tenant_id=ctx.tenant_id, created_by=me, created_at=now()))
    ctx.conn.execute(
        members.insert(), [{"conversation_id": cid, "user_id": u, "display_name": n} for u, n in people.items()]
    )
    return cid


@emits("MESSAGE_SENT")
def send_message(ctx: Ctx, conversation_id: str, recipient_id: str, body: str) -> str:
    """Send a direct message to another member of the conversation; emits the legacy MESSAGE_SENT."""
    conv = fetch(ctx, conversations, "conversation", conversation_id)
    sender = _acting_user(ctx)
    recipient = uuid_arg("recipient_id", recipient_id)
    if not isinstance(body, str) or not body.strip():
        raise InvalidInput("message body must not be empty")
    legacy_tenant(ctx, "MESSAGE_SENT")
    rows = ctx.conn.execute(
        select(members.c.user_id, members.c.display_name).where(members.c.conversation_id == conv["id"])
    )
    names = {str(user): name for user, name in rows}
    if sender not in names:
        raise InvalidInput("the sender is not a member of this conversation")
    if recipient not in names or recipient == sender:
        raise InvalidInput(f"{recipient} is not another member of this conversation")
    mid, at = new_id(), now()
    ctx.conn.execute(
        direct_messages.insert().values(
            id=mid, tenant_id=ctx.tenant_id, conversation_id=conv["id"], sender_id=sender, recipient_id=recipient,
            body=body, sent_at=at,
        )
    )  # fmt: skip
    ctx.conn.execute(conversations.update().where(conversations.c.id == conv["id"]).values(last_message_at=at))
    text = " ".join(body.split())
    preview = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
    cid = str(conv["id"])
    emit(ctx, "MESSAGE_SENT",
         {"messageId": mid, "senderId": sender, "userId": sender, "recipientId": recipient, "conversationId": cid,
          "messagePreview": preview, "senderName": names[sender], "sentAt": iso(at)},
         aggregate=f"conversation:{cid}")  # fmt: skip
    return mid
