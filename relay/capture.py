"""Choose the relay for the capture mode: ``poll`` (the outbox table) or ``wal`` (the slot, plus the table)."""

from __future__ import annotations

import threading

from outbox.liveness import Liveness
from outbox.relay.loop import Relay, RelayStats
from outbox.relay.wal import WalRelay
from outbox.settings import Settings


class WalAndTable:
    """WAL mode's process: the slot's relay, and next to it (own thread, own lease) the table's relay.

    The table still receives rows in WAL mode: dead rows replayed by an operator (`outbox replay` makes them
    pending), events of writers still in poll mode during a switch-over, and whatever was pending when the mode
    was switched. The table relay publishes those through its own fence; while the table has nothing pending it
    sleeps on LISTEN and costs nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.wal = WalRelay(settings)
        self.table = Relay(settings)
        self.liveness: Liveness = Liveness()

    def stop(self) -> None:
        """Stop both relays."""
        self.table.stop()
        self.wal.stop()

    def run(self, *, until_idle: bool = False) -> RelayStats:
        """Run both until ``stop()`` (or both idle); the counters are summed."""
        self.wal.liveness = self.liveness
        errors: list[BaseException] = []

        def table() -> None:
            try:
                self.table.run(until_idle=until_idle)
            except BaseException as exc:  # re-raised by run() below
                errors.append(exc)
                self.wal.stop()

        thread = threading.Thread(target=table, name="relay-table", daemon=True)
        thread.start()
        try:
            stats = self.wal.run(until_idle=until_idle)
        finally:
            self.table.stop()
            thread.join()
        if errors:
            raise errors[0]
        t = self.table.stats
        stats.published += t.published
        stats.fence_skipped += t.fence_skipped
        stats.dead += t.dead
        stats.failed += t.failed
        return stats


def build(settings: Settings) -> Relay | WalAndTable:
    """The relay for ``settings.capture``."""
    return WalAndTable(settings) if settings.capture == "wal" else Relay(settings)
