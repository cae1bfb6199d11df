"""Process runner of the relay and the worker: logging, signals, metrics endpoint, systemd notify, exit codes.

Exit codes: 0 after a stop request (or ``--once`` drained), 2 configuration error, 4
(``EXIT_TABLES_MISSING``) when the outbox tables are missing. ``python -m outbox.daemon --health`` is a
container health check: it asks the metrics endpoint how long ago the main loop last reported alive.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from outbox.errors import EXIT_TABLES_MISSING, ConfigurationError, SchemaNotInstalled
from outbox.liveness import Fanout, Liveness
from outbox.sdnotify import SystemdNotify
from outbox.settings import DaemonSettings

EXIT_CONFIG = 2
ALIVE_METRIC = "outbox_daemon_alive_timestamp_seconds"

S = TypeVar("S", bound=DaemonSettings)


class Loop(Protocol):
    """What the runner needs of a daemon (``Relay``, ``Worker``)."""

    liveness: Liveness

    def run(self, *, until_idle: bool = False) -> Any:
        """Work until ``stop()`` (or until idle)."""
        ...

    def stop(self) -> None:
        """Ask ``run`` to return after the work in hand."""
        ...


@dataclass(frozen=True)
class Program(Generic[S]):
    """One daemon: how to load its settings and build its loop, and what to log when it stops."""

    name: str
    load: Callable[[], S]
    build: Callable[[S], Loop]
    registry: Callable[[Any], CollectorRegistry] = lambda _loop: REGISTRY
    summary: Callable[[Any], str] | None = None
    stop_note: str = "finishing the work in hand"


_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


class AliveGauge(Liveness):
    """Liveness as a metric: the Unix time the main loop last reported alive (for ``--health``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        if registry not in _GAUGES:
            _GAUGES[registry] = Gauge(ALIVE_METRIC, "Unix time the main loop last reported alive", registry=registry)
        self.gauge = _GAUGES[registry]
        self._last = 0.0

    def alive(self) -> None:
        """Set the gauge (at most once per ``every``)."""
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.gauge.set_to_current_time()

    def state(self, text: str) -> None:
        """Ready: the loop is alive."""
        self.alive()


def capture_early_signals() -> list[int]:
    """From now until ``serve`` takes over, SIGTERM/SIGINT are remembered, not fatal; the list they go in.

    ``python -m outbox.relay`` / ``outbox.worker`` call it before importing the daemon's code: a stop request
    while that import runs must still end in a clean exit 0 (pass the list to ``main(early_signals=...)``).
    """
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    return received


def config_error(exc: ConfigurationError) -> int:
    """Print a configuration error as one line; the exit code."""
    print(f"configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def serve(program: Program[S], settings: S, *, once: bool = False, early_signals: Sequence[int] = ()) -> int:
    """Run a daemon until SIGTERM/SIGINT (or until idle with ``once``); returns the process exit code."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    plog = logging.getLogger(f"outbox.{program.name}")
    try:
        loop = program.build(settings)
    except ConfigurationError as exc:
        return config_error(exc)
    hooks: list[Liveness] = []
    notify = SystemdNotify.from_env()
    if notify is not None:
        hooks.append(notify)
        wd = f"watchdog {notify.watchdog:g}s" if notify.watchdog else "no watchdog"
        plog.info("notifying systemd on %s (%s)", notify.address.replace("\0", "@"), wd)
    server = None
    if settings.metrics_port is not None:
        registry = program.registry(loop)
        try:
            server, _thread = _start_metrics(settings.metrics_port, settings.metrics_addr, registry)
        except OSError as exc:
            where = f"{settings.metrics_addr}:{settings.metrics_port}"
            reason = f"cannot serve metrics on {where}: {exc.strerror or exc}"
            return config_error(ConfigurationError(type(settings).env_name("metrics_port"), reason))
        plog.info("metrics on %s:%d/metrics", settings.metrics_addr, server.server_port)
        hooks.append(AliveGauge(registry))
    liveness = loop.liveness = Fanout(*hooks)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        plog.info("received %s, %s", signal.Signals(signum).name, program.stop_note)
        liveness.stopping()
        loop.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if early_signals:
        plog.info("stop requested during start-up")
        liveness.stopping()
        loop.stop()
    try:
        result = loop.run(until_idle=once)
    except SchemaNotInstalled as exc:
        print(exc, file=sys.stderr)
        return EXIT_TABLES_MISSING
    except ConfigurationError as exc:  # found while running (e.g. OUTBOX_REDIS_STRICT at the first Redis check)
        return config_error(exc)
    finally:
        liveness.stopping()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
        if notify is not None:
            notify.close()
    if program.summary is not None:
        plog.info("%s", program.summary(result))
    return 0


def _start_metrics(port: int, addr: str, registry: CollectorRegistry) -> Any:
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=registry)


def main(program: Program[S], argv: Sequence[str] | None = None, early_signals: Sequence[int] = ()) -> int:
    """``python -m outbox.<name> [--once]``: settings from the environment; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    unknown = [a for a in args if a != "--once"]
    if unknown:
        print(f"usage: python -m outbox.{program.name} [--once]  (unknown: {' '.join(unknown)})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = program.load()
        settings.require_database()
        settings.require_redis()
    except ConfigurationError as exc:
        return config_error(exc)
    return serve(program, settings, once="--once" in args, early_signals=early_signals)


def health(port: int, *, max_age: float = 60.0, host: str = "127.0.0.1") -> str | None:
    """``None`` when the daemon serving metrics on ``port`` reported alive within ``max_age`` s, else why not."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
    except OSError as exc:
        return f"metrics endpoint {host}:{port} not answering: {exc}"
    for line in body.splitlines():
        if line.startswith(ALIVE_METRIC + " "):
            age = time.time() - float(line.split()[1])
            return None if age <= max_age else f"main loop silent for {age:.0f}s (limit {max_age:g}s)"
    return f"{ALIVE_METRIC} not reported yet"


def _health_main(argv: Sequence[str]) -> int:
    import argparse
    import os

    p = argparse.ArgumentParser(prog="python -m outbox.daemon --health", description=health.__doc__)
    p.add_argument("--health", action="store_true", required=True)
    p.add_argument("--port", type=int, help="metrics port (default: OUTBOX_METRICS_PORT or OUTBOX_WORKER_METRICS_PORT)")
    p.add_argument("--max-age", type=float, default=60.0, help="seconds the main loop may stay silent")
    ns = p.parse_args(argv)
    port = ns.port
    for variable in ("OUTBOX_METRICS_PORT", "OUTBOX_WORKER_METRICS_PORT"):
        if port or not os.environ.get(variable):
            continue
        value = os.environ[variable]
        if not value.strip().isdigit() or not 0 < int(value) < 65536:
            return config_error(ConfigurationError(variable, f"not a port number from 1 to 65535: {value!r}"))
        port = int(value)
    if not port:
        print("unhealthy: no metrics port (set OUTBOX_METRICS_PORT or pass --port)", file=sys.stderr)
        return 1
    problem = health(port, max_age=ns.max_age)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_health_main(sys.argv[1:]))
