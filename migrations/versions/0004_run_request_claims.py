"""Run requests the workflow engine claims: workflow_run_requests gets status (pending/claimed/done/failed),
claimed_at, claimed_by, attempts, finished_at, error, and partial indexes for the claim path (``worker/runs.py``).

Revision ID: outbox_0004
Revises: outbox_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0004"
down_revision = "outbox_0003"
branch_labels = None
depends_on = None

# Adding columns with constant defaults rewrites nothing (PostgreSQL 11+). The CHECK is added NOT VALID and
# validated separately, which scans the table without blocking writers. The partial indexes hold only the
# rows the claim path looks at, so they stay small however many requests are done.
UPGRADE = """
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

DOWNGRADE = """
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


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
