"""Every SQL statement of the ``outbox`` package (the write path and operator queries)."""

from __future__ import annotations

from typing import LiteralString

NOTIFY_CHANNEL = "outbox_events"

_COLUMNS = (
    "event_id, tenant_id, event_type, schema_ref, payload, occurred_at, aggregate, "
    "execution_id, event_name, from_state, to_state, correlation_key"
)

# The write path. One statement, one round trip: the INSERT runs as a data-modifying CTE, and the
# same statement sends a NOTIFY only when the relay has said it is idle and listening
# (outbox_relay.notify_until in the future). NOTIFY takes a database-wide lock at commit that
# serialises every notifying transaction (measured here: 9.5k -> 3.5k tx/s at 16 writers), so under
# load, when the relay is busy polling anyway, writers never pay it. ON CONFLICT keeps the caller's
# transaction usable when an event id repeats (we raise DuplicateEvent instead of aborting it).
RECORD_ONE: LiteralString = (
    "WITH ins AS (INSERT INTO outbox_events (" + _COLUMNS + ") "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM ins), "
    "(SELECT pg_notify('" + NOTIFY_CHANNEL + "', '') FROM outbox_relay "
    "WHERE notify_until > clock_timestamp() LIMIT 1)"
)

RECORD_MANY: LiteralString = (
    "WITH ins AS (INSERT INTO outbox_events (" + _COLUMNS + ") "
    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::jsonb[], "
    "%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id) "
    "SELECT array(SELECT event_id FROM ins), "
    "(SELECT pg_notify('" + NOTIFY_CHANNEL + "', '') FROM outbox_relay "
    "WHERE notify_until > clock_timestamp() LIMIT 1)"
)

UNDO_MANY: LiteralString = "DELETE FROM outbox_events WHERE event_id = ANY(%s::uuid[])"

# The WAL capture mode's write path (outbox.walmsg): the event goes into the WAL as a transactional logical
# decoding message, which commits or vanishes with the caller's transaction; no row, no index, no later mark
# or delete. It is emitted only when this database has a usable logical slot of that name: without one,
# nothing would ever decode the message and the event would be lost, so ``record`` raises instead
# (CaptureUnavailable) and the caller's transaction stays usable. The check reads shared memory (no I/O).
EMIT_ONE: LiteralString = (
    "SELECT pg_logical_emit_message(true, %s, %s)::text FROM pg_replication_slots "
    "WHERE slot_name = %s AND database = current_database() AND slot_type = 'logical' "
    "AND wal_status IS DISTINCT FROM 'lost'"
)

# Messages of one call are emitted in array order (unnest WITH ORDINALITY, evaluated row by row in order).
EMIT_MANY: LiteralString = (
    "SELECT count(pg_logical_emit_message(true, %s, m.content)) FROM unnest(%s::text[]) WITH ORDINALITY m(content, i), "
    "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND database = current_database() "
    "AND slot_type = 'logical' AND wal_status IS DISTINCT FROM 'lost') s"
)

# ---- operator queries (status, dead letters, replay) ----

STATUS: LiteralString = """
SELECT
  (SELECT count(*) FROM outbox_events WHERE status = 'pending') AS pending,
  (SELECT extract(epoch FROM clock_timestamp() - min(recorded_at))
     FROM outbox_events WHERE status = 'pending') AS oldest_pending_age,
  (SELECT count(*) FROM outbox_events WHERE status = 'dead') AS dead,
  (SELECT count(*) FROM outbox_events WHERE status = 'failed') AS failed,
  (SELECT count(*) FROM outbox_events
     WHERE status = 'published' AND published_at > clock_timestamp() - interval '1 minute')
     AS published_last_minute,
  (SELECT count(*) FROM outbox_events WHERE status = 'published') AS published_retained,
  (SELECT count(*) FROM outbox_batches) AS open_batches,
  (SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM outbox_batches) AS oldest_open_batch_age,
  r.leader, r.epoch, r.last_seq, r.lease_until > clock_timestamp() AS leader_alive,
  r.notify_until > clock_timestamp() AS relay_idle
FROM outbox_relay r WHERE r.name = 'default'
"""

# The WAL capture mode's part of `outbox status`: the slot as Postgres sees it (retained WAL: what it pins since
# restart_lsn) and what the WAL leader last reported (the commit time of the oldest event it has read but not
# confirmed; NULL when it was caught up). No row when the database has never been migrated for WAL mode.
WAL_STATUS: LiteralString = """
SELECT s.slot_name::text AS slot, s.active AS slot_active, s.wal_status, s.confirmed_flush_lsn::text AS confirmed_lsn,
  pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_wal_bytes, s.safe_wal_size,
  r.leader AS wal_leader, coalesce(r.lease_until > clock_timestamp(), false) AS wal_leader_alive,
  extract(epoch FROM clock_timestamp() - r.wal_oldest_unconfirmed) AS oldest_unconfirmed_age,
  extract(epoch FROM clock_timestamp() - r.wal_reported_at) AS wal_report_age
FROM outbox_relay r LEFT JOIN pg_replication_slots s ON s.slot_name = %(slot)s AND s.database = current_database()
WHERE r.name = 'wal'
"""

# With no WAL relay holding the slot, its oldest unconfirmed transaction is peeked (nothing is consumed): the
# first pgoutput message is that transaction's Begin, which carries its commit time.
WAL_PEEK_OLDEST: LiteralString = """
SELECT data FROM pg_logical_slot_peek_binary_changes(%(slot)s, NULL, 1, 'proto_version', '1',
  'publication_names', %(publication)s, 'messages', 'true') LIMIT 1
"""

STATUS_BY_TENANT: LiteralString = """
SELECT tenant_id,
  count(*) FILTER (WHERE status = 'pending') AS pending,
  extract(epoch FROM clock_timestamp() - min(recorded_at) FILTER (WHERE status = 'pending'))
    AS oldest_pending_age,
  count(*) FILTER (WHERE status = 'dead') AS dead,
  count(*) FILTER (WHERE status = 'failed') AS failed,
  count(*) FILTER (WHERE status = 'published'
                   AND published_at > clock_timestamp() - interval '1 minute') AS published_last_minute
FROM outbox_events
WHERE status IN ('pending', 'dead', 'failed')
   OR (status = 'published' AND published_at > clock_timestamp() - interval '1 minute')
GROUP BY tenant_id ORDER BY tenant_id
"""

# Filters shared by dead-letters and replay; every parameter is optional (NULL = no filter).
_FAILED_FILTER: LiteralString = """
  status = ANY(%(statuses)s::text[])
  AND (%(ids)s::uuid[] IS NULL OR event_id = ANY(%(ids)s::uuid[]))
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
  AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
  AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR occurred_at < %(until)s)
"""

LIST_FAILED: LiteralString = (
    "SELECT id, event_id, tenant_id, event_type, schema_ref, status, attempts, last_error, "
    "occurred_at, recorded_at FROM outbox_events WHERE " + _FAILED_FILTER + " ORDER BY id LIMIT %(limit)s"
)

SELECT_FOR_REPLAY: LiteralString = (
    "SELECT id, event_id, tenant_id, event_type, schema_ref, status, payload::text FROM outbox_events "
    "WHERE id > %(after)s AND " + _FAILED_FILTER + " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
)

COUNT_FOR_REPLAY: LiteralString = "SELECT count(*) FROM outbox_events WHERE " + _FAILED_FILTER

# Replay puts a row back in the queue; it gets a fresh position (publish_seq) at the next claim.
# Only dead/failed rows qualify, so a published event can never be queued twice. A row still listed in
# an open relay batch is left alone: if that batch were recovered after the row turned pending again,
# the row would carry the batch's old position, which the fence may already have passed, and it would
# be marked published without being sent. Batches never reopen, so once the relay closes the batch
# (normally within milliseconds) the row can be replayed.
REQUEUE: LiteralString = """
UPDATE outbox_events o SET status = 'pending', publish_seq = NULL, attempts = 0, dead_at = NULL,
       last_error = 'replayed at ' || clock_timestamp()::text || ' after: ' || coalesce(last_error, '')
WHERE o.id = ANY(%s::bigint[]) AND o.status IN ('dead', 'failed')
  AND NOT EXISTS (SELECT 1 FROM outbox_batches b WHERE o.id = ANY(b.event_ids))
RETURNING o.id
"""

# A row that fails re-validation during replay stays dead with the new reason; its retention still counts from
# when it first became dead.
REDEAD: LiteralString = """
UPDATE outbox_events SET status = 'dead', last_error = u.reason, dead_at = coalesce(dead_at, clock_timestamp())
FROM unnest(%s::bigint[], %s::text[]) AS u(id, reason)
WHERE outbox_events.id = u.id AND outbox_events.status IN ('dead', 'failed')
"""

WAKE_RELAY: LiteralString = "SELECT pg_notify('" + NOTIFY_CHANNEL + "', 'replay')"

# ---- republish (after Redis lost data; relay/republish.py) ----

# Published rows in a publication-time window, in stream (position) order, by keyset.
SELECT_REPUBLISH: LiteralString = """
SELECT id, event_id::text, coalesce(publish_seq, 0), stream_id FROM outbox_events
WHERE status = 'published' AND published_at >= %(since)s AND published_at < %(until)s
  AND (coalesce(publish_seq, 0), id) > (%(after_seq)s, %(after_id)s)
ORDER BY coalesce(publish_seq, 0), id LIMIT %(limit)s
"""

# A row the stream lost goes back in the queue: the next claim gives it a new position above the fence,
# so the fence lets it through exactly once, and the relay marks it published again with its new stream
# id. Same guard as REQUEUE: a row listed in an open relay batch (marked before its batch was closed) is
# left alone, or recovering that batch would take its old position for "already on the stream".
REQUEUE_PUBLISHED: LiteralString = """
UPDATE outbox_events o SET status = 'pending', publish_seq = NULL, stream_id = NULL, published_at = NULL,
       attempts = 0, last_error = 'republished at ' || clock_timestamp()::text || ': lost by Redis'
WHERE o.id = ANY(%s::bigint[]) AND o.status = 'published'
  AND NOT EXISTS (SELECT 1 FROM outbox_batches b WHERE o.id = ANY(b.event_ids))
RETURNING o.id
"""

INSTANCE_ID: LiteralString = "SELECT instance_id::text FROM outbox_relay WHERE name = 'default'"
