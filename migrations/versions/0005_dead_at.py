"""outbox_events.dead_at: when a row became dead or failed, so retention counts from then, not from recorded_at.

Revision ID: outbox_0005
Revises: outbox_0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0005"
down_revision = "outbox_0004"
branch_labels = None
depends_on = None

# A row that waited longer than the retention before it was dead-lettered used to be deleted by the next
# sweep. The backfill gives rows already dead or failed the migration's time: when they really became dead
# is recorded nowhere, and "now" keeps each of them for a full retention (it can only delay a deletion, never
# bring one forward). The partial index serves the sweep (oldest dead_at first) and holds only those rows.
UPGRADE = """
ALTER TABLE outbox_events ADD COLUMN dead_at timestamptz;
UPDATE outbox_events SET dead_at = now() WHERE status IN ('dead', 'failed');
CREATE INDEX outbox_events_dead_at_idx ON outbox_events (dead_at) WHERE status IN ('dead', 'failed');
"""

DOWNGRADE = """
DROP INDEX IF EXISTS outbox_events_dead_at_idx;
ALTER TABLE outbox_events DROP COLUMN IF EXISTS dead_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
