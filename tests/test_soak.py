"""The chaos soak, short form (bench/soak.py): about 20 relay SIGKILLs at random instants, a Redis SIGKILL and
restart (AOF always), Postgres backend terminations and a fast Postgres restart, on servers of its own, with
writers, 3 relays and a worker as real processes. Nothing lost, duplicated or reordered; all ingested once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.soak
@pytest.mark.fault
def test_short_chaos_soak_loses_and_duplicates_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "1", "--kills", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n" + proc.stdout)
    assert result["relay_kills"] >= 20 and result["redis_restarts"] == 1 and result["postgres_restarts"] == 1, result
    assert result["backends_terminated"] > 0, result
    assert result["committed"] > 1000, result
    assert (result["lost"], result["duplicated"], result["out_of_order"]) == (0, 0, 0), result
    assert result["ingested"] == result["committed"], result
    assert proc.returncode == 0, proc.stdout
