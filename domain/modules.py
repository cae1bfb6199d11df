"""Imports every reference-domain module (registers their tables and emitters)."""

from __future__ import annotations

import importlib

MODULES = (
    "tickets",
    "time_entries",
    "messaging",
    "generic",
    "crm",
    "billing",
    "scheduling",
    "projects",
    "documents",
    "assets",
    "media",
    "email",
    "notifications",
    "surveys",
    "integrations",
)

for _name in MODULES:
    importlib.import_module(f"domain.{_name}")
