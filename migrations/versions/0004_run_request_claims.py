"""Run requests the workflow engine claims: workflow_run_requests gets status (pending/claimed/done/failed),
claimed_at, claimed_by, attempts, finished_at, error, and partial indexes for the claim path (``worker/runs.py``).

Revision ID: outbox_0004
Revises: outbox_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

from outbox.worker import sql

revision = "outbox_0004"
down_revision = "outbox_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql.RUN_CLAIMS_UPGRADE)


def downgrade() -> None:
    op.execute(sql.RUN_CLAIMS_DOWNGRADE)
