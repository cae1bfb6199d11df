"""Process entry point of the relay (``python -m outbox.relay``, ``outbox relay``): see ``outbox.daemon``."""

from __future__ import annotations

from collections.abc import Sequence

from outbox.daemon import Program
from outbox.daemon import main as daemon_main
from outbox.daemon import serve as daemon_serve
from outbox.relay.capture import build
from outbox.relay.loop import RelayStats
from outbox.settings import Settings, load_settings


def _summary(stats: RelayStats) -> str:
    return (
        f"relay stopped: published={stats.published} fence_skipped={stats.fence_skipped} "
        f"dead={stats.dead} failed={stats.failed}"
    )


PROGRAM: Program[Settings] = Program(
    name="relay", load=load_settings, build=build, summary=_summary, stop_note="finishing the batch in hand"
)


def serve(settings: Settings, *, once: bool = False, early_signals: Sequence[int] = ()) -> int:
    """Run a relay until SIGTERM/SIGINT (or until idle with ``once``); returns the exit code."""
    return daemon_serve(PROGRAM, settings, once=once, early_signals=early_signals)


def main(argv: Sequence[str] | None = None, early_signals: Sequence[int] = ()) -> int:
    """``python -m outbox.relay [--once]`` entry point."""
    return daemon_main(PROGRAM, argv, early_signals)
