"""SQL of the event catalog: the tables (used by migration ``outbox_0002``), the system upsert, resolution."""

from __future__ import annotations

# Columns of system_event_catalog that come from the code registry, in upsert order.
SYSTEM_COLUMNS = (
    "event_type",
    "name",
    "description",
    "category",
    "payload_schema_ref",
    "kind",
    "catalog_only",
    "catalog_only_reason",
    "legacy_of",
    "legacy_overlaps",
    "superseded_by",
)

CREATE_TABLES = """
-- The system catalog: one row per event type of the Workflow Event Catalog v2, kept equal to the code
-- registry (schemas.registry, in_system_catalog=True) by catalog.sync.sync_system_catalog.
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

DROP_TABLES = """
DROP TABLE IF EXISTS event_catalog;
DROP TABLE IF EXISTS system_event_catalog;
"""

# One statement for the whole registry: the rows come as one JSON array (a bind parameter online, a
# literal in offline `--sql` mode). Only rows whose content differs are updated (and get a new
# updated_at); ids and created_at are never touched. RETURNING lists inserted and updated rows only.
_SET = ",\n        ".join(f"{c} = EXCLUDED.{c}" for c in SYSTEM_COLUMNS[1:])
_OLD = ", ".join(f"c.{c}" for c in SYSTEM_COLUMNS[1:])
_NEW = ", ".join(f"EXCLUDED.{c}" for c in SYSTEM_COLUMNS[1:])
UPSERT_SYSTEM = f"""
INSERT INTO system_event_catalog AS c ({", ".join(SYSTEM_COLUMNS)})
SELECT {", ".join("r." + c for c in SYSTEM_COLUMNS)}
FROM jsonb_to_recordset(CAST({{rows}} AS jsonb)) AS r(
    event_type text, name text, description text, category text, payload_schema_ref text, kind text,
    catalog_only boolean, catalog_only_reason text, legacy_of text[], legacy_overlaps text[], superseded_by text[]
)
ON CONFLICT (event_type) DO UPDATE SET
        {_SET},
        updated_at = now()
    WHERE ({_OLD}) IS DISTINCT FROM ({_NEW})
RETURNING event_type, (xmax = 0) AS inserted
"""

SYSTEM_EVENT_TYPES = "SELECT event_type FROM system_event_catalog"

RESOLVE = """
SELECT source, name, category, payload_schema_ref, payload_schema FROM (
    SELECT 0 AS prio, 'tenant' AS source, name, category, payload_schema_ref, payload_schema
      FROM event_catalog WHERE tenant_id = %(tenant_id)s AND event_type = %(event_type)s
    UNION ALL
    SELECT 1, 'system', name, category, payload_schema_ref, NULL::jsonb
      FROM system_event_catalog WHERE event_type = %(event_type)s
) AS candidates
ORDER BY prio
LIMIT 1
"""

REGISTER_TENANT = """
INSERT INTO event_catalog AS c
    (tenant_id, event_type, name, description, category, payload_schema_ref, payload_schema)
VALUES (%(tenant_id)s, %(event_type)s, %(name)s, %(description)s, %(category)s, %(ref)s, %(schema)s)
ON CONFLICT (tenant_id, event_type) DO UPDATE SET
    name = EXCLUDED.name,
    description = EXCLUDED.description,
    category = EXCLUDED.category,
    payload_schema_ref = EXCLUDED.payload_schema_ref,
    payload_schema = EXCLUDED.payload_schema,
    updated_at = now()
RETURNING id
"""

UNREGISTER_TENANT = "DELETE FROM event_catalog WHERE tenant_id = %(tenant_id)s AND event_type = %(event_type)s"
