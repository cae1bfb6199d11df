"""WAL capture mode: its own relay lease row ('wal') and where the WAL relay reports its progress.

Revision ID: outbox_0006
Revises: outbox_0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0006"
down_revision = "outbox_0005"
branch_labels = None
depends_on = None

# The WAL relay leads through its own outbox_relay row, so its epoch and its instance_id (hence its Redis fence
# key) are separate from the poll relay's: the two position spaces (poll: last_seq; WAL: commit LSN and index)
# never meet in one fence. The WAL relay writes the slot position it has confirmed and the commit time of the
# oldest event it has read but not yet confirmed, for `outbox status` while it holds the slot (an active slot
# cannot be peeked). The slot itself is not created here: it needs wal_level=logical (`outbox migrate
# --capture wal`).
UPGRADE = """
ALTER TABLE outbox_relay ADD COLUMN wal_confirmed_lsn pg_lsn, ADD COLUMN wal_oldest_unconfirmed timestamptz,
    ADD COLUMN wal_reported_at timestamptz;
INSERT INTO outbox_relay (name) VALUES ('wal') ON CONFLICT (name) DO NOTHING;
"""

DOWNGRADE = """
DELETE FROM outbox_relay WHERE name = 'wal';
ALTER TABLE outbox_relay DROP COLUMN IF EXISTS wal_confirmed_lsn, DROP COLUMN IF EXISTS wal_oldest_unconfirmed,
    DROP COLUMN IF EXISTS wal_reported_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
