"""Settings of the workflow worker: ``OUTBOX_WORKER_*`` variables, plus the shared ``OUTBOX_DATABASE_URL``,
``OUTBOX_REDIS_URL``, ``OUTBOX_STREAM`` and ``OUTBOX_LOG_LEVEL`` (CLI flags override them). The shared
fields and checks live in ``outbox.settings.DaemonSettings``."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from outbox.settings import DaemonSettings

WORKER_ENV_PREFIX = "OUTBOX_WORKER_"
DEFAULT_GROUP = "workflow-runtime-v2"


def default_consumer_name() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, so a restarted worker never inherits a dead one's name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(DaemonSettings):
    """Every knob of ``outbox worker``."""

    model_config = SettingsConfigDict(env_prefix=WORKER_ENV_PREFIX)

    backoff_max: float = Field(default=10.0, gt=0, description="Largest retry delay (s)")
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
    consumer_gc_idle: float = Field(
        default=86_400.0, ge=0, description="At start, delete consumers idle this long with nothing pending (s); 0=off"
    )
    # Test hook, never set in production: "before_commit:SECONDS" or "after_commit:SECONDS" makes the worker
    # sleep at that point of every batch (so a test can SIGKILL it with entries in hand).
    test_pause: str | None = Field(default=None, description="(tests only) before_commit:S or after_commit:S")

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


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Settings from the environment plus explicit overrides; ``ConfigurationError`` names a bad variable."""
    return WorkerSettings.load(**overrides)
