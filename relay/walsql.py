"""Every SQL statement of the WAL capture mode: publication, logical slot, slot status, the stream's start.

Slot and publication names are bound as parameters where Postgres allows it; ``START_REPLICATION`` and
``CREATE PUBLICATION`` cannot take parameters, so ``outbox.relay.walstream`` checks those names against
``WAL_NAME_PATTERN`` before formatting them in.
"""

from __future__ import annotations

from typing import LiteralString

# ---- WAL_* ---------------------------------------------------------------------------------------------------

#: Slot and publication names the WAL mode accepts: what Postgres allows for slot names ([a-z0-9_], 63 bytes),
#: minus a leading digit, so the same text is also a plain identifier (pgoutput splits ``publication_names`` as
#: identifiers and folds unquoted ones to lower case).
WAL_NAME_PATTERN = r"[a-z_][a-z0-9_]{0,62}"

WAL_LEVEL: LiteralString = "SELECT current_setting('wal_level')"

WAL_PUBLICATION_EXISTS: LiteralString = "SELECT 1 FROM pg_publication WHERE pubname = %(name)s"

# An empty publication (no table, not FOR ALL TABLES): pgoutput needs a publication name to start, and
# logical decoding messages are not filtered by publications, so the stream carries the messages and no
# row change of any table. Formatted with a checked name (CREATE PUBLICATION takes no parameter).
WAL_CREATE_PUBLICATION: LiteralString = "CREATE PUBLICATION {name}"

# pg_create_logical_replication_slot waits until every transaction running when it is called has ended
# (it needs a consistent snapshot to start decoding from): a long-open transaction makes it block.
WAL_CREATE_SLOT: LiteralString = "SELECT lsn::text FROM pg_create_logical_replication_slot(%(name)s, 'pgoutput')"

WAL_DROP_SLOT: LiteralString = "SELECT pg_drop_replication_slot(%(name)s)"

# One slot's state. LSNs as text (psycopg has no pg_lsn loader); retained bytes is what the slot pins
# (pg_current_wal_lsn() - restart_lsn); safe_wal_size is NULL unless max_slot_wal_keep_size is set.
# wal_status 'lost' = invalidated: the WAL the slot needs is gone and it can never stream again.
WAL_SLOT_STATUS: LiteralString = """
SELECT s.slot_name::text, s.plugin::text, s.slot_type, s.database::text, s.database = current_database(),
       s.active, s.active_pid, s.wal_status, s.restart_lsn::text, s.confirmed_flush_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, s.safe_wal_size
FROM pg_replication_slots s WHERE s.slot_name = %(name)s
"""

WAL_CURRENT_LSN: LiteralString = "SELECT pg_current_wal_lsn()::text"

# The stream, on a replication="database" connection (simple query protocol only). proto_version 1 is
# enough for messages (no streaming of in-progress transactions, no two-phase): every transaction arrives
# whole, at its commit, in commit order. Formatted with checked names and an LSN we formatted ourselves.
WAL_START_REPLICATION: LiteralString = (
    "START_REPLICATION SLOT {slot} LOGICAL {lsn} "
    "(proto_version '1', publication_names '{publication}', messages 'true')"
)
