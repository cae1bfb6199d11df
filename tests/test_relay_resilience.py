"""Faults at awkward instants that must never stop the relay or the worker: Redis gone during a takeover, a
password rotated while running, a failed look-up leaving the connection unusable. Every Redis server here is
the test's own."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator

import psycopg
import redis

from outbox import wire
from outbox.embedded import RedisServer, _wait_port, free_port, redis_server_binary
from outbox.relay import Relay
from outbox.relay.loss import Loss
from outbox.relay.publisher import RedisStreamPublisher, fence_key
from outbox.retry import Outage
from tests.conftest import make_settings, relay_thread, wait_for
from tests.test_relay_faults import assert_exactly_once, pending_count, write_events
from tests.test_worker import count, entry, worker_thread, wsettings, xadd_all


def test_redis_down_during_takeover_does_not_stop_the_relay(db_url, stream, caplog):
    """Redis stops right after the new leader read the fence, before it looked at the stream's state (the
    loss check of a takeover): the relay waits for Redis like any outage and publishes once it is back."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    ids = set(write_events(db_url, 20))
    with RedisServer(appendonly=True) as server:
        settings = make_settings(db_url, server.url, stream)
        stopped = threading.Event()

        class StopsAfterTheFence(RedisStreamPublisher):
            def high_water(self) -> int:
                value = super().high_water()
                if not stopped.is_set():
                    stopped.set()
                    server.stop()  # the fault, at that instant
                return value

        def factory(instance: str) -> RedisStreamPublisher:
            return StopsAfterTheFence.from_url(server.url, stream, fence_key(stream, instance), wire.FIELDS)

        errors: list[BaseException] = []
        relay = Relay(settings, publisher_factory=factory)

        def target() -> None:
            try:
                relay.run()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        try:
            wait_for(lambda: errors or relay.stats.broker_errors > 0, timeout=30, what="the relay to hit the outage")
            assert not errors, f"the relay stopped: {errors[0]!r}"
            server.start()
            wait_for(lambda: errors or pending_count(db_url) == 0, timeout=30, what="published after Redis is back")
            assert not errors, f"the relay stopped: {errors[0]!r}"
        finally:
            relay.stop()
            t.join(15)
        assert not t.is_alive()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert_exactly_once(client, stream, db_url, ids)
        client.close()
    assert any("broker unavailable" in r.getMessage() for r in caplog.records)


def test_a_failed_loss_lookup_leaves_the_connection_usable(db_url, stream, redis_url, caplog):
    """The look-up of where a republish must start fails (here: a lock it cannot get within lock_timeout): the
    loss is still reported, and the relay's connection is usable afterwards (it used to stay in a failed
    transaction, so the next statement failed with InFailedSqlTransaction and looked like a database outage)."""
    caplog.set_level(logging.ERROR, logger="outbox.relay")
    relay = Relay(make_settings(db_url, redis_url, stream))
    relay._db = psycopg.connect(db_url, options="-c lock_timeout=100")
    try:
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE outbox_events IN ACCESS EXCLUSIVE MODE")
            relay._report_loss(Loss("fence", "a test loss", 0))
        assert any("a test loss" in r.getMessage() for r in caplog.records)
        assert relay._db.execute("SELECT 1").fetchone() == (1,)
    finally:
        relay._db.close()
        relay._db = None


@contextlib.contextmanager
def redis_with_password(password: str) -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of the test's own that requires ``password``: its URL (with the password) and an admin
    client that stays connected (so it can change the password back)."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    admin = redis.Redis(port=port, password=password, decode_responses=True, socket_timeout=5)
    try:
        _wait_port(port, 10, proc)
        admin.ping()
        yield f"redis://:{password}@127.0.0.1:{port}/0", admin
    finally:
        admin.close()
        proc.kill()
        proc.wait(10)


def rotate_password(admin: redis.Redis, new: str) -> None:
    """Change the password and drop every other connection (they must log in again)."""
    admin.config_set("requirepass", new)
    admin.client_kill_filter(_type="normal", skipme=True)


def test_password_rotation_while_running_is_an_outage_not_an_exit(db_url, stream, caplog):
    """A wrong password at start is a configuration error (exit 2, tests/test_config_errors.py); once the relay
    has logged in, a password change on the server is an outage it waits out (it used to exit 2, which the
    systemd unit's RestartPreventExitStatus=2 made permanent)."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    with redis_with_password("s3cret") as (url, admin):
        settings = make_settings(db_url, url, stream)
        with relay_thread(settings) as relay:
            first = set(write_events(db_url, 20))
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="first events published")
            rotate_password(admin, "rotated")
            second = set(write_events(db_url, 20))
            wait_for(lambda: any("broker unavailable" in r.getMessage() for r in caplog.records), timeout=30,
                     what="the outage to be logged")  # fmt: skip
            wait_for(lambda: relay.stats.broker_errors >= 2, timeout=10, what="a refused login to be retried")
            assert pending_count(db_url) == 20
            admin.config_set("requirepass", "s3cret")
            wait_for(lambda: pending_count(db_url) == 0, timeout=30, what="published after the password is back")
        assert_exactly_once(admin, stream, db_url, first | second)
    starts = [r.getMessage() for r in caplog.records if "broker unavailable" in r.getMessage()]
    assert len(starts) == 1 and "AuthenticationError" in starts[0], starts


def test_worker_survives_a_password_rotation(db_url, stream, caplog):
    """Same for the worker: once logged in, a password change is an outage (it used to exit 2)."""
    caplog.set_level(logging.INFO, logger="outbox.worker")
    payload = {"ticketId": "", "previousStatusId": "a", "newStatusId": "b"}
    with redis_with_password("s3cret") as (url, admin), worker_thread(wsettings(db_url, url, stream)) as w:
        xadd_all(admin, stream, [entry("t1", {**payload, "tenantId": "t1", "ticketId": str(uuid.uuid4())})])
        wait_for(lambda: count(db_url, "workflow_runtime_events") == 1, what="the first entry ingested")
        rotate_password(admin, "rotated")
        xadd_all(admin, stream, [entry("t1", {**payload, "tenantId": "t1", "ticketId": str(uuid.uuid4())})])
        # the killed connection, then at least one login refused
        wait_for(lambda: w.stats.redis_errors >= 2, timeout=10, what="a refused login to be retried")
        admin.config_set("requirepass", "s3cret")
        wait_for(lambda: count(db_url, "workflow_runtime_events") == 2, what="ingested after the password is back")
    starts = [r.getMessage() for r in caplog.records if "redis unavailable" in r.getMessage()]
    assert len(starts) == 1, starts  # the killed connection starts it; the refused logins are part of it


def test_no_reachable_again_line_while_strict_mode_waits_for_redis(db_url, stream, caplog):
    """In strict mode a step that only waited for Redis' settings to be checked did no work: it must not end an
    outage ("reachable again") while Redis is still down."""
    caplog.set_level(logging.INFO, logger="outbox.relay")
    settings = make_settings(db_url, f"redis://127.0.0.1:{free_port()}/0", stream, redis_strict=True)
    relay = Relay(settings)
    log = logging.getLogger("outbox.relay")
    relay._broker_outage = Outage("broker", log, settle=0)  # an outage under way, ended by the first ok()
    relay._db_outage = Outage("database", log, settle=0)
    relay._broker_outage.error("Redis went away")
    relay._db_outage.error("Postgres went away")
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.extend(_run(relay)), daemon=True)
    t.start()
    wait_for(lambda: any("could not check Redis" in r.getMessage() for r in caplog.records), what="a failed check")
    relay.stop()
    t.join(15)
    assert not t.is_alive() and not errors, errors
    assert not [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]


def _run(relay: Relay) -> list[BaseException]:
    try:
        relay.run()
    except BaseException as exc:
        return [exc]
    return []
