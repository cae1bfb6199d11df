"""systemd's service notification protocol (sd_notify(3)): READY, STATUS, WATCHDOG and STOPPING datagrams.

Written here rather than taken from PyPI: ``sdnotify`` is unmaintained since 2017 and hides send errors,
``systemd-python`` needs the libsystemd headers to build, and ``cysystemd`` is a 2.4 MB compiled wheel
for glibc >= 2.34 only -- for a protocol that is one datagram on a Unix socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from outbox.liveness import Liveness

log = logging.getLogger("outbox.sdnotify")


def _address(value: str) -> str | None:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or ``@name`` in the abstract namespace."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None  # vsock and other transports: not supported


def watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process (``WATCHDOG_USEC``/``WATCHDOG_PID``), or ``None``."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class SystemdNotify(Liveness):
    """Report to systemd: READY=1 with the first state, STATUS= on each change, WATCHDOG=1 while alive."""

    def __init__(self, address: str, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        # Ping at least four times per timeout: systemd asks for every half, and the loop adds some delay.
        self.every = watchdog / 4 if watchdog else Liveness.every
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A datagram to a Unix socket blocks while the receiver's queue is full (net.unix.max_dgram_qlen, 10 by
        # default): a notify socket nobody reads must cost a dropped notification, never a wedged daemon that
        # cannot even act on SIGTERM.
        self._sock.settimeout(0.2)
        self._ready = False
        self._status: str | None = None
        self._pinged = 0.0
        self._stopping = False
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotify | None:
        """A notifier for ``$NOTIFY_SOCKET``, or ``None`` when the process does not run under systemd."""
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            return None
        address = _address(raw)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s: unsupported address, not notifying systemd", raw)
            return None
        return cls(address, watchdog_seconds(env))

    def send(self, *lines: str) -> None:
        """Send one notification (newline-separated assignments); a failure is logged once, never raised."""
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd on %r: %s", self.address, exc)

    def alive(self) -> None:
        """WATCHDOG=1, at most every ``every`` seconds (a no-op without a watchdog)."""
        if self.watchdog is None:
            return
        now = time.monotonic()
        if now - self._pinged >= self.every:
            self._pinged = now
            self.send("WATCHDOG=1")

    def state(self, text: str) -> None:
        """STATUS=text when it changed; the first call also says READY=1."""
        if text == self._status or self._stopping:
            return
        self._status = text
        if self._ready:
            self.send("STATUS=" + text)
        else:
            self._ready = True
            self.send("READY=1", "STATUS=" + text)

    def stopping(self) -> None:
        """STOPPING=1 (once)."""
        if not self._stopping:
            self._stopping = True
            self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
