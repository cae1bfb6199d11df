"""Every SQL statement of the relay: leadership, claim, mark, retention."""

from __future__ import annotations

from typing import LiteralString

ENSURE_ROW: LiteralString = "INSERT INTO outbox_relay (name) VALUES ('default') ON CONFLICT (name) DO NOTHING"

# Take the lease when it is free or expired. The epoch bump is the fencing token: every later claim
# checks it in the same statement, so a relay that lost its lease (paused, partitioned) can no
# longer reserve rows once a successor has taken over.
ACQUIRE: LiteralString = """
UPDATE outbox_relay
SET epoch = epoch + 1, leader = %(me)s, leader_since = clock_timestamp(),
    lease_until = clock_timestamp() + make_interval(secs => %(ttl)s), notify_until = NULL
WHERE name = 'default' AND (lease_until IS NULL OR lease_until < clock_timestamp())
RETURNING epoch, last_seq, instance_id
"""

RENEW: LiteralString = """
UPDATE outbox_relay
SET lease_until = clock_timestamp() + make_interval(secs => %(ttl)s),
    notify_until = CASE WHEN %(idle)s THEN clock_timestamp() + make_interval(secs => %(notify_for)s) END
WHERE name = 'default' AND epoch = %(epoch)s
RETURNING last_seq
"""

RELEASE: LiteralString = """
UPDATE outbox_relay SET leader = NULL, lease_until = NULL, notify_until = NULL
WHERE name = 'default' AND epoch = %(epoch)s
"""

# After a takeover: never hand out a position at or below what the stream fence has seen (a
# database restored from backup would otherwise reuse positions and lose events to the fence).
SYNC_SEQ: LiteralString = """
UPDATE outbox_relay SET last_seq = greatest(last_seq, %(hwm)s)
WHERE name = 'default' AND epoch = %(epoch)s RETURNING last_seq
"""

_RETURNING: LiteralString = (
    "o.id, o.event_id, o.publish_seq, o.tenant_id, o.event_type, o.schema_ref, o.payload::text, "
    "o.occurred_at, o.execution_id, o.event_name, o.from_state, o.to_state, o.correlation_key, o.attempts"
)

# The claim: one statement. Takes the oldest committed pending rows (id order; uncommitted rows are
# invisible, so a late-committing transaction's row is simply taken by a later claim, never
# skipped), numbers them after outbox_relay.last_seq, and advances last_seq, but only if this relay
# still holds the epoch. The `bump` UPDATE locks the relay row; under READ COMMITTED a concurrent
# takeover either waits for this claim to commit (and then sees its reservations) or has already
# bumped the epoch, in which case `bump` matches no row and nothing is reserved. With no pending
# rows nothing is written, so idle polling costs no WAL flush.
#   Plan (200k backlog): Limit -> Index Scan using outbox_events_pending_idx; LockRows; Update.
CLAIM_NEW: LiteralString = (
    """
WITH picked AS (
    SELECT id FROM outbox_events
    WHERE status = 'pending' AND publish_seq IS NULL
      AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE
), n AS (SELECT count(*) AS c FROM picked),
bump AS (
    UPDATE outbox_relay SET last_seq = last_seq + (SELECT c FROM n),
           lease_until = clock_timestamp() + make_interval(secs => %(ttl)s), notify_until = NULL
    WHERE name = 'default' AND epoch = %(epoch)s AND (SELECT c FROM n) > 0
    RETURNING last_seq - (SELECT c FROM n) AS base
), numbered AS (
    SELECT p.id, b.base + row_number() OVER (ORDER BY p.id) AS seq FROM picked p, bump b
)
UPDATE outbox_events o SET publish_seq = numbered.seq, attempts = o.attempts + 1
FROM numbered WHERE o.id = numbered.id
RETURNING """
    + _RETURNING
)

# Rows reserved by an earlier incarnation (or a predecessor) and not yet marked: they go first, in
# position order, with their old positions, so the fence drops the ones already on the stream.
CLAIM_RESERVED: LiteralString = (
    """
WITH picked AS (
    SELECT id FROM outbox_events
    WHERE status = 'pending' AND publish_seq IS NOT NULL
    ORDER BY publish_seq LIMIT %(limit)s
    FOR UPDATE
)
UPDATE outbox_events o SET attempts = o.attempts + 1
FROM picked WHERE o.id = picked.id
RETURNING """
    + _RETURNING
)

MARK_PUBLISHED: LiteralString = """
UPDATE outbox_events o
SET status = 'published', published_at = clock_timestamp(), stream_id = u.sid, last_error = NULL
FROM unnest(%s::bigint[], %s::text[]) AS u(id, sid)
WHERE o.id = u.id AND o.status = 'pending'
"""

MARK_DEAD: LiteralString = """
UPDATE outbox_events o
SET status = 'dead', last_error = u.reason, publish_seq = NULL
FROM unnest(%s::bigint[], %s::text[]) AS u(id, reason)
WHERE o.id = u.id AND o.status = 'pending'
"""

# A row claimed max_attempts times without being published was in flight through that many relay
# crashes: treat it as a poison pill rather than crash-looping on it.
MARK_FAILED: LiteralString = """
UPDATE outbox_events o
SET status = 'failed', last_error = u.reason, publish_seq = NULL
FROM unnest(%s::bigint[], %s::text[]) AS u(id, reason)
WHERE o.id = u.id AND o.status = 'pending'
"""

PRUNE_PUBLISHED: LiteralString = """
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
    WHERE status = 'published' AND published_at < clock_timestamp() - make_interval(secs => %(age)s)
    ORDER BY published_at LIMIT %(limit)s)
"""

PRUNE_DEAD: LiteralString = """
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
    WHERE status IN ('dead', 'failed') AND recorded_at < clock_timestamp() - make_interval(secs => %(age)s)
    LIMIT %(limit)s)
"""
