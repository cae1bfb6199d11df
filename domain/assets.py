"""Assets: devices and other equipment, their owners, and the warranty-expiry sweep (reference actions)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, DateTime, String, Table, Text, Uuid, func, or_

from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    diff,
    emit,
    emits,
    fetch,
    iso,
    metadata,
    new_id,
    now,
    opt_aware_arg,
    opt_uuid_arg,
    uuid_arg,
)

assets = Table(
    "ref_assets",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("asset_type", String),
    Column("serial_number", String),
    Column("client_id", Uuid),
    Column("owner_type", String),
    Column("owner_id", String),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("warranty_end", DateTime(timezone=True)),
    Column("warranty_notified_for", DateTime(timezone=True)),  # the warranty_end last reported as expiring
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

OWNER_TYPES = ("client", "contact", "user", "team", "ticket", "project", "location")
UPDATABLE = ("name", "asset_type", "serial_number", "client_id", "warranty_end", "attributes")
WARRANTY_WINDOW_DAYS = 30


def _shown(value: Any) -> Any:
    """A column value as events show it (uuids and timestamps as strings)."""
    if isinstance(value, datetime):
        return iso(value)
    return str(value) if isinstance(value, uuid.UUID) else value


@emits("ASSET_CREATED")
def create_asset(
    ctx: Ctx,
    *,
    name: str,
    asset_type: str | None = None,
    serial_number: str | None = None,
    client_id: str | None = None,
    warranty_end: datetime | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> str:
    """Register an asset; emits ASSET_CREATED."""
    if not name.strip():
        raise InvalidInput("name must not be empty")
    client = opt_uuid_arg("client_id", client_id)
    aid = new_id()
    ctx.conn.execute(
        assets.insert().values(id=aid, tenant_id=ctx.tenant_id, name=name, asset_type=asset_type,
                               serial_number=serial_number, client_id=client,
                               warranty_end=opt_aware_arg("warranty_end", warranty_end),
                               attributes=dict(attributes or {}))
    )  # fmt: skip
    emit(ctx, "ASSET_CREATED",
         {"assetId": aid, "clientId": client, "createdByUserId": ctx.user_id, "createdAt": iso(),
          "assetType": asset_type, "serialNumber": serial_number},
         aggregate=f"asset:{aid}")  # fmt: skip
    return aid


@emits("ASSET_UPDATED")
def update_asset(ctx: Ctx, asset_id: str, **fields: Any) -> None:
    """Edit an asset's fields (``attributes`` diffed key by key); emits ASSET_UPDATED with updatedFields/changes."""
    if not fields or set(fields) - set(UPDATABLE):
        raise InvalidInput(f"can update only {list(UPDATABLE)}")
    new = dict(fields)
    if "name" in new and not str(new["name"] or "").strip():
        raise InvalidInput("name must not be empty")
    if new.get("client_id") is not None:
        new["client_id"] = uuid.UUID(uuid_arg("client_id", new["client_id"]))
    if "warranty_end" in new:
        opt_aware_arg("warranty_end", new["warranty_end"])
    if "attributes" in new and not isinstance(new["attributes"], Mapping):
        raise InvalidInput("attributes must be a mapping")
    a = fetch(ctx, assets, "asset", asset_id)
    fields_, changes = diff({k: _shown(a[k]) for k in new}, {k: _shown(v) for k, v in new.items()})
    if not fields_:
        return
    changes = {path: {k: v for k, v in c.items() if v is not None} for path, c in changes.items()}
    ctx.conn.execute(assets.update().where(assets.c.id == a["id"]).values(**new, updated_at=func.now()))
    emit(ctx, "ASSET_UPDATED",
         {"assetId": str(a["id"]), "updatedByUserId": ctx.user_id, "updatedAt": iso(), "updatedFields": fields_,
          "changes": changes},
         aggregate=f"asset:{a['id']}")  # fmt: skip


@emits("ASSET_ASSIGNED")
def assign_asset(ctx: Ctx, asset_id: str, owner_type: str, owner_id: str) -> None:
    """Give an asset to an owner (client, user, ticket, ...), replacing any previous one; emits ASSET_ASSIGNED."""
    if owner_type not in OWNER_TYPES:
        raise InvalidInput(f"owner_type must be one of {OWNER_TYPES}, got {owner_type!r}")
    if not isinstance(owner_id, str | uuid.UUID) or not str(owner_id).strip():
        raise InvalidInput(f"owner_id must be a non-empty id, got {owner_id!r}")
    owner = str(owner_id)
    a = fetch(ctx, assets, "asset", asset_id)
    if (a["owner_type"], a["owner_id"]) == (owner_type, owner):
        raise InvalidInput(f"asset already belongs to {owner_type} {owner}")
    ctx.conn.execute(assets.update().where(assets.c.id == a["id"])
                     .values(owner_type=owner_type, owner_id=owner, updated_at=func.now()))  # fmt: skip
    emit(ctx, "ASSET_ASSIGNED",
         {"assetId": str(a["id"]), "previousOwnerType": a["owner_type"], "previousOwnerId": a["owner_id"],
          "newOwnerType": owner_type, "newOwnerId": owner, "assignedAt": iso()},
         aggregate=f"asset:{a['id']}")  # fmt: skip


@emits("ASSET_UNASSIGNED")
def unassign_asset(ctx: Ctx, asset_id: str, *, reason: str | None = None) -> None:
    """Take an asset away from its owner; emits ASSET_UNASSIGNED (InvalidTransition if it has none)."""
    a = fetch(ctx, assets, "asset", asset_id)
    if a["owner_id"] is None:
        raise InvalidTransition("asset", "unassigned", "unassigned")
    ctx.conn.execute(assets.update().where(assets.c.id == a["id"])
                     .values(owner_type=None, owner_id=None, updated_at=func.now()))  # fmt: skip
    emit(ctx, "ASSET_UNASSIGNED",
         {"assetId": str(a["id"]), "previousOwnerType": a["owner_type"], "previousOwnerId": a["owner_id"],
          "unassignedAt": iso(), "reason": reason},
         aggregate=f"asset:{a['id']}")  # fmt: skip


@emits("ASSET_WARRANTY_EXPIRING")
def check_warranties(ctx: Ctx, *, as_of: datetime | None = None, window_days: int = WARRANTY_WINDOW_DAYS) -> list[str]:
    """The daily sweep: ASSET_WARRANTY_EXPIRING once per warranty end date that falls within the window.

    Returns the ids of the assets reported now; a changed warranty end date can be reported again.
    """
    ref = opt_aware_arg("as_of", as_of) or now()
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days <= 0:
        raise InvalidInput(f"window_days must be a positive integer, got {window_days!r}")
    c = assets.c
    due = ctx.conn.execute(
        assets.select()
        .where(c.tenant_id == ctx.tenant_id, c.warranty_end >= ref, c.warranty_end <= ref + timedelta(days=window_days),
               or_(c.warranty_notified_for.is_(None), c.warranty_notified_for != c.warranty_end))
        .order_by(c.warranty_end, c.id)
        .with_for_update(skip_locked=True)
    ).mappings().all()  # fmt: skip
    reported = []
    for a in due:
        ctx.conn.execute(assets.update().where(c.id == a["id"]).values(warranty_notified_for=a["warranty_end"]))
        emit(ctx, "ASSET_WARRANTY_EXPIRING",
             {"assetId": str(a["id"]), "expiresAt": iso(a["warranty_end"]),
              "daysUntilExpiry": (a["warranty_end"] - ref).days, "clientId": _shown(a["client_id"])},
             aggregate=f"asset:{a['id']}")  # fmt: skip
        reported.append(str(a["id"]))
    return reported
