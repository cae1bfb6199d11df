"""Alembic migrations of the outbox tables (branch label ``outbox``, version table ``outbox_alembic_version``)."""

from __future__ import annotations

from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
VERSIONS = str(Path(__file__).resolve().parent / "versions")
VERSION_TABLE = "outbox_alembic_version"
