"""Outbox tables: outbox_events (the outbox), outbox_relay (leadership, positions, wake-up), outbox_batches.

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
    -- position on the stream given by the relay leader (recorded when marked published)
    publish_seq      bigint,
    -- how many relay batches carried this row without finishing (crash loops -> 'failed')
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
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

-- Open relay batches: positions handed out and not yet marked. A batch row is written in the
-- claim's transaction (before anything is sent to Redis) and deleted in the mark's transaction, so
-- after any crash the open batches say exactly which rows may already be on the stream, under
-- which positions. Claiming writes nothing to outbox_events itself.
CREATE TABLE outbox_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    epoch       bigint      NOT NULL,
    first_seq   bigint      NOT NULL,
    event_ids   bigint[]    NOT NULL,   -- outbox_events.id in position order
    attempts    integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS outbox_batches;
DROP TABLE IF EXISTS outbox_relay;
DROP TABLE IF EXISTS outbox_events;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
