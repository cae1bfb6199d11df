"""The workflow worker: consumes ``workflow:events:global`` through a Redis consumer group, validates each
event against its tenant-resolved contract, records it in ``workflow_runtime_events`` and requests a workflow
run for every matching tenant trigger -- all in one Postgres transaction per batch, acknowledged after commit.

``outbox worker`` / ``python -m outbox.worker`` run it; ``outbox worker status`` reports lag, pending entries, the
dead-letter stream and runs requested; ``outbox worker triggers ...`` manages triggers (``outbox.worker.triggers``);
``outbox worker runs`` lists run requests, which a workflow engine claims with ``outbox.worker.runs.claim``.
"""

from __future__ import annotations

from outbox.worker.consumer import Worker, WorkerStats
from outbox.worker.errors import (
    InvalidRunStatus,
    InvalidTrigger,
    InvalidTriggerFilter,
    RunRequestNotClaimed,
    RunRequestNotFound,
    TriggerInUse,
    TriggerNotFound,
    UnknownTriggerEventType,
    WorkerInputError,
)
from outbox.worker.metrics import WorkerMetrics
from outbox.worker.runs import RunRequest, claim, complete, fail, list_runs, requeue_stale
from outbox.worker.settings import DEFAULT_GROUP, WorkerSettings, load_worker_settings
from outbox.worker.status import status
from outbox.worker.triggers import (
    Trigger,
    add_trigger,
    check_filter,
    create_trigger,
    disable_trigger,
    enable_trigger,
    get_trigger,
    list_triggers,
    parse_filter,
    remove_trigger,
    set_enabled,
)

__all__ = [
    "DEFAULT_GROUP",
    "InvalidRunStatus",
    "InvalidTrigger",
    "InvalidTriggerFilter",
    "RunRequest",
    "RunRequestNotClaimed",
    "RunRequestNotFound",
    "Trigger",
    "TriggerInUse",
    "TriggerNotFound",
    "UnknownTriggerEventType",
    "Worker",
    "WorkerInputError",
    "WorkerMetrics",
    "WorkerSettings",
    "WorkerStats",
    "add_trigger",
    "check_filter",
    "claim",
    "complete",
    "create_trigger",
    "disable_trigger",
    "enable_trigger",
    "fail",
    "get_trigger",
    "list_runs",
    "list_triggers",
    "load_worker_settings",
    "parse_filter",
    "remove_trigger",
    "requeue_stale",
    "set_enabled",
    "status",
]
