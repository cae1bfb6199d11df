"""Why the WAL relay streams: psycopg 3 replication connection vs the SQL functions (get changes), 100k messages.

Run: python bench/wal_client.py  (starts its own wal_level=logical Postgres, fsync on; prints one line per client)
"""

import json
import time

import psycopg

from outbox import migrate
from outbox.embedded import PostgresServer
from outbox.relay import walstream
from outbox.relay.setup import setup_wal

N = 100_000
LOGICAL = {"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4", "fsync": "on"}
with PostgresServer(settings=LOGICAL) as pg:
    url = pg.url()
    migrate.upgrade(url)
    setup_wal(url, "s_stream", "outbox")
    setup_wal(url, "s_sql", "outbox")
    payload = json.dumps({"tenantId": "t1", "x": "y" * 380})
    with psycopg.connect(url) as c:
        emit = "SELECT count(pg_logical_emit_message(true, 'outbox', m)) FROM unnest(%s::text[]) m"
        for _ in range(N // 1000):
            c.execute(emit, [[payload] * 1000])
            c.commit()
    # streaming
    conn = walstream.connect(url)
    r = walstream.WalReader(conn, "s_stream", "outbox", max_items=1000)
    r.start()
    t0, c0, got = time.perf_counter(), time.process_time(), 0
    while got < N:
        for tx in r.read(1.0):
            got += len(tx.messages)
        r.confirm(r.caught_up_lsn)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"streaming (psycopg 3 replication): {got / dt:,.0f} msg/s wall, client CPU {cpu / got * 1e6:.2f} us/msg")
    r.close()
    # SQL functions: get_binary_changes in chunks (consumes as it goes), parse pgoutput data column
    with psycopg.connect(url, autocommit=True) as c:
        t0, c0, got = time.perf_counter(), time.process_time(), 0
        while got < N:
            rows = c.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('s_sql', NULL, 1000, "
                "'proto_version', '1', 'publication_names', 'outbox', 'messages', 'true')"
            ).fetchall()
            got += sum(1 for _l, d in rows if d[:1] == b"M")
            if not rows:
                break
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"SQL get_binary_changes (upto 1000 changes/call): {got / dt:,.0f} msg/s wall, "
            f"client CPU {cpu / got * 1e6:.2f} us/msg (no decode of the message body)"
        )
