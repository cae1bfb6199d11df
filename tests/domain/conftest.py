"""Harness for the reference-domain tests: domain tables, a relay, and a check of what reached the stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Engine

import schemas
from domain.base import Ctx, metadata
from outbox.settings import Settings, sqlalchemy_url
from tests.conftest import relay_thread, wait_for


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """SQLAlchemy engine on this test's database, with every reference-domain table created."""
    import domain.modules  # noqa: F401 - registers every module's tables on the metadata

    eng = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    metadata.create_all(eng)
    yield eng
    eng.dispose()


class Stream:
    """The relay running against this test's stream, and assertions on what reached it."""

    def __init__(self, rds: redis.Redis, stream: str) -> None:
        self.rds = rds
        self.stream = stream

    def entries(self) -> list[dict[str, str]]:
        """Every entry so far."""
        return [dict(f) for _, f in self.rds.xrange(self.stream)]

    def expect_once(self, event_type: str, event_id: Any, timeout: float = 20) -> dict[str, Any]:
        """Wait until the event is on the stream; assert it is there once, typed right and schema-valid."""
        eid = str(event_id)
        found = wait_for(
            lambda: [e for e in self.entries() if e["event_id"] == eid], timeout=timeout, what=f"{event_type} {eid}"
        )
        assert len(found) == 1, f"{event_type} {eid} is on the stream {len(found)} times"
        entry = found[0]
        assert entry["event_type"] == event_type
        entry_payload = json.loads(entry["payload_json"])
        schemas.validate_json(event_type, entry["payload_json"])  # raises with the field if invalid
        return {"entry": entry, "payload": entry_payload}


@pytest.fixture
def published(settings: Settings, rds: redis.Redis, stream: str) -> Iterator[Stream]:
    """A relay publishing this test's outbox to its private stream for the test's duration."""
    with relay_thread(settings):
        yield Stream(rds, stream)


@pytest.fixture
def act(engine: Engine) -> Any:
    """``act(tenant, fn, *args, user=..., **kw)`` runs one action in its own committed transaction."""

    def run(tenant: str, fn: Any, *args: Any, user: str | None = None, contact: str | None = None, **kw: Any) -> Any:
        with engine.begin() as conn:
            ctx = Ctx(conn, tenant, user_id=user, contact_id=contact)
            result = fn(ctx, *args, **kw)
        return result, ctx.emitted

    return run
