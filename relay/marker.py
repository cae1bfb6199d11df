"""The marker: writes each finished batch's outcome (rows published, dead, failed; the batch closed) to Postgres
on its own thread and connection, one mark at a time, and keeps the rows of unmarked batches out of every claim."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from outbox.relay import sql

log = logging.getLogger("outbox.relay")


@dataclass(slots=True)
class Mark:
    """The outcome of one batch, written (with the batch closed) by the marker thread."""

    batch: int
    published: list[tuple[int, str | None, int]] = field(default_factory=list)  # (row id, stream id, seq)
    dead: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def write_mark(db: psycopg.Connection[Any], mark: Mark, *, close: bool = True, durable: bool = False) -> None:
    """Write and commit one mark in one round trip: published rows, verdicts, and (``close``) the batch
    closed. Not ``durable`` (synchronous_commit off) is safe for a mark that closes or only publishes:
    one lost in a crash leaves its batch open, and the fence drops its events when it is sent again."""
    with db.pipeline():
        if not durable:
            db.execute("SET LOCAL synchronous_commit = off")
        if mark.published:
            db.execute(
                sql.MARK_PUBLISHED,
                {"ids": [m[0] for m in mark.published], "sids": [m[1] for m in mark.published],
                 "seqs": [m[2] for m in mark.published]},
            )  # fmt: skip
        if mark.dead:
            db.execute(sql.MARK_DEAD, {"ids": [m[0] for m in mark.dead], "reasons": [m[1] for m in mark.dead]})
        if mark.failed:
            db.execute(sql.MARK_FAILED, {"ids": [m[0] for m in mark.failed], "reasons": [m[1] for m in mark.failed]})
        if close:
            db.execute(sql.CLOSE_BATCH, (mark.batch,))
        db.commit()


class Marker:
    """Marks are written by one marker thread on its own connection, in parallel with the next claim
    (a mark UPDATE of a full batch costs Postgres about as much as the claim itself). Until a
    batch's mark has committed its rows are still 'pending', so every claim excludes them by id
    (``excluded``); at most one mark is in flight (``submit`` waits for the previous one).
    A mark that fails on the marker is written again on the main connection (so a marker that cannot
    connect slows the relay down but never stops it); if that fails too, the batch stays open, its
    ids stay excluded, and recovery sends it again through the fence (which drops every event).
    ``left_open`` is called whenever a batch is left open that way (the caller must recover it).
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, left_open: Callable[[], None]) -> None:
        self._connect = connect  # opens the marker's own connection
        self._left_open = left_open
        self._lock = threading.Lock()
        self._unmarked: dict[int, list[int]] = {}  # batch id -> row ids whose mark has not committed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-mark")
        self._db: psycopg.Connection[Any] | None = None
        self._fut: Future[None] | None = None
        self._inflight: Mark | None = None
        self._down_since: float | None = None

    def excluded(self, in_flight: list[int] | None = None) -> list[int]:
        """Row ids no claim may take: ``in_flight`` (the batch being published), and batches whose mark has not
        committed."""
        with self._lock:
            out = [i for ids in self._unmarked.values() for i in ids]
        return out + in_flight if in_flight else out

    def forget_closed(self, open_batches: Collection[int]) -> None:
        """Exclude only the rows of batches still in ``open_batches`` (all open batches, read after ``wait``):
        a mark that failed after its commit closed its batch after all."""
        still_open = set(open_batches)
        with self._lock:
            self._unmarked = {k: v for k, v in self._unmarked.items() if k in still_open}

    @property
    def finished(self) -> bool:
        """A mark was handed over and has finished (committed or failed): ``wait`` will not block."""
        return self._fut is not None and self._fut.done()

    def submit(self, mark: Mark, main: psycopg.Connection[Any] | None) -> None:
        """Hand a finished batch's mark to the marker thread, after the previous mark has finished (``wait``,
        with ``main`` as its fallback). Its published rows stay excluded until it has committed."""
        self.wait(main)
        with self._lock:
            self._unmarked[mark.batch] = [m[0] for m in mark.published]
        self._inflight = mark
        self._fut = self._pool.submit(self._write_async, mark)

    def write(self, main: psycopg.Connection[Any], mark: Mark) -> None:
        """Write a mark on the main connection now (recovered batches: nothing to overlap with), after the one
        in flight has finished."""
        self.wait(main)
        self._write_sync(main, mark)

    def wait(self, main: psycopg.Connection[Any] | None) -> None:
        """Wait for the mark in flight. If it failed, write it on ``main`` (None: no fallback); when that is
        not possible or fails too, leave its batch open for recovery (``left_open``; see the class)."""
        fut, self._fut = self._fut, None
        mark, self._inflight = self._inflight, None
        if fut is None:
            return
        try:
            fut.result()
        except Exception as exc:  # psycopg errors, or anything else
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "writing a batch mark failed on the marker connection; marks go through the main connection "
                    "until it works again: %s", str(exc).strip()[:200],
                )  # fmt: skip
            if mark is None or main is None or main.closed or main.broken:
                self._left_open()
                return
            try:
                self._write_sync(main, mark)
            except BaseException:
                self._left_open()  # the batch stays open: recovery sends it again through the fence
                raise
            return
        if self._down_since is not None:
            log.warning("marker connection works again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    def _write_sync(self, db: psycopg.Connection[Any], mark: Mark) -> None:
        """Write one mark on the main connection (same rules as ``_write_async``)."""
        db.rollback()
        write_mark(db, mark)
        with self._lock:
            self._unmarked.pop(mark.batch, None)

    def _write_async(self, mark: Mark) -> None:
        """(Marker thread, own connection.) Write one mark."""
        db = self._db
        if db is None or db.closed or db.broken:
            db = self._db = self._connect()
        try:
            write_mark(db, mark)
        except BaseException:
            with contextlib.suppress(Exception):
                db.close()
            self._db = None
            raise
        with self._lock:
            self._unmarked.pop(mark.batch, None)

    def close(self) -> None:
        """Close the marker's connection (none may be in flight: ``wait`` first)."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()

    def shutdown(self, main: psycopg.Connection[Any] | None) -> None:
        """Wait for the mark in flight (falling back on ``main``; database errors ignored), stop the thread,
        close its connection."""
        with contextlib.suppress(psycopg.Error):
            self.wait(main)
        self._pool.shutdown(wait=True)
        self.close()
