"""Retry policy shared by the relay and the worker: the backoff delay, which failures are transient and which
are configuration errors (never retried), and how an outage is logged (``Outage``).

A refused login is a configuration error only until that server has let the process in once: the relay and the
worker stop asking ``*_config_error`` after their first successful connection, so a password rotated or a
pg_hba.conf reloaded on a running server is an outage, retried with backoff, not an exit 2 (which the systemd
units' RestartPreventExitStatus=2 would make permanent)."""

from __future__ import annotations

import logging
import random
import re
import time

import redis

from outbox.errors import ConfigurationError

#: Redis error replies that go away by themselves (loading, failover, memory pressure): retry with backoff.
TRANSIENT_REPLY_PREFIXES = ("LOADING", "BUSY", "OOM", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS")

#: How long a server must work without an error before its outage is over (seconds; see ``Outage``).
OUTAGE_SETTLE = 5.0

# Connection failures that retrying cannot cure: the server refused the login, or libpq refused a connection
# option. libpq gives no SQLSTATE for a failed connection, so these match its text (the server's FATAL message
# and libpq's own), in English: a localized server falls back to being retried as an outage.
_PG_REFUSALS = re.compile(
    r"authentication failed|no password supplied|pg_hba\.conf|role \"[^\"]*\" does not exist"
    r"|invalid (integer value|port number|URI|connection option|sslmode value)",
    re.IGNORECASE,
)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Jittered exponential backoff: a delay in [d/2, d] where d = min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * 2 ** min(attempt, 20))
    return random.uniform(ceiling / 2, ceiling)


def transient_reply(exc: BaseException) -> bool:
    """Whether a Redis error reply is one that retrying later can cure (see ``TRANSIENT_REPLY_PREFIXES``)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(TRANSIENT_REPLY_PREFIXES)


def redis_auth_failure(exc: BaseException) -> bool:
    """Whether Redis refused the credentials (WRONGPASS, NOAUTH, a password for a server without one)."""
    return isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError)


def transient_redis(exc: BaseException) -> bool:
    """Whether a redis-py error is transient: lost connection, timeout, loading, or a transient reply. An
    authentication failure is not (redis-py makes it a ``ConnectionError``)."""
    if redis_auth_failure(exc):
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) or transient_reply(exc)


def redis_config_error(exc: BaseException, variable: str = "OUTBOX_REDIS_URL") -> ConfigurationError | None:
    """A ``ConfigurationError`` naming ``variable`` when Redis refused the credentials, else None."""
    if not redis_auth_failure(exc):
        return None
    return ConfigurationError(variable, f"Redis refused the credentials: {str(exc).strip() or type(exc).__name__}")


def postgres_config_error(exc: BaseException, variable: str = "OUTBOX_DATABASE_URL") -> ConfigurationError | None:
    """A ``ConfigurationError`` naming ``variable`` when a connection attempt failed for a reason retrying cannot
    cure (wrong password, unknown role, no pg_hba.conf entry, a malformed option), else None."""
    if getattr(exc, "sqlstate", None):  # a statement's error, not a failed connection attempt
        return None
    text = " ".join(str(exc).split())
    if not _PG_REFUSALS.search(text):
        return None
    reason = text.rpartition("FATAL:")[2].strip() or text
    return ConfigurationError(variable, f"Postgres refused the connection: {reason}")


class Outage:
    """One outage of one server, as the log tells it: one line when it starts, one when it ends with the number of
    errors it contained. It ends only after the server has worked for ``settle`` seconds without an error, so a
    server that keeps failing between successes (a statement_timeout far too low, a flapping network) makes one
    outage, not a pair of lines per error."""

    def __init__(self, what: str, logger: logging.Logger, settle: float = OUTAGE_SETTLE) -> None:
        self.what = what
        self.log = logger
        self.settle = settle
        self.errors = 0
        self._since: float | None = None
        self._ok_since: float | None = None

    def error(self, detail: object, *, note: str = "retrying with backoff") -> None:
        """Count an error; the first one of an outage logs the start line."""
        self.errors += 1
        self._ok_since = None
        if self._since is None:
            self._since = time.monotonic()
            first = str(detail).strip().splitlines()
            self.log.error("%s unavailable, %s: %s", self.what, note, first[0] if first else type(detail).__name__)

    def ok(self) -> None:
        """The server just worked; after ``settle`` seconds of that the end line is logged."""
        if self._since is None:
            return
        now = time.monotonic()
        if self._ok_since is None:
            self._ok_since = now
        if now - self._ok_since >= self.settle:
            n = self.errors
            self.log.warning("%s reachable again after %.1fs (%d error%s)", self.what, self._ok_since - self._since,
                             n, "" if n == 1 else "s")  # fmt: skip
            self._since = self._ok_since = None
            self.errors = 0


class _PipelineNoise(logging.Filter):
    """Drops psycopg's "error ignored terminating <Pipeline>" warning: it repeats, once per failed pipeline, the
    error the caller already handles (and the outage already logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


_NOISE = _PipelineNoise()


def quiet_pipeline_noise() -> None:
    """Install the filter on the ``psycopg`` logger (idempotent)."""
    logging.getLogger("psycopg").addFilter(_NOISE)
