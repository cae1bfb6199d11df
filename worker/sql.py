"""SQL of the workflow worker: the tables (migration ``outbox_0003``), the one-statement ingest, status."""

from __future__ import annotations

CREATE_TABLES = """
-- One row per event the worker ingested from the stream, keyed by the event id: the exactly-once key.
-- error IS NULL: the payload satisfied its resolved schema and matching triggers were evaluated;
-- otherwise error says why (schema failure, unknown type...) and no run was requested.
CREATE TABLE workflow_runtime_events (
    event_id         uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    event_type       text        NOT NULL,
    event_name       text,
    correlation_key  text,
    execution_id     text,
    user_id          text,
    from_state       text,
    to_state         text,
    occurred_at      timestamptz,
    payload          jsonb       NOT NULL,
    schema_ref       text,       -- the resolved payload contract (NULL: none could be resolved)
    schema_source    text,       -- tenant | system | registry (where schema_ref came from)
    stream_id        text        NOT NULL,
    runs_requested   integer     NOT NULL DEFAULT 0,
    error            text,
    processed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX workflow_runtime_events_tenant_idx ON workflow_runtime_events (tenant_id, processed_at);
CREATE INDEX workflow_runtime_events_error_idx ON workflow_runtime_events (tenant_id, processed_at)
    WHERE error IS NOT NULL;

-- A tenant's workflow triggers. An event matches a trigger when it belongs to the trigger's tenant, has
-- its event type, the trigger is enabled, the payload is valid, and payload_filter is NULL or contained
-- in the payload (jsonb containment: payload @> payload_filter). payload_schema_ref, when set, must
-- equal the event's resolved schema ref, else the trigger is skipped (workflow_trigger_skips says why).
CREATE TABLE workflow_triggers (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           text        NOT NULL,
    event_type          text        NOT NULL,
    payload_filter      jsonb,
    workflow_name       text        NOT NULL,
    payload_schema_ref  text,
    enabled             boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_triggers_filter_object_chk
        CHECK (payload_filter IS NULL OR jsonb_typeof(payload_filter) = 'object')
);
CREATE INDEX workflow_triggers_match_idx ON workflow_triggers (tenant_id, event_type) WHERE enabled;

-- One request per (trigger, event), written in the ingest transaction of the event. Triggers that have
-- requests cannot be deleted (disable them instead).
CREATE TABLE workflow_run_requests (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    trigger_id     uuid        NOT NULL REFERENCES workflow_triggers (id),
    event_id       uuid        NOT NULL REFERENCES workflow_runtime_events (event_id),
    tenant_id      text        NOT NULL,
    workflow_name  text        NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT workflow_run_requests_trigger_event_key UNIQUE (trigger_id, event_id)
);
CREATE INDEX workflow_run_requests_tenant_idx ON workflow_run_requests (tenant_id, created_at);
CREATE INDEX workflow_run_requests_event_idx ON workflow_run_requests (event_id);

-- Triggers that matched an event but did not start a run, and why (expected schema ref differs).
CREATE TABLE workflow_trigger_skips (
    trigger_id  uuid        NOT NULL REFERENCES workflow_triggers (id),
    event_id    uuid        NOT NULL REFERENCES workflow_runtime_events (event_id),
    tenant_id   text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (trigger_id, event_id)
);
CREATE INDEX workflow_trigger_skips_event_idx ON workflow_trigger_skips (event_id);
"""

DROP_TABLES = """
DROP TABLE IF EXISTS workflow_trigger_skips;
DROP TABLE IF EXISTS workflow_run_requests;
DROP TABLE IF EXISTS workflow_triggers;
DROP TABLE IF EXISTS workflow_runtime_events;
"""

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

# Adding columns with constant defaults rewrites nothing (PostgreSQL 11+). The CHECK is added NOT VALID and
# validated separately, which scans the table without blocking writers. The partial indexes hold only the
# rows the claim path looks at, so they stay small however many requests are done.
RUN_CLAIMS_UPGRADE = """
ALTER TABLE workflow_run_requests
    ADD COLUMN status       text        NOT NULL DEFAULT 'pending',
    ADD COLUMN claimed_at   timestamptz,
    ADD COLUMN claimed_by   text,
    ADD COLUMN attempts     integer     NOT NULL DEFAULT 0,
    ADD COLUMN finished_at  timestamptz,
    ADD COLUMN error        text;
ALTER TABLE workflow_run_requests ADD CONSTRAINT workflow_run_requests_status_chk
    CHECK (status IN ('pending', 'claimed', 'done', 'failed')) NOT VALID;
ALTER TABLE workflow_run_requests VALIDATE CONSTRAINT workflow_run_requests_status_chk;
-- the claim path: oldest pending first
CREATE INDEX workflow_run_requests_claim_idx ON workflow_run_requests (created_at, id) WHERE status = 'pending';
-- requests claimed by an engine that died: requeue_stale finds them by claimed_at
CREATE INDEX workflow_run_requests_claimed_idx ON workflow_run_requests (claimed_at) WHERE status = 'claimed';
"""

RUN_CLAIMS_DOWNGRADE = """
DROP INDEX IF EXISTS workflow_run_requests_claimed_idx;
DROP INDEX IF EXISTS workflow_run_requests_claim_idx;
ALTER TABLE workflow_run_requests
    DROP CONSTRAINT IF EXISTS workflow_run_requests_status_chk,
    DROP COLUMN IF EXISTS error,
    DROP COLUMN IF EXISTS finished_at,
    DROP COLUMN IF EXISTS attempts,
    DROP COLUMN IF EXISTS claimed_by,
    DROP COLUMN IF EXISTS claimed_at,
    DROP COLUMN IF EXISTS status;
"""

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
