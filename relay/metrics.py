"""Prometheus metrics of the relay (served on OUTBOX_METRICS_PORT when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter("outbox_relay_published_total", "Events appended to the stream")
DEDUPED = Counter("outbox_relay_fence_skipped_total", "Events the fence found already on the stream")
DEAD = Counter("outbox_relay_dead_lettered_total", "Rows dead-lettered by validation", ["event_type"])
FAILED = Counter("outbox_relay_failed_total", "Rows marked failed after too many claims")
BATCHES = Counter("outbox_relay_batches_total", "Batches claimed")
BROKER_ERRORS = Counter("outbox_relay_broker_errors_total", "Failed publish attempts")
DB_ERRORS = Counter("outbox_relay_db_errors_total", "Database errors")
REDIS_LOSS = Counter(
    "outbox_relay_redis_data_loss_total",
    "Times the relay found Redis had lost published events (fence key or stream reset)",
    ["what"],
)
REDIS_RISK = Gauge("outbox_relay_redis_config_risk", "1 while Redis' settings can lose events", ["risk"])
LEADER = Gauge("outbox_relay_is_leader", "1 while this process holds the relay lease")
BATCH_SECONDS = Histogram(
    "outbox_relay_batch_seconds",
    "Claim-to-mark time of one batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)
WAL_RETAINED_BYTES = Gauge("outbox_relay_wal_retained_bytes", "WAL the capture slot keeps (current LSN - restart_lsn)")
WAL_OLDEST_UNCONFIRMED_SECONDS = Gauge(
    "outbox_relay_wal_oldest_unconfirmed_seconds",
    "Age of the oldest event the WAL relay has read but not confirmed (0 when caught up)",
)
WAL_SLOT_OK = Gauge("outbox_relay_wal_slot_ok", "1 while the capture slot exists and is not invalidated")
