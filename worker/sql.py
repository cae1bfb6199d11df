"""SQL of the workflow worker: the one-statement ingest, triggers, run requests, status (migrations 0003-0004)."""

from __future__ import annotations

# The whole ingest of a batch in one statement (one round trip), inside the batch's transaction:
#   cand  - (trigger, event) pairs: same tenant, same event type, trigger enabled, payload valid, filter
#           contained in the payload; ok says whether the trigger's expected schema ref (if any) is the event's;
#   ins   - the events, ON CONFLICT (event_id) DO NOTHING: RETURNING lists only events new to this database,
#           so a redelivered or duplicated entry requests no run and writes nothing;
#   runs  - a run request per ok pair of a new event;
#   skips - the other pairs of new events, with the reason.
# It returns (new events, run requests, skips, new events recorded invalid).
# (Sub-statements of one WITH cannot see each other's rows, hence runs_requested is counted from cand.)
# Rows are inserted in key order so that workers holding overlapping entries cannot deadlock each other.
INGEST = """
WITH input AS (
    SELECT i.event_id, i.tenant_id, i.event_type, i.event_name, i.correlation_key, i.execution_id, i.user_id,
           i.from_state, i.to_state, i.occurred_at, i.payload::jsonb AS payload, i.schema_ref, i.schema_source,
           i.stream_id, i.error
    FROM unnest(
        %(event_id)b::uuid[], %(tenant_id)b::text[], %(event_type)b::text[], %(event_name)b::text[],
        %(correlation_key)b::text[], %(execution_id)b::text[], %(user_id)b::text[], %(from_state)b::text[],
        %(to_state)b::text[], %(occurred_at)b::timestamptz[], %(payload)b::text[], %(schema_ref)b::text[],
        %(schema_source)b::text[], %(stream_id)b::text[], %(error)b::text[]
    ) AS i(event_id, tenant_id, event_type, event_name, correlation_key, execution_id, user_id, from_state,
           to_state, occurred_at, payload, schema_ref, schema_source, stream_id, error)
),
cand AS (
    SELECT t.id AS trigger_id, t.workflow_name, t.payload_schema_ref AS expected,
           (t.payload_schema_ref IS NULL OR t.payload_schema_ref IS NOT DISTINCT FROM i.schema_ref) AS ok,
           i.event_id, i.tenant_id, i.payload, i.schema_ref
    FROM input i
    JOIN workflow_triggers t
      ON t.tenant_id = i.tenant_id AND t.event_type = i.event_type AND t.enabled
    WHERE i.error IS NULL
      AND (t.payload_filter IS NULL OR i.payload @> t.payload_filter)
),
ins AS (
    INSERT INTO workflow_runtime_events AS e
        (event_id, tenant_id, event_type, event_name, correlation_key, execution_id, user_id, from_state,
         to_state, occurred_at, payload, schema_ref, schema_source, stream_id, error, runs_requested)
    SELECT i.event_id, i.tenant_id, i.event_type, i.event_name, i.correlation_key, i.execution_id, i.user_id,
           i.from_state, i.to_state, i.occurred_at, i.payload, i.schema_ref, i.schema_source, i.stream_id,
           i.error, (SELECT count(*) FROM cand c WHERE c.event_id = i.event_id AND c.ok)
    FROM input i
    ORDER BY i.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING e.event_id, e.error IS NOT NULL AS invalid
),
runs AS (
    INSERT INTO workflow_run_requests (trigger_id, event_id, tenant_id, workflow_name, payload)
    SELECT c.trigger_id, c.event_id, c.tenant_id, c.workflow_name, c.payload
    FROM cand c JOIN ins USING (event_id)
    WHERE c.ok
    ORDER BY c.trigger_id, c.event_id
    ON CONFLICT (trigger_id, event_id) DO NOTHING
    RETURNING 1
),
skips AS (
    INSERT INTO workflow_trigger_skips (trigger_id, event_id, tenant_id, reason)
    SELECT c.trigger_id, c.event_id, c.tenant_id,
           format('trigger expects schema %%s, the event resolved to %%s', c.expected,
                  coalesce(c.schema_ref, 'no registered ref (inline tenant schema or none)'))
    FROM cand c JOIN ins USING (event_id)
    WHERE NOT c.ok
    ORDER BY c.trigger_id, c.event_id
    ON CONFLICT (trigger_id, event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM runs), (SELECT count(*) FROM skips),
       (SELECT count(*) FROM ins WHERE invalid)
"""

# Event ids (of a list) already ingested: used before dead-lettering an entry nobody acknowledged.
ALREADY_INGESTED = "SELECT event_id FROM workflow_runtime_events WHERE event_id = ANY(%(ids)s::uuid[])"

STATUS_RUNS = """
SELECT tenant_id, count(*) AS runs FROM workflow_run_requests GROUP BY tenant_id ORDER BY tenant_id
"""

STATUS_EVENTS = """
SELECT tenant_id, count(*) AS ingested, count(*) FILTER (WHERE error IS NOT NULL) AS invalid,
       max(processed_at) AS last_processed_at
FROM workflow_runtime_events GROUP BY tenant_id ORDER BY tenant_id
"""

# ---- triggers (worker/triggers.py) ---------------------------------------------------------------------

TRIGGER_COLUMNS = "id, tenant_id, event_type, payload_filter, workflow_name, payload_schema_ref, enabled, created_at"

TRIGGER_INSERT = f"""
INSERT INTO workflow_triggers (tenant_id, event_type, payload_filter, workflow_name, payload_schema_ref, enabled)
VALUES (%(tenant_id)s, %(event_type)s, %(payload_filter)s, %(workflow_name)s, %(payload_schema_ref)s, %(enabled)s)
RETURNING {TRIGGER_COLUMNS}
"""

TRIGGER_GET = f"SELECT {TRIGGER_COLUMNS} FROM workflow_triggers WHERE id = %(id)s"

TRIGGER_LIST = f"""
SELECT {TRIGGER_COLUMNS} FROM workflow_triggers
WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s::text)
ORDER BY created_at, id
"""

TRIGGER_SET_ENABLED = f"""
UPDATE workflow_triggers SET enabled = %(enabled)s WHERE id = %(id)s RETURNING {TRIGGER_COLUMNS}
"""

# Removing a trigger: lock its row first (FOR UPDATE conflicts with the FOR KEY SHARE that a run request's
# foreign-key check takes), so no request can be committed for it between the count and the delete.
TRIGGER_LOCK = f"SELECT {TRIGGER_COLUMNS} FROM workflow_triggers WHERE id = %(id)s FOR UPDATE"
TRIGGER_REQUESTS = "SELECT count(*) FROM workflow_run_requests WHERE trigger_id = %(id)s"
TRIGGER_DELETE_SKIPS = "DELETE FROM workflow_trigger_skips WHERE trigger_id = %(id)s"
TRIGGER_DELETE = "DELETE FROM workflow_triggers WHERE id = %(id)s"

# ---- run requests the workflow engine claims (migration outbox_0004, worker/runs.py) --------------------

RUN_STATUSES = ("pending", "claimed", "done", "failed")

RUN_COLUMNS = (
    "id, trigger_id, event_id, tenant_id, workflow_name, payload, status, attempts, created_at, claimed_at,"
    " claimed_by, finished_at, error"
)

# Oldest pending requests first; rows another claimer holds locked are skipped, not waited for, so
# concurrent claimers never get the same request and never block each other.
RUN_CLAIM = f"""
WITH next AS (
    SELECT id FROM workflow_run_requests
    WHERE status = 'pending'
      AND (%(workflows)s::text[] IS NULL OR workflow_name = ANY(%(workflows)s::text[]))
      AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s::text)
    ORDER BY created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE workflow_run_requests r
SET status = 'claimed', claimed_at = clock_timestamp(), claimed_by = %(claimer)s, attempts = r.attempts + 1,
    finished_at = NULL, error = NULL
FROM next
WHERE r.id = next.id
RETURNING {", ".join("r." + c.strip() for c in RUN_COLUMNS.split(","))}
"""

# complete / fail: only a claimed request (by the given claimer, when one is given) changes.
RUN_FINISH = f"""
UPDATE workflow_run_requests
SET status = %(status)s, finished_at = clock_timestamp(), error = %(error)s
WHERE id = %(id)s AND status = 'claimed' AND (%(claimer)s::text IS NULL OR claimed_by = %(claimer)s::text)
RETURNING {RUN_COLUMNS}
"""

RUN_GET = f"SELECT {RUN_COLUMNS} FROM workflow_run_requests WHERE id = %(id)s"

RUN_REQUEUE_STALE = """
UPDATE workflow_run_requests
SET status = 'pending', claimed_at = NULL, claimed_by = NULL
WHERE status = 'claimed' AND claimed_at < clock_timestamp() - make_interval(secs => %(older_than)s::float8)
RETURNING id
"""

RUN_LIST = f"""
SELECT {RUN_COLUMNS} FROM workflow_run_requests
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s::text)
  AND (%(workflow)s::text IS NULL OR workflow_name = %(workflow)s::text)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""

STATUS_RUNS_BY_STATUS = "SELECT status, count(*) FROM workflow_run_requests GROUP BY status"
