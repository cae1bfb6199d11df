"""The worker survives its stream being deleted and recreated (finding 5 of issue 8).

A real ``python -m outbox.worker`` process (found in CLIENT LIST by its client name): the stream key is deleted
while the worker blocks in XREADGROUP (Redis answers ``UNBLOCKED the stream key no longer exists``), or deleted
and published to again while the worker has a batch in hand (its next command gets ``NOGROUP``). Either way the
worker creates its group again from the new stream's first entry, says so in one line, and ingests every event
exactly once: those published after the loss, and not again one published twice.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from outbox.worker.consumer import client_name
from tests.conftest import wait_for
from tests.test_worker import count, entry, pending, q, spawn_worker, status_payload, trigger, wsettings, xadd_all

GROUP = "workflow-runtime-v2"
RECOVERED = "created it again"


def _blocked_in_xreadgroup(r: redis.Redis, consumer: str) -> bool:
    return any(
        c.get("name") == client_name(consumer) and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
        for c in r.client_list()
    )


def _ingested(db_url: str) -> list[str]:
    return sorted(str(r[0]) for r in q(db_url, "SELECT event_id FROM workflow_runtime_events"))


def _up(proc: subprocess.Popen[bytes], log: Path, predicate: Callable[[], object]) -> Callable[[], object]:
    """``predicate``, failing the test at once if the worker process has exited."""

    def check() -> object:
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()}"
        return predicate()

    return check


def _stop(proc: subprocess.Popen[bytes], r: redis.Redis, consumer: str) -> int:
    """SIGTERM, and wake the worker from its blocking read (as if the block timed out) until it exits."""
    proc.terminate()
    while proc.poll() is None:
        for c in r.client_list():
            if c.get("name") == client_name(consumer) and "b" in c.get("flags", ""):
                r.client_unblock(int(c["id"]))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
    return proc.returncode


def _check_log(log: Path) -> str:
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count(RECOVERED) == 1, text
    return text


def test_stream_deleted_while_the_worker_blocks(db_url, redis_url, stream, rds, tmp_path):
    """UNBLOCKED: the worker stays up, recreates its group, ingests what is published afterwards once."""
    if int(rds.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("Redis < 7 does not wake a reader of a deleted stream (it gets NOGROUP later: the test below)")
    trigger(db_url, "tenant-a", "flow")
    log = tmp_path / "worker.log"
    consumer = f"w-{uuid.uuid4().hex[:8]}"
    ws = wsettings(db_url, redis_url, stream, block_ms=30_000, consumer=consumer)
    first = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
    xadd_all(rds, stream, first)
    proc = spawn_worker(ws, log)
    try:
        wait_for(_up(proc, log, lambda: count(db_url, "workflow_runtime_events") == 3), what="first 3 ingested")
        wait_for(_up(proc, log, lambda: _blocked_in_xreadgroup(rds, consumer)), what="worker blocked in XREADGROUP")
        assert rds.delete(stream) == 1
        wait_for(_up(proc, log, lambda: rds.exists(stream)), what="group created again")
        # Published again: 3 new events and one of the first 3 once more (as a relay re-sending after a loss).
        later = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
        xadd_all(rds, stream, [*later, first[0]])
        wait_for(_up(proc, log, lambda: count(db_url, "workflow_runtime_events") == 6 and pending(rds, stream) == 0),
                 what="3 more ingested after the stream came back")  # fmt: skip
        wait_for(_up(proc, log, lambda: _blocked_in_xreadgroup(rds, consumer)), what="worker reading again")
    finally:
        rc = _stop(proc, rds, consumer)
    assert rc == 0
    assert "UNBLOCKED" in _check_log(log)
    assert _ingested(db_url) == sorted(e["event_id"] for e in [*first, *later])
    assert count(db_url, "workflow_run_requests") == 6


def test_stream_deleted_and_published_to_while_the_worker_has_a_batch_in_hand(db_url, redis_url, stream, rds, tmp_path):
    """NOGROUP: the stream is recreated by a publish before the worker reads again; with ``start_id=$`` the group
    must still start at the new stream's first entry, or the events published meanwhile would be skipped."""
    trigger(db_url, "tenant-a", "flow")
    log = tmp_path / "worker.log"
    consumer = f"w-{uuid.uuid4().hex[:8]}"
    ws = wsettings(db_url, redis_url, stream, start_id="$", test_pause="before_commit:1", consumer=consumer)
    proc = spawn_worker(ws, log)
    try:
        wait_for(_up(proc, log, lambda: _blocked_in_xreadgroup(rds, consumer)), what="worker reading")
        first = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
        with rds.pipeline(transaction=True) as pipe:  # all three read in one batch
            for e in first:
                pipe.xadd(stream, e)
            pipe.execute()
        wait_for(_up(proc, log, lambda: "pausing 1.0s before_commit (3 entries" in log.read_text()), what="in hand")
        rds.delete(stream)
        later = [entry("tenant-a", status_payload("tenant-a")) for _ in range(3)]
        xadd_all(rds, stream, [*later, first[1]])
        wait_for(_up(proc, log, lambda: count(db_url, "workflow_runtime_events") == 6 and pending(rds, stream) == 0),
                 what="the events published while the group was gone")  # fmt: skip
    finally:
        rc = _stop(proc, rds, consumer)
    assert rc == 0
    assert "NOGROUP" in _check_log(log)
    assert _ingested(db_url) == sorted(e["event_id"] for e in [*first, *later])
    assert count(db_url, "workflow_run_requests") == 6
