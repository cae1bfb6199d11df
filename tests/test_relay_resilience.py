"""Faults at awkward instants that must never stop the relay or the worker: Redis gone during a takeover, a
password rotated while running, a failed look-up leaving the connection unusable. Every Redis server here is
the test's own."""

from __future__ import annotations

import logging
import threading

import psycopg
import redis

from outbox import wire
from outbox.embedded import RedisServer
from outbox.relay import Relay
from outbox.relay.loss import Loss
from outbox.relay.publisher import RedisStreamPublisher, fence_key
from tests.conftest import make_settings, wait_for
from tests.test_relay_faults import assert_exactly_once, pending_count, write_events


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
