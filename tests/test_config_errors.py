"""Configuration errors stop the process at start (finding 7 of issue 8), run as an operator would: the relay,
the worker and a CLI command as subprocesses. A malformed port in either URL, a wrong Redis password and a wrong
Postgres password each give exit code 2 and one line naming the variable, no traceback, and are never retried as
an outage. The servers that check passwords are the test's own (a redis-server with ``--requirepass``, a Postgres
with SCRAM for TCP logins)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import outbox
from outbox.embedded import PostgresServer, free_port, redis_server_binary
from tests.conftest import ROOT, make_settings, relay_env, status_counts, wait_for

RELAY = ["-m", "outbox.relay"]
WORKER = ["-m", "outbox.worker"]
STATUS = ["-m", "outbox.cli", "status"]
MIGRATE = ["-m", "outbox.cli", "migrate"]
WORKER_STATUS = ["-m", "outbox.cli", "worker", "status"]


def run_all(commands: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side with only ``env`` as OUTBOX_* configuration; 60 s each at most (the relay
    used to retry some of these forever)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    base.update(PYTHONPATH=ROOT, COLUMNS="200", **env)
    procs = [
        subprocess.Popen([sys.executable, *cmd], env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    results = []
    for cmd, proc in zip(commands, procs, strict=True):
        try:
            out, errs = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.wait()
            pytest.fail(f"{' '.join(cmd)} still running after 60s (retrying a configuration error?)")
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, errs))
    return results


def assert_refused(results: list[subprocess.CompletedProcess[str]], variable: str, *words: str) -> None:
    """Each exited 2 with exactly one line naming ``variable`` (and ``words``), no traceback, no outage."""
    for res in results:
        where = f"{' '.join(res.args)} (rc {res.returncode}):\n{res.stderr}"
        assert res.returncode == 2, where
        lines = [ln for ln in res.stderr.splitlines() if "configuration error" in ln]
        assert len(lines) == 1 and variable in lines[0], where
        assert all(w in lines[0] for w in words), where
        assert "Traceback" not in res.stderr and "unavailable" not in res.stderr, where


@pytest.mark.parametrize("port", ["54x2", "99999"], ids=["not-a-number", "out-of-range"])
def test_malformed_database_port(redis_url, port):
    env = {"OUTBOX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/test", "OUTBOX_REDIS_URL": redis_url}
    assert_refused(run_all([RELAY, WORKER, STATUS], env), "OUTBOX_DATABASE_URL", "port")


def test_malformed_database_port_among_several_hosts_and_in_the_query(redis_url):
    """libpq's multi-host form and ``?port=`` are checked too; a well-formed multi-host URL is accepted."""
    bad = ["postgresql://u@h1:5432,h2:5x3/db", "postgresql://u@h1/db?port=abc", "postgresql://u@[::1]:0/db"]
    for url in bad:
        assert_refused(run_all([STATUS], {"OUTBOX_DATABASE_URL": url}), "OUTBOX_DATABASE_URL", "port")
    from outbox.settings import load_settings

    ok = "postgresql://u:p%40ss@h1:5432,[::1]:5433,h3/db?port=5432,5433,5434&sslmode=disable"
    assert load_settings(database_url=ok).database_url == ok


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:63x9/0", "redis://127.0.0.1:70000/0", "redis://127.0.0.1:6379/zero"],
    ids=["port-not-a-number", "port-out-of-range", "db-not-a-number"],
)  # fmt: skip
def test_malformed_redis_url(db_url, url):
    env = {"OUTBOX_DATABASE_URL": db_url, "OUTBOX_REDIS_URL": url}
    assert_refused(run_all([RELAY, WORKER, STATUS], env), "OUTBOX_REDIS_URL")


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[int]:
    """A redis-server of this module's own, on a free port, that requires the password ``s3cret``."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "s3cret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password="s3cret", socket_connect_timeout=1)
    try:

        def up() -> bool:
            assert proc.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, what="redis-server with --requirepass")
        yield port
    finally:
        client.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("auth", [":wrong@", ""], ids=["wrong-password", "no-password"])
def test_wrong_redis_password(db_url, redis_with_password, auth):
    env = {"OUTBOX_DATABASE_URL": db_url, "OUTBOX_REDIS_URL": f"redis://{auth}127.0.0.1:{redis_with_password}/0"}
    assert_refused(run_all([RELAY, WORKER, WORKER_STATUS], env), "OUTBOX_REDIS_URL", "Redis")


@pytest.fixture(scope="module")
def postgres_with_password() -> Iterator[PostgresServer]:
    """A Postgres of this module's own where TCP logins of role ``app`` need SCRAM (password ``right``)."""
    srv = PostgresServer().start()
    try:
        with psycopg.connect(srv.url(), autocommit=True) as c:
            c.execute("SET password_encryption = 'scram-sha-256'")
            c.execute("CREATE ROLE app LOGIN PASSWORD 'right'")
            hba = Path(c.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
            # Rewritten in place: the file keeps the owner and mode the server needs to read it.
            with open(hba, "w") as fh:
                fh.write("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                         "host all all 127.0.0.1/32 scram-sha-256\n")  # fmt: skip
            c.execute("SELECT pg_reload_conf()")

        def scram_in_force() -> bool:
            try:
                psycopg.connect(srv.url().replace("postgres@", "app:wrong@"), connect_timeout=2).close()
            except psycopg.OperationalError as exc:
                return "password authentication failed" in str(exc)
            return False

        wait_for(scram_in_force, what="pg_hba.conf reloaded")
        yield srv
    finally:
        srv.close()


def test_wrong_postgres_password(redis_url, postgres_with_password):
    url = postgres_with_password.url().replace("postgres@", "app:wrong@")
    env = {"OUTBOX_DATABASE_URL": url, "OUTBOX_REDIS_URL": redis_url}
    assert_refused(
        run_all([RELAY, WORKER, STATUS, MIGRATE], env), "OUTBOX_DATABASE_URL", "password authentication failed"
    )


def test_migrate_against_an_unreachable_database_exits_3():
    """Nothing listens on the port: `outbox migrate` says "database unavailable" in one line, exit code 3 (it
    used to say "migration failed", exit code 1)."""
    (res,) = run_all([MIGRATE], {"OUTBOX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 3 and len(lines) == 1 and "database unavailable" in lines[0], res.stderr


# ---- one outage, two lines ------------------------------------------------------------------------------


def _db_errors(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    return samples.get("outbox_relay_db_errors_total", 0.0)


def test_one_outage_logs_one_line_when_it_starts_and_one_when_it_ends(db_url, redis_url, stream, rds, tmp_path):
    """statement_timeout = 1 ms on the relay's database: most statements fail, some succeed, for as long as it
    lasts. That is one outage: one "unavailable" line, and one "reachable again" line with the count of errors
    once the timeout is gone (it used to be one pair of lines per error)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        dbname = c.info.dbname
        c.execute(f'ALTER DATABASE "{dbname}" SET statement_timeout = 1')
    port = free_port()
    settings = make_settings(db_url, redis_url, stream, metrics_port=port)
    log = tmp_path / "relay.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "outbox.relay"], env=relay_env(settings), stderr=fh)
    try:
        with psycopg.connect(db_url, options="-c statement_timeout=0") as conn:
            for _ in range(20):
                outbox.record(conn, "TICKET_STATUS_CHANGED", {"ticketId": str(uuid.uuid4()), "previousStatusId": "a",
                              "newStatusId": "b"}, tenant_id="t1")  # fmt: skip
            conn.commit()
        wait_for(lambda: proc.poll() is None and _db_errors(port) >= 20, timeout=60, what="20 database errors")
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{dbname}" RESET statement_timeout')
        wait_for(lambda: status_counts(db_url).get("published") == 20, timeout=60, what="all published")
        wait_for(lambda: "reachable again" in log.read_text(), timeout=60, what="the end of the outage")
    finally:
        proc.terminate()
        rc = proc.wait(30)
    text = log.read_text()
    assert rc == 0, text
    starts = [ln for ln in text.splitlines() if "database unavailable" in ln]
    ends = [ln for ln in text.splitlines() if "database reachable again" in ln]
    assert len(starts) == 1 and len(ends) == 1, text
    errors = int(ends[0].rpartition("(")[2].split()[0])
    assert errors >= 20, ends[0]
