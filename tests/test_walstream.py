"""outbox.relay.walstream against a real wal_level=logical server: order, atomicity, confirm, resume, failures."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from outbox.embedded import PostgresServer
from outbox.errors import WalStreamError
from outbox.relay import walstream as ws
from tests.conftest import wait_for
from tests.logical import LogicalDb

# ---- helpers ---------------------------------------------------------------------------------------------------


def emit(conn: psycopg.Connection[Any], content: str, *, transactional: bool = True, prefix: str = "outbox") -> None:
    conn.execute("SELECT pg_logical_emit_message(%s, %s, %s)", [transactional, prefix, content])


@pytest.fixture
def admin(logical_db: LogicalDb) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, with its (empty) publication and its slot."""
    with psycopg.connect(logical_db.url, autocommit=True) as conn:
        ws.ensure_publication(conn, logical_db.publication)
        ws.ensure_slot(conn, logical_db.slot)
        yield conn


@pytest.fixture
def open_reader(logical_db: LogicalDb) -> Iterator[Callable[..., ws.WalReader]]:
    """Start readers on the test's slot; all closed at the end."""
    readers: list[ws.WalReader] = []

    def start(*, conn_params: dict[str, Any] | None = None, **kw: Any) -> ws.WalReader:
        reader = ws.WalReader(ws.connect(logical_db.url, **(conn_params or {})), logical_db.slot,
                              logical_db.publication, **kw)  # fmt: skip
        readers.append(reader)
        reader.start()
        return reader

    yield start
    for reader in readers:
        reader.close()


def read_until(reader: ws.WalReader, count: int, timeout: float = 20.0) -> list[ws.WalTransaction]:
    """Read until ``count`` items arrived (fails after ``timeout``)."""
    items: list[ws.WalTransaction] = []
    deadline = time.monotonic() + timeout
    while len(items) < count:
        assert time.monotonic() < deadline, f"only {len(items)} of {count} items after {timeout}s"
        items += reader.read(0.5)
    return items


def contents(item: ws.WalTransaction) -> list[str]:
    return [m.content.decode() for m in item.messages]


def slot_released(admin: psycopg.Connection[Any], slot: str) -> bool:
    status = ws.slot_status(admin, slot)
    return status is not None and not status.active


# ---- pure ------------------------------------------------------------------------------------------------------


def test_lsn_text_round_trips_exactly() -> None:
    for text, value in [("0/0", 0), ("16/B374D848", 0x16_B374D848), ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
                        ("0/1", 1), ("1/0", 1 << 32)]:  # fmt: skip
        assert ws.parse_lsn(text) == value
        assert ws.format_lsn(value) == text
    assert ws.parse_lsn("16/b374d848") == 0x16_B374D848
    for bad in ["", "16", "16/", "/1", "0x1/2", "+1/2", " 1/2", "1/2 ", "1_0/2", "123456789/0", "1/2/3", "g/0"]:
        with pytest.raises(ValueError):
            ws.parse_lsn(bad)
    for bad_value in [-1, 1 << 64]:
        with pytest.raises(ValueError):
            ws.format_lsn(bad_value)


def test_position_is_commit_lsn_and_index() -> None:
    assert ws.position(0x16_B374D848, 0) == 0x16_B374D848 << 32
    assert ws.position(0x16_B374D848, 7) == (0x16_B374D848 << 32) + 7
    assert ws.position((1 << 64) - 1, (1 << 32) - 1) == (1 << 96) - 1
    assert ws.position(5, (1 << 32) - 1) < ws.position(6, 0)
    for lsn, index in [(1, 1 << 32), (1, -1), (-1, 0), (1 << 64, 0)]:
        with pytest.raises(ValueError):
            ws.position(lsn, index)


def test_names_are_checked() -> None:
    for good in ["outbox", "outbox_s_1", "_x", "a" * 63]:
        assert ws.check_name(good) == good
    for bad in ["", "Outbox", "1x", "a-b", "a b", "a'b", "a" * 64, 'a"b', "a,b"]:
        with pytest.raises(ValueError):
            ws.check_name(bad)


# ---- helpers on a normal connection ----------------------------------------------------------------------------


def test_slot_and_publication_helpers_are_idempotent(logical_db: LogicalDb) -> None:
    with psycopg.connect(logical_db.url, autocommit=True) as conn:
        assert ws.wal_level(conn) == "logical"
        ws.require_logical(conn)
        assert ws.slot_status(conn, logical_db.slot) is None
        assert ws.ensure_publication(conn, logical_db.publication) is True
        assert ws.ensure_publication(conn, logical_db.publication) is False
        # Empty: no table is published, so row changes never reach the stream.
        assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = %s",
                            [logical_db.publication]).fetchone() == (0,)  # fmt: skip
        assert ws.ensure_slot(conn, logical_db.slot) is True
        assert ws.ensure_slot(conn, logical_db.slot) is False
        status = ws.slot_status(conn, logical_db.slot)
        assert status is not None
        assert (status.name, status.plugin, status.slot_type, status.database) == (
            logical_db.slot,
            "pgoutput",
            "logical",
            logical_db.name,
        )
        assert status.in_this_database and not status.active and status.active_pid is None
        assert status.wal_status == "reserved"
        assert status.restart_lsn is not None and status.confirmed_flush_lsn is not None
        assert status.restart_lsn <= status.confirmed_flush_lsn <= ws.current_lsn(conn)
        assert status.retained_bytes == ws.current_lsn(conn) - status.restart_lsn
        assert status.safe_wal_size is None  # max_slot_wal_keep_size unlimited
        assert ws.drop_slot(conn, logical_db.slot) is True
        assert ws.drop_slot(conn, logical_db.slot) is False


def test_ensure_slot_refuses_a_slot_of_another_kind(logical_db: LogicalDb) -> None:
    with psycopg.connect(logical_db.url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot(%s)", [logical_db.slot])
        with pytest.raises(WalStreamError, match=r"is a physical slot .* not a pgoutput slot of this database") as info:
            ws.ensure_slot(conn, logical_db.slot)
        assert not info.value.transient
        ws.drop_slot(conn, logical_db.slot)  # physical: not in the database, so not dropped with it


def test_require_logical_names_the_level(pg_admin_url: str) -> None:
    """On the default test server (the shared one, or the session's own: both run wal_level=replica)."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        if ws.wal_level(conn) == "logical":
            pytest.skip("the shared server runs wal_level=logical")
        with pytest.raises(WalStreamError, match="wal_level is 'replica'") as info:
            ws.require_logical(conn)
        assert not info.value.transient


def test_connect_is_a_replication_connection(logical_db: LogicalDb, admin: psycopg.Connection[Any]) -> None:
    with ws.connect(logical_db.url) as conn:
        assert conn.autocommit
        assert conn.info.get_parameters()["application_name"] == ws.APPLICATION_NAME
        pid = conn.info.backend_pid
        row = admin.execute("SELECT backend_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        assert row == ("walsender",)
        with pytest.raises(psycopg.errors.ProtocolViolation):  # extended protocol: refused in replication mode
            conn.execute("SELECT %s", [1])


# ---- the stream ------------------------------------------------------------------------------------------------


def test_transactions_arrive_whole_in_commit_order(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    admin.execute("CREATE TABLE tickets (id int, title text)")
    reader = open_reader()
    with psycopg.connect(logical_db.url) as a, psycopg.connect(logical_db.url) as b, \
            psycopg.connect(logical_db.url) as c:  # fmt: skip
        a.execute("INSERT INTO tickets VALUES (1, 'a')")  # business rows: not in the publication, not streamed
        emit(a, "a1")  # a starts first...
        b.execute("INSERT INTO tickets VALUES (2, 'b')")
        emit(b, "b1")
        emit(c, "c1")
        emit(a, "a2")
        emit(a, "not ours", prefix="other")  # another prefix: filtered out, not counted
        emit(b, "b2")
        b.commit()  # ...but b commits first
        c.rollback()  # never seen
        emit(a, "a3")
        a.execute("SAVEPOINT sp")
        emit(a, "a-aborted")  # in a rolled-back subtransaction: never seen
        a.execute("ROLLBACK TO SAVEPOINT sp")
        emit(a, "a4")
        a.commit()
    with admin.transaction():
        emit(admin, "d1")
    items = read_until(reader, 3)
    assert [contents(i) for i in items] == [["b1", "b2"], ["a1", "a2", "a3", "a4"], ["d1"]]
    for item in items:
        assert item.transactional and item.xid is not None and item.commit_time is not None
        assert [m.index for m in item.messages] == list(range(len(item.messages)))
        assert {m.prefix for m in item.messages} == {"outbox"}
        assert item.commit_lsn < item.end_lsn
        assert all(m.lsn <= item.commit_lsn for m in item.messages)
    assert [i.commit_lsn for i in items] == sorted({i.commit_lsn for i in items})  # strictly increasing
    assert items[0].commit_time <= items[1].commit_time <= items[2].commit_time  # type: ignore[operator]
    assert reader.caught_up_lsn >= items[-1].end_lsn
    assert reader.read(0.3) == []  # nothing else: the rolled-back work never comes


def test_row_changes_of_published_tables_are_skipped(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    # A publication with a table: pgoutput sends Relation, Type, Insert, Update, Delete, Truncate between the
    # messages; the reader skips them and numbers only the messages.
    admin.execute("CREATE TYPE mood AS ENUM ('ok', 'bad')")
    admin.execute("CREATE TABLE tickets (id int PRIMARY KEY, m mood)")
    admin.execute(f"ALTER PUBLICATION {logical_db.publication} ADD TABLE tickets")
    reader = open_reader()
    with admin.transaction():
        admin.execute("INSERT INTO tickets VALUES (1, 'ok'), (2, 'bad')")
        emit(admin, "m0")
        admin.execute("UPDATE tickets SET m = 'bad' WHERE id = 1")
        emit(admin, "m1")
        admin.execute("DELETE FROM tickets WHERE id = 2")
        admin.execute("TRUNCATE tickets")
        emit(admin, "m2")
    with admin.transaction():
        admin.execute("INSERT INTO tickets VALUES (3, 'ok')")  # rows only: no item
    with admin.transaction():
        emit(admin, "n0")
    items = read_until(reader, 2)
    assert [contents(i) for i in items] == [["m0", "m1", "m2"], ["n0"]]
    assert [[m.index for m in i.messages] for i in items] == [[0, 1, 2], [0]]


def test_many_transactions_batched_and_positions_increase(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    for t in range(30):
        with admin.transaction():
            admin.execute(
                "SELECT pg_logical_emit_message(true, 'outbox', %s || ':' || i) FROM generate_series(0, %s - 1) i",
                [str(t), t % 4 + 1],
            )
    written = ws.current_lsn(admin)
    reader = open_reader()
    pid = reader.conn.info.backend_pid

    def all_sent() -> bool:
        row = admin.execute("SELECT sent_lsn::text FROM pg_stat_replication WHERE pid = %s", [pid]).fetchone()
        return row is not None and row[0] is not None and ws.parse_lsn(row[0]) >= written

    wait_for(all_sent, what="the walsender to send everything")
    items = reader.read(5.0)  # everything already sent comes in one call
    assert [contents(i) for i in items] == [[f"{t}:{i}" for i in range(t % 4 + 1)] for t in range(30)]
    positions = [ws.position(i.commit_lsn, m.index) for i in items for m in i.messages]
    assert positions == sorted(set(positions))


def test_non_transactional_messages_keep_their_place(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    reader = open_reader()
    emit(admin, "n1", transactional=False)  # autocommit: on its own
    with admin.transaction():
        emit(admin, "t1")
        emit(admin, "n2", transactional=False)  # its record ends where the commit record starts
    items = read_until(reader, 3)
    assert [(contents(i), i.transactional) for i in items] == [
        (["n1"], False), (["n2"], False), (["t1"], True)
    ]  # fmt: skip
    n1, n2, t1 = items
    for n in (n1, n2):
        assert n.xid is None and n.commit_time is None and n.end_lsn == n.messages[0].lsn
        assert n.commit_lsn == n.end_lsn - 1
    # The stream reports a message's LSN as the end of its record: n2's is t1's commit LSN. Positions stay
    # unique because a non-transactional message is placed at the last byte of its record.
    assert n2.messages[0].lsn == t1.commit_lsn
    positions = [ws.position(i.commit_lsn, m.index) for i in items for m in i.messages]
    assert positions == sorted(set(positions))


def test_confirm_advances_the_slot_and_never_goes_back(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    before = ws.slot_status(admin, logical_db.slot)
    assert before is not None and before.confirmed_flush_lsn is not None
    reader = open_reader()
    assert reader.confirmed_lsn == before.confirmed_flush_lsn
    for content in ("x", "y"):
        with admin.transaction():
            emit(admin, content)
    x, y = read_until(reader, 2)

    def confirmed() -> int | None:
        status = ws.slot_status(admin, logical_db.slot)
        return None if status is None else status.confirmed_flush_lsn

    reader.confirm(x.end_lsn)
    wait_for(lambda: confirmed() == x.end_lsn, what="confirmed_flush_lsn at x's end")
    assert reader.confirmed_lsn == x.end_lsn
    reader.confirm(x.commit_lsn)  # lower: ignored
    reader.confirm(y.end_lsn)
    wait_for(lambda: confirmed() == y.end_lsn, what="confirmed_flush_lsn at y's end")
    with pytest.raises(ValueError, match="beyond what was delivered"):
        reader.confirm(ws.position(y.commit_lsn, 0))  # a position is not an LSN
    with pytest.raises(ValueError, match="beyond what was delivered"):
        reader.confirm(reader.caught_up_lsn + 1)
    assert reader.confirmed_lsn == y.end_lsn


def test_reconnect_resumes_after_the_confirmed_transaction(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    reader = open_reader()
    with psycopg.connect(logical_db.url) as long_tx:
        emit(long_tx, "u1")  # u starts before t commits and commits after it
        with admin.transaction():
            emit(admin, "t1")
        emit(long_tx, "u2")
        long_tx.commit()
    with admin.transaction():
        emit(admin, "v1")
    t, u, v = read_until(reader, 3)
    assert [contents(i) for i in (t, u, v)] == [["t1"], ["u1", "u2"], ["v1"]]
    reader.confirm(t.end_lsn)  # u and v are not stored yet
    reader.close()
    wait_for(lambda: slot_released(admin, logical_db.slot), what="the slot released")

    again = open_reader()
    assert again.confirmed_lsn == t.end_lsn
    items = read_until(again, 2)
    assert items == [u, v]  # u whole (its first message precedes t's commit), t not again
    # Confirming a commit LSN instead of the end LSN has that transaction delivered once more.
    again.confirm(u.commit_lsn)
    again.close()
    wait_for(lambda: slot_released(admin, logical_db.slot), what="the slot released")
    third = open_reader()
    assert read_until(third, 2) == [u, v]


def test_caught_up_lsn_moves_past_other_writes(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    reader = open_reader(status_interval=0.1, server_timeout=10.0)  # pings ask for keepalives
    with admin.transaction():
        emit(admin, "first")
    (first,) = read_until(reader, 1)
    admin.execute("CREATE TABLE busy (n int)")
    admin.execute("INSERT INTO busy SELECT generate_series(1, 1000)")
    written = ws.current_lsn(admin)
    assert written > first.end_lsn

    def caught_up() -> bool:
        assert reader.read(0.2) == []
        return reader.caught_up_lsn >= written

    wait_for(caught_up, what="caught_up_lsn past the table writes")
    reader.confirm(reader.caught_up_lsn)
    wait_for(lambda: (ws.slot_status(admin, logical_db.slot) or pytest.fail("slot gone")).confirmed_flush_lsn
             == reader.caught_up_lsn, what="the slot confirmed past the writes")  # fmt: skip
    with admin.transaction():
        emit(admin, "second")
    reader.close()
    wait_for(lambda: slot_released(admin, logical_db.slot), what="the slot released")
    assert [contents(i) for i in read_until(open_reader(), 1)] == [["second"]]


# ---- failures --------------------------------------------------------------------------------------------------


def test_missing_slot_fails_clearly(logical_db: LogicalDb, admin: psycopg.Connection[Any]) -> None:
    reader = ws.WalReader(ws.connect(logical_db.url), "no_such_slot", logical_db.publication)
    with reader, pytest.raises(WalStreamError, match='replication slot "no_such_slot" does not exist') as info:
        reader.start()
    assert info.value.sqlstate == "42704" and not info.value.transient


def test_missing_publication_fails_at_the_first_row_change(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    # pgoutput looks its publications up when it first decodes a row change (messages alone do not need
    # one), so a business transaction that writes a row stops the stream there.
    admin.execute("CREATE TABLE tickets (id int)")
    reader = ws.WalReader(ws.connect(logical_db.url), logical_db.slot, "no_such_publication")
    with reader:
        reader.start()
        with admin.transaction():
            emit(admin, "message only")
        assert [contents(i) for i in read_until(reader, 1)] == [["message only"]]
        with admin.transaction():
            admin.execute("INSERT INTO tickets VALUES (1)")
            emit(admin, "with a row")
        with pytest.raises(WalStreamError, match='publication "no_such_publication" does not exist') as info:
            read_until(reader, 1)
    assert info.value.sqlstate == "42704" and not info.value.transient


def test_slot_active_elsewhere_fails_clearly(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    first = open_reader()
    pid = first.conn.info.backend_pid
    with pytest.raises(WalStreamError, match=f"is active for PID {pid}") as info:
        open_reader()
    assert info.value.sqlstate == "55006" and info.value.transient
    assert isinstance(info.value.__cause__, psycopg.errors.ObjectInUse)
    with admin.transaction():
        emit(admin, "still fine")
    assert [contents(i) for i in read_until(first, 1)] == [["still fine"]]


def test_terminated_walsender_raises_promptly(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    reader = open_reader()
    pid = reader.conn.info.backend_pid
    reading = threading.Event()

    def terminate() -> None:
        reading.wait(10)
        with psycopg.connect(logical_db.url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])

    killer = threading.Thread(target=terminate)
    killer.start()
    started = time.monotonic()
    reading.set()
    with pytest.raises(WalStreamError, match="terminating connection due to administrator command") as info:
        while time.monotonic() - started < 60:
            reader.read(30.0)  # blocked in the wait when the server ends the connection
    killer.join()
    assert time.monotonic() - started < 10
    assert info.value.sqlstate == "57P01" and info.value.transient


def test_keepalive_replies_outlive_wal_sender_timeout(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    # No status updates of our own: only the answers to the server's keepalive requests keep it alive.
    reader = open_reader(conn_params={"options": "-c wal_sender_timeout=2s"}, status_interval=None,
                         server_timeout=None)  # fmt: skip
    pid = reader.conn.info.backend_pid
    assert admin.execute("SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'").fetchone() != ("2000",)

    def three_replies() -> bool:
        assert reader.read(0.2) == []
        return reader.keepalive_replies >= 3

    started = time.monotonic()
    wait_for(three_replies, what="three keepalive replies")
    assert time.monotonic() - started > 2  # past wal_sender_timeout (a request comes every ~1 s)
    status = ws.slot_status(admin, logical_db.slot)
    assert status is not None and status.active_pid == pid
    with admin.transaction():
        emit(admin, "alive")
    assert [contents(i) for i in read_until(reader, 1)] == [["alive"]]


def test_a_reader_that_does_not_read_is_timed_out_and_raises(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    # The control for the keepalive test: the same 2 s timeout ends a walsender whose client stays silent.
    reader = open_reader(conn_params={"options": "-c wal_sender_timeout=2s"}, status_interval=None,
                         server_timeout=None)  # fmt: skip
    wait_for(lambda: slot_released(admin, logical_db.slot), timeout=20, what="the server ending the walsender")
    started = time.monotonic()
    with pytest.raises(WalStreamError) as info:
        for _ in range(10):
            reader.read(1.0)
    assert time.monotonic() - started < 5
    assert info.value.transient


@pytest.mark.fault
def test_a_silent_server_raises_after_server_timeout(
    logical_db: LogicalDb, admin: psycopg.Connection[Any], open_reader: Callable[..., ws.WalReader]
) -> None:
    if os.environ.get("OUTBOX_TEST_LOGICAL_DATABASE_URL"):
        pytest.skip("stops a walsender process: only on the session's own server")
    reader = open_reader(status_interval=0.2, server_timeout=1.5)
    pid = reader.conn.info.backend_pid
    os.kill(pid, signal.SIGSTOP)  # alive for TCP, silent for us
    try:
        started = time.monotonic()
        with pytest.raises(WalStreamError, match="nothing from the server") as info:
            while time.monotonic() - started < 30:
                reader.read(5.0)
        assert 1.5 <= time.monotonic() - started < 5
        assert info.value.transient
    finally:
        os.kill(pid, signal.SIGCONT)


def test_invalidated_slot_fails_clearly() -> None:
    # A server of its own: max_slot_wal_keep_size applies to every slot of a server.
    settings = {"wal_level": "logical", "max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB"}
    with PostgresServer(settings=settings) as server, psycopg.connect(server.url(), autocommit=True) as conn:
        ws.ensure_publication(conn, "outbox")
        ws.ensure_slot(conn, "outbox")
        conn.execute("CREATE TABLE filler (n int)")

        def lost() -> bool:
            for _ in range(3):
                conn.execute("INSERT INTO filler SELECT generate_series(1, 100)")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            status = ws.slot_status(conn, "outbox")
            return status is not None and status.wal_status == "lost"

        wait_for(lost, what="the slot invalidated")
        reader = ws.WalReader(ws.connect(server.url()), "outbox", "outbox")
        with reader, pytest.raises(WalStreamError, match="invalidated") as info:
            reader.start()
        assert info.value.sqlstate == "55000" and not info.value.transient
        # The server says the same when the check before START_REPLICATION is bypassed.
        raw = ws.connect(server.url())
        try:
            raw.pgconn.send_query(b"START_REPLICATION SLOT outbox LOGICAL 0/0 (proto_version '1', "
                                  b"publication_names 'outbox', messages 'true')")  # fmt: skip
            res = raw.pgconn.get_result()
            assert res is not None and res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"55000"
        finally:
            raw.close()


def test_fast_shutdown_completes_when_the_caller_confirms_caught_up() -> None:
    # A stopping walsender waits until its client has confirmed everything it sent; the reader keeps answering
    # its keepalives, so only the caller's confirm(caught_up_lsn) lets the server shut down.
    with PostgresServer(settings={"wal_level": "logical"}) as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            ws.ensure_publication(conn, "outbox")
            ws.ensure_slot(conn, "outbox")
            conn.execute("CREATE TABLE busy (n int)")
            with conn.transaction():
                emit(conn, "stored")
            conn.execute("INSERT INTO busy VALUES (1)")  # WAL after the last message
        reader = ws.WalReader(ws.connect(server.url()), "outbox", "outbox")
        reader.start()
        errors: list[WalStreamError] = []
        stored: list[ws.WalTransaction] = []

        def relay() -> None:
            try:
                while True:
                    stored.extend(reader.read(0.2))  # "stored"
                    reader.confirm(reader.caught_up_lsn)
            except WalStreamError as exc:
                errors.append(exc)

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        try:
            wait_for(lambda: stored, what="the message read")
            with psycopg.connect(server.url(), autocommit=True) as conn:
                current = ws.current_lsn(conn)
            wait_for(lambda: reader.confirmed_lsn >= current, what="everything sent confirmed")
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 10
            thread.join(10)
            assert errors and errors[0].transient
        finally:
            reader.close()
