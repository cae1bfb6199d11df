"""Put back on the stream the published events Redis lost (``outbox republish``), each exactly once.

For every row marked published in a window, the stream is asked whether it still holds the row's entry
(by stream id, checking the event id). Rows whose entry is gone are queued again: the relay leader gives
them new positions above the fence and publishes them through the usual exactly-once path. Entries the
stream removed on purpose are not republished: those older than its first entry (trimming) in the
current incarnation of the stream (see the origin key in relay/publisher.py). An entry older than the
origin was lost with an earlier stream (Redis restarted empty, the key evicted or deleted). Running it
again finds the republished entries on the stream and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from outbox import sql
from outbox.relay.publisher import RedisStreamPublisher, StreamState, stream_id_key


@dataclass
class RepublishReport:
    """What a republish found (and, unless ``dry_run``, queued again)."""

    since: str
    until: str
    matched: int = 0
    on_stream: int = 0
    trimmed: int = 0  # removed from the head of the current stream on purpose: not republished
    requeued: list[str] = field(default_factory=list)  # lost; queued again (with dry_run: would be)
    in_open_batch: list[str] = field(default_factory=list)  # lost, but in a relay batch not closed yet: run again
    dry_run: bool = False


def lost(sid: str | None, state: StreamState) -> bool:
    """Whether an entry the stream does not hold (at ``sid``, or after it for a row without one) was lost,
    rather than trimmed from the head of the current stream."""
    if not state.exists or sid is None:
        return not state.exists or state.first_id is None
    k = stream_id_key(sid)
    if state.first_id is not None:
        before_head = k < stream_id_key(state.first_id)
    else:
        before_head = state.last_id is not None and k <= stream_id_key(state.last_id)
    if not before_head:
        return True  # a hole after the head, or newer than anything the stream ever generated
    return state.origin is not None and k < stream_id_key(state.origin)


def republish(
    conn: psycopg.Connection[Any],
    publisher: RedisStreamPublisher,
    since: datetime,
    until: datetime,
    *,
    dry_run: bool = False,
    page: int = 2000,
) -> RepublishReport:
    """Queue again the rows published in ``[since, until)`` whose entries the stream lost; commits per page
    and wakes the relay. ``until`` is clamped to now, so rows republished meanwhile are not seen twice."""
    now = conn.execute("SELECT clock_timestamp()").fetchone()
    conn.rollback()
    if now is not None and until > now[0]:
        until = now[0]
    report = RepublishReport(since=since.isoformat(), until=until.isoformat(), dry_run=dry_run)
    after: tuple[int, int] = (0, 0)
    while True:
        params = {"since": since, "until": until, "after_seq": after[0], "after_id": after[1], "limit": page}
        rows = conn.execute(sql.SELECT_REPUBLISH, params).fetchall()
        conn.rollback()
        if not rows:
            break
        after = (int(rows[-1][2]), int(rows[-1][0]))
        report.matched += len(rows)
        held = publisher.entries([r[3] for r in rows if r[3]])
        missing: list[tuple[int, str, str | None]] = []  # (row id, event id, the stream id it is judged by)
        prev_sid: str | None = None
        for i, (row_id, event_id, _seq, sid) in enumerate(rows):
            if sid is not None:
                if held.get(sid) == event_id:
                    report.on_stream += 1
                else:
                    missing.append((row_id, event_id, sid))
                prev_sid = sid
                continue
            # No stream id (marked after a fence skip): look between its neighbours in position order.
            nxt = next((r[3] for r in rows[i + 1 :] if r[3]), None)
            if publisher.find_between([event_id], prev_sid or "-", nxt or "+"):
                report.on_stream += 1
            else:
                missing.append((row_id, event_id, prev_sid))
        gone: dict[int, str] = {}
        if missing:
            # The stream's head, read after the page was looked up: a running relay trims as it publishes, and
            # the head only moves forward, so an entry missing below the head read now was trimmed (whether
            # before or during the look-up), not lost. A head read once up front would call those holes.
            state = publisher.state()
            for row_id, event_id, sid in missing:
                if lost(sid, state):
                    gone[row_id] = event_id
                else:
                    report.trimmed += 1
        if not gone:
            continue
        if dry_run:
            report.requeued.extend(gone.values())
            continue
        done = {int(r[0]) for r in conn.execute(sql.REQUEUE_PUBLISHED, (list(gone),)).fetchall()}
        conn.commit()
        for row_id, event_id in gone.items():
            (report.requeued if row_id in done else report.in_open_batch).append(event_id)
    if report.requeued and not dry_run:
        conn.execute(sql.WAKE_RELAY)
        conn.commit()
    return report
