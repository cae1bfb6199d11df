"""Documents: upload, in-app text documents with @-mentions, links to entities, generation, deletion.

Signatures (DOCUMENT_SIGNATURE_REQUESTED / DOCUMENT_SIGNED / DOCUMENT_SIGNATURE_EXPIRED) are catalog-only:
no action performs them. A text document that newly @-mentions users (``@[Name](user:<uuid>)``) emits the
legacy USER_MENTIONED_IN_DOCUMENT (userId: the author; consumers read the mentions from the content), which
needs a uuid tenant and an acting user: such an edit without them is refused with ``InvalidInput``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, PrimaryKeyConstraint, String, Table, Text, Uuid, func, select

from domain.base import Ctx, InvalidInput, NotFound, emit, emits, fetch, iso, legacy_user, metadata, new_id

documents = Table(
    "ref_documents",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("content_type", String, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("content", Text),  # in-app text documents only
    Column("source_type", String),  # generated documents: what they were made from
    Column("source_id", String),
    Column("created_by", Uuid),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

document_links = Table(
    "ref_document_links",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("document_id", Uuid, nullable=False),
    Column("entity_type", String, nullable=False),
    Column("entity_id", String, nullable=False),
    Column("linked_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    PrimaryKeyConstraint("document_id", "entity_type", "entity_id"),
)

ENTITY_TYPES = ("ticket", "client", "contact", "project", "project_task", "asset", "contract", "invoice", "quote",
                "user", "team")  # fmt: skip
SOURCE_TYPES = ("invoice", "quote", "contract", "report", "ticket", "project")
MENTION = re.compile(r"@\[[^\]]*\]\(user:([0-9a-fA-F-]{36})\)")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")


def check_file(file_name: str, content_type: str, size_bytes: int) -> None:
    """``InvalidInput`` unless the name is a plain file name, the type ``type/subtype`` and the size a count."""
    if not file_name.strip() or "/" in file_name:
        raise InvalidInput(f"file_name must be a plain, non-empty file name, got {file_name!r}")
    if not _CONTENT_TYPE.match(content_type):
        raise InvalidInput(f"content_type must look like type/subtype, got {content_type!r}")
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 0:
        raise InvalidInput(f"size_bytes must be a non-negative integer, got {size_bytes!r}")


def _storage_key(ctx: Ctx, doc_id: str, file_name: str) -> str:
    return f"tenants/{ctx.tenant_id}/documents/{doc_id}/{file_name}"


def mentions(content: str | None) -> set[str]:
    """User ids @-mentioned in a text document (``@[Name](user:<uuid>)``)."""
    found = set()
    for raw in MENTION.findall(content or ""):
        try:
            found.add(str(uuid.UUID(raw)))
        except ValueError:
            continue
    return found


def _uploaded(ctx: Ctx, doc: dict[str, Any]) -> None:
    ctx.conn.execute(documents.insert().values(**doc))
    emit(ctx, "DOCUMENT_UPLOADED",
         {"documentId": doc["id"], "uploadedByUserId": ctx.user_id, "uploadedAt": iso(), "fileName": doc["file_name"],
          "contentType": doc["content_type"], "sizeBytes": doc["size_bytes"], "storageKey": doc["storage_key"]},
         aggregate=f"document:{doc['id']}")  # fmt: skip


@emits("DOCUMENT_UPLOADED")
def upload_document(ctx: Ctx, *, file_name: str, content_type: str, size_bytes: int, name: str | None = None) -> str:
    """Store an uploaded file as a document; emits DOCUMENT_UPLOADED."""
    check_file(file_name, content_type, size_bytes)
    did = new_id()
    _uploaded(ctx, {"id": did, "tenant_id": ctx.tenant_id, "name": name or file_name, "file_name": file_name,
                    "content_type": content_type, "size_bytes": size_bytes,
                    "storage_key": _storage_key(ctx, did, file_name), "created_by": ctx.user_id})  # fmt: skip
    return did


@emits("DOCUMENT_UPLOADED", "USER_MENTIONED_IN_DOCUMENT")
def create_text_document(ctx: Ctx, *, name: str, content: str) -> str:
    """Write an in-app (markdown) document; emits DOCUMENT_UPLOADED and, if it @-mentions users,
    USER_MENTIONED_IN_DOCUMENT."""
    if not name.strip():
        raise InvalidInput("name must not be empty")
    author = legacy_user(ctx, "mentioning users (USER_MENTIONED_IN_DOCUMENT)") if mentions(content) else None
    did = new_id()
    file_name = re.sub(r"[^\w.-]+", "-", name.strip()).strip("-") + ".md"
    _uploaded(ctx, {"id": did, "tenant_id": ctx.tenant_id, "name": name, "file_name": file_name,
                    "content_type": "text/markdown", "size_bytes": len(content.encode()),
                    "storage_key": _storage_key(ctx, did, file_name), "content": content,
                    "created_by": ctx.user_id})  # fmt: skip
    if author:
        emit(ctx, "USER_MENTIONED_IN_DOCUMENT",
             {"documentId": did, "documentName": name, "userId": author, "content": content, "isUpdate": False},
             aggregate=f"document:{did}")  # fmt: skip
    return did


@emits("USER_MENTIONED_IN_DOCUMENT")
def edit_text_document(ctx: Ctx, document_id: str, content: str) -> None:
    """Change a text document's content; emits USER_MENTIONED_IN_DOCUMENT when it mentions someone new."""
    d = fetch(ctx, documents, "document", document_id)
    if d["content"] is None:
        raise InvalidInput(f"document {document_id} is an uploaded file, not a text document")
    added = mentions(content) - mentions(d["content"])
    author = legacy_user(ctx, "mentioning users (USER_MENTIONED_IN_DOCUMENT)") if added else None
    if content == d["content"]:
        return
    ctx.conn.execute(documents.update().where(documents.c.id == d["id"])
                     .values(content=content, size_bytes=len(content.encode()), updated_at=func.now()))  # fmt: skip
    if author:
        emit(ctx, "USER_MENTIONED_IN_DOCUMENT",
             {"documentId": str(d["id"]), "documentName": d["name"], "userId": author, "content": content,
              "oldContent": d["content"], "newContent": content, "isUpdate": True},
             aggregate=f"document:{d['id']}")  # fmt: skip


def _entity(entity_type: str, entity_id: str) -> str:
    if entity_type not in ENTITY_TYPES:
        raise InvalidInput(f"entity_type must be one of {ENTITY_TYPES}, got {entity_type!r}")
    if not isinstance(entity_id, str | uuid.UUID) or not str(entity_id).strip():
        raise InvalidInput(f"entity_id must be a non-empty id, got {entity_id!r}")
    return str(entity_id)


@emits("DOCUMENT_ASSOCIATED")
def associate_document(ctx: Ctx, document_id: str, entity_type: str, entity_id: str) -> None:
    """Link a document to a ticket, client, project, ...; emits DOCUMENT_ASSOCIATED."""
    eid = _entity(entity_type, entity_id)
    d = fetch(ctx, documents, "document", document_id)
    lk = document_links.c
    if ctx.conn.execute(
        select(lk.document_id).where(lk.document_id == d["id"], lk.entity_type == entity_type, lk.entity_id == eid)
    ).first():
        raise InvalidInput(f"document is already linked to {entity_type} {eid}")
    ctx.conn.execute(document_links.insert().values(tenant_id=ctx.tenant_id, document_id=d["id"],
                                                    entity_type=entity_type, entity_id=eid))  # fmt: skip
    emit(ctx, "DOCUMENT_ASSOCIATED",
         {"documentId": str(d["id"]), "entityType": entity_type, "entityId": eid, "associatedByUserId": ctx.user_id,
          "associatedAt": iso()},
         aggregate=f"document:{d['id']}")  # fmt: skip


def _detached(ctx: Ctx, doc_id: Any, entity_type: str, entity_id: str, reason: str | None) -> None:
    emit(ctx, "DOCUMENT_DETACHED",
         {"documentId": str(doc_id), "entityType": entity_type, "entityId": entity_id,
          "detachedByUserId": ctx.user_id, "detachedAt": iso(), "reason": reason},
         aggregate=f"document:{doc_id}")  # fmt: skip


@emits("DOCUMENT_DETACHED")
def detach_document(ctx: Ctx, document_id: str, entity_type: str, entity_id: str, *, reason: str | None = None) -> None:
    """Remove a document's link to an entity; emits DOCUMENT_DETACHED (NotFound if not linked)."""
    eid = _entity(entity_type, entity_id)
    d = fetch(ctx, documents, "document", document_id)
    lk = document_links.c
    gone = ctx.conn.execute(
        document_links.delete()
        .where(lk.document_id == d["id"], lk.entity_type == entity_type, lk.entity_id == eid)
        .returning(lk.document_id)
    ).first()
    if gone is None:
        raise NotFound("document link", f"{document_id} -> {entity_type} {eid}")
    _detached(ctx, d["id"], entity_type, eid, reason)


@emits("DOCUMENT_GENERATED")
def generate_document(
    ctx: Ctx,
    *,
    source_type: str,
    source_id: str,
    file_name: str,
    size_bytes: int,
    content_type: str = "application/pdf",
) -> str:
    """Record a document the system rendered from a source (invoice PDF, report, ...); emits DOCUMENT_GENERATED."""
    if source_type not in SOURCE_TYPES:
        raise InvalidInput(f"source_type must be one of {SOURCE_TYPES}, got {source_type!r}")
    if not str(source_id).strip():
        raise InvalidInput("source_id must not be empty")
    check_file(file_name, content_type, size_bytes)
    did = new_id()
    ctx.conn.execute(
        documents.insert().values(id=did, tenant_id=ctx.tenant_id, name=file_name, file_name=file_name,
                                  content_type=content_type, size_bytes=size_bytes,
                                  storage_key=_storage_key(ctx, did, file_name), source_type=source_type,
                                  source_id=str(source_id), created_by=ctx.user_id)
    )  # fmt: skip
    emit(ctx, "DOCUMENT_GENERATED",
         {"documentId": did, "sourceType": source_type, "sourceId": str(source_id), "generatedByUserId": ctx.user_id,
          "generatedAt": iso(), "fileName": file_name},
         aggregate=f"document:{did}")  # fmt: skip
    return did


@emits("DOCUMENT_DETACHED", "DOCUMENT_DELETED")
def delete_document(ctx: Ctx, document_id: str, *, reason: str | None = None) -> None:
    """Delete a document; emits DOCUMENT_DETACHED for each of its links, then DOCUMENT_DELETED."""
    d = fetch(ctx, documents, "document", document_id)
    lk = document_links.c
    links = ctx.conn.execute(
        document_links.delete().where(lk.document_id == d["id"]).returning(lk.entity_type, lk.entity_id, lk.linked_at)
    ).all()
    ctx.conn.execute(documents.delete().where(documents.c.id == d["id"]))
    for entity_type, entity_id, _ in sorted(links, key=lambda r: (r[2], r[0], r[1])):
        _detached(ctx, d["id"], entity_type, entity_id, "document deleted")
    emit(ctx, "DOCUMENT_DELETED",
         {"documentId": str(d["id"]), "deletedByUserId": ctx.user_id, "deletedAt": iso(), "reason": reason},
         aggregate=f"document:{d['id']}")  # fmt: skip
