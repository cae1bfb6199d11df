"""Liveness hooks a process runner hangs on a daemon's main loop (systemd notify, health metrics).

The relay and the worker call ``alive()`` from the loop that does the work, ``state()`` when their role
changes, and ``wait()`` instead of a bare ``Event.wait`` for long sleeps, so a wedged loop stops reporting
while a loop that is merely backing off keeps reporting. The base class does nothing.
"""

from __future__ import annotations

import threading
import time


class Liveness:
    """No-op hooks; subclasses report somewhere. ``every`` is the longest the loop may stay silent (s)."""

    every: float = 1.0

    def alive(self) -> None:
        """The main loop is making progress (called often: implementations rate-limit themselves)."""

    def state(self, text: str) -> None:
        """The process is up and its role is ``text`` (e.g. "leader (epoch 3)", "standby")."""

    def stopping(self) -> None:
        """The process is shutting down."""

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """``stop.wait(seconds)`` that keeps calling ``alive()`` at least every ``every`` seconds."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return stop.is_set()
            if stop.wait(min(left, self.every)):
                return True
            self.alive()


class Fanout(Liveness):
    """Forward every hook to several ``Liveness`` objects; ``every`` is the smallest of theirs."""

    def __init__(self, *targets: Liveness) -> None:
        self.targets = targets
        self.every = min((t.every for t in targets), default=Liveness.every)

    def alive(self) -> None:
        """Forward ``alive``."""
        for t in self.targets:
            t.alive()

    def state(self, text: str) -> None:
        """Forward ``state``."""
        for t in self.targets:
            t.state(text)

    def stopping(self) -> None:
        """Forward ``stopping``."""
        for t in self.targets:
            t.stopping()
