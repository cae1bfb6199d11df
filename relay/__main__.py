"""``python -m outbox.relay``: run the relay daemon with settings from the environment."""

from __future__ import annotations

import signal
import sys
from types import FrameType

# Catch SIGTERM/SIGINT from the very start: importing the contracts takes a moment, and a stop
# request in that window must still end in a clean exit 0.
_early: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _early.append(signum)


signal.signal(signal.SIGTERM, _remember)
signal.signal(signal.SIGINT, _remember)

from outbox.relay.cli import main  # noqa: E402 - after the handlers on purpose

sys.exit(main(early_signals=_early))
