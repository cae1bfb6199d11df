"""Outbox tables: outbox_events (the outbox) and outbox_relay (relay leadership, sequence, wake-up flag).

Revision ID: outbox_0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0001"
down_revision = None
branch_labels = ("outbox",)
depends_on = None

UPGRADE = """
CREATE TABLE outbox_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid        NOT NULL,
    tenant_id        text        NOT NULL,
    event_type       text        NOT NULL,
    schema_ref       text        NOT NULL,
    payload          jsonb       NOT NULL,
    occurred_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    aggregate        text,
    execution_id     text,
    event_name       text,
    from_state       text,
    to_state         text,
    correlation_key  text,
    -- the writing transaction: lets operators see which in-flight writer holds rows back
    xid              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'published', 'dead', 'failed')),
    -- position assigned by the relay leader at claim time; the Redis fence compares against it
    publish_seq      bigint,
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz,
    published_at     timestamptz,
    stream_id        text,
    CONSTRAINT outbox_events_event_id_key UNIQUE (event_id)
) WITH (fillfactor = 90);

-- the claim path: only pending rows, in id order
CREATE INDEX outbox_events_pending_idx ON outbox_events (id) WHERE status = 'pending';
-- retention sweeps and "published in the last minute"
CREATE INDEX outbox_events_published_idx ON outbox_events (published_at) WHERE status = 'published';
-- dead letters and failures for operators
CREATE INDEX outbox_events_failed_idx ON outbox_events (event_type, id) WHERE status IN ('dead', 'failed');

CREATE TABLE outbox_relay (
    name          text PRIMARY KEY,
    instance_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    epoch         bigint      NOT NULL DEFAULT 0,
    last_seq      bigint      NOT NULL DEFAULT 0,
    leader        text,
    leader_since  timestamptz,
    lease_until   timestamptz,
    notify_until  timestamptz
);
INSERT INTO outbox_relay (name) VALUES ('default');
"""

DOWNGRADE = """
DROP TABLE IF EXISTS outbox_relay;
DROP TABLE IF EXISTS outbox_events;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
