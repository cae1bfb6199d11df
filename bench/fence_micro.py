"""Micro-benchmark of the fence script: 100k events in batches of 1000 through ``RedisStreamPublisher``.

Compares the working tree's publisher with the one at a git revision (``--ref``, default HEAD), interleaved,
on private keys (``bench:fence-micro:<run>:*``, deleted afterwards) of the given Redis. Per variant and round:
``publish`` wall time (Python packing, round trips, script) and the time Redis spent in the script (INFO
commandstats, EVALSHA), first for 100k new events, then for a re-send of every batch (all skipped by the
fence). Prints the median of the rounds, in ms per 100k events, and how many events were appended (fewer than
sent when the fence cannot tell positions apart: the earlier script above 2^53, e.g. ``--base 1152921504606846976``).

    python bench/fence_micro.py --redis-url redis://127.0.0.1:6379/0 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from outbox import wire
from outbox.relay import publisher as current

ROOT = Path(__file__).resolve().parent.parent


def _module_at(ref: str) -> ModuleType:
    """``relay/publisher.py`` as of git revision ``ref``, imported under a private name."""
    src = subprocess.run(
        ["git", "show", f"{ref}:relay/publisher.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "publisher_ref.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("publisher_ref", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _values(i: int) -> list[str]:
    return [
        str(uuid.uuid4()), "", "status", "TICKET_STATUS_CHANGED", "t1", "2026-01-01T00:00:00.000Z", "",
        "open", "closed", f'{{"ticketId": "{i}", "newStatusId": "closed"}}', "",
    ]  # fmt: skip


def _evalsha(client: redis.Redis) -> tuple[int, int]:
    """EVALSHA calls and microseconds Redis has spent in them so far (INFO commandstats)."""
    st = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(st.get("calls", 0)), int(st.get("usec", 0))


def _timed(client: redis.Redis, fn: Any, calls: int) -> tuple[float, float]:
    """Wall seconds of ``fn()`` and Redis' own seconds in its EVALSHA calls (NaN when someone else's EVALSHA
    ran meanwhile on the shared server, so the server figure would not be ours alone)."""
    c0, u0 = _evalsha(client)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    c1, u1 = _evalsha(client)
    return wall, (u1 - u0) / 1e6 if c1 - c0 == calls else float("nan")


def _round(mod: Any, client: redis.Redis, prefix: str, n: int, batch: int, base: int) -> list[float]:
    stream = f"{prefix}:{uuid.uuid4().hex[:8]}"
    pub = mod.RedisStreamPublisher(client, stream, mod.fence_key(stream, "bench"), wire.FIELDS)
    events = [mod.Outgoing(base + i, _values(i)) for i in range(1, n + 1)]
    batches = [events[i : i + batch] for i in range(0, n, batch)]

    added = 0

    def publish() -> None:
        nonlocal added
        for b in batches:
            r = pub.publish(b)
            assert r.error is None
            added += sum(i is not None for i in r.ids)  # below n: positions a double cannot tell apart

    def resend() -> None:
        for b in batches:
            assert pub.publish(b).ids[-1] is None

    client.script_load(mod._FENCE_LUA)  # outside the measurement
    first = _timed(client, publish, len(batches))
    again = _timed(client, resend, len(batches))
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        client.delete(key)
    return [*first, *again, added]


def main() -> None:
    """Run the comparison and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--ref", default="HEAD", help="git revision of the baseline publisher")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=int, default=0, help="first position - 1 (e.g. 2**60 for large positions)")
    opts = ap.parse_args()
    client = redis.Redis.from_url(opts.redis_url)
    prefix = f"bench:fence-micro:{uuid.uuid4().hex[:8]}"
    variants = {f"ref {opts.ref}": _module_at(opts.ref), "working tree": current}
    runs: dict[str, list[list[float]]] = {k: [] for k in variants}
    try:
        for _ in range(opts.rounds):
            for name, mod in variants.items():
                runs[name].append(_round(mod, client, prefix, opts.events, opts.batch, opts.base))
    finally:
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.delete(key)
    print(f"{opts.events} events, batches of {opts.batch}, first position {opts.base + 1}, median of {opts.rounds}")
    print("| variant | publish() wall ms | in Redis ms | re-send wall ms | re-send in Redis ms | appended |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        cols = [statistics.median(r[i] for r in rs) * 1000 for i in range(4)]
        print(f"| {name} | " + " | ".join(f"{c:.0f}" for c in cols) + f" | {min(int(r[4]) for r in rs)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
