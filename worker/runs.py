"""Run requests, as the workflow engine consumes them (columns of migration ``outbox_0004``).

The worker writes one ``workflow_run_requests`` row per (trigger, event), ``status = 'pending'``. An engine
process then loops::

    with psycopg.connect(dsn) as conn:
        for req in claim(conn, 10, "engine-1"):   # pending -> claimed (FOR UPDATE SKIP LOCKED)
            conn.commit()                          # the claim is durable; run the workflow outside it
            ...
            complete(conn, req.id, claimer="engine-1")     # claimed -> done
            # or: fail(conn, req.id, "reason", claimer="engine-1")   # claimed -> failed
            conn.commit()

``claim`` skips rows other claimers hold locked, so concurrent claimers never get the same request and never
wait for each other. ``requeue_stale`` puts back requests claimed longer ago than a timeout (their engine
died). Every function runs in the caller's transaction; the caller commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import tuple_row

from outbox.catalog.sync import driver_connection
from outbox.worker import sql
from outbox.worker.errors import InvalidRunStatus, RunRequestNotClaimed, RunRequestNotFound, WorkerInputError

STATUSES = sql.RUN_STATUSES


@dataclass(frozen=True)
class RunRequest:
    """One ``workflow_run_requests`` row."""

    id: uuid.UUID
    trigger_id: uuid.UUID
    event_id: uuid.UUID
    tenant_id: str
    workflow_name: str
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: datetime
    claimed_at: datetime | None
    claimed_by: str | None
    finished_at: datetime | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``outbox worker runs --json`` prints)."""
        return {
            "id": str(self.id),
            "trigger_id": str(self.trigger_id),
            "event_id": str(self.event_id),
            "tenant_id": self.tenant_id,
            "workflow_name": self.workflow_name,
            "payload": self.payload,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "claimed_at": self.claimed_at.isoformat() if self.claimed_at else None,
            "claimed_by": self.claimed_by,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
        }


def _id(request_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(request_id, uuid.UUID):
        return request_id
    try:
        return uuid.UUID(str(request_id).strip())
    except ValueError:
        raise RunRequestNotFound(str(request_id)) from None


def check_status(status: str | None) -> str | None:
    """``status`` if it is a run-request status (or None), else ``InvalidRunStatus``."""
    if status is not None and status not in STATUSES:
        raise InvalidRunStatus(status)
    return status


def claim(
    conn: Any,
    limit: int,
    claimer: str,
    *,
    workflows: Sequence[str] | None = None,
    tenant_id: str | None = None,
) -> list[RunRequest]:
    """Claim up to ``limit`` pending requests, oldest first (``FOR UPDATE SKIP LOCKED``). The caller commits."""
    if not isinstance(limit, int) or limit < 1:
        raise WorkerInputError("limit", f"must be a positive integer, got {limit!r}")
    if not claimer or not claimer.strip():
        raise WorkerInputError("claimer", "must not be empty")
    params = {
        "limit": limit,
        "claimer": claimer,
        "workflows": list(workflows) if workflows is not None else None,
        "tenant_id": tenant_id,
    }
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RUN_CLAIM, params)
        rows = [RunRequest(*r) for r in cur.fetchall()]
    return sorted(rows, key=lambda r: (r.created_at, r.id))


def _finish(conn: Any, request_id: uuid.UUID | str, status: str, error: str | None, claimer: str | None) -> RunRequest:
    rid = _id(request_id)
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RUN_FINISH, {"id": rid, "status": status, "error": error, "claimer": claimer})
        row = cur.fetchone()
        if row is not None:
            return RunRequest(*row)
        cur.execute(sql.RUN_GET, {"id": rid})
        current = cur.fetchone()
    if current is None:
        raise RunRequestNotFound(str(request_id))
    found = RunRequest(*current)
    raise RunRequestNotClaimed(str(rid), found.status, found.claimed_by)


def complete(conn: Any, request_id: uuid.UUID | str, *, claimer: str | None = None) -> RunRequest:
    """Mark a claimed request done (only if ``claimer`` holds it, when given). The caller commits."""
    return _finish(conn, request_id, "done", None, claimer)


def fail(conn: Any, request_id: uuid.UUID | str, reason: str, *, claimer: str | None = None) -> RunRequest:
    """Mark a claimed request failed with ``reason`` (only if ``claimer`` holds it, when given). The caller commits."""
    if not reason or not reason.strip():
        raise WorkerInputError("reason", "must not be empty")
    return _finish(conn, request_id, "failed", reason[:4000], claimer)


def requeue_stale(conn: Any, older_than: float) -> int:
    """Put requests claimed more than ``older_than`` seconds ago back to pending; how many. The caller commits."""
    if older_than <= 0:
        raise WorkerInputError("older_than", f"must be positive, got {older_than!r}")
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RUN_REQUEUE_STALE, {"older_than": float(older_than)})
        return len(cur.fetchall())


def get_run(conn: Any, request_id: uuid.UUID | str) -> RunRequest:
    """One run request by id; ``RunRequestNotFound`` if there is none."""
    rid = _id(request_id)
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RUN_GET, {"id": rid})
        row = cur.fetchone()
    if row is None:
        raise RunRequestNotFound(str(request_id))
    return RunRequest(*row)


def list_runs(
    conn: Any,
    *,
    status: str | None = None,
    tenant_id: str | None = None,
    workflow: str | None = None,
    limit: int = 100,
) -> list[RunRequest]:
    """Run requests, newest first, optionally of one status, tenant or workflow."""
    check_status(status)
    if limit < 1:
        raise WorkerInputError("limit", f"must be a positive integer, got {limit!r}")
    params = {"status": status, "tenant_id": tenant_id or None, "workflow": workflow or None, "limit": limit}
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.RUN_LIST, params)
        return [RunRequest(*r) for r in cur.fetchall()]


def counts_by_status(conn: Any) -> dict[str, int]:
    """Run requests per status (every status present, 0 when none)."""
    pg = driver_connection(conn)
    with pg.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.STATUS_RUNS_BY_STATUS)
        got = {str(s): int(n) for s, n in cur.fetchall()}
    return {s: got.get(s, 0) for s in STATUSES}
