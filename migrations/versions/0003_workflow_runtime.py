"""Workflow runtime: workflow_runtime_events (ingested events), workflow_triggers, workflow_run_requests,
workflow_trigger_skips (the tables of the workflow worker, ``worker/``).

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0003"
down_revision = "outbox_0002"
branch_labels = None
depends_on = None

UPGRADE = """
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

DOWNGRADE = """
DROP TABLE IF EXISTS workflow_trigger_skips;
DROP TABLE IF EXISTS workflow_run_requests;
DROP TABLE IF EXISTS workflow_triggers;
DROP TABLE IF EXISTS workflow_runtime_events;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
