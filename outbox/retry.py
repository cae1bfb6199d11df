"""Retry policy shared by the relay and the worker: the backoff delay and which Redis failures are transient."""

from __future__ import annotations

import random

import redis

#: Redis error replies that go away by themselves (loading, failover, memory pressure): retry with backoff.
TRANSIENT_REPLY_PREFIXES = ("LOADING", "BUSY", "OOM", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Jittered exponential backoff: a delay in [d/2, d] where d = min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * 2 ** min(attempt, 20))
    return random.uniform(ceiling / 2, ceiling)


def transient_reply(exc: BaseException) -> bool:
    """Whether a Redis error reply is one that retrying later can cure (see ``TRANSIENT_REPLY_PREFIXES``)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(TRANSIENT_REPLY_PREFIXES)


def transient_redis(exc: BaseException) -> bool:
    """Whether a redis-py error is transient: lost connection, timeout, loading, or a transient reply."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) or transient_reply(exc)
