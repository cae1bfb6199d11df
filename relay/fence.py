"""The publish step: send a batch through the publisher's fence until all of it is known to be on the stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outbox.errors import BrokerError
from outbox.relay import metrics
from outbox.relay.publisher import Outgoing, Publisher, PublishResult


def publish_all(
    publisher: Publisher,
    out: Sequence[Outgoing],
    *,
    sent: Callable[[PublishResult, Sequence[Outgoing]], None],
    failed: Callable[[int, BrokerError, int], None],
) -> tuple[int, int]:
    """Publish ``out`` in order, retrying what is not known to be on the stream. After every reply, ``sent(result,
    batch)`` gets the events it covers (a prefix of what was still outstanding); after every failure,
    ``failed(attempt, error, held)`` decides what happens next: it sleeps (backoff) or raises to give up. Positions
    make every retry safe: the fence drops what an earlier attempt appended. Returns (appended, fence-skipped)."""
    attempt = appended = skipped = 0
    rest = list(out)
    while rest:
        error: BrokerError | None
        try:
            result = publisher.publish(rest)
        except BrokerError as exc:
            error = exc
        else:
            n = len(result.ids)
            sent(result, rest[:n])
            dropped = sum(sid is None for sid in result.ids)
            skipped += dropped
            appended += n - dropped
            metrics.DEDUPED.inc(dropped)
            metrics.PUBLISHED.inc(n - dropped)
            rest = rest[n:]
            error = result.error
            if error is None:
                break
        attempt += 1
        metrics.BROKER_ERRORS.inc()
        failed(attempt, error, len(rest))
    return appended, skipped
