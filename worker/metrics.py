"""Prometheus metrics of the workflow worker (served on ``--metrics-port`` / OUTBOX_WORKER_METRICS_PORT when set).

Counters count what the worker committed and acknowledged (an entry whose transaction was rolled back is not
counted); ``outbox_worker_batch_seconds`` times a batch from decoding to XACK.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


class WorkerMetrics:
    """The worker's metric families, registered on one registry (the process-wide one by default)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        self.ingested = Counter(
            "outbox_worker_ingested_total",
            "Events newly recorded in workflow_runtime_events (valid or not)",
            registry=registry,
        )
        self.schema_failures = Counter(
            "outbox_worker_schema_failures_total",
            "Events recorded invalid: payload failed its contract, unknown type, tenant mismatch",
            registry=registry,
        )
        self.duplicates = Counter(
            "outbox_worker_duplicates_total",
            "Entries skipped because their event id was already ingested (redelivery, republish)",
            registry=registry,
        )
        self.run_requests = Counter(
            "outbox_worker_run_requests_total", "workflow_run_requests rows created", registry=registry
        )
        self.trigger_skips = Counter(
            "outbox_worker_trigger_skips_total",
            "Matching triggers that started no run (pinned schema ref differs)",
            registry=registry,
        )
        self.failed_deliveries = Counter(
            "outbox_worker_failed_deliveries_total",
            "Deliveries of poison entries that could not be recorded (left pending for a retry, or dead-lettered)",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "outbox_worker_dead_lettered_total", "Entries moved to the dead-letter stream", registry=registry
        )
        self.claimed = Counter(
            "outbox_worker_claimed_total",
            "Entries claimed from other (dead) consumers or for a retry",
            registry=registry,
        )
        self.db_errors = Counter(
            "outbox_worker_db_errors_total", "Database errors (the batch in hand is retried)", registry=registry
        )
        self.redis_errors = Counter(
            "outbox_worker_redis_errors_total", "Redis errors (retried with backoff)", registry=registry
        )
        self.batch_seconds = Histogram(
            "outbox_worker_batch_seconds",
            "Processing time of one batch: decode, resolve, validate, insert, commit, XACK",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )


_default: WorkerMetrics | None = None
_lock = threading.Lock()


def default_metrics() -> WorkerMetrics:
    """The process-wide metrics (on ``prometheus_client.REGISTRY``), created on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = WorkerMetrics()
        return _default
