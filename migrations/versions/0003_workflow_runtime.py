"""Workflow runtime: workflow_runtime_events (ingested events), workflow_triggers, workflow_run_requests,
workflow_trigger_skips (the tables of the workflow worker, ``worker/``).

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

from outbox.worker import sql

revision = "outbox_0003"
down_revision = "outbox_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql.CREATE_TABLES)


def downgrade() -> None:
    op.execute(sql.DROP_TABLES)
