"""Media: files entering the storage pipeline and their post-upload processing (thumbnails, previews).

``process_file`` runs a processor on an uploaded file and records the outcome in the same transaction: the
outputs (MEDIA_PROCESSING_SUCCEEDED) or the failure (MEDIA_PROCESSING_FAILED; a processor failure is an outcome,
not an error of the action). A failed file can be processed again while its failure was retryable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Integer, String, Table, Text, Uuid, func

from domain.base import Ctx, InvalidTransition, emit, emits, fetch, iso, metadata, new_id
from domain.documents import check_file

files = Table(
    "ref_media_files",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("file_name", Text, nullable=False),
    Column("content_type", String, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("uploaded_by", Uuid),
    Column("status", String, nullable=False),  # pending -> succeeded | failed (-> succeeded | failed if retryable)
    Column("attempts", Integer, nullable=False, default=0),
    Column("outputs", JSON),
    Column("error_code", String),
    Column("error_message", Text),
    Column("retryable", Boolean),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

Processor = Callable[[Mapping[str, Any]], list[dict[str, Any]]]


class ProcessingFailed(Exception):
    """Raised by a processor: the file could not be processed (recorded as MEDIA_PROCESSING_FAILED)."""

    def __init__(self, code: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.code, self.message, self.retryable = code, message, retryable


def default_processor(f: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Thumbnail and preview renditions for images, a preview for PDFs; anything else is unsupported."""
    base = f"{f['storage_key']}.renditions"
    if f["content_type"].startswith("image/"):
        return [{"kind": "thumbnail", "storageKey": f"{base}/thumb-256.webp", "width": 256},
                {"kind": "preview", "storageKey": f"{base}/preview-1024.webp", "width": 1024}]  # fmt: skip
    if f["content_type"] == "application/pdf":
        return [{"kind": "preview", "storageKey": f"{base}/page-1.webp", "page": 1}]
    raise ProcessingFailed("unsupported_type", f"no renditions for {f['content_type']}", retryable=False)


@emits("FILE_UPLOADED")
def upload_file(ctx: Ctx, *, file_name: str, content_type: str, size_bytes: int) -> str:
    """A file enters the storage pipeline (to be processed); emits FILE_UPLOADED."""
    check_file(file_name, content_type, size_bytes)
    fid = new_id()
    key = f"tenants/{ctx.tenant_id}/files/{fid}/{file_name}"
    ctx.conn.execute(files.insert().values(id=fid, tenant_id=ctx.tenant_id, file_name=file_name,
                                           content_type=content_type, size_bytes=size_bytes, storage_key=key,
                                           uploaded_by=ctx.user_id, status="pending", attempts=0))  # fmt: skip
    emit(ctx, "FILE_UPLOADED",
         {"fileId": fid, "uploadedByUserId": ctx.user_id, "uploadedAt": iso(), "fileName": file_name,
          "contentType": content_type, "sizeBytes": size_bytes, "storageKey": key},
         aggregate=f"file:{fid}", to_state="pending")  # fmt: skip
    return fid


@emits("MEDIA_PROCESSING_SUCCEEDED", "MEDIA_PROCESSING_FAILED")
def process_file(ctx: Ctx, file_id: str, *, processor: Processor = default_processor) -> str:
    """Process a pending (or retryably failed) file; emits MEDIA_PROCESSING_SUCCEEDED or MEDIA_PROCESSING_FAILED.

    Returns the new status, ``succeeded`` or ``failed``. The row stays locked while the processor runs.
    """
    f = fetch(ctx, files, "file", file_id)
    old = f["status"]
    if not (old == "pending" or (old == "failed" and f["retryable"])):
        raise InvalidTransition("file processing", old if old != "failed" else "failed (not retryable)", "processing")
    fid, started = str(f["id"]), time.monotonic()
    try:
        outputs = processor(f)
    except ProcessingFailed as exc:
        code, message, retryable = exc.code, exc.message, exc.retryable
    except Exception as exc:  # a processor bug or an infrastructure error: worth another try
        code, message, retryable = "processor_error", f"{type(exc).__name__}: {exc}", True
    else:
        ms = int((time.monotonic() - started) * 1000)
        ctx.conn.execute(files.update().where(files.c.id == f["id"])
                         .values(status="succeeded", attempts=f["attempts"] + 1, outputs=outputs, error_code=None,
                                 error_message=None, retryable=None, updated_at=func.now()))  # fmt: skip
        emit(ctx, "MEDIA_PROCESSING_SUCCEEDED",
             {"fileId": fid, "processedAt": iso(), "outputs": outputs, "durationMs": ms},
             aggregate=f"file:{fid}", from_state=old, to_state="succeeded")  # fmt: skip
        return "succeeded"
    ctx.conn.execute(files.update().where(files.c.id == f["id"])
                     .values(status="failed", attempts=f["attempts"] + 1, error_code=code, error_message=message,
                             retryable=retryable, updated_at=func.now()))  # fmt: skip
    emit(ctx, "MEDIA_PROCESSING_FAILED",
         {"fileId": fid, "failedAt": iso(), "errorCode": code, "errorMessage": message, "retryable": retryable},
         aggregate=f"file:{fid}", from_state=old, to_state="failed")  # fmt: skip
    return "failed"
