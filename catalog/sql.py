"""SQL of the event catalog: the system upsert, tenant entries, resolution (the tables: migration ``outbox_0002``)."""

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

# SQL types of SYSTEM_COLUMNS, for reading them out of the JSON rows.
COLUMN_TYPES = {
    "event_type": "text",
    "name": "text",
    "description": "text",
    "category": "text",
    "payload_schema_ref": "text",
    "kind": "text",
    "catalog_only": "boolean",
    "catalog_only_reason": "text",
    "legacy_of": "text[]",
    "legacy_overlaps": "text[]",
    "superseded_by": "text[]",
}


def upsert_system(columns: tuple[str, ...], placeholder: str) -> str:
    """The system-catalog upsert of ``columns`` (``event_type`` first), rows read from the JSON array at
    ``placeholder``. Only rows whose content differs are updated (and get a new ``updated_at``); ids and
    ``created_at`` are never touched. ``RETURNING`` lists the inserted and updated rows only."""
    if columns[0] != "event_type":
        raise ValueError("event_type must be the first column")
    rest = columns[1:]
    record = ", ".join(f"{c} {COLUMN_TYPES[c]}" for c in columns)
    assignments = ",\n        ".join(f"{c} = EXCLUDED.{c}" for c in rest)
    return f"""
INSERT INTO system_event_catalog AS c ({", ".join(columns)})
SELECT {", ".join("r." + c for c in columns)}
FROM jsonb_to_recordset(CAST({placeholder} AS jsonb)) AS r({record})
ON CONFLICT (event_type) DO UPDATE SET
        {assignments},
        updated_at = now()
    WHERE ({", ".join("c." + c for c in rest)}) IS DISTINCT FROM ({", ".join("EXCLUDED." + c for c in rest)})
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
