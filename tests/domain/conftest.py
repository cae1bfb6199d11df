"""Harness for the reference-domain tests: domain tables, a relay, and a check of what reached the stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Engine

from domain.base import Ctx, metadata
from outbox import schemas
from outbox.settings import Settings, sqlalchemy_url
from outbox.worker import Worker, load_worker_settings
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
    """The relay and a workflow worker on this test's stream, and assertions on what reached them."""

    def __init__(self, rds: redis.Redis, stream: str, db_url: str) -> None:
        self.rds = rds
        self.stream = stream
        self.db_url = db_url

    def ingested(self, event_id: str) -> tuple[str | None, str | None] | None:
        """(error, schema_ref) of the worker's ingestion record of an event, or None if not ingested yet."""
        with psycopg.connect(self.db_url) as c:
            row = c.execute(
                "SELECT error, schema_ref FROM workflow_runtime_events WHERE event_id = %s", (event_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

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
        # ...and the workflow worker ingested it against its catalog-resolved contract without error
        error, ref = wait_for(lambda: self.ingested(eid), timeout=timeout, what=f"worker ingesting {eid}")
        assert error is None, f"worker rejected {event_type} {eid}: {error}"
        assert ref == schemas.for_event_type(event_type).ref or ref is None or ref.startswith("legacy."), ref
        return {"entry": entry, "payload": entry_payload}


@pytest.fixture
def published(settings: Settings, rds: redis.Redis, stream: str, db_url: str) -> Iterator[Stream]:
    """A relay publishing this test's outbox to its private stream, and a worker ingesting it."""
    wsettings = load_worker_settings(
        database_url=db_url, redis_url=settings.redis_url, stream=stream, block_ms=100, log_level="WARNING"
    )
    worker = Worker(wsettings)
    thread = threading.Thread(target=worker.run, daemon=True)
    with relay_thread(settings):
        thread.start()
        try:
            yield Stream(rds, stream, db_url)
        finally:
            worker.stop()
            thread.join(15)


@pytest.fixture
def act(engine: Engine) -> Any:
    """``act(tenant, fn, *args, user=..., **kw)`` runs one action in its own committed transaction."""

    def run(tenant: str, fn: Any, *args: Any, user: str | None = None, contact: str | None = None, **kw: Any) -> Any:
        with engine.begin() as conn:
            ctx = Ctx(conn, tenant, user_id=user, contact_id=contact)
            result = fn(ctx, *args, **kw)
        return result, ctx.emitted

    return run
