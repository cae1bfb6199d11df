"""Every SQL statement of the relay: leadership, claim, mark, retention."""

from __future__ import annotations

from typing import LiteralString

# After a takeover: never hand out a position at or below what the stream fence has seen (a
# database restored from backup would otherwise reuse positions and lose events to the fence).
SYNC_SEQ: LiteralString = """
UPDATE outbox_relay SET last_seq = greatest(last_seq, %(hwm)s)
WHERE name = 'default' AND epoch = %(epoch)s RETURNING last_seq
"""

# occurred_at as millisecond UTC text plus its era ("2026-01-02T03:04:05.678Z AD"): NULL for infinity,
# "BC" for dates before year 1, five digits after year 9999. Never a timestamptz value: psycopg cannot load
# those, and one such row would fail the whole batch's fetch. outbox.wire.column_timestamp refuses the
# ones the wire cannot carry, row by row.
OCCURRED_AT: LiteralString = "to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z \"BC')"

_COLUMNS: LiteralString = (
    "e.id, e.event_id::text, e.tenant_id, e.event_type, e.schema_ref, e.payload::text, "
    + OCCURRED_AT
    + ", e.execution_id, e.event_name, e.from_state, e.to_state, e.correlation_key, e.attempts"
)

# The claim: one statement, nothing written to outbox_events. It reads the oldest committed pending
# rows in id order (uncommitted rows are invisible, so a late-committing transaction's row is simply
# taken by a later claim, never skipped), gives them the positions after outbox_relay.last_seq, and
# records them as an open batch, but only while this relay holds the epoch. The `bump` UPDATE locks
# the relay row: under READ COMMITTED a concurrent takeover either waits for this claim to commit
# (and then finds its open batch) or has already bumped the epoch, in which case `bump` matches no
# row, no batch is written and nothing is returned. With no pending rows nothing is written at all,
# so idle polling costs no WAL flush. The relay's own open batches are excluded by id: at most the one
# batch being published while the next is claimed ahead, and batches whose mark has not committed yet
# (see ClaimSource.claim_ahead in relay/claim.py and Marker in relay/marker.py).
#   Plan: Limit -> Index Scan using outbox_events_pending_idx (exact predicate, id order); the
#   relay row by its primary key. CLAIM_PLAN (below) runs first in the same transaction to hold it there.
CLAIM: LiteralString = (
    """
WITH picked AS MATERIALIZED (
    SELECT """
    + _COLUMNS
    + """
    FROM outbox_events e
    WHERE e.status = 'pending' AND e.id <> ALL(%(exclude)s::bigint[])  -- rows of the batch still in flight
    ORDER BY e.id LIMIT %(limit)s
), n AS (SELECT count(*) AS c, array_agg(id ORDER BY id) AS ids FROM picked),
bump AS (
    UPDATE outbox_relay r SET last_seq = r.last_seq + n.c,
           lease_until = clock_timestamp() + make_interval(secs => %(ttl)s), notify_until = NULL
    FROM n WHERE r.name = 'default' AND r.epoch = %(epoch)s AND n.c > 0
    RETURNING r.last_seq - n.c AS base
), batch AS (
    INSERT INTO outbox_batches (epoch, first_seq, event_ids)
    SELECT %(epoch)s, bump.base + 1, n.ids FROM bump, n
    RETURNING id
)
SELECT (SELECT id FROM batch), bump.base + row_number() OVER (ORDER BY p.id), p.*
FROM picked p, bump
ORDER BY p.id
"""
)

# Run (in the claim's pipeline, no extra round trip) before CLAIM: the claim's plan must not depend on
# statistics. The normal backlog is one nobody has analysed yet: writers kept committing during a relay
# outage, and autovacuum's analyze comes minutes later, if at all before the backlog is gone. On such a
# table the planner estimates a few hundred pending rows, picks a Bitmap Heap Scan of *every* pending row
# plus a top-N sort, and a 1,000-row claim on a 50k backlog costs ~160 ms instead of ~10 ms (the relay
# drained 5k instead of 25k events/s). Stale statistics fail the other way too (analysed while everything
# was pending: seq scan + sort). With bitmap scans, seq scans and sorts priced out for this transaction
# only, the index-ordered LIMIT scan of the partial pending index is the one plan left; it reads exactly
# the rows it returns whatever the statistics say. JIT goes off with them: the price-out (disable_cost)
# pushes the estimate past jit_above_cost, and JIT-compiling the claim costs ~300 ms per call.
CLAIM_PLAN: LiteralString = (
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), "
    "set_config('enable_sort', 'off', true), set_config('jit', 'off', true)"
)

# What Postgres knows was appended (loss detection, relay/loss.py): the highest position among the most
# recently published rows and the newest stream id. Walks the published index backwards, 1000 rows.
PUBLISHED_HEAD: LiteralString = """
SELECT max(publish_seq), (array_agg(stream_id ORDER BY publish_seq DESC) FILTER (WHERE stream_id IS NOT NULL))[1]
FROM (SELECT publish_seq, stream_id FROM outbox_events WHERE status = 'published'
      ORDER BY published_at DESC LIMIT 1000) t
"""

# Where a republish after a loss must start: the oldest published row above the position Redis still holds.
LOSS_SINCE: LiteralString = (
    "SELECT min(published_at) FROM outbox_events WHERE status = 'published' AND publish_seq > %(after)s"
)

OPEN_BATCHES: LiteralString = "SELECT id, first_seq, event_ids FROM outbox_batches ORDER BY first_seq"

# An interrupted batch's rows that are still pending, with their original positions. A batch that some
# relay had taken in hand (attempts >= 1 before this statement: a claim writes 1, a split writes 0) under
# another leader term than ours (epoch: only one process ever holds an epoch, so a batch of our own epoch
# is one we took back ourselves after a database error or a failed mark) went down with that relay: the
# interruption is counted against each of its pending rows, and the last column says so (`blamed`).
# The relay then splits a blamed batch (SPLIT_BATCH) until a row that keeps killing relays is alone, and
# only a row alone is ever marked 'failed', so the poison-pill count blames that row, not the rows that
# shared its batch.
RECOVER_BATCH: LiteralString = (
    """
WITH b AS (
    UPDATE outbox_batches SET attempts = attempts + 1 WHERE id = %(batch)s
    RETURNING first_seq, event_ids, (attempts > 1 AND epoch <> %(epoch)s) AS blamed
),
u AS (SELECT x.id, b.first_seq + x.ord - 1 AS seq FROM b, unnest(b.event_ids) WITH ORDINALITY AS x(id, ord)),
bumped AS (
    UPDATE outbox_events e SET attempts = e.attempts + 1
    FROM u, b WHERE b.blamed AND e.id = u.id AND e.status = 'pending'
    RETURNING e.id
)
SELECT %(batch)s, u.seq, """
    + _COLUMNS.replace("e.attempts", "e.attempts + b.blamed::int")  # the CTE's increment is not visible here
    + """, b.blamed
FROM u JOIN outbox_events e ON e.id = u.id CROSS JOIN b
WHERE e.status = 'pending'
ORDER BY u.seq
"""
)

# Replace one open batch by consecutive smaller ones that keep every position: the first starts at the
# old first_seq, the others at %(starts)s (ascending). They are written with attempts 0 (no relay has
# them in hand yet), so only the one a relay dies with is blamed when it is recovered, and with the
# splitting leader's epoch (its own, should it take one back itself).
SPLIT_BATCH: LiteralString = """
WITH old AS (DELETE FROM outbox_batches WHERE id = %(batch)s RETURNING epoch, first_seq, event_ids),
cut AS (
    SELECT c.s, lead(c.s) OVER (ORDER BY c.s) AS e
    FROM old, unnest(array[old.first_seq] || %(starts)s::bigint[]) AS c(s)
)
INSERT INTO outbox_batches (epoch, first_seq, event_ids, attempts)
SELECT %(epoch)s, cut.s,
       old.event_ids[cut.s - old.first_seq + 1 : coalesce(cut.e, old.first_seq + cardinality(old.event_ids))
                                                  - old.first_seq],
       0
FROM old, cut
ORDER BY cut.s
"""

CLOSE_BATCH: LiteralString = "DELETE FROM outbox_batches WHERE id = %s"

# Marks join on the primary key (o.id = ANY(...)) so the plan never depends on stale statistics of
# the pending index during a sudden backlog.
MARK_PUBLISHED: LiteralString = """
UPDATE outbox_events o
SET status = 'published', published_at = clock_timestamp(), stream_id = u.sid, publish_seq = u.seq,
    last_error = NULL
FROM unnest(%(ids)s::bigint[], %(sids)s::text[], %(seqs)s::bigint[]) AS u(id, sid, seq)
WHERE o.id = ANY(%(ids)s::bigint[]) AND o.id = u.id AND o.status = 'pending'
"""

MARK_DEAD: LiteralString = """
UPDATE outbox_events o
SET status = 'dead', last_error = u.reason, dead_at = clock_timestamp()
FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS u(id, reason)
WHERE o.id = ANY(%(ids)s::bigint[]) AND o.id = u.id AND o.status = 'pending'
"""

# A row carried by max_attempts interrupted batches went down with that many relays: treat it as a
# poison pill rather than crash-looping on it.
MARK_FAILED: LiteralString = """
UPDATE outbox_events o
SET status = 'failed', last_error = u.reason, dead_at = clock_timestamp()
FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS u(id, reason)
WHERE o.id = ANY(%(ids)s::bigint[]) AND o.id = u.id AND o.status = 'pending'
"""

PRUNE_PUBLISHED: LiteralString = """
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
    WHERE status = 'published' AND published_at < now() - make_interval(secs => %(age)s)
    ORDER BY published_at LIMIT %(limit)s)
"""

# Dead and failed rows are kept for the retention counted from when they became dead (dead_at, set by the
# marks above and by replay's REDEAD), never from recorded_at: a row that waited in a long backlog must still
# be there to be replayed. A dead row that some other SQL wrote without dead_at starts its retention at the
# next sweep (STAMP_DEAD runs first), so it is neither deleted early nor kept forever.
#   Plan: both use outbox_events_dead_at_idx (partial on the dead statuses; btree keeps the NULLs). The prunes
#   compare with now(), not clock_timestamp(): a stable cutoff is an index bound, so a sweep reads only the
#   rows it deletes instead of filtering the whole index.
STAMP_DEAD: LiteralString = """
UPDATE outbox_events SET dead_at = clock_timestamp()
WHERE status IN ('dead', 'failed') AND dead_at IS NULL
"""

PRUNE_DEAD: LiteralString = """
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
    WHERE status IN ('dead', 'failed') AND dead_at < now() - make_interval(secs => %(age)s)
    ORDER BY dead_at LIMIT %(limit)s)
"""

# ---- WAL capture mode (relay/wal.py) ----

# An invalid event read from the slot becomes a dead row, exactly as the poll relay would have left it, so that
# `outbox dead-letters` and `outbox replay` work the same in both modes (a replayed row is published by the
# table path, which `relay --capture wal` runs next to the slot). Re-reading after a crash inserts nothing twice.
INSERT_DEAD: LiteralString = """
INSERT INTO outbox_events (event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate,
                           execution_id, event_name, from_state, to_state, correlation_key,
                           status, last_error, dead_at)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, 'dead', %s, clock_timestamp())
ON CONFLICT (event_id) DO NOTHING
"""

# Where the WAL leader is, for `outbox status` (an active slot cannot be peeked by anyone else).
WAL_REPORT: LiteralString = """
UPDATE outbox_relay SET wal_confirmed_lsn = %(lsn)s::pg_lsn, wal_oldest_unconfirmed = %(oldest)s,
       wal_reported_at = clock_timestamp()
WHERE name = 'wal' AND epoch = %(epoch)s
"""

# A new WAL leader ends the walsender of a predecessor that lost the lease but still holds the slot.
END_WALSENDER: LiteralString = "SELECT pg_terminate_backend(%(pid)s)"
