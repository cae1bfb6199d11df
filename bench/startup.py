"""Start-up time of the CLI and of ``import outbox`` (issue 7 targets), in fresh interpreters.

Usage: python bench/startup.py [-n 10] [--database-url URL]

Each case runs ``n`` times, each time in a new subprocess: a cold interpreter, but a warm page cache
(the files were read by earlier runs; run once first if the cache may be cold). Wall time from spawn
to exit, or for ``outbox status`` to its first line on stdout (the database URL comes from
``--database-url``, OUTBOX_DATABASE_URL or OUTBOX_TEST_DATABASE_URL, and the database must hold the
outbox tables: run ``outbox migrate`` on it first). The environment is passed on, so
``PYTHONPATH=/path/to/other/checkout python bench/startup.py`` measures another checkout with this venv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUTBOX = str(Path(sys.executable).with_name("outbox"))
PY = sys.executable
# What a server action needs to call record: the write API, and then its first call validates one event
# (which loads that event type's contract module). No connection: record stops at UnsupportedConnection.
FIRST_RECORD = (
    "import outbox\n"
    "try:\n"
    "    outbox.record(None, 'TICKET_STATUS_CHANGED', {'ticketId': '6b0c9c59-6d0b-4d64-9a38-0d7c86c2a2f1',"
    " 'previousStatusId': 'open', 'newStatusId': 'closed'}, tenant_id='t1')\n"
    "except outbox.errors.OutboxError as exc:\n"
    "    assert type(exc).__name__ == 'UnsupportedConnection', exc\n"
)


def _run(argv: list[str], env: dict[str, str], first_line: bool) -> float:
    t0 = time.perf_counter()
    if not first_line:
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        rest = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {line}{rest}")
    return elapsed


def main() -> int:
    """Print median/min/max start-up time per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs per case (default 10)")
    parser.add_argument("--database-url", help="for `outbox status` (default: environment)")
    args = parser.parse_args()
    env = dict(os.environ)
    dsn = args.database_url or env.get("OUTBOX_DATABASE_URL") or env.get("OUTBOX_TEST_DATABASE_URL")
    cases: list[tuple[str, list[str], float, bool]] = [
        ("outbox --help", [OUTBOX, "--help"], 0.3, False),
        ("import outbox (record API)", [PY, "-c", "from outbox import record, arecord, record_many, Event, Actor"],
         0.5, False),
        ("import outbox + first record()", [PY, "-c", FIRST_RECORD], 0.5, False),
    ]  # fmt: skip
    if dsn:
        env["OUTBOX_DATABASE_URL"] = dsn
        cases.append(("outbox status, first line", [OUTBOX, "status"], 0.6, True))
    else:
        print("no database URL: skipping `outbox status`", file=sys.stderr)
    for _, argv, _, first in cases:  # warm the page cache and the bytecode caches
        _run(argv, env, first)
    print(f"{'case':32} {'median':>8} {'min':>8} {'max':>8} {'target':>8}   (s, n={args.n}, fresh interpreter each)")
    for name, argv, target, first in cases:
        times = [_run(argv, env, first) for _ in range(args.n)]
        med = statistics.median(times)
        flag = "" if med <= target else "  over target"
        print(f"{name:32} {med:8.3f} {min(times):8.3f} {max(times):8.3f} {target:8.1f}{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
