"""The WAL capture mode's low level: a logical replication stream of ``pg_logical_emit_message`` messages.

Writers call ``pg_logical_emit_message(true, 'outbox', <content>)`` in their business transaction. A
``WalReader`` reads a ``pgoutput`` slot (``proto_version '1'``, ``messages 'true'``) over a psycopg 3
``replication="database"`` connection and hands back, in commit order, each committed transaction's messages
(``WalTransaction``); rolled-back transactions never appear. Positions: a transactional message is at
``position(tx.commit_lsn, message.index)``; every delivered item's ``end_lsn`` is what to ``confirm`` once the
item is stored downstream. Only the caller confirms: the reader's own status replies repeat the last
confirmed LSN.

Also here: LSN text <-> int, the slot and publication helpers (normal connection; SQL in
``outbox.relay.walsql``).
"""

from __future__ import annotations

import math
import re
import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from outbox.errors import WalStreamError
from outbox.relay import walsql

APPLICATION_NAME = "outbox-relay-wal"

#: libpq settings ``connect`` adds unless the DSN has them: a dead peer or network is noticed within about
#: 25 s (TCP keepalives), unacknowledged sends give up after 30 s, a connection attempt after 10 s.
CONNECT_DEFAULTS: dict[str, str | int] = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000, "connect_timeout": 10,
}  # fmt: skip

_NAME = re.compile(walsql.WAL_NAME_PATTERN)
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_MAX_LSN = (1 << 64) - 1
_MAX_INDEX = (1 << 32) - 1

# ---- LSNs and positions ----------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` as an int (exact; Postgres' text form, hex digits of each 32-bit half)."""
    m = _LSN.fullmatch(text)
    if m is None:
        raise ValueError(f"not an LSN: {text!r}")
    return int(m[1], 16) << 32 | int(m[2], 16)


def format_lsn(lsn: int) -> str:
    """An int LSN in Postgres' text form (``"16/B374D848"``)."""
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def position(commit_lsn: int, index: int) -> int:
    """A message's stream position: ``commit_lsn << 32 | index`` (strictly increasing in delivery order)."""
    if not 0 <= commit_lsn <= _MAX_LSN:
        raise ValueError(f"LSN out of range: {commit_lsn}")
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"message index out of range (0..2^32-1): {index}")
    return commit_lsn << 32 | index


def check_name(name: str) -> str:
    """``name`` if it is a usable slot or publication name (``[a-z_][a-z0-9_]*``, at most 63 bytes)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a usable slot or publication name (lower-case letters, digits, _): {name!r}")
    return name


# ---- What the stream delivers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class WalMessage:
    """One logical decoding message: its own LSN (the end of its WAL record), its index in its transaction.

    Read-only by convention: not frozen, because one is built per message and a frozen dataclass costs about
    four times as much to build (a NamedTuple cannot have a field named ``index``).
    """

    lsn: int
    index: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class WalTransaction:
    """One committed transaction's messages, or one non-transactional message (``transactional`` False).

    ``commit_lsn``: the commit record's LSN (pgoutput's Begin.final_lsn = Commit.commit_lsn); for a
    non-transactional message, the last byte of its own record (its ``lsn`` - 1), which no commit record can
    share, so ``position(commit_lsn, index)`` is unique and increasing across everything delivered.
    ``end_lsn``: what to ``confirm`` once this item is stored (the end of the commit record; a message's own
    ``lsn``). Confirming ``commit_lsn`` instead would have this transaction delivered again after a reconnect.
    ``commit_time`` is None for a non-transactional message.
    """

    xid: int | None
    commit_lsn: int
    end_lsn: int
    commit_time: datetime | None
    messages: tuple[WalMessage, ...]
    transactional: bool = True


# ---- Connection --------------------------------------------------------------------------------------------------


def connect(dsn: str, *, application_name: str = APPLICATION_NAME, **params: str | int) -> psycopg.Connection[Any]:
    """A ``replication="database"`` autocommit connection for ``WalReader`` (TCP keepalives, ``CONNECT_DEFAULTS``).

    ``params`` are further libpq parameters (``options="-c wal_sender_timeout=10s"``).
    """
    given = conninfo_to_dict(dsn)
    kw: dict[str, Any] = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
    kw.update(params)
    return psycopg.connect(dsn, replication="database", autocommit=True, application_name=application_name, **kw)


# ---- Wire format -------------------------------------------------------------------------------------------------
# CopyData payloads of the streaming replication protocol and pgoutput (proto_version 1), all big-endian.
#   'w' XLogData: start LSN, end LSN, send time, then one pgoutput message.
#   'k' keepalive: server's WAL end, send time, reply-requested flag.
#   'r' standby status update (ours): written, flushed, applied LSN, our clock, reply-requested flag.
_XLOG_HEAD = 25  # 'w' + 3 x int64
_KEEPALIVE = struct.Struct("!Qqb")
_STATUS = struct.Struct("!cQQQqb")
_BEGIN = struct.Struct("!QqI")  # final_lsn, commit time, xid
_COMMIT = struct.Struct("!bQQq")  # flags, commit_lsn, end_lsn, commit time
_MESSAGE = struct.Struct("!bQ")  # flags, lsn; then prefix\0, int32 length, content
_LENGTH = struct.Struct("!i")
_W, _K = ord("w"), ord("k")
_B, _M, _C = ord("B"), ord("M"), ord("C")
#: Relation, Insert, Update, Delete, Truncate, Type, Origin: nothing for us (the publication has no table).
_SKIPPED = frozenset(b"RIUDTYO")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US = 946_684_800_000_000


def _pg_now() -> int:
    """Now in microseconds since 2000-01-01 UTC (the protocol's clock)."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def _pg_time(us: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=us)


# A server error's SQLSTATE class, or the SQLSTATE itself, that reconnecting later can cure: connection
# exceptions, operator intervention (terminated, shutting down), insufficient resources, and a slot that another
# process is still using (its walsender may not have exited yet).
_TRANSIENT = ("08", "53", "57", "58", "55006")


def _transient(sqlstate: str | None) -> bool:
    return sqlstate is None or sqlstate[:2] in _TRANSIENT or sqlstate in _TRANSIENT


# ---- Reader --------------------------------------------------------------------------------------------------------


class WalReader:
    """Reads one pgoutput slot's messages in commit order: ``start()``, then ``read()`` / ``confirm()`` in a loop.

    ``conn`` comes from ``connect`` and belongs to the reader from then on (``close`` closes it). ``prefix``
    keeps only messages with that prefix (None: every message); indexes count the kept messages.
    ``status_interval``: seconds between the standby status updates ``read`` sends on its own (always the last
    confirmed LSN), besides answering the server's keepalive requests. ``server_timeout``: ``read`` raises when
    the server has sent nothing for that long although asked to answer every ``status_interval``; it must exceed
    what the server may spend decoding one big transaction without a word (on PG 15+ about half its
    ``wal_sender_timeout``). ``max_items``: ``read`` returns once it holds that many messages (a transaction is
    never split, so one big transaction can exceed it). Not thread-safe: one thread reads and confirms.

    The loop: ``items = read(t)``; store them; ``confirm(items[-1].end_lsn)``, or, when everything returned so
    far is stored, ``confirm(caught_up_lsn)`` (see there: without it a server's fast shutdown never completes).
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        slot: str,
        publication: str,
        *,
        start_lsn: int = 0,
        prefix: str | None = "outbox",
        status_interval: float | None = 10.0,
        server_timeout: float | None = 120.0,
        max_items: int = 10_000,
    ) -> None:
        if server_timeout is not None and (status_interval is None or status_interval >= server_timeout):
            raise ValueError("server_timeout needs a status_interval shorter than it (the server answers those)")
        format_lsn(start_lsn)
        self.conn = conn
        self.slot = check_name(slot)
        self.publication = check_name(publication)
        self.start_lsn = start_lsn
        self.prefix = prefix
        self.status_interval = status_interval
        self.server_timeout = server_timeout
        self.max_items = max_items
        #: Standby status updates sent because the server asked (keepalive with the reply flag).
        self.keepalive_replies = 0
        self._prefix = None if prefix is None else prefix.encode()
        self._prefixes: dict[bytes, str] = {}
        self._started = False
        self._confirmed = 0
        self._caught_up = 0
        self._xid: int | None = None  # the open transaction (Begin seen, Commit not yet)
        self._final_lsn = 0
        self._messages: list[WalMessage] = []
        self._last_status = 0.0
        self._last_recv = 0.0

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def confirmed_lsn(self) -> int:
        """The last LSN confirmed to the server (at start: the slot's ``confirmed_flush_lsn``)."""
        return self._confirmed

    @property
    def caught_up_lsn(self) -> int:
        """Every item the server will ever send below this LSN has been returned by ``read``.

        Once everything ``read`` returned is stored, ``confirm(caught_up_lsn)`` is safe, and the caller should
        do it then: it is how an idle slot (no messages, but other writes) stops pinning WAL, and a fast shutdown
        of the server waits until its walsender's client has confirmed everything sent (with the reader still
        answering keepalives, it waits for ever). Moves on at each Commit and at keepalives between transactions.
        """
        return self._caught_up

    def start(self, timeout: float = 30.0) -> None:
        """Start streaming from the slot; ``WalStreamError`` if the slot is missing, invalidated or busy."""
        if self._started:
            raise RuntimeError("WalReader.start() was already called")
        try:
            status = slot_status(self.conn, self.slot)
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        if status is None:
            raise WalStreamError(f'replication slot "{self.slot}" does not exist', sqlstate="42704", transient=False)
        if status.wal_status == "lost":
            raise WalStreamError(
                f'replication slot "{self.slot}" is invalidated (wal_status lost): the WAL it needs was removed, '
                "it can never stream again; drop and recreate it (events committed meanwhile were not captured)",
                sqlstate="55000",
                transient=False,
            )
        # Never report a position below the slot's: older servers take a status update's flush LSN as is,
        # which would move confirmed_flush_lsn back.
        self._confirmed = self._caught_up = max(self.start_lsn, status.confirmed_flush_lsn or 0)
        query = walsql.WAL_START_REPLICATION.format(
            slot=self.slot, lsn=format_lsn(self.start_lsn), publication=self.publication
        )
        pg = self.conn.pgconn
        deadline = time.monotonic() + timeout
        try:
            pg.send_query(query.encode())
            self._flush(deadline)
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                if not self._wait(deadline - time.monotonic(), write=False):
                    raise WalStreamError(
                        f'replication slot "{self.slot}": no answer to START_REPLICATION in {timeout:g}s',
                        transient=True,
                    )
            res = pg.get_result()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            raise self._result_error(res)
        self._started = True
        self._last_status = self._last_recv = time.monotonic()

    def read(self, timeout: float) -> list[WalTransaction]:
        """The items that arrived, in commit order: at once what is buffered, else waits up to ``timeout`` s."""
        if not self._started:
            raise RuntimeError("WalReader.read() before start()")
        out: list[WalTransaction] = []
        pg = self.conn.pgconn
        deadline = time.monotonic() + timeout
        received = False
        messages = 0
        try:
            while True:
                n, data = pg.get_copy_data(1)
                if n > 0:
                    received = True
                    items = len(out)
                    self._handle(bytes(data), out)
                    if len(out) != items:  # a transaction (or a lone message) was completed
                        messages += len(out[-1].messages)
                        if messages >= self.max_items:
                            break
                    continue
                if n < 0:
                    raise self._stream_ended()
                now = time.monotonic()
                if received:
                    self._last_recv = now
                    received = False
                self._tick(now)
                wait = 0.0 if out else deadline - now
                if self.status_interval is not None and wait > 0:
                    wait = min(wait, self._last_status + self.status_interval - now)
                if not self._wait(max(wait, 0.0), write=False):
                    if out or now >= deadline:
                        break
                    continue
                pg.consume_input()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        if received:
            self._last_recv = time.monotonic()
        return out

    def confirm(self, lsn: int) -> None:
        """Tell the server everything below ``lsn`` is stored (an item's ``end_lsn``, or ``caught_up_lsn``).

        Never moves backwards (a lower ``lsn`` sends nothing); ``ValueError`` beyond ``caught_up_lsn``, which
        would skip what was not delivered yet (a ``position`` passed by mistake, say).
        """
        if not self._started:
            raise RuntimeError("WalReader.confirm() before start()")
        if lsn > self._caught_up:
            raise ValueError(
                f"cannot confirm {format_lsn(lsn) if lsn <= _MAX_LSN else lsn}: beyond what was delivered "
                f"({format_lsn(self._caught_up)})"
            )
        if lsn <= self._confirmed:
            return
        self._confirmed = lsn
        self._send_status(reply=False)

    def close(self) -> None:
        """Close the connection (the server releases the slot when its walsender exits, a moment later)."""
        self.conn.close()

    def __enter__(self) -> WalReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- decoding ----------------------------------------------------------------------------------------------

    def _handle(self, data: bytes, out: list[WalTransaction]) -> None:
        kind = data[0]
        if kind == _W:
            tag = data[_XLOG_HEAD]
            if tag == _M:
                self._message(data, out)
            elif tag == _B:
                if self._xid is not None:
                    raise self._protocol("Begin inside an open transaction")
                self._final_lsn, _, self._xid = _BEGIN.unpack_from(data, _XLOG_HEAD + 1)
                self._messages = []
            elif tag == _C:
                self._commit(data, out)
            elif tag not in _SKIPPED:
                raise self._protocol(f"unknown pgoutput message {chr(tag)!r}")
        elif kind == _K:
            wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
            if self._xid is None and wal_end > self._caught_up:
                # Everything before the server's WAL end was sent ahead of this keepalive, and no transaction is
                # half-received: nothing below wal_end can still come.
                self._caught_up = wal_end
            if reply:
                self.keepalive_replies += 1
                self._send_status(reply=False)
        else:
            raise self._protocol(f"unknown replication message {chr(kind)!r}")

    def _message(self, data: bytes, out: list[WalTransaction]) -> None:
        at = _XLOG_HEAD + 1
        flags, lsn = _MESSAGE.unpack_from(data, at)
        end = data.find(0, at + 9)
        if end < 0:
            raise self._protocol("message prefix without its terminating NUL")
        (length,) = _LENGTH.unpack_from(data, end + 1)
        if end + 5 + length != len(data):
            raise self._protocol(f"message content of {length} bytes in a {len(data)}-byte frame")
        raw_prefix = data[at + 9 : end]
        if self.prefix is not None:
            if raw_prefix != self._prefix:
                return
            prefix = self.prefix
        elif (prefix := self._prefixes.get(raw_prefix)) is None:  # type: ignore[assignment]
            prefix = self._prefixes[raw_prefix] = raw_prefix.decode(errors="replace")
        content = data[end + 5 :]
        if flags & 1:
            if self._xid is None:
                raise self._protocol("transactional message outside a transaction")
            self._messages.append(WalMessage(lsn, len(self._messages), prefix, content))
            return
        out.append(WalTransaction(None, lsn - 1, lsn, None, (WalMessage(lsn, 0, prefix, content),), False))
        if self._xid is None and lsn > self._caught_up:
            self._caught_up = lsn

    def _commit(self, data: bytes, out: list[WalTransaction]) -> None:
        if self._xid is None:
            raise self._protocol("Commit without Begin")
        _, commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(data, _XLOG_HEAD + 1)
        if commit_lsn != self._final_lsn:
            raise self._protocol(
                f"Commit at {format_lsn(commit_lsn)} for a Begin announcing {format_lsn(self._final_lsn)}"
            )
        if self._messages:
            out.append(WalTransaction(self._xid, commit_lsn, end_lsn, _pg_time(commit_time), tuple(self._messages)))
        self._xid = None
        self._messages = []
        if end_lsn > self._caught_up:
            self._caught_up = end_lsn

    def _protocol(self, what: str) -> WalStreamError:
        return WalStreamError(f'replication slot "{self.slot}": protocol error: {what}', transient=False)

    # -- I/O ----------------------------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        """The periodic status update, and the check that the server still speaks."""
        if self.server_timeout is not None and now - self._last_recv > self.server_timeout:
            raise WalStreamError(
                f'replication slot "{self.slot}": nothing from the server for {now - self._last_recv:.0f}s '
                f"(server_timeout {self.server_timeout:g}s)",
                transient=True,
            )
        if self.status_interval is not None and now - self._last_status >= self.status_interval:
            # Ask for an answer only when its absence is checked (server_timeout).
            self._send_status(reply=self.server_timeout is not None)

    def _send_status(self, *, reply: bool) -> None:
        lsn = self._confirmed
        msg = _STATUS.pack(b"r", lsn, lsn, lsn, _pg_now(), 1 if reply else 0)
        pg = self.conn.pgconn
        deadline = time.monotonic() + 30.0
        try:
            while not pg.put_copy_data(msg):  # 0: libpq's buffer is full (non-blocking connection)
                if not self._wait(deadline - time.monotonic(), write=True):
                    raise WalStreamError(f'replication slot "{self.slot}": cannot send to the server', transient=True)
                pg.consume_input()
            self._flush(deadline)
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        self._last_status = time.monotonic()

    def _flush(self, deadline: float) -> None:
        pg = self.conn.pgconn
        while pg.flush():  # 1: more to send; keep reading meanwhile so the server is not stuck writing to us
            if not self._wait(deadline - time.monotonic(), write=True):
                raise WalStreamError(f'replication slot "{self.slot}": sending to the server timed out', transient=True)
            pg.consume_input()

    def _wait(self, timeout: float, *, write: bool) -> bool:
        """Whether the socket became readable (or writable, with ``write``) within ``timeout`` seconds."""
        if timeout < 0:
            return False
        poller = select.poll()
        mask = select.POLLIN | (select.POLLOUT if write else 0)
        poller.register(self.conn.pgconn.socket, mask)
        return bool(poller.poll(math.ceil(timeout * 1000)))

    # -- errors -------------------------------------------------------------------------------------------------

    def _stream_ended(self) -> WalStreamError:
        """The COPY stream ended: the server's error, if it sent one."""
        pg = self.conn.pgconn
        first: pq.abc.PGresult | None = None
        while (res := pg.get_result()) is not None:
            if first is None and res.status in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.NONFATAL_ERROR):
                first = res
            if res.status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH):
                break  # the server's CopyDone: libpq would hand out this state forever
        if first is not None:
            return self._result_error(first)
        return WalStreamError(f'replication slot "{self.slot}": the server ended the stream', transient=True)

    def _result_error(self, res: pq.abc.PGresult | None) -> WalStreamError:
        if res is None or res.status not in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.NONFATAL_ERROR):
            status = "no result" if res is None else pq.ExecStatus(res.status).name
            return WalStreamError(f'replication slot "{self.slot}": unexpected answer ({status})', transient=False)
        err = psycopg.errors.error_from_result(res, encoding=self.conn.info.encoding)
        wrapped = self._error(err)
        wrapped.__cause__ = err
        return wrapped

    def _error(self, exc: psycopg.Error) -> WalStreamError:
        """A psycopg error as a ``WalStreamError`` with the server's reason and SQLSTATE, when it gave one."""
        sqlstate = exc.sqlstate
        reason = (exc.diag.message_primary if sqlstate else None) or str(exc).strip() or type(exc).__name__
        if sqlstate is None and not self.conn.closed:
            # A broken connection: libpq's message may still hold the server's last words (a FATAL).
            with_server = self.conn.pgconn.error_message.decode(errors="replace").strip()
            if with_server and with_server not in reason:
                reason = f"{reason} ({with_server})"
        reason = " ".join(reason.split())  # one line: libpq's messages span several
        code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        return WalStreamError(
            f'replication slot "{self.slot}": {reason}{code}', sqlstate=sqlstate, transient=_transient(sqlstate)
        )


# ---- Slot and publication (a normal connection) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """One replication slot as ``pg_replication_slots`` shows it (LSNs as ints)."""

    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    in_this_database: bool
    active: bool
    active_pid: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost (lost = invalidated)
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    retained_bytes: int | None  # pg_current_wal_lsn() - restart_lsn: the WAL this slot keeps
    safe_wal_size: int | None  # bytes left before max_slot_wal_keep_size invalidates it; None if unlimited


def slot_status(conn: psycopg.Connection[Any], slot: str) -> SlotStatus | None:
    """The slot's state, None if there is no such slot (works on a replication connection too)."""
    # Client-side binding: the simple query protocol, the only one a replication connection accepts.
    row = psycopg.ClientCursor(conn).execute(walsql.WAL_SLOT_STATUS, {"name": slot}).fetchone()
    if row is None:
        return None
    name, plugin, slot_type, database, here, active, pid, wal_status, restart, confirmed, retained, safe = row
    return SlotStatus(
        name, plugin, slot_type, database, bool(here), active, pid, wal_status,
        None if restart is None else parse_lsn(restart), None if confirmed is None else parse_lsn(confirmed),
        retained, safe,
    )  # fmt: skip


def wal_level(conn: psycopg.Connection[Any]) -> str:
    """The server's ``wal_level`` (``replica``, ``logical``...)."""
    row = psycopg.ClientCursor(conn).execute(walsql.WAL_LEVEL).fetchone()
    assert row is not None
    return str(row[0])


def require_logical(conn: psycopg.Connection[Any]) -> None:
    """``WalStreamError`` (not transient) unless the server runs with ``wal_level=logical``."""
    level = wal_level(conn)
    if level != "logical":
        raise WalStreamError(
            f"wal_level is {level!r}: decoding messages needs wal_level=logical (a server restart)",
            sqlstate="55000",
            transient=False,
        )


def current_lsn(conn: psycopg.Connection[Any]) -> int:
    """``pg_current_wal_lsn()`` as an int."""
    row = psycopg.ClientCursor(conn).execute(walsql.WAL_CURRENT_LSN).fetchone()
    assert row is not None
    return parse_lsn(row[0])


def ensure_publication(conn: psycopg.Connection[Any], name: str) -> bool:
    """Create the (empty) publication the stream names unless it exists; True if this call created it."""
    check_name(name)
    if conn.execute(walsql.WAL_PUBLICATION_EXISTS, {"name": name}).fetchone():
        return False
    try:
        with conn.transaction():
            conn.execute(sql.SQL(walsql.WAL_CREATE_PUBLICATION).format(name=sql.Identifier(name)))
    except psycopg.errors.DuplicateObject:  # created meanwhile by someone else
        return False
    return True


def ensure_slot(conn: psycopg.Connection[Any], name: str) -> bool:
    """Create the logical slot (plugin pgoutput) in this database unless it exists; True if this call created it.

    ``WalStreamError`` if a slot of that name exists but is not a pgoutput slot of this database. Creating a
    slot waits for the transactions running at that moment to end.
    """
    check_name(name)
    status = slot_status(conn, name)
    if status is None:
        try:
            with conn.transaction():
                conn.execute(walsql.WAL_CREATE_SLOT, {"name": name})
            return True
        except psycopg.errors.DuplicateObject:  # created meanwhile by someone else
            status = slot_status(conn, name)
            if status is None:
                raise
    if status.slot_type != "logical" or status.plugin != "pgoutput" or not status.in_this_database:
        raise WalStreamError(
            f'replication slot "{name}" exists but is a {status.slot_type} slot '
            f"(plugin {status.plugin}, database {status.database}), not a pgoutput slot of this database",
            sqlstate="42710",
            transient=False,
        )
    return False


def drop_slot(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drop the slot; False if there was none. Fails (55006) while a reader holds it."""
    try:
        with conn.transaction():
            conn.execute(walsql.WAL_DROP_SLOT, {"name": name})
    except psycopg.errors.UndefinedObject:
        return False
    return True


__all__: Sequence[str] = (
    "APPLICATION_NAME", "CONNECT_DEFAULTS", "SlotStatus", "WalMessage", "WalReader", "WalTransaction",
    "check_name", "connect", "current_lsn", "drop_slot", "ensure_publication", "ensure_slot", "format_lsn",
    "parse_lsn", "position", "require_logical", "slot_status", "wal_level",
)  # fmt: skip
