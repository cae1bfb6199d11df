"""The event catalog: the system catalog (the code registry's catalog types, synced into Postgres), tenants'
own catalogs, schema resolution (tenant first, then system), and an AsyncAPI 3.0.0 export of the stream.

``sync_system_catalog(conn)`` keeps ``system_event_catalog`` equal to ``outbox.schemas.registry`` (migration
``outbox_0002`` runs it); ``resolve_schema(conn, tenant_id, event_type)`` says which contract applies.
"""

from __future__ import annotations

from outbox.catalog.asyncapi import asyncapi_document
from outbox.catalog.resolve import (
    EventTypeNotInCatalog,
    Resolved,
    register_tenant_event,
    resolve_schema,
    unregister_tenant_event,
)
from outbox.catalog.sync import SyncReport, sync_system_catalog

__all__ = [
    "EventTypeNotInCatalog",
    "Resolved",
    "SyncReport",
    "asyncapi_document",
    "register_tenant_event",
    "resolve_schema",
    "sync_system_catalog",
    "unregister_tenant_event",
]
