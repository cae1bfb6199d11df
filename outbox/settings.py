"""One settings object, read from ``OUTBOX_*`` environment variables (CLI flags override them)."""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.errors import ConfigurationError

ENV_PREFIX = "OUTBOX_"


class Settings(BaseSettings):
    """Every knob of the outbox, its relay and its CLI. Unset URLs fall back to libpq variables / embedded."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    database_url: str | None = Field(default=None, description="Postgres URL (libpq PG* variables if unset)")
    redis_url: str | None = Field(default=None, description="Redis URL, redis:// rediss:// or unix://")
    stream: str = Field(default="workflow:events:global", min_length=1, description="Redis stream key")
    max_payload_bytes: int = Field(default=256 * 1024, gt=0, description="Largest accepted payload (bytes)")
    batch_size: int = Field(default=1000, gt=0, le=10_000, description="Rows claimed per relay batch")
    wake: Literal["notify", "poll"] = Field(default="notify", description="notify: LISTEN when idle; poll: never")
    poll_interval: float = Field(default=0.002, ge=0, description="Seconds between polls while traffic flows")
    idle_poll_interval: float = Field(default=0.5, gt=0, description="Fallback poll period while idle (s)")
    idle_after: float = Field(default=0.25, ge=0, description="Quiet time before the relay goes idle (s)")
    lease_ttl: float = Field(default=5.0, gt=0, description="Leader lease; a dead leader is replaced after it")
    max_attempts: int = Field(default=10, gt=0, description="Publish attempts before a row is marked failed")
    backoff_base: float = Field(default=0.2, gt=0, description="First retry delay (s), doubled per attempt")
    backoff_max: float = Field(default=30.0, gt=0, description="Largest retry delay (s)")
    trim_maxlen: int | None = Field(default=None, gt=0, description="XADD MAXLEN ~ N (off when unset)")
    trim_minid_age: float | None = Field(default=None, gt=0, description="XADD MINID ~ now-age (s) (off)")
    retention_published: float = Field(default=86_400.0, ge=0, description="Keep published rows (s)")
    retention_dead: float = Field(default=30 * 86_400.0, ge=0, description="Keep dead/failed rows (s)")
    prune_interval: float = Field(default=60.0, gt=0, description="Seconds between retention sweeps")
    redis_wait_replicas: int = Field(default=0, ge=0, description="WAIT for N replicas before marking published")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus port (off if unset)")
    log_level: str = Field(default="INFO", description="Python logging level")

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        scheme = urlsplit(v).scheme
        if not scheme.startswith("postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    def dsn(self) -> str:
        """libpq connection string for psycopg ("" lets libpq read PGHOST, PGDATABASE...)."""
        if self.database_url is None:
            return ""
        return libpq_url(self.database_url)

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


def libpq_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix: ``postgresql+psycopg://`` -> ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def sqlalchemy_url(url: str, *, async_: bool = False) -> str:
    """SQLAlchemy URL using psycopg 3 for a libpq URL."""
    rest = libpq_url(url).partition("://")[2]
    return f"postgresql+psycopg{'_async' if async_ else ''}://{rest}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus explicit overrides; ``ConfigurationError`` names a bad variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigurationError(ENV_PREFIX + name.upper(), err["msg"]) from None
