"""Shared fixtures: real Postgres and Redis, a fresh database per test, private Redis keys per test.

Servers: ``OUTBOX_TEST_DATABASE_URL`` (a server where we may CREATE DATABASE) and
``OUTBOX_TEST_REDIS_URL`` when set; otherwise the session starts its own from bundled binaries
(``outbox.embedded``). Fault tests start *their own* servers on free ports and only ever stop or
kill those.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from pytest_postgresql.janitor import DatabaseJanitor

from outbox import envelope, migrate
from outbox.embedded import PostgresServer, RedisServer
from outbox.relay import Relay
from outbox.settings import Settings, load_settings

# Tests must not pick up a developer's own outbox configuration.
for _k in list(os.environ):
    if _k.startswith("OUTBOX_") and not _k.startswith("OUTBOX_TEST_"):
        del os.environ[_k]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a Postgres server the tests may create databases on."""
    url = os.environ.get("OUTBOX_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with PostgresServer() as server:
        yield server.url("postgres")


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """URL of a Redis server shared by the session (tests use their own keys on it)."""
    url = os.environ.get("OUTBOX_TEST_REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def _janitor(admin_url: str, dbname: str, template: str | None = None) -> DatabaseJanitor:
    parts = urlsplit(admin_url)
    return DatabaseJanitor(
        user=parts.username or "postgres",
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        password=parts.password,
        dbname=dbname,
        template_dbname=template,
        maintenance_dbname=(parts.path.lstrip("/") or "postgres"),
    )


def db_url_for(admin_url: str, dbname: str) -> str:
    """The admin URL pointed at another database."""
    parts = urlsplit(admin_url)
    return parts._replace(path="/" + dbname).geturl()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated template database; each test clones it (CREATE DATABASE ... TEMPLATE is cheap)."""
    name = f"outbox_tmpl_{uuid.uuid4().hex[:10]}"
    janitor = _janitor(pg_admin_url, name)
    janitor.init()
    migrate.upgrade(db_url_for(pg_admin_url, name))
    yield name
    janitor.drop()


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only; dropped afterwards."""
    name = f"outbox_t_{uuid.uuid4().hex[:12]}"
    janitor = _janitor(pg_admin_url, name, template=template_db)
    janitor.init()
    yield db_url_for(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- envelope conformance ------------------------------------------------------------------------
# Every entry on a test's stream must pass the platform reader's envelope rules (outbox/envelope.py): the
# stream of the ``stream`` fixture and every stream given to ``make_settings`` are read (XRANGE) before
# they go away, on the shared Redis when the ``rds`` fixture cleans up (or at the end of the test), on a
# server the test started itself when it is closed. A test that writes entries the reader rejects straight
# to Redis on purpose says so with ``@pytest.mark.raw_stream_entries`` (nothing is skipped silently).
RAW_ENTRIES = "raw_stream_entries"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{RAW_ENTRIES}: the test XADDs entries the platform's reader rejects on purpose; its streams are not "
        "checked against the envelope rules",
    )


def envelope_violations(url: str, stream: str) -> list[str]:
    """Every entry of ``stream`` on ``url`` that breaks an envelope rule, as ``<entry id>: <rule>`` lines.
    A server that cannot be read (stopped, frozen, gone) yields nothing."""
    bad: list[str] = []
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        if client.type(stream) != b"stream":
            return bad
        lower = "-"
        while True:
            page = client.xrange(stream, min=lower, count=1000)
            for sid, fields in page:
                entry = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
                err = envelope.violation(entry)
                if err is not None:
                    bad.append(f"{sid.decode()}: {err}")
            if len(page) < 1000:
                return bad
            lower = "(" + page[-1][0].decode()
    except redis.RedisError:
        return bad
    finally:
        client.close()


class _Conformance:
    """The running test's streams and Redis servers, and the violations found so far."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the previous test."""
        self.streams: set[str] = set()
        self.urls: set[str] = set()
        self.violations: list[str] = []

    def check(self, url: str) -> None:
        """Read the test's streams on ``url`` now (before the server or the keys go away)."""
        self.urls.discard(url)
        for name in sorted(self.streams):
            self.violations += [f"{name} on {url}: {v}" for v in envelope_violations(url, name)]


_conformance = _Conformance()
_redis_close = RedisServer.close


def _close_after_checking(self: RedisServer) -> None:
    """``RedisServer.close`` for tests: the test's streams on this server are checked first (never raises)."""
    if self.proc is not None and self.proc.poll() is None:
        _conformance.check(self.url)
    _redis_close(self)


RedisServer.close = _close_after_checking  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _envelope_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: every entry on its streams passed the reader's envelope rules."""
    _conformance.reset()
    yield
    for url in sorted(_conformance.urls):
        _conformance.check(url)
    found, _conformance.violations = _conformance.violations, []
    if found and request.node.get_closest_marker(RAW_ENTRIES) is None:
        pytest.fail(
            f"{len(found)} stream entr{'y' if len(found) == 1 else 'ies'} the platform's reader would reject "
            "(outbox/envelope.py):\n  " + "\n  ".join(found[:20]),
            pytrace=False,
        )


@pytest.fixture
def stream() -> str:
    """A stream key private to this test (its entries are checked against the envelope rules)."""
    name = f"test:{uuid.uuid4().hex[:12]}:workflow:events:global"
    _conformance.streams.add(name)
    return name


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """The shared Redis URL."""
    return redis_base_url


@pytest.fixture
def rds(redis_url: str, stream: str) -> Iterator[redis.Redis]:
    """A Redis client; every key this test made under its stream name is deleted afterwards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    _conformance.urls.add(redis_url)
    yield client
    _conformance.check(redis_url)  # before the keys are deleted
    for key in client.scan_iter(match=f"*{stream}*", count=1000):
        client.delete(key)
    client.close()


def make_settings(db_url: str, redis_url: str, stream: str, **kw: Any) -> Settings:
    """Settings tuned for tests: short lease, fast polls."""
    base: dict[str, Any] = {
        "database_url": db_url,
        "redis_url": redis_url,
        "stream": stream,
        "lease_ttl": 1.0,
        "poll_interval": 0.002,
        "idle_poll_interval": 0.1,
        "idle_after": 0.05,
        "backoff_base": 0.05,
        "backoff_max": 0.5,
    }
    base.update(kw)
    _conformance.streams.add(stream)
    _conformance.urls.add(redis_url)
    return load_settings(**base)


@pytest.fixture
def settings(db_url: str, redis_url: str, stream: str, rds: redis.Redis) -> Settings:
    """Test settings for this test's database and stream."""
    return make_settings(db_url, redis_url, stream)


@contextlib.contextmanager
def relay_thread(settings: Settings, *, make: Callable[..., Any] = Relay, **kw: Any) -> Iterator[Any]:
    """Run a relay (``make(settings, **kw)``) in a background thread for the duration of the block, then stop it."""
    relay = make(settings, **kw)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            relay.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield relay
    finally:
        relay.stop()
        t.join(15)
        assert not t.is_alive(), "relay thread did not stop"
        if errors:
            raise errors[0]


def relay_env(settings: Settings) -> dict[str, str]:
    """Environment for a relay subprocess with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env["OUTBOX_" + name.upper()] = str(value)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn_relay(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``python -m outbox.relay`` as a child process with these settings."""
    return subprocess.Popen(
        [sys.executable, "-m", "outbox.relay", *extra],
        env=relay_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stream_entries(rds: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of the stream, in order."""
    return [(sid, dict(f)) for sid, f in rds.xrange(stream)]


def status_counts(db_url: str) -> dict[str, int]:
    """Outbox rows per status."""
    with psycopg.connect(db_url) as c:
        return dict(c.execute("SELECT status, count(*) FROM outbox_events GROUP BY status").fetchall())


# The WAL capture mode's fixtures (logical_pg_url, logical_db): a wal_level=logical server of the session's own.
pytest_plugins = ("tests.logical",)
