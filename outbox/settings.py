"""One settings object, read from ``OUTBOX_*`` environment variables (CLI flags override them).

``DaemonSettings`` holds what the relay and the worker share (servers, stream, logging, backoff, metrics);
``Settings`` (relay, CLI) and ``outbox.worker.settings.WorkerSettings`` extend it.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.errors import ConfigurationError

ENV_PREFIX = "OUTBOX_"


class DaemonSettings(BaseSettings):
    """The knobs every outbox process shares. The server, stream and log variables are always ``OUTBOX_*``;
    the others take the subclass's prefix (``OUTBOX_BACKOFF_MAX``, ``OUTBOX_WORKER_BACKOFF_MAX``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None, validation_alias="OUTBOX_DATABASE_URL", description="Postgres URL (libpq PG* variables if unset)"
    )
    redis_url: str | None = Field(
        default=None, validation_alias="OUTBOX_REDIS_URL", description="Redis URL, redis:// rediss:// or unix://"
    )
    stream: str = Field(
        default="workflow:events:global", min_length=1, validation_alias="OUTBOX_STREAM", description="Redis stream key"
    )
    log_level: str = Field(default="INFO", validation_alias="OUTBOX_LOG_LEVEL", description="Python logging level")
    backoff_base: float = Field(default=0.2, gt=0, description="First retry delay (s), doubled per attempt")
    backoff_max: float = Field(default=30.0, gt=0, description="Largest retry delay (s)")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port (off if unset; 0 = any free)"
    )
    metrics_addr: str = Field(default="0.0.0.0", min_length=1, description="Address of the metrics endpoint")

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, v: str | None) -> str | None:
        if not v:
            return None
        # Split by hand: urlsplit refuses libpq's host lists with a bracketed IPv6 item on some Python
        # releases ("Invalid IPv6 URL" on 3.11.2, accepted on 3.11.7).
        scheme, sep, rest = v.partition("://")
        if not sep or not scheme.startswith("postgres"):
            raise ValueError("must be a postgresql:// URL")
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        query = rest.partition("?")[2].partition("#")[0]
        # libpq's forms: host[:port] items separated by commas, IPv6 in brackets, and ?port=p1,p2
        hosts = netloc.rpartition("@")[2]
        ports = [item.rpartition("]")[2].partition(":")[2] if item.startswith("[") else item.partition(":")[2]
                 for item in hosts.split(",")]  # fmt: skip
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "port":
                ports += value.split(",")
        for port in ports:
            _check_port(port)
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, v: str | None) -> str | None:
        if not v:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix":
            _check_port(parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2])
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"the database number {db!r} (the URL's path) is not a number")
        for key, value in parse_qsl(parts.query):
            if key == "db" and not value.isdigit():
                raise ValueError(f"the database number {value!r} (?db=) is not a number")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        level = v.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def dsn(self) -> str:
        """libpq connection string for psycopg ("" lets libpq read PGHOST, PGDATABASE...)."""
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

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a settings field."""
        info = cls.model_fields.get(field)
        if info is not None and isinstance(info.validation_alias, str):
            return info.validation_alias
        return str(cls.model_config.get("env_prefix", "")) + field.upper()

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Settings from the environment plus explicit overrides; ``ConfigurationError`` names a bad variable."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**clean)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = str(err["loc"][0]) if err["loc"] else "?"
            field = next((n for n, f in cls.model_fields.items() if where in (n, f.validation_alias)), where.lower())
            raise ConfigurationError(cls.env_name(field), err["msg"].removeprefix("Value error, ")) from None


class Settings(DaemonSettings):
    """Every knob of the outbox, its relay and its CLI. Unset URLs fall back to libpq variables / embedded."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    max_payload_bytes: int = Field(default=256 * 1024, gt=0, description="Largest accepted payload (bytes)")
    batch_size: int = Field(default=1000, gt=0, le=10_000, description="Rows claimed per relay batch")
    wake: Literal["notify", "poll"] = Field(default="notify", description="notify: LISTEN when idle; poll: never")
    poll_interval: float = Field(default=0.002, ge=0, description="Seconds between polls while traffic flows")
    idle_poll_interval: float = Field(default=0.5, gt=0, description="Fallback poll period while idle (s)")
    idle_after: float = Field(default=0.25, ge=0, description="Quiet time before the relay goes idle (s)")
    lease_ttl: float = Field(default=5.0, gt=0, description="Leader lease; a dead leader is replaced after it")
    max_attempts: int = Field(default=10, gt=0, description="Publish attempts before a row is marked failed")
    trim_maxlen: int | None = Field(default=None, gt=0, description="XADD MAXLEN ~ N (off when unset)")
    trim_minid_age: float | None = Field(default=None, gt=0, description="XADD MINID ~ now-age (s) (off)")
    retention_published: float = Field(default=86_400.0, ge=0, description="Keep published rows (s)")
    retention_dead: float = Field(default=30 * 86_400.0, ge=0, description="Keep dead/failed rows (s)")
    prune_interval: float = Field(default=60.0, gt=0, description="Seconds between retention sweeps")
    redis_wait_replicas: int = Field(default=0, ge=0, description="WAIT for N replicas before marking published")
    redis_check_interval: float = Field(
        default=60.0, gt=0, description="Seconds between checks of Redis' eviction/persistence settings and data"
    )
    redis_strict: bool = Field(
        default=False, description="Refuse to start when Redis' settings can lose events (exit 2)"
    )
    capture: Literal["poll", "wal"] = Field(
        default="poll", description="poll: read outbox_events; wal: a logical replication slot (wal_level=logical)"
    )
    wal_slot: str = Field(
        default="outbox", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="WAL mode: the logical slot's name"
    )
    wal_publication: str = Field(
        default="outbox", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="WAL mode: the (empty) publication"
    )
    wal_warn_retained_bytes: int = Field(
        default=1024**3, gt=0, description="WAL mode: warn when the slot retains more WAL than this (bytes)"
    )
    wal_warn_age: float = Field(
        default=60.0, gt=0, description="WAL mode: warn when the oldest unconfirmed event is older (s)"
    )


def _check_port(port: str) -> None:
    """An empty port (the default) or a number 1-65535; ``ValueError`` naming the bad one otherwise."""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")


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
    return Settings.load(**overrides)
