"""The workflow worker: consumes ``workflow:events:global`` through a Redis consumer group, validates each
event against its tenant-resolved contract, records it in ``workflow_runtime_events`` and requests a workflow
run for every matching tenant trigger -- all in one Postgres transaction per batch, acknowledged after commit.

``outbox worker`` / ``python -m worker`` run it; ``outbox worker status`` reports lag, pending entries, the
dead-letter stream and runs requested.
"""

from __future__ import annotations

from worker.consumer import Worker, WorkerStats
from worker.settings import DEFAULT_GROUP, WorkerSettings, load_worker_settings
from worker.status import status
from worker.triggers import Trigger, add_trigger, list_triggers, set_enabled

__all__ = [
    "DEFAULT_GROUP",
    "Trigger",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "add_trigger",
    "list_triggers",
    "load_worker_settings",
    "set_enabled",
    "status",
]
