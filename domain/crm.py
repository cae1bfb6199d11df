"""CRM: clients, contacts, owners, interactions, notes and tags (reference actions).

Client and contact merges are catalog-only (CLIENT_MERGED / CONTACT_MERGED): no action performs them.
Creating or editing a client also emits the legacy COMPANY_CREATED / COMPANY_UPDATED the catalog still lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    func,
    select,
)

from domain import tickets as _tickets
from domain.base import (
    EMAIL_RE,
    Ctx,
    InvalidInput,
    InvalidTransition,
    NotFound,
    diff,
    emit,
    emits,
    fetch,
    iso,
    metadata,
    new_id,
    now,
    text_arg,
    uuid_arg,
)

clients = Table(
    "ref_clients",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("industry", String),
    Column("website", String),
    Column("address", JSON, nullable=False, default=dict),
    Column("owner_user_id", Uuid),
    Column("primary_contact_id", Uuid),
    Column("archived_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

contacts = Table(
    "ref_contacts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("full_name", Text, nullable=False),
    Column("email", String),
    Column("phone", String),
    Column("job_title", String),
    Column("archived_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

interactions = Table(
    "ref_interactions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("contact_id", Uuid),
    Column("interaction_type", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("subject", Text),
    Column("outcome", String),
    Column("logged_by_user_id", Uuid),
)

notes = Table(
    "ref_notes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("entity_type", String, nullable=False),
    Column("entity_id", Uuid, nullable=False),
    Column("body", Text, nullable=False),
    Column("visibility", String, nullable=False),
    Column("created_by_user_id", Uuid),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

tags = Table(
    "ref_tags",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", String, nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    UniqueConstraint("tenant_id", "name", name="ref_tags_tenant_name"),
)

tag_links = Table(
    "ref_tag_links",
    metadata,
    Column("tenant_id", String, nullable=False, index=True),
    Column("tag_id", Uuid, nullable=False),
    Column("entity_type", String, nullable=False),
    Column("entity_id", String, nullable=False),
    Column("applied_by_user_id", Uuid),
    Column("applied_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    PrimaryKeyConstraint("tag_id", "entity_type", "entity_id", name="ref_tag_links_pk"),
)

CLIENT_STATUSES = ("prospect", "active", "inactive")  # "archived" is reached only through archive_client
CLIENT_FIELDS = frozenset({"name", "industry", "website", "address"})
CONTACT_FIELDS = frozenset({"full_name", "email", "phone", "job_title"})
NOTE_VISIBILITY = ("public", "internal")
BODY_PREVIEW = 120

# entity kinds a tag can be put on -> their table (checked for existence and tenant); see taggable()
TAGGABLE: dict[str, Table] = {"client": clients, "contact": contacts, "ticket": _tickets.tickets}


def taggable(entity_type: str, table: Table) -> None:
    """Let tags be applied to entities of another module's table (rows need ``id`` and ``tenant_id``)."""
    TAGGABLE[entity_type] = table


# ---- helpers -------------------------------------------------------------------------------------


def _email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not EMAIL_RE.match(value):
        raise InvalidInput(f"email must be an e-mail address, got {value!r}")
    return value


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``diff`` with unset sides omitted (the contracts refuse a null ``previous``/``new``)."""
    fields, changes = diff(before, after)
    return fields, {p: {k: v for k, v in c.items() if v is not None} for p, c in changes.items()}


def _live_client(ctx: Ctx, client_id: str, wanted: str, *, for_update: bool = True) -> dict[str, Any]:
    c = fetch(ctx, clients, "client", client_id, for_update=for_update)
    if c["status"] == "archived":
        raise InvalidTransition("client", "archived", wanted)
    return c


def _live_contact(ctx: Ctx, contact_id: str, wanted: str) -> dict[str, Any]:
    c = fetch(ctx, contacts, "contact", contact_id)
    if c["archived_at"] is not None:
        raise InvalidTransition("contact", "archived", wanted)
    return c


# ---- clients -------------------------------------------------------------------------------------


@emits("CLIENT_CREATED", "COMPANY_CREATED")
def create_client(
    ctx: Ctx, *, name: str, status: str = "prospect", owner_user_id: str | None = None, industry: str | None = None
) -> str:
    """Create a client; emits CLIENT_CREATED and the legacy COMPANY_CREATED."""
    name = text_arg("name", name)
    if status not in CLIENT_STATUSES:
        raise InvalidInput(f"status must be one of {CLIENT_STATUSES}, got {status!r}")
    owner = uuid_arg("owner_user_id", owner_user_id) if owner_user_id is not None else None
    cid, at = new_id(), now()
    ctx.conn.execute(
        clients.insert().values(id=cid, tenant_id=ctx.tenant_id, name=name, status=status, industry=industry,
                                address={}, owner_user_id=owner, updated_at=at)
    )  # fmt: skip
    emit(ctx, "CLIENT_CREATED", {"clientId": cid, "clientName": name, "status": status,
                                 "createdByUserId": ctx.user_id, "createdAt": iso(at)},
         aggregate=f"client:{cid}", to_state=status)  # fmt: skip
    emit(ctx, "COMPANY_CREATED", {"companyId": cid, "companyName": name, "createdByUserId": ctx.user_id,
                                  "createdAt": iso(at)}, aggregate=f"client:{cid}")  # fmt: skip
    return cid


@emits("CLIENT_UPDATED", "COMPANY_UPDATED")
def update_client(ctx: Ctx, client_id: str, **fields: Any) -> list[str]:
    """Edit name/industry/website/address (address merges keys); emits CLIENT_UPDATED and legacy COMPANY_UPDATED."""
    if not fields or set(fields) - CLIENT_FIELDS:
        raise InvalidInput(f"can update only {sorted(CLIENT_FIELDS)}")
    c = _live_client(ctx, client_id, "updated")
    if "name" in fields:
        fields["name"] = text_arg("name", fields["name"])
    if "address" in fields:
        if not isinstance(fields["address"], Mapping):
            raise InvalidInput("address must be a mapping of address lines")
        fields["address"] = {**(c["address"] or {}), **fields["address"]}
    before = {k: c[k] for k in fields}
    updated, changes = _changes(before, fields)
    if not updated:
        return []
    at = now()
    ctx.conn.execute(clients.update().where(clients.c.id == c["id"]).values(**fields, updated_at=at))
    cid = str(c["id"])
    emit(ctx, "CLIENT_UPDATED", {"clientId": cid, "updatedByUserId": ctx.user_id, "updatedAt": iso(at),
                                 "updatedFields": updated, "changes": changes}, aggregate=f"client:{cid}")  # fmt: skip
    emit(ctx, "COMPANY_UPDATED", {"companyId": cid, "updatedByUserId": ctx.user_id, "updatedAt": iso(at),
                                  "updatedFields": updated, "changes": changes}, aggregate=f"client:{cid}")  # fmt: skip
    return updated


@emits("CLIENT_STATUS_CHANGED")
def change_client_status(ctx: Ctx, client_id: str, new_status: str) -> None:
    """Move a client between prospect/active/inactive; emits CLIENT_STATUS_CHANGED."""
    if new_status not in CLIENT_STATUSES:
        raise InvalidInput(f"status must be one of {CLIENT_STATUSES} (archive with archive_client)")
    c = _live_client(ctx, client_id, new_status)
    if c["status"] == new_status:
        raise InvalidTransition("client", c["status"], new_status)
    _set_client_status(ctx, c, new_status, now())


def _set_client_status(ctx: Ctx, c: dict[str, Any], new_status: str, at: datetime, **values: Any) -> None:
    ctx.conn.execute(clients.update().where(clients.c.id == c["id"]).values(status=new_status, updated_at=at, **values))
    cid = str(c["id"])
    emit(ctx, "CLIENT_STATUS_CHANGED", {"clientId": cid, "previousStatus": c["status"], "newStatus": new_status,
                                        "changedAt": iso(at)},
         aggregate=f"client:{cid}", from_state=c["status"], to_state=new_status)  # fmt: skip


@emits("CLIENT_OWNER_ASSIGNED")
def assign_owner(ctx: Ctx, client_id: str, owner_user_id: str) -> None:
    """Hand a client to another account manager; emits CLIENT_OWNER_ASSIGNED."""
    owner = uuid_arg("owner_user_id", owner_user_id)
    c = _live_client(ctx, client_id, "reassigned")
    previous = str(c["owner_user_id"]) if c["owner_user_id"] else None
    if previous == owner:
        raise InvalidTransition("client owner", previous, owner)
    at = now()
    ctx.conn.execute(clients.update().where(clients.c.id == c["id"]).values(owner_user_id=owner, updated_at=at))
    cid = str(c["id"])
    emit(ctx, "CLIENT_OWNER_ASSIGNED", {"clientId": cid, "previousOwnerUserId": previous, "newOwnerUserId": owner,
                                        "assignedByUserId": ctx.user_id, "assignedAt": iso(at)},
         aggregate=f"client:{cid}", from_state=previous, to_state=owner)  # fmt: skip


@emits("CLIENT_ARCHIVED", "CLIENT_STATUS_CHANGED")
def archive_client(ctx: Ctx, client_id: str, *, reason: str | None = None) -> None:
    """Archive a client (status -> archived); emits CLIENT_STATUS_CHANGED and CLIENT_ARCHIVED."""
    c = _live_client(ctx, client_id, "archived")
    at = now()
    _set_client_status(ctx, c, "archived", at, archived_at=at)
    cid = str(c["id"])
    emit(ctx, "CLIENT_ARCHIVED", {"clientId": cid, "archivedByUserId": ctx.user_id, "archivedAt": iso(at),
                                  "reason": reason},
         aggregate=f"client:{cid}", from_state=c["status"], to_state="archived")  # fmt: skip


# ---- contacts ------------------------------------------------------------------------------------


@emits("CONTACT_CREATED")
def create_contact(
    ctx: Ctx, client_id: str, *, full_name: str, email: str | None = None, phone: str | None = None
) -> str:
    """Add a contact person to a client; emits CONTACT_CREATED."""
    full_name, email = text_arg("full_name", full_name), _email(email)
    c = _live_client(ctx, client_id, "given a contact", for_update=False)
    kid, at = new_id(), now()
    ctx.conn.execute(
        contacts.insert().values(id=kid, tenant_id=ctx.tenant_id, client_id=c["id"], full_name=full_name,
                                 email=email, phone=phone, updated_at=at)
    )  # fmt: skip
    emit(ctx, "CONTACT_CREATED", {"contactId": kid, "clientId": str(c["id"]), "fullName": full_name, "email": email,
                                  "phoneNumber": phone, "createdByUserId": ctx.user_id, "createdAt": iso(at)},
         aggregate=f"contact:{kid}")  # fmt: skip
    return kid


@emits("CONTACT_UPDATED")
def update_contact(ctx: Ctx, contact_id: str, **fields: Any) -> list[str]:
    """Edit full_name/email/phone/job_title (a contact may edit itself); emits CONTACT_UPDATED."""
    if not fields or set(fields) - CONTACT_FIELDS:
        raise InvalidInput(f"can update only {sorted(CONTACT_FIELDS)}")
    if "full_name" in fields:
        fields["full_name"] = text_arg("full_name", fields["full_name"])
    if "email" in fields:
        fields["email"] = _email(fields["email"])
    k = _live_contact(ctx, contact_id, "updated")
    before = {f: k[f] for f in fields}
    updated, changes = _changes(before, fields)
    if not updated:
        return []
    at = now()
    ctx.conn.execute(contacts.update().where(contacts.c.id == k["id"]).values(**fields, updated_at=at))
    kid = str(k["id"])
    emit(ctx, "CONTACT_UPDATED", {"contactId": kid, "clientId": str(k["client_id"]), "updatedByUserId": ctx.user_id,
                                  "updatedAt": iso(at), "updatedFields": updated, "changes": changes},
         aggregate=f"contact:{kid}")  # fmt: skip
    return updated


@emits("CONTACT_PRIMARY_SET")
def set_primary_contact(ctx: Ctx, client_id: str, contact_id: str) -> None:
    """Make one of the client's live contacts its primary contact; emits CONTACT_PRIMARY_SET."""
    c = _live_client(ctx, client_id, "given a primary contact")
    k = _live_contact(ctx, contact_id, "primary")
    if k["client_id"] != c["id"]:
        raise InvalidInput(f"contact {contact_id} belongs to another client")
    previous = str(c["primary_contact_id"]) if c["primary_contact_id"] else None
    if previous == str(k["id"]):
        raise InvalidTransition("primary contact", previous, str(k["id"]))
    at = now()
    ctx.conn.execute(clients.update().where(clients.c.id == c["id"]).values(primary_contact_id=k["id"], updated_at=at))
    cid, kid = str(c["id"]), str(k["id"])
    emit(ctx, "CONTACT_PRIMARY_SET", {"clientId": cid, "contactId": kid, "previousPrimaryContactId": previous,
                                      "setByUserId": ctx.user_id, "setAt": iso(at)},
         aggregate=f"client:{cid}", from_state=previous, to_state=kid)  # fmt: skip


@emits("CONTACT_ARCHIVED")
def archive_contact(ctx: Ctx, contact_id: str, *, reason: str | None = None) -> None:
    """Archive a contact (and drop it as its client's primary contact); emits CONTACT_ARCHIVED."""
    k = _live_contact(ctx, contact_id, "archived")
    at = now()
    ctx.conn.execute(contacts.update().where(contacts.c.id == k["id"]).values(archived_at=at, updated_at=at))
    ctx.conn.execute(
        clients.update()
        .where(clients.c.id == k["client_id"], clients.c.primary_contact_id == k["id"])
        .values(primary_contact_id=None, updated_at=at)
    )
    kid = str(k["id"])
    emit(ctx, "CONTACT_ARCHIVED", {"contactId": kid, "clientId": str(k["client_id"]), "archivedByUserId": ctx.user_id,
                                   "archivedAt": iso(at), "reason": reason},
         aggregate=f"contact:{kid}", from_state="active", to_state="archived")  # fmt: skip


# ---- interactions and notes ----------------------------------------------------------------------


@emits("INTERACTION_LOGGED")
def log_interaction(
    ctx: Ctx,
    client_id: str,
    *,
    interaction_type: str,
    channel: str,
    contact_id: str | None = None,
    occurred_at: datetime | None = None,
    subject: str | None = None,
    outcome: str | None = None,
) -> str:
    """Record a call/meeting/e-mail with a client (optionally with one of its contacts); emits INTERACTION_LOGGED."""
    interaction_type, channel = text_arg("interaction_type", interaction_type), text_arg("channel", channel)
    if occurred_at is not None and (not isinstance(occurred_at, datetime) or occurred_at.utcoffset() is None):
        raise InvalidInput("occurred_at must be a timezone-aware datetime")
    c = fetch(ctx, clients, "client", client_id, for_update=False)
    contact = None
    if contact_id is not None:
        k = fetch(ctx, contacts, "contact", contact_id, for_update=False)
        if k["client_id"] != c["id"]:
            raise InvalidInput(f"contact {contact_id} belongs to another client")
        contact = str(k["id"])
    iid, when = new_id(), occurred_at or now()
    ctx.conn.execute(
        interactions.insert().values(id=iid, tenant_id=ctx.tenant_id, client_id=c["id"], contact_id=contact,
                                     interaction_type=interaction_type, channel=channel, occurred_at=when,
                                     subject=subject, outcome=outcome, logged_by_user_id=ctx.user_id)
    )  # fmt: skip
    cid = str(c["id"])
    emit(ctx, "INTERACTION_LOGGED", {"interactionId": iid, "clientId": cid, "contactId": contact,
                                     "interactionType": interaction_type, "channel": channel,
                                     "interactionOccurredAt": iso(when), "loggedByUserId": ctx.user_id,
                                     "subject": subject, "outcome": outcome}, aggregate=f"client:{cid}")  # fmt: skip
    return iid


@emits("NOTE_CREATED")
def add_note(ctx: Ctx, entity_type: str, entity_id: str, body: str, *, visibility: str = "internal") -> str:
    """Attach a note to a client or contact; emits NOTE_CREATED (with a preview of the body)."""
    table = {"client": clients, "contact": contacts}.get(entity_type)
    if table is None:
        raise InvalidInput(f"notes go on a client or a contact, not {entity_type!r}")
    if visibility not in NOTE_VISIBILITY:
        raise InvalidInput(f"visibility must be one of {NOTE_VISIBILITY}")
    body = text_arg("body", body)
    e = fetch(ctx, table, entity_type, entity_id, for_update=False)
    nid, at, eid = new_id(), now(), str(e["id"])
    ctx.conn.execute(
        notes.insert().values(id=nid, tenant_id=ctx.tenant_id, entity_type=entity_type, entity_id=e["id"], body=body,
                              visibility=visibility, created_by_user_id=ctx.user_id, created_at=at)
    )  # fmt: skip
    preview = body if len(body) <= BODY_PREVIEW else body[: BODY_PREVIEW - 1] + "…"
    emit(ctx, "NOTE_CREATED", {"noteId": nid, "entityType": entity_type, "entityId": eid, "visibility": visibility,
                               "createdByUserId": ctx.user_id, "createdAt": iso(at), "bodyPreview": preview},
         aggregate=f"{entity_type}:{eid}")  # fmt: skip
    return nid


# ---- tags ----------------------------------------------------------------------------------------


def _free_tag_name(ctx: Ctx, name: str) -> str:
    name = text_arg("tag name", name)
    taken = ctx.conn.execute(
        select(tags.c.id).where(tags.c.tenant_id == ctx.tenant_id, func.lower(tags.c.name) == name.lower())
    ).first()
    if taken is not None:
        raise InvalidInput(f"a tag named {name!r} already exists")
    return name


@emits("TAG_DEFINITION_CREATED")
def create_tag(ctx: Ctx, name: str) -> str:
    """Define a tag (names are unique per tenant, case-insensitively); emits TAG_DEFINITION_CREATED."""
    name = _free_tag_name(ctx, name)
    tid, at = new_id(), now()
    ctx.conn.execute(tags.insert().values(id=tid, tenant_id=ctx.tenant_id, name=name, updated_at=at))
    emit(ctx, "TAG_DEFINITION_CREATED", {"tagId": tid, "tagName": name, "createdByUserId": ctx.user_id,
                                         "createdAt": iso(at)}, aggregate=f"tag:{tid}")  # fmt: skip
    return tid


@emits("TAG_DEFINITION_UPDATED")
def rename_tag(ctx: Ctx, tag_id: str, new_name: str) -> None:
    """Rename a tag; emits TAG_DEFINITION_UPDATED with the previous and new name."""
    t = fetch(ctx, tags, "tag", tag_id)
    name = text_arg("tag name", new_name)
    if name == t["name"]:
        raise InvalidTransition("tag name", t["name"], name)
    if name.lower() != t["name"].lower():  # a change of case only keeps the tag's own name
        _free_tag_name(ctx, name)
    at = now()
    ctx.conn.execute(tags.update().where(tags.c.id == t["id"]).values(name=name, updated_at=at))
    tid = str(t["id"])
    emit(ctx, "TAG_DEFINITION_UPDATED", {"tagId": tid, "previousName": t["name"], "newName": name,
                                         "updatedByUserId": ctx.user_id, "updatedAt": iso(at)},
         aggregate=f"tag:{tid}", from_state=t["name"], to_state=name)  # fmt: skip


def _tag_target(ctx: Ctx, tag_id: str, entity_type: str, entity_id: str) -> tuple[dict[str, Any], str]:
    table = TAGGABLE.get(entity_type)
    if table is None:
        raise InvalidInput(f"cannot tag a {entity_type!r} (taggable: {sorted(TAGGABLE)})")
    t = fetch(ctx, tags, "tag", tag_id)
    e = fetch(ctx, table, entity_type, entity_id, for_update=False)
    return t, str(e["id"])


def _link(t: dict[str, Any], entity_type: str, entity_id: str) -> Any:
    return and_(
        tag_links.c.tag_id == t["id"], tag_links.c.entity_type == entity_type, tag_links.c.entity_id == entity_id
    )


@emits("TAG_APPLIED")
def apply_tag(ctx: Ctx, tag_id: str, entity_type: str, entity_id: str) -> None:
    """Put a tag on a client, contact, ticket (or any registered taggable entity); emits TAG_APPLIED."""
    t, eid = _tag_target(ctx, tag_id, entity_type, entity_id)
    if ctx.conn.execute(select(tag_links.c.tag_id).where(_link(t, entity_type, eid))).first() is not None:
        raise InvalidTransition(f"tag {t['name']!r} on {entity_type} {eid}", "applied", "applied")
    at = now()
    ctx.conn.execute(
        tag_links.insert().values(tenant_id=ctx.tenant_id, tag_id=t["id"], entity_type=entity_type, entity_id=eid,
                                  applied_by_user_id=ctx.user_id, applied_at=at)
    )  # fmt: skip
    emit(ctx, "TAG_APPLIED", {"tagId": str(t["id"]), "entityType": entity_type, "entityId": eid,
                              "appliedByUserId": ctx.user_id, "appliedAt": iso(at)},
         aggregate=f"{entity_type}:{eid}")  # fmt: skip


@emits("TAG_REMOVED")
def remove_tag(ctx: Ctx, tag_id: str, entity_type: str, entity_id: str) -> None:
    """Take a tag off an entity it is on; emits TAG_REMOVED."""
    t, eid = _tag_target(ctx, tag_id, entity_type, entity_id)
    gone = ctx.conn.execute(tag_links.delete().where(_link(t, entity_type, eid)).returning(tag_links.c.tag_id)).first()
    if gone is None:
        raise NotFound(f"tag {t['name']!r} on {entity_type}", eid)
    emit(ctx, "TAG_REMOVED", {"tagId": str(t["id"]), "entityType": entity_type, "entityId": eid,
                              "removedByUserId": ctx.user_id, "removedAt": iso()},
         aggregate=f"{entity_type}:{eid}")  # fmt: skip
