"""Issue 8, finding 6: Redis losing published events is detected, and `outbox republish` restores them once.

Every Redis server these tests reconfigure, restart or delete keys on is one the test started itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis

from outbox import wire
from outbox.embedded import RedisServer, _wait_port, free_port, redis_server_binary
from outbox.errors import ConfigurationError
from outbox.relay import metrics
from outbox.relay.guard import RedisGuard
from outbox.relay.publisher import RedisStreamPublisher, fence_key, redis_server_settings
from outbox.relay.republish import republish as run_republish
from tests.conftest import make_settings, relay_env, relay_thread, status_counts, wait_for
from tests.test_cli_config import run_cli
from tests.test_relay_faults import assert_exactly_once, pending_count, write_events

LOSS = "REDIS LOST PUBLISHED EVENTS"


@contextlib.contextmanager
def own_redis(*, appendonly: bool = False) -> Iterator[tuple[RedisServer, redis.Redis]]:
    server = RedisServer(appendonly=appendonly).start()
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


@contextlib.contextmanager
def redis_with_args(tmp_path: Any, *args: str) -> Iterator[str]:
    """A redis-server started with extra command-line arguments (e.g. renamed commands); its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, 10, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def loss_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and LOSS in r.getMessage()]


def loss_count(what: str) -> float:
    return metrics.REDIS_LOSS.labels(what)._value.get()


def instance_id(db_url: str) -> str:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT instance_id::text FROM outbox_relay WHERE name = 'default'").fetchone()
    assert row is not None
    return str(row[0])


def republish(db_url: str, redis_url: str, stream: str, *args: str) -> dict[str, Any]:
    env = {"OUTBOX_DATABASE_URL": db_url, "OUTBOX_REDIS_URL": redis_url, "OUTBOX_STREAM": stream}
    res = run_cli("republish", *args, "--json", env=env)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


# ---- settings that can lose events ---------------------------------------------------------------


def test_evicting_policy_is_warned_and_the_eviction_detected(db_url, stream, caplog):
    """6,600 of 8,000 events vanished under allkeys-lru and the relay said nothing: now it warns at start,
    and reports the stream it found evicted under it, with a metric."""
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    with own_redis() as (server, rds):
        rds.config_set("maxmemory-policy", "allkeys-lru")
        rds.config_set("maxmemory", "2mb")
        before = loss_count("stream") + loss_count("fence") + loss_count("fence+stream")
        settings = make_settings(db_url, server.url, stream)
        with relay_thread(settings):
            write_events(db_url, 8000)
            wait_for(lambda: status_counts(db_url).get("pending", 0) == 0, timeout=60, what="everything published")
        on_stream = rds.xlen(stream)
    assert on_stream < 8000, "nothing was evicted: the test does not reproduce the loss"
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy is allkeys-lru" in r.getMessage()]
    assert len(warned) == 1, warned
    lines = loss_lines(caplog)
    assert lines, "the relay did not report the events the eviction lost"
    assert all("outbox republish --since" in line for line in lines), lines
    after = loss_count("stream") + loss_count("fence") + loss_count("fence+stream")
    assert after - before == len(lines)


def test_strict_mode_refuses_redis_without_persistence(db_url, stream):
    with own_redis(appendonly=False) as (server, _rds):
        settings = make_settings(db_url, server.url, stream, redis_strict=True)
        proc = subprocess.run(
            [__import__("sys").executable, "-m", "outbox.relay", "--once"],
            env=relay_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "OUTBOX_REDIS_STRICT" in last and "appendonly no" in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_strict_mode_starts_on_a_safe_redis(db_url, stream):
    ids = set(write_events(db_url, 50))
    with own_redis(appendonly=True) as (server, rds):  # AOF, appendfsync always, noeviction
        settings = make_settings(db_url, server.url, stream, redis_strict=True)
        proc = subprocess.run(
            [__import__("sys").executable, "-m", "outbox.relay", "--once"],
            env=relay_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "can lose events" not in proc.stderr
        assert_exactly_once(rds, stream, db_url, ids)


def test_strict_mode_refuses_a_redis_it_cannot_check(db_url, stream, tmp_path):
    with redis_with_args(tmp_path, "--rename-command", "CONFIG", "", "--rename-command", "INFO", "") as url:
        settings = make_settings(db_url, url, stream, redis_strict=True)
        proc = subprocess.run(
            [__import__("sys").executable, "-m", "outbox.relay", "--once"],
            env=relay_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "configuration error" in ln]
    assert len(lines) == 1 and "OUTBOX_REDIS_STRICT" in lines[0] and "could not verify" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_disabled_falls_back_to_info_then_says_once_it_cannot_check(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    risks: list[str] = []
    with redis_with_args(tmp_path, "--rename-command", "CONFIG", "", "--maxmemory-policy", "allkeys-lru") as url:
        client = redis.Redis.from_url(url)
        guard = RedisGuard(lambda: redis_server_settings(client), strict=False, on_risk=lambda r: risks.append(r.code))
        # from INFO: the eviction policy and AOF off (INFO does not show whether RDB snapshots are configured)
        assert [r.code for r in guard.check()] == ["eviction", "snapshots-only"]
        client.close()
    caplog.clear()
    with redis_with_args(tmp_path, "--rename-command", "CONFIG", "", "--rename-command", "INFO", "") as url:
        client = redis.Redis.from_url(url)
        guard = RedisGuard(lambda: redis_server_settings(client), strict=False, on_risk=lambda r: risks.append(r.code))
        for _ in range(3):
            assert guard.check() == []
        said = [r.getMessage() for r in caplog.records if "could not check Redis" in r.getMessage()]
        assert len(said) == 1, said
        # strict mode cannot vouch for settings it cannot read: it refuses, naming the variable
        strict = RedisGuard(lambda: redis_server_settings(client), strict=True, on_risk=lambda r: risks.append(r.code))
        with pytest.raises(ConfigurationError) as refused:
            strict.check()
        client.close()
    assert "OUTBOX_REDIS_STRICT" in str(refused.value) and "could not verify" in str(refused.value)
    assert "\n" not in str(refused.value)


# ---- a Redis that lost its data -------------------------------------------------------------------


def test_redis_restart_without_persistence_is_detected_and_republish_restores_it(db_url, stream, caplog):
    """The 435 events already published were gone after a restart and the relay said only "broker available
    again": now it logs the loss with the command to run, and the command puts every one back, once."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    with own_redis(appendonly=False) as (server, rds):
        settings = make_settings(db_url, server.url, stream, redis_check_interval=0.1)
        before = loss_count("fence+stream")
        with relay_thread(settings):
            first = set(write_events(db_url, 435))
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="first events published")
            assert rds.xlen(stream) == 435
            server.stop()
            server.start()  # no AOF, no RDB: empty
            lines = wait_for(lambda: loss_lines(caplog), timeout=20, what="the loss to be reported")
            second = set(write_events(db_url, 100))
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="new events published")
            assert rds.xlen(stream) == 100, "new events after the loss must be published exactly once"
            assert len(loss_lines(caplog)) == 1, loss_lines(caplog)
            assert loss_count("fence+stream") == before + 1
            since = re.search(r"outbox republish --since '([^']+)'", lines[0])
            assert since, lines[0]

            dry = republish(db_url, server.url, stream, "--since", since.group(1), "--dry-run")
            assert (len(dry["requeued"]), dry["on_stream"]) == (435, 100), dry
            assert rds.xlen(stream) == 100 and status_counts(db_url) == {"published": 535}

            done = republish(db_url, server.url, stream, "--since", since.group(1))
            assert sorted(done["requeued"]) == sorted(first), done
            wait_for(lambda: pending_count(db_url) == 0 and rds.xlen(stream) == 535, timeout=30, what="republished")

            again = republish(db_url, server.url, stream, "--since", "2000-01-01")
            assert again["requeued"] == [] and again["on_stream"] == 535, again
        assert_exactly_once(rds, stream, db_url, first | second)
        assert len(loss_lines(caplog)) == 1, "the republish itself was taken for a loss"


def test_republish_on_an_intact_stream_changes_nothing(db_url, stream, redis_url, rds):
    ids = set(write_events(db_url, 300))
    settings = make_settings(db_url, redis_url, stream)
    with relay_thread(settings):
        wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published")
    report = republish(db_url, redis_url, stream, "--since", "2000-01-01T00:00:00Z")
    assert (report["matched"], report["on_stream"], report["requeued"]) == (300, 300, []), report
    assert_exactly_once(rds, stream, db_url, ids)


def test_republish_leaves_trimmed_entries_alone(db_url, stream, redis_url, rds):
    settings = make_settings(db_url, redis_url, stream, trim_maxlen=100, batch_size=50)
    with relay_thread(settings):
        write_events(db_url, 1000, chunk=50)
        wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published")
    held = rds.xlen(stream)
    assert held < 1000
    report = republish(db_url, redis_url, stream, "--since", "2000-01-01")
    assert report["requeued"] == [] and report["on_stream"] == held and report["trimmed"] == 1000 - held, report


def test_fence_key_lost_is_reported_and_new_events_stay_exactly_once(db_url, stream, caplog):
    """The fence key alone disappears (evicted, deleted): positions come from Postgres, so new events
    still go out once; the loss is reported by the periodic check while the relay is idle."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    with own_redis(appendonly=True) as (server, rds):
        settings = make_settings(db_url, server.url, stream, redis_check_interval=0.1)
        with relay_thread(settings):
            first = set(write_events(db_url, 200))
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published")
            assert rds.delete(fence_key(stream, instance_id(db_url))) == 1
            lines = wait_for(lambda: loss_lines(caplog), timeout=20, what="the loss to be reported")
            assert "no fence key" in lines[0], lines
            second = set(write_events(db_url, 200))
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published")
        assert_exactly_once(rds, stream, db_url, first | second)
        report = republish(db_url, server.url, stream, "--since", "2000-01-01")
        assert report["requeued"] == [] and report["on_stream"] == 400, report
    assert len(loss_lines(caplog)) == 1


def test_republish_does_not_take_entries_trimmed_while_it_runs_for_lost(db_url, stream, redis_url, rds):
    """A running relay trims the stream while a republish scans it: entries trimmed after the republish
    started must not look like holes (they were queued again and published twice)."""
    ids = set(write_events(db_url, 300))
    settings = make_settings(db_url, redis_url, stream)
    with relay_thread(settings):
        wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published")
    sids = [sid for sid, _ in rds.xrange(stream)]
    assert len(sids) == 300
    calls = 0

    class TrimmedMeanwhile(RedisStreamPublisher):
        def entries(self, stream_ids):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 2:  # between two pages: the relay's trimming drops the first 250 entries
                rds.xtrim(stream, minid=sids[250], approximate=False)
            return super().entries(stream_ids)

    client = redis.Redis.from_url(redis_url)
    publisher = TrimmedMeanwhile(client, stream, fence_key(stream, instance_id(db_url)), wire.FIELDS)
    with psycopg.connect(db_url) as conn:
        report = run_republish(conn, publisher, datetime(2000, 1, 1, tzinfo=UTC),
                               datetime(2100, 1, 1, tzinfo=UTC), page=100)  # fmt: skip
    client.close()
    assert calls == 3
    assert report.requeued == [] and report.in_open_batch == [], report
    assert (report.on_stream, report.trimmed) == (150, 150), report
    assert pending_count(db_url) == 0
    assert rds.xlen(stream) == 50 and status_counts(db_url) == {"published": 300}
    assert len(ids) == 300
