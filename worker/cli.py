"""Process entry point of the worker (``python -m outbox.worker``, ``outbox worker``): see ``outbox.daemon``."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry

from outbox.daemon import Program
from outbox.daemon import main as daemon_main
from outbox.daemon import serve as daemon_serve
from outbox.worker.consumer import Worker
from outbox.worker.settings import WorkerSettings, load_worker_settings


def _registry(worker: Worker) -> CollectorRegistry:
    return worker.metrics.registry or REGISTRY


PROGRAM: Program[WorkerSettings] = Program(
    name="worker", load=load_worker_settings, build=Worker, registry=_registry,
    stop_note="finishing the entries in hand",
)  # fmt: skip


def serve(settings: WorkerSettings, *, once: bool = False) -> int:
    """Run a worker until SIGTERM/SIGINT (or until idle with ``once``); returns the exit code."""
    return daemon_serve(PROGRAM, settings, once=once)


def main(argv: Sequence[str] | None = None, early_signals: Sequence[int] = ()) -> int:
    """``python -m outbox.worker [--once]``: settings from ``OUTBOX_*`` / ``OUTBOX_WORKER_*`` variables."""
    return daemon_main(PROGRAM, argv, early_signals)
