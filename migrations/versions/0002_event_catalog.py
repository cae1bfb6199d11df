"""Event catalog: system_event_catalog (filled from the code registry) and the tenant event_catalog.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from catalog import sql
from catalog.sync import rows_json, sync_system_catalog, upsert_sql

revision = "outbox_0002"
down_revision = "outbox_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql.CREATE_TABLES)
    if context.is_offline_mode():
        # `outbox migrate --sql`: the same upsert, with the registry rows rendered as a literal.
        op.execute(sa.text(upsert_sql(":rows")).bindparams(sa.bindparam("rows", rows_json(), type_=sa.Text)))
    else:
        sync_system_catalog(op.get_bind())  # all system-catalog rows of schemas.registry, in this transaction


def downgrade() -> None:
    op.execute(sql.DROP_TABLES)
