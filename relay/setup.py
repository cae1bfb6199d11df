"""What the WAL capture mode needs in the database (publication, logical slot), created idempotently."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from outbox.relay import walstream


@dataclass(frozen=True)
class WalSetup:
    """What ``setup_wal`` found or did."""

    slot: str
    publication: str
    slot_created: bool
    publication_created: bool
    slot_recreated: bool = False


def setup_wal(dsn: str, slot: str, publication: str, *, recreate_slot: bool = False) -> WalSetup:
    """Create the publication and the pgoutput slot unless they exist (``recreate_slot``: drop an invalidated or
    unwanted slot first). ``WalStreamError`` (not transient) when ``wal_level`` is not ``logical``."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        walstream.require_logical(conn)
        pub = walstream.ensure_publication(conn, publication)
        dropped = False
        if recreate_slot:
            dropped = walstream.drop_slot(conn, slot)
        created = walstream.ensure_slot(conn, slot)
        return WalSetup(slot, publication, created, pub, dropped)
