"""The relay daemon: publishes committed outbox rows to the Redis stream exactly once."""

from __future__ import annotations

from outbox.relay.loop import Relay, RelayStats
from outbox.relay.publisher import Outgoing, Publisher, PublishResult, RedisStreamPublisher, fence_key

__all__ = ["Outgoing", "PublishResult", "Publisher", "RedisStreamPublisher", "Relay", "RelayStats", "fence_key"]
