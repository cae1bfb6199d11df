"""An in-memory ``Publisher`` with the Redis fence's semantics, and broker faults to inject, for unit tests."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from outbox.errors import BrokerError
from outbox.relay.publisher import Outgoing, Publisher, PublishResult, StreamState, position_arg


class MemoryPublisher(Publisher):
    """One stream and its fence in memory, with the fence script's rules (relay/publisher.py): an event is
    appended only if its position is above the fence, which moves with it; ``fence_before`` is -1 with no
    fence, ``stream_fresh`` when nothing was ever appended since the last ``restart_empty``.

    Faults, each for the next ``publish`` of a non-empty batch only: ``fail_next`` (nothing applied),
    ``partial_next`` (the first k events applied, then an error in the result), ``lose_next_reply`` (all
    applied, then ``BrokerError`` as if the reply had been lost); ``restart_empty`` loses stream and fence.
    """

    def __init__(self, field_names: Sequence[str], *, fence: int | None = None) -> None:
        self.field_names = tuple(field_names)
        #: The highest position appended (``None``: no fence key); tests may set it (a fence left by others).
        self.fence = fence
        #: The stream: ``(stream id, field -> value)`` in order.
        self.entries: list[tuple[str, dict[str, str]]] = []
        self.origin: str | None = None
        self.publishes = 0  # publish calls that reached the "broker" (non-empty batches)
        self._last: tuple[int, int] | None = None  # last generated id; None: no stream
        self._fail = 0
        self._partial: int | None = None
        self._lose_reply = False

    # ---- faults ----------------------------------------------------------------------------------

    def fail_next(self, n: int = 1) -> None:
        """The next ``n`` publishes raise a transient ``BrokerError`` before applying anything."""
        self._fail += n

    def partial_next(self, k: int) -> None:
        """The next publish applies its first ``k`` events, then reports a transient error (``len(ids) == k``)."""
        self._partial = k

    def lose_next_reply(self) -> None:
        """The next publish applies the whole batch, then raises a transient ``BrokerError`` (reply lost)."""
        self._lose_reply = True

    def restart_empty(self) -> None:
        """Lose the stream, the fence and the origin (a Redis restart without persistence)."""
        self.entries, self.fence, self.origin, self._last = [], None, None, None

    # ---- Publisher -------------------------------------------------------------------------------

    def high_water(self) -> int:
        """The fence value (0 if none)."""
        return self.fence or 0

    def publish(self, batch: Sequence[Outgoing]) -> PublishResult:
        """Append the batch in order above the fence, as the fence script does (faults permitting)."""
        for o in batch:
            position_arg(o.seq)  # the same ValueError as the Redis publisher
        if not batch:
            return PublishResult([])
        self.publishes += 1
        if self._fail:
            self._fail -= 1
            raise BrokerError("injected: broker unavailable", transient=True)
        upto, self._partial = (len(batch) if self._partial is None else self._partial), None
        lose, self._lose_reply = self._lose_reply, False
        before = -1 if self.fence is None else self.fence
        fresh = self._last is None
        hwm = max(before, 0)
        ids: list[str | None] = []
        for o in batch[:upto]:
            if o.seq <= hwm:
                ids.append(None)
                continue
            sid = self._next_id()
            if fresh and self.origin is None:
                self.origin = sid
            self.entries.append((sid, dict(zip(self.field_names, o.values, strict=True))))
            ids.append(sid)
            hwm = self.fence = o.seq
        if lose:
            raise BrokerError("injected: reply lost after the batch was applied", transient=True)
        error = BrokerError("injected: failed part-way", transient=True) if upto < len(batch) else None
        return PublishResult(ids, error, fence_before=before, stream_fresh=fresh)

    def locate(self, event_ids: Collection[str], scan: int) -> dict[str, str]:
        """Stream ids of the given events among the ``scan`` newest entries."""
        want = set(event_ids)
        newest = self.entries[::-1][: max(scan, 0)]
        return {f["event_id"]: sid for sid, f in newest if f.get("event_id") in want}

    def state(self) -> StreamState:
        """The fence and the stream's shape, as ``RedisStreamPublisher.state``."""
        if self._last is None:
            return StreamState(self.fence, False, origin=self.origin)
        return StreamState(
            fence=self.fence,
            exists=True,
            length=len(self.entries),
            first_id=self.entries[0][0] if self.entries else None,
            last_id=f"{self._last[0]}-{self._last[1]}",
            origin=self.origin,
        )

    def close(self) -> None:
        """Nothing to release."""

    def _next_id(self) -> str:
        """A new stream id as Redis makes them: milliseconds, then a counter within the millisecond."""
        ms = int(time.time() * 1000)
        last = self._last
        self._last = (ms, 0) if last is None or ms > last[0] else (last[0], last[1] + 1)
        return f"{self._last[0]}-{self._last[1]}"
