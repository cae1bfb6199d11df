"""Event catalog: system_event_catalog (its rows come from the code registry) and the tenant event_catalog.

Schema only. The rows of system_event_catalog are data of the installed release, not history: ``outbox
migrate`` (and ``outbox catalog sync``) upserts them after the schema is up to date.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "outbox_0002"
down_revision = "outbox_0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- The system catalog: one row per event type of the Workflow Event Catalog v2, kept equal to the code
-- registry (its in_system_catalog entries) by `outbox migrate` / `outbox catalog sync`.
CREATE TABLE system_event_catalog (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type           text        NOT NULL,
    name                 text        NOT NULL,
    description          text        NOT NULL DEFAULT '',
    category             text,
    payload_schema_ref   text        NOT NULL,
    kind                 text        NOT NULL DEFAULT 'domain-v2',
    -- in the catalog and the registry (simulate-able), but no product path emits it yet
    catalog_only         boolean     NOT NULL DEFAULT false,
    catalog_only_reason  text,
    -- overlaps with older bus types: both stay valid, no aliasing (payload shapes differ)
    legacy_of            text[]      NOT NULL DEFAULT '{}',
    legacy_overlaps      text[]      NOT NULL DEFAULT '{}',
    superseded_by        text[]      NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT system_event_catalog_event_type_key UNIQUE (event_type),
    CONSTRAINT system_event_catalog_reason_chk CHECK (catalog_only OR catalog_only_reason IS NULL)
);
CREATE INDEX system_event_catalog_category_idx ON system_event_catalog (category);

-- A tenant's own catalog: custom event types (inline JSON Schema) or a tenant-specific contract ref
-- for a system type. Resolution looks here first, then in system_event_catalog.
CREATE TABLE event_catalog (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           text        NOT NULL,
    event_type          text        NOT NULL,
    name                text        NOT NULL,
    description         text        NOT NULL DEFAULT '',
    category            text,
    payload_schema_ref  text,
    payload_schema      jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_catalog_tenant_event_type_key UNIQUE (tenant_id, event_type),
    -- exactly one of: a registry ref, or an inline JSON Schema (object) for a custom type
    CONSTRAINT event_catalog_schema_chk CHECK (num_nonnulls(payload_schema_ref, payload_schema) = 1),
    CONSTRAINT event_catalog_inline_object_chk CHECK (payload_schema IS NULL OR jsonb_typeof(payload_schema) = 'object')
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS event_catalog;
DROP TABLE IF EXISTS system_event_catalog;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
