"""Detect that Redis lost published events: a fence below what Postgres knows was appended, or a reset stream.

The relay feeds this what it knows was appended (positions and stream ids, from Postgres at takeover and
from every publish) and what Redis reports (the fence script's view before each batch, and a periodic
``StreamState``). A loss is reported once per incident: afterwards the baseline is what Redis holds now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from outbox.relay.publisher import PublishResult, StreamState, stream_id_key


@dataclass(frozen=True, slots=True)
class Loss:
    """One detected loss: which part (``fence``, ``stream`` or both), and the position Redis still vouches for."""

    what: str
    detail: str
    #: Published rows with a position above this may be missing from the stream.
    after_seq: int


class LossWatch:
    """Compares what Redis holds with what the relay knows it appended; calls ``report`` once per loss."""

    def __init__(self, report: Callable[[Loss], None]) -> None:
        self._report = report
        self.floor = -1  # highest position known appended (-1: none known; a missing fence is -1)
        self.last_sid: str | None = None  # newest stream id known appended

    def baseline(self, floor: int | None, last_sid: str | None) -> None:
        """What Postgres knows was appended (at takeover): the highest published position and its stream id."""
        self.floor = max(self.floor, floor if floor is not None else -1)
        if last_sid and (self.last_sid is None or stream_id_key(last_sid) > stream_id_key(self.last_sid)):
            self.last_sid = last_sid

    def _check(self, fence: int, stream_gone: bool, where: str) -> None:
        parts: list[str] = []
        if fence < self.floor:
            found = "no fence key" if fence < 0 else f"the fence at position {fence}"
            parts.append(f"{found} where position {self.floor} was appended")
        if stream_gone and self.last_sid is not None:
            parts.append(f"a new stream where entry {self.last_sid} was appended")
        if not parts:
            return
        what = "+".join(p for p, hit in (("fence", fence < self.floor), ("stream", bool(stream_gone))) if hit)
        after = max(fence, 0) if fence < self.floor else 0
        self._report(Loss(what, f"{' and '.join(parts)} ({where})", after))
        self.floor = fence  # the new baseline: what Redis holds now
        if stream_gone:
            self.last_sid = None

    def on_state(self, state: StreamState) -> None:
        """A periodic look at Redis."""
        gone = not state.exists or (
            self.last_sid is not None
            and (state.last_id is None or stream_id_key(state.last_id) < stream_id_key(self.last_sid))
        )
        self._check(state.fence if state.fence is not None else -1, gone, "periodic check")

    def on_publish(self, result: PublishResult, seqs: list[int]) -> None:
        """After a fence script run: ``seqs`` are the positions of the batch sent, in order."""
        self._check(result.fence_before, result.stream_fresh, "while publishing")
        appended = [s for s, sid in zip(seqs, result.ids, strict=False) if sid is not None]
        skipped = [s for s, sid in zip(seqs, result.ids, strict=False) if sid is None]
        if appended or skipped:
            self.floor = max(self.floor, *appended, *skipped)
        last = next((sid for sid in reversed(result.ids) if sid is not None), None)
        if last is not None:
            self.last_sid = last
