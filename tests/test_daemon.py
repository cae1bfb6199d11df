"""The process runner of the relay and the worker: systemd notify (READY, STATUS, WATCHDOG, STOPPING) over a
real datagram socket, exit codes, and the container health check -- run as systemd would run them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox.errors import EXIT_TABLES_MISSING
from outbox.sdnotify import SystemdNotify, watchdog_seconds
from outbox.settings import Settings
from tests.conftest import ROOT, db_url_for, make_settings, relay_env
from tests.test_worker import worker_env, wsettings

WATCHDOG_USEC = "400000"  # 0.4 s: the daemon pings every 0.1 s


class NotifySocket:
    """A bound ``AF_UNIX`` datagram socket standing in for systemd's; ``env`` points a child at it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": WATCHDOG_USEC}

    def expect(self, key: str, value: str | None = None, timeout: float = 60.0) -> dict[str, str]:
        """Receive until a message has ``key`` (with ``value``); every message is kept in ``messages``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {key}={value or '*'} within {timeout}s; got {self.messages[-5:]}")
            self.sock.settimeout(left)
            try:
                raw = self.sock.recv(4096)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if key in msg and (value is None or msg[key] == value):
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """systemd's notify socket: a path (``/run/systemd/notify``) or an abstract name (``@...``)."""
    if request.param == "path":
        path = f"/tmp/outbox-notify-{uuid.uuid4().hex[:8]}.sock"  # short: sun_path holds 108 bytes
        ns = NotifySocket(path)
    else:
        ns = NotifySocket(f"@outbox-notify-{uuid.uuid4().hex[:8]}")
    yield ns
    ns.close()
    if request.param == "path":
        Path(ns.address).unlink(missing_ok=True)


def spawn(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT
    )


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err.decode(errors="replace")


def test_relay_tells_systemd_ready_alive_and_stopping(settings: Settings, notify_socket: NotifySocket) -> None:
    proc = spawn("outbox.relay", relay_env(settings) | notify_socket.env())
    try:
        ready = notify_socket.expect("READY", "1")
        assert ready["STATUS"].startswith("leader (epoch ")
        for _ in range(3):  # pings keep coming from the idle loop
            notify_socket.expect("WATCHDOG", "1")
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]
    notify_socket.expect("STOPPING", "1", timeout=5)
    assert [m for m in notify_socket.messages if "READY" in m] == [ready], "READY=1 is sent once"


def test_a_standby_relay_is_ready_too(db_url: str, redis_url: str, stream: str, rds: object) -> None:
    """READY=1 when the process is leader *or* standby: a second relay reports standby and pings."""
    settings = make_settings(db_url, redis_url, stream)
    first, second = NotifySocket(f"@outbox-a-{uuid.uuid4().hex[:8]}"), NotifySocket(f"@outbox-b-{uuid.uuid4().hex[:8]}")
    leader = spawn("outbox.relay", relay_env(settings) | first.env())
    standby = None
    try:
        assert first.expect("READY", "1")["STATUS"].startswith("leader")
        standby = spawn("outbox.relay", relay_env(settings) | second.env())
        assert second.expect("READY", "1")["STATUS"] == "standby"
        second.expect("WATCHDOG", "1")
        assert stop(leader)[0] == 0
        # The standby takes over once the leader released its lease, and says so.
        assert second.expect("STATUS")["STATUS"].startswith("leader (epoch ")
    finally:
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                stop(proc)
        first.close()
        second.close()


def test_worker_tells_systemd_ready_alive_and_stopping(
    db_url: str, redis_url: str, stream: str, rds: object, notify_socket: NotifySocket
) -> None:
    ws = wsettings(db_url, redis_url, stream, block_ms=100)
    proc = spawn("outbox.worker", worker_env(ws) | notify_socket.env())
    try:
        ready = notify_socket.expect("READY", "1")
        assert ready["STATUS"].startswith(f"reading {stream} as ")
        for _ in range(3):
            notify_socket.expect("WATCHDOG", "1")
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]
    notify_socket.expect("STOPPING", "1", timeout=5)


def test_watchdog_settings_follow_sd_watchdog_enabled() -> None:
    """WATCHDOG_USEC applies only to the process named by WATCHDOG_PID (when set); no socket = no notifier."""
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None and watchdog_seconds({}) is None
    assert SystemdNotify.from_env({}) is None
    assert SystemdNotify.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


@pytest.mark.parametrize("module", ["outbox.relay", "outbox.worker"])
def test_missing_tables_exit_4_with_one_line(pg_admin_url: str, redis_url: str, module: str) -> None:
    """Against an unmigrated database the daemons exit at once with EXIT_TABLES_MISSING (systemd does not
    restart on it: RestartPreventExitStatus) and one line, instead of retrying forever."""
    name = f"outbox_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        env |= {"OUTBOX_DATABASE_URL": db_url_for(pg_admin_url, name), "OUTBOX_REDIS_URL": redis_url,
                "OUTBOX_STREAM": f"test:{uuid.uuid4().hex[:8]}", "OUTBOX_LOG_LEVEL": "ERROR",
                "PYTHONPATH": ROOT}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert done.returncode == EXIT_TABLES_MISSING, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and " ERROR " not in ln]
    assert lines == ["outbox tables are missing: run `outbox migrate`"]


# Runs ``python -m <module>`` the way the interpreter does, but sends itself SIGTERM at the moment the daemon's
# code (``<module>.cli``) is first imported: a stop request that arrives while the process is still starting,
# made deterministic. (A SIGTERM sent right after spawning lands before any Python code runs: no handler can
# catch that one.)
STOP_DURING_IMPORT = """
import os, runpy, signal, sys

module = sys.argv.pop(1)

class StopOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == module + ".cli":
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, StopOnImport())
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["outbox.relay", "outbox.worker"])
def test_stop_request_during_start_up_exits_0(db_url: str, redis_url: str, stream: str, module: str) -> None:
    """SIGTERM while the daemon's code is still being imported: a clean exit 0, not death by the signal."""
    if module == "outbox.relay":
        env = relay_env(make_settings(db_url, redis_url, stream))
    else:
        env = worker_env(wsettings(db_url, redis_url, stream))
    cmd = [sys.executable, "-c", STOP_DURING_IMPORT, module]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stop requested during start-up" in done.stderr


def test_health_check_reads_the_alive_metric(settings: Settings) -> None:
    """``python -m outbox.daemon --health``: healthy while the relay's loop reports alive, not when it is gone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = relay_env(settings.model_copy(update={"metrics_port": port, "metrics_addr": "127.0.0.1"}))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outbox.daemon", "--health", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    proc = spawn("outbox.relay", env)
    try:
        deadline = time.monotonic() + 60
        while (res := check()).returncode != 0:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, res.stderr
            time.sleep(0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]
    gone = check()
    assert gone.returncode == 1 and gone.stderr.startswith("unhealthy: metrics endpoint")


@pytest.mark.parametrize("value", ["91o8", "70000"], ids=["not-a-number", "out-of-range"])
def test_health_check_with_a_malformed_metrics_port_exits_2(value: str) -> None:
    """``OUTBOX_METRICS_PORT`` that is not a port: one line naming the variable, exit code 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")} | {"OUTBOX_METRICS_PORT": value}
    done = subprocess.run(
        [sys.executable, "-m", "outbox.daemon", "--health"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"configuration error: OUTBOX_METRICS_PORT: not a port number from 1 to 65535: {value!r}"
    ]


def test_a_notify_socket_nobody_reads_never_wedges_the_relay(db_url: str, redis_url: str, stream: str, rds: object):
    """The relay pings every 0.1 s; once the unread socket's queue is full, each send gives up after a moment,
    so SIGTERM still stops the relay promptly (it used to block in sendto for as long as nobody read)."""
    sock = NotifySocket(f"@outbox-full-{uuid.uuid4().hex[:8]}")
    proc = spawn("outbox.relay", relay_env(make_settings(db_url, redis_url, stream)) | sock.env())
    try:
        assert sock.expect("READY", "1")["STATUS"].startswith("leader")
        time.sleep(3)  # the condition under test is time passing with nobody reading: ~30 pings for a 10-slot queue
        code, err = stop(proc)
        assert code == 0, err
        assert "cannot notify systemd" in err
    finally:
        sock.close()
