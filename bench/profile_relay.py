"""``profile``: where the relay spends a backlog drain.

1. Phase timing (no profiler overhead): the relay drains a backlog with thin timing wrappers, set in
   this process only, around Relay._claim_new (or _claim: mark + claim round trip + row objects, on
   whichever thread runs it), Relay._encode (payload validation + wire fields, per row),
   Relay._process and the publisher's publish (fence script round trip). The wrappers go by method
   name; if the relay renames them, adjust ``phases`` here.
2. cProfile of a second drain of the same size: top functions by own time and by cumulative time.
   cProfile sees the main thread only (a claim made ahead on a worker thread shows up as the main
   thread waiting for its result).
The relay code is not changed.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from bench import common


@contextlib.contextmanager
def _timed(cls: Any, name: str, acc: dict[str, float], key: str) -> Iterator[None]:
    orig = getattr(cls, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            acc[key] += time.perf_counter() - t

    setattr(cls, name, wrapper)
    try:
        yield
    finally:
        setattr(cls, name, orig)


def _relay(dsn: str, redis_url: str, stream: str, batch_size: int) -> Any:
    from outbox.relay import Relay
    from outbox.settings import load_settings

    return Relay(load_settings(database_url=dsn, redis_url=redis_url, stream=stream, batch_size=batch_size))


def phases(env: common.Env, rows: int, batch_size: int) -> dict[str, Any]:
    """Wall-clock split of a drain. The main thread's time is split into ``_process`` (encode +
    publish + rest) and everything else (synchronous claims, waiting for a claim made ahead on
    another thread, renew, prune). Claim round trips are also timed on whichever thread runs them
    (``claim_any_thread``): when the relay claims ahead they overlap the main thread."""
    from outbox.relay.loop import Relay
    from outbox.relay.publisher import RedisStreamPublisher

    dsn = env.new_database("profile")
    common.fill_backlog(dsn, rows)
    stream = env.stream("profile")
    acc: dict[str, float] = defaultdict(float)
    relay = _relay(dsn, env.redis_url, stream, batch_size)
    common.wait_quiet("profile phases")  # profile runs are not repeated; see the drain part for figures
    gc.collect()
    claim_method = "_claim_new" if hasattr(Relay, "_claim_new") else "_claim"
    mark_method = "_mark_async" if hasattr(Relay, "_mark_async") else None
    with (
        _timed(Relay, claim_method, acc, "claim"),
        _timed(Relay, mark_method, acc, "mark") if mark_method else contextlib.nullcontext(),
        _timed(Relay, "_encode", acc, "encode"),
        _timed(Relay, "_process", acc, "process"),
        _timed(RedisStreamPublisher, "publish", acc, "publish"),
    ):
        t0 = time.perf_counter()
        stats = relay.run(until_idle=True)
        total = time.perf_counter() - t0
    env.delete_keys(stream)
    env.drop_database(dsn)
    n = stats.published
    rest = acc["process"] - acc["encode"] - acc["publish"]
    outside = total - acc["process"]
    parts = {
        "Relay._encode: validate_json + wire values, per row": acc["encode"],
        "publisher.publish: fence script round trip": acc["publish"],
        "rest of Relay._process: loop, bookkeeping, marks written there": rest,
        "main thread outside _process: claims (or waiting for the claim made ahead), renew, prune": outside,
        f"(overlapping) Relay.{claim_method} on any thread: claim round trip + rows"
        + ("" if mark_method else " (+ the previous batch's mark)"): acc["claim"],
    }
    if mark_method:
        parts[f"(overlapping) Relay.{mark_method} on the marker thread: mark round trip"] = acc["mark"]
    return {
        "events": n,
        "seconds": round(total, 3),
        "events_per_s": round(n / total, 1),
        "batches": stats.batches,
        "claim_method": claim_method,
        "phases": {
            k: {"seconds": round(v, 3), "pct": round(100 * v / total, 1), "us_per_event": round(1e6 * v / n, 2)}
            for k, v in parts.items()
        },
    }


def cprofile(env: common.Env, rows: int, batch_size: int, top: int = 25) -> dict[str, Any]:
    dsn = env.new_database("profile")
    common.fill_backlog(dsn, rows)
    stream = env.stream("profile")
    relay = _relay(dsn, env.redis_url, stream, batch_size)
    common.wait_quiet("cProfile run")
    gc.collect()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    stats = relay.run(until_idle=True)
    prof.disable()
    total = time.perf_counter() - t0
    env.delete_keys(stream)
    env.drop_database(dsn)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(str(common.RESULTS_DIR / "profile-relay.prof"))
    ps = pstats.Stats(prof)
    entries = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in ps.stats.items():  # type: ignore[attr-defined]
        short = file.replace(str(common.ROOT) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        entries.append({"function": f"{short}:{line}({func})", "calls": nc, "tottime": tt, "cumtime": ct})
    by_tot = sorted(entries, key=lambda e: -e["tottime"])[:top]
    by_cum = sorted(entries, key=lambda e: -e["cumtime"])[:top]
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    (common.RESULTS_DIR / "profile-relay.txt").write_text(text.getvalue())
    n = stats.published
    return {
        "events": n,
        "seconds_under_profiler": round(total, 3),
        "top_tottime": [dict(e, us_per_event=round(1e6 * e["tottime"] / n, 2)) for e in by_tot],
        "top_cumtime": [dict(e, us_per_event=round(1e6 * e["cumtime"] / n, 2)) for e in by_cum],
    }


def run(env: common.Env, *, rows: int, batch_size: int) -> dict[str, Any]:
    print(f"profile: relay drain of {rows:,} rows, batch {batch_size}: phase timing, then cProfile", flush=True)
    ph = phases(env, rows, batch_size)
    cp = cprofile(env, rows, batch_size)
    return {"part": "profile", "params": {"rows": rows, "batch_size": batch_size}, "phases": ph, "cprofile": cp}


def report(res: dict[str, Any]) -> str:
    ph = res["phases"]
    out = common.table(
        ["phase", "seconds", "% of drain", "µs/event"],
        [[k, v["seconds"], v["pct"], v["us_per_event"]] for k, v in ph["phases"].items()],
        title=f"profile: relay wall time over a {ph['events']:,}-row drain ({ph['events_per_s']:,.0f} events/s)",
    )
    cp = res["cprofile"]
    out += "\n" + common.table(
        ["function (by own time)", "calls", "own s", "cum s", "own µs/event"],
        [
            [e["function"], e["calls"], round(e["tottime"], 3), round(e["cumtime"], 3), e["us_per_event"]]
            for e in cp["top_tottime"][:15]
        ],
        title=f"profile: cProfile top 15 by own time ({cp['events']:,} events, {cp['seconds_under_profiler']}s "
        "under the profiler)",
    )
    out += "\n" + common.table(
        ["function (by cumulative time)", "calls", "cum s", "cum µs/event"],
        [[e["function"], e["calls"], round(e["cumtime"], 3), e["us_per_event"]] for e in cp["top_cumtime"][:15]],
        title="profile: cProfile top 15 by cumulative time",
    )
    return out
