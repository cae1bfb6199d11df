"""Settings of the workflow worker: ``OUTBOX_WORKER_*`` variables, plus the shared ``OUTBOX_DATABASE_URL``,
``OUTBOX_REDIS_URL``, ``OUTBOX_STREAM`` and ``OUTBOX_LOG_LEVEL`` (CLI flags override them)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.errors import ConfigurationError
from outbox.settings import ENV_PREFIX, libpq_url

WORKER_ENV_PREFIX = "OUTBOX_WORKER_"
DEFAULT_GROUP = "workflow-runtime-v2"


def default_consumer_name() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, so a restarted worker never inherits a dead one's name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(BaseSettings):
    """Every knob of ``outbox worker``."""

    model_config = SettingsConfigDict(env_prefix=WORKER_ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None, validation_alias="OUTBOX_DATABASE_URL", description="Postgres URL (libpq PG* if unset)"
    )
    redis_url: str | None = Field(default=None, validation_alias="OUTBOX_REDIS_URL", description="Redis URL")
    stream: str = Field(
        default="workflow:events:global", min_length=1, validation_alias="OUTBOX_STREAM", description="Stream key"
    )
    log_level: str = Field(default="INFO", validation_alias="OUTBOX_LOG_LEVEL", description="Python logging level")

    group: str = Field(default=DEFAULT_GROUP, min_length=1, description="Redis consumer group")
    consumer: str | None = Field(default=None, description="Consumer name (default: hostname-pid-random)")
    start_id: Literal["0", "$"] = Field(
        default="0", description="Where a newly created group starts: 0 = whole stream, $ = only new entries"
    )
    dlq_stream: str | None = Field(default=None, description="Dead-letter stream (default: <stream>:dlq)")
    batch_size: int = Field(default=100, gt=0, le=1000, description="Entries per XREADGROUP / transaction")
    block_ms: int = Field(default=1000, gt=0, le=60_000, description="XREADGROUP BLOCK (ms); bounds SIGTERM latency")
    claim_idle: float = Field(
        default=60.0, gt=0, description="Claim pending entries idle this long (s): dead consumers, failed entries"
    )
    claim_interval: float = Field(default=5.0, gt=0, description="Seconds between XAUTOCLAIM sweeps")
    max_deliveries: int = Field(default=5, gt=0, description="Failed deliveries before an entry goes to the DLQ")
    catalog_cache_ttl: float = Field(
        default=5.0, ge=0, description="Cache schema resolutions per (tenant, event type) this long (s); 0 = off"
    )
    backoff_base: float = Field(default=0.2, gt=0, description="First retry delay after an outage (s)")
    backoff_max: float = Field(default=10.0, gt=0, description="Largest retry delay (s)")
    consumer_gc_idle: float = Field(
        default=86_400.0, ge=0, description="At start, delete consumers idle this long with nothing pending (s); 0=off"
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port (off if unset; 0 = any free)"
    )
    metrics_addr: str = Field(default="0.0.0.0", min_length=1, description="Address of the metrics endpoint")
    # Test hook, never set in production: "before_commit:SECONDS" or "after_commit:SECONDS" makes the worker
    # sleep at that point of every batch (so a test can SIGKILL it with entries in hand).
    test_pause: str | None = Field(default=None, description="(tests only) before_commit:S or after_commit:S")

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.split("://", 1)[0].startswith("postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, v: str | None) -> str | None:
        if not v:
            return None
        if v.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("test_pause")
    @classmethod
    def _check_pause(cls, v: str | None) -> str | None:
        if not v:
            return None
        where, _, secs = v.partition(":")
        if where not in ("before_commit", "after_commit"):
            raise ValueError("must be before_commit:SECONDS or after_commit:SECONDS")
        float(secs or "0")
        return v

    @property
    def dlq(self) -> str:
        """The dead-letter stream key."""
        return self.dlq_stream or f"{self.stream}:dlq"

    def pause(self) -> tuple[str, float] | None:
        """The test hook, parsed."""
        if not self.test_pause:
            return None
        where, _, secs = self.test_pause.partition(":")
        return where, float(secs or "0")

    def dsn(self) -> str:
        """libpq connection string ("" lets libpq read PGHOST, PGDATABASE...)."""
        return libpq_url(self.database_url) if self.database_url else ""

    def require_database(self) -> str:
        """The database DSN, or ``ConfigurationError`` when neither the URL nor libpq variables are set."""
        if self.database_url is None and not any(os.environ.get(v) for v in ("PGHOST", "PGDATABASE", "PGSERVICE")):
            raise ConfigurationError(ENV_PREFIX + "DATABASE_URL", "not set (nor PGHOST/PGDATABASE/PGSERVICE)")
        return self.dsn()

    def require_redis(self) -> str:
        """The Redis URL, or ``ConfigurationError`` naming the variable."""
        if self.redis_url is None:
            raise ConfigurationError(ENV_PREFIX + "REDIS_URL", "not set")
        return self.redis_url


_SHARED = {"database_url", "redis_url", "stream", "log_level"}


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return (ENV_PREFIX if field in _SHARED else WORKER_ENV_PREFIX) + field.upper()


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Settings from the environment plus explicit overrides; ``ConfigurationError`` names a bad variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return WorkerSettings(**clean)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        if name.startswith(ENV_PREFIX):
            name = name[len(ENV_PREFIX) :].lower()
        raise ConfigurationError(env_name(name), err["msg"]) from None
