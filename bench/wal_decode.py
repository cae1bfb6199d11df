"""How fast the WAL stream reader (outbox.relay.walstream) decodes a backlog of outbox messages, in Python.

Emits N ~420-byte messages (``pg_logical_emit_message(true, 'outbox', ...)``) in T transactions, then reads the
slot from its start R times (never confirming, so every round reads the same backlog) and prints one line:
messages/s (wall, server decoding included) and the reader's CPU per message (``time.process_time``), medians of
the rounds; "frames only" is the same stream drained without decoding (get_copy_data + bytes), the floor.

    python bench/wal_decode.py [--database-url URL] [--messages 100000] [--transactions 100] [--rounds 3]

URL (or OUTBOX_WAL_DATABASE_URL): a wal_level=logical server where we may create a database; else an embedded
server (outbox.embedded) is started. Works in its own database (bench_wal_<id>) and slot, dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from outbox.embedded import PostgresServer  # noqa: E402
from outbox.relay import walstream as ws  # noqa: E402

# About 420 bytes, the size of a TICKET_CREATED event with its header (see outbox.walmsg).
CONTENT = (
    '{"v":1,"id":"0192f1d2-7a4e-7c3b-9d2e-3f4a5b6c7d8e","tenant":"acme","type":"TICKET_CREATED",'
    '"schema":"ticketing.TicketCreated/v1","at":"2026-12-02T10:11:12.345Z AD"}\n'
    '{"ticketId":"5f0c2b8e-1d3a-4e6f-8a9b-0c1d2e3f4a5b","title":"VPN drops every 20 minutes",'
    '"priority":"high","queue":"it-support","requesterId":"7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",'
    '"tenantId":"acme","occurredAt":"2026-12-02T10:11:12.345Z","n":'
)

EMIT = "SELECT pg_logical_emit_message(true, 'outbox', %s || i || '}') FROM generate_series(1, %s) i"


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with PostgresServer(settings={"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}) as pg:
        yield pg.url("postgres")


def with_db(url: str, dbname: str) -> str:
    return urlsplit(url)._replace(path="/" + dbname).geturl()


def read_round(url: str, slot: str, publication: str, messages: int, *, decode: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to receive ``messages`` messages from the start of the slot."""
    reader = ws.WalReader(ws.connect(url), slot, publication)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        reader.start()
        got = 0
        if decode:
            while got < messages:
                got += sum(len(item.messages) for item in reader.read(5.0))
        else:  # the floor: frames off the socket, nothing decoded (XLogData 'w' + Message 'M')
            pg = reader.conn.pgconn
            while got < messages:
                n, data = pg.get_copy_data(1)
                if n > 0:
                    frame = bytes(data)
                    got += frame[0] == 0x77 and frame[25] == 0x4D
                elif n == 0:
                    reader._wait(5.0, write=False)
                    pg.consume_input()
                else:
                    raise RuntimeError("stream ended")
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        reader.close()
        with psycopg.connect(url, autocommit=True) as conn:  # the next round needs the slot released
            while (status := ws.slot_status(conn, slot)) is not None and status.active:
                time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=os.environ.get("OUTBOX_WAL_DATABASE_URL"))
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--transactions", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    per_tx = args.messages // args.transactions
    total = per_tx * args.transactions
    tag = uuid.uuid4().hex[:10]
    dbname, slot, publication = f"bench_wal_{tag}", f"bench_wal_{tag}", "outbox_bench"
    with server(args.database_url) as admin_url:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = with_db(admin_url, dbname)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                ws.require_logical(conn)
                ws.ensure_publication(conn, publication)
                ws.ensure_slot(conn, slot)
                for _ in range(args.transactions):
                    with conn.transaction():
                        conn.execute(EMIT, [CONTENT, per_tx])
                size = len(CONTENT) + 4
                version = conn.info.server_version
            decoded = [read_round(url, slot, publication, total, decode=True) for _ in range(args.rounds)]
            floor = [read_round(url, slot, publication, total, decode=False) for _ in range(args.rounds)]
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    wall = statistics.median(w for w, _ in decoded)
    cpu = statistics.median(c for _, c in decoded)
    fwall = statistics.median(w for w, _ in floor)
    fcpu = statistics.median(c for _, c in floor)
    print(
        f"wal_decode: PG {version // 10000}, {total} messages of ~{size} B in {args.transactions} transactions: "
        f"{total / wall:,.0f} msg/s ({wall:.2f} s wall), {cpu / total * 1e6:.2f} µs CPU/msg "
        f"[frames only: {total / fwall:,.0f} msg/s, {fcpu / total * 1e6:.2f} µs CPU/msg] "
        f"(median of {args.rounds}; rounds {', '.join(f'{w:.2f}s/{c:.2f}s cpu' for w, c in decoded)})"
    )


if __name__ == "__main__":
    main()
