"""Alembic migrations of the outbox tables (branch label ``outbox``, version table ``outbox_alembic_version``).

The revisions under ``versions/`` are frozen history: inline DDL, importing only ``alembic`` (never the live
``outbox`` code), so a host application's Alembic can load them and they never change with a release. This
module holds only paths and names.
"""

from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
VERSIONS = str(Path(__file__).resolve().parent / "versions")
VERSION_TABLE = "outbox_alembic_version"
BRANCH = "outbox"

#: Every table the migrations create (a host's autogenerate must leave them alone).
TABLES = (
    "outbox_events",
    "outbox_relay",
    "outbox_batches",
    "system_event_catalog",
    "event_catalog",
    "workflow_runtime_events",
    "workflow_triggers",
    "workflow_run_requests",
    "workflow_trigger_skips",
)
