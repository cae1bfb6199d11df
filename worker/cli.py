"""Process entry point of the worker: logging, signals, exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from prometheus_client import REGISTRY

from outbox.errors import ConfigurationError
from outbox.worker.consumer import Worker
from outbox.worker.settings import WorkerSettings, load_worker_settings

log = logging.getLogger("outbox.worker")


def serve(settings: WorkerSettings, *, once: bool = False) -> int:
    """Run a worker until SIGTERM/SIGINT (or until idle with ``once``); returns the exit code (0)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, finishing the entries in hand", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_addr, registry=worker.metrics.registry or REGISTRY
        )
        log.info("metrics on %s:%d/metrics", settings.metrics_addr, server.server_port)
    try:
        worker.run(until_idle=once)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m worker [--once]``: settings from ``OUTBOX_*`` / ``OUTBOX_WORKER_*`` variables."""
    args = sys.argv[1:] if argv is None else argv
    unknown = [a for a in args if a != "--once"]
    if unknown:
        print(f"usage: python -m worker [--once]  (unknown: {' '.join(unknown)})", file=sys.stderr)
        return 2
    try:
        settings = load_worker_settings()
        settings.require_database()
        settings.require_redis()
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return serve(settings, once="--once" in args)
