"""Operator functions: status, dead letters, replay. Each takes a psycopg connection and commits itself.

``missing_tables`` / ``tables_required`` are the one place where "relation does not exist" for an outbox
table becomes ``SchemaNotInstalled`` (the CLI, the relay and the worker all go through them).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox import migrations, schemas, sql
from outbox.errors import OutboxError, SchemaNotInstalled, TenantMismatch
from outbox.schemas.registry import Registry

FAILED_STATUSES = ("dead", "failed")

# Any outbox table named in the server's message (matched by name, not by wording: messages may be localized).
_OUR_TABLE = re.compile(r"\b(" + "|".join(migrations.TABLES) + r")\b")


def missing_tables(exc: BaseException) -> SchemaNotInstalled | None:
    """``SchemaNotInstalled`` if ``exc`` says an outbox table is missing (SQLSTATE 42P01 naming one of ours) or a
    column is (42703: the tables are older than the code, and our statements touch only our tables); else None."""
    state = getattr(exc, "sqlstate", None)
    if state not in ("42P01", "42703"):
        return None
    diag = getattr(exc, "diag", None)
    message = str(getattr(diag, "message_primary", None) or exc).strip()
    if state == "42P01" and not _OUR_TABLE.search(message):
        return None
    return SchemaNotInstalled(message)


@contextmanager
def tables_required() -> Iterator[None]:
    """Inside the block, a database error for a missing outbox table or column raises ``SchemaNotInstalled``."""
    try:
        yield
    except psycopg.Error as exc:
        missing = missing_tables(exc)
        if missing is None:
            raise
        raise missing from exc


def status(conn: psycopg.Connection[Any], *, by_tenant: bool = False) -> dict[str, Any]:
    """Pending count, oldest pending age (s), dead/failed counts, published in the last minute, open relay
    batches (claimed, not yet marked) and the age of the oldest, relay state."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql.STATUS).fetchone() or {}
        out: dict[str, Any] = {k: (float(v) if k.endswith("_age") and v is not None else v) for k, v in row.items()}
        if by_tenant:
            tenants = cur.execute(sql.STATUS_BY_TENANT).fetchall()
            out["tenants"] = [
                {**t, "oldest_pending_age": float(t["oldest_pending_age"]) if t["oldest_pending_age"] else None}
                for t in tenants
            ]
    conn.rollback()
    return out


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def wal_status(conn: psycopg.Connection[Any], slot: str, publication: str) -> dict[str, Any] | None:
    """The WAL capture slot: exists/active, wal_status (lost = invalidated), retained WAL bytes, and the age (s) of
    the oldest event not yet confirmed (from the WAL leader's report, else peeked from the idle slot). None when
    the database has no WAL relay row (never migrated to 0006)."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            row = cur.execute(sql.WAL_STATUS, {"slot": slot}).fetchone()
        except psycopg.errors.UndefinedColumn:
            conn.rollback()
            return None
    if row is None:
        conn.rollback()
        return None
    out = {k: (float(v) if k.endswith("_age") and v is not None else v) for k, v in row.items()}
    out["slot_exists"] = out["slot"] is not None
    out["slot"] = slot
    if out["wal_leader_alive"]:
        out["oldest_unconfirmed_age"] = out["oldest_unconfirmed_age"] or 0.0
        out["oldest_unconfirmed_source"] = "relay"
    elif out["slot_exists"] and not out["slot_active"] and out["wal_status"] != "lost":
        out["oldest_unconfirmed_age"] = None
        out["oldest_unconfirmed_source"] = "peek"
        try:
            peeked = conn.execute(sql.WAL_PEEK_OLDEST, {"slot": slot, "publication": publication}).fetchone()
        except psycopg.Error as exc:  # taken by a relay meanwhile, publication missing...
            out["peek_error"] = str(exc).strip().splitlines()[0]
            peeked = None
        conn.rollback()
        if peeked is not None and bytes(peeked[0][:1]) == b"B":
            commit_us = int.from_bytes(bytes(peeked[0][9:17]), "big", signed=True)
            committed = _PG_EPOCH + timedelta(microseconds=commit_us)
            out["oldest_unconfirmed_age"] = max(0.0, (datetime.now(UTC) - committed).total_seconds())
        elif peeked is None and "peek_error" not in out:
            out["oldest_unconfirmed_age"] = 0.0
    else:
        out["oldest_unconfirmed_age"] = None
        out["oldest_unconfirmed_source"] = None
    conn.rollback()
    return out


@dataclass(frozen=True)
class Filter:
    """Which dead/failed rows an operator means. Empty fields do not filter."""

    statuses: Sequence[str] = FAILED_STATUSES
    event_ids: Sequence[uuid.UUID | str] | None = None
    event_type: str | None = None
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, Any]:
        """Named SQL parameters of the shared filter."""
        bad = set(self.statuses) - set(FAILED_STATUSES)
        if bad:
            raise ValueError(f"status must be one of {FAILED_STATUSES}, got {sorted(bad)}")
        return {
            "statuses": list(self.statuses),
            "ids": [str(i) for i in self.event_ids] if self.event_ids else None,
            "event_type": self.event_type,
            "tenant": self.tenant,
            "since": self.since,
            "until": self.until,
        }


def dead_letters(conn: psycopg.Connection[Any], flt: Filter = Filter(), *, limit: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered and failed rows with their reasons, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql.LIST_FAILED, {**flt.params(), "limit": limit}).fetchall()
    conn.rollback()
    return rows


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    matched: int = 0
    requeued: list[str] = field(default_factory=list)
    still_invalid: dict[str, str] = field(default_factory=dict)
    already_published: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    in_open_batch: list[str] = field(default_factory=list)  # not requeued yet: replay again shortly
    dry_run: bool = False


def _revalidate(registry: Registry, event_type: str, ref: str, tenant: str, payload: str) -> str | None:
    try:
        model = registry.validate_json(event_type, payload, ref=ref)
    except OutboxError as exc:
        return f"{type(exc).__name__} [{ref}] {exc}"
    got = str(getattr(model, "tenantId", "") or "")
    if got != tenant:
        return f"TenantMismatch [{ref}] {TenantMismatch(event_type, got, tenant)}"
    return None


def replay(
    conn: psycopg.Connection[Any],
    flt: Filter = Filter(),
    *,
    dry_run: bool = False,
    registry: Registry | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-validate matching dead/failed rows against the current registry and queue the valid ones again.

    Idempotent: only dead/failed rows are touched, so an event already on the stream is never queued
    again; a second replay of the same rows finds nothing to do. Commits per batch; wakes the relay.
    """
    reg = registry or schemas.registry
    report = ReplayReport(dry_run=dry_run)
    params = flt.params()
    if flt.event_ids:
        wanted = {str(i) for i in flt.event_ids}
        found = conn.execute(
            "SELECT event_id::text, status FROM outbox_events WHERE event_id = ANY(%s::uuid[])", (list(wanted),)
        ).fetchall()
        seen = {eid: st for eid, st in found}
        report.not_found = sorted(wanted - set(seen))
        report.already_published = sorted(e for e, st in seen.items() if st == "published")
    after = 0
    while True:
        rows = conn.execute(sql.SELECT_FOR_REPLAY, {**params, "after": after, "limit": batch}).fetchall()
        if not rows:
            break
        after = rows[-1][0]
        good: list[int] = []
        good_ids: dict[int, str] = {}
        bad_ids: list[int] = []
        bad_reasons: list[str] = []
        for row_id, event_id, tenant, event_type, ref, _status, payload in rows:
            reason = _revalidate(reg, event_type, ref, tenant, payload)
            if reason is None:
                good.append(row_id)
                good_ids[row_id] = str(event_id)
            else:
                bad_ids.append(row_id)
                bad_reasons.append(reason)
                report.still_invalid[str(event_id)] = reason
        report.matched += len(rows)
        if dry_run:
            report.requeued.extend(good_ids.values())
            conn.rollback()
        else:
            if good:
                done = {r[0] for r in conn.execute(sql.REQUEUE, (good,)).fetchall()}
                for row_id, event_id in good_ids.items():
                    (report.requeued if row_id in done else report.in_open_batch).append(event_id)
            if bad_ids:
                conn.execute(sql.REDEAD, (bad_ids, bad_reasons))
            conn.commit()
        if progress:
            progress(len(rows))
    if report.requeued and not dry_run:
        conn.execute(sql.WAKE_RELAY)
        conn.commit()
    conn.rollback()
    return report


def count_replayable(conn: psycopg.Connection[Any], flt: Filter = Filter()) -> int:
    """How many rows a replay with this filter would look at."""
    row = conn.execute(sql.COUNT_FOR_REPLAY, flt.params()).fetchone()
    conn.rollback()
    return int(row[0]) if row else 0
