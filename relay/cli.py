"""Process entry point of the relay: logging, signals, metrics endpoint, exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from outbox.errors import ConfigurationError
from outbox.relay.loop import Relay
from outbox.settings import Settings, load_settings

log = logging.getLogger("outbox.relay")


def serve(settings: Settings, *, once: bool = False, early_signals: list[int] | None = None) -> int:
    """Run a relay until SIGTERM/SIGINT (or until idle with ``once``); returns the exit code."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    relay = Relay(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, finishing the batch in hand", signal.Signals(signum).name)
        relay.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if early_signals:
        log.info("stop requested during start-up")
        relay.stop()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    stats = relay.run(until_idle=once)
    log.info(
        "relay stopped: published=%d fence_skipped=%d dead=%d failed=%d",
        stats.published, stats.fence_skipped, stats.dead, stats.failed,
    )  # fmt: skip
    return 0


def main(early_signals: list[int] | None = None) -> int:
    """``python -m relay`` entry point."""
    try:
        settings = load_settings()
        settings.require_database()
        settings.require_redis()
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return serve(settings, once="--once" in sys.argv[1:], early_signals=early_signals)
