"""``python -m outbox.relay``: run the relay daemon with settings from the environment."""

from __future__ import annotations

import sys

from outbox.daemon import capture_early_signals

_early = capture_early_signals()  # before the relay's code is imported: a stop request then still exits 0

from outbox.relay.cli import main  # noqa: E402 - after the handlers on purpose

sys.exit(main(early_signals=_early))
