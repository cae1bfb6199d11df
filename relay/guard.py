"""Redis settings that can lose published events: find them, warn once per risk, or refuse in strict mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from outbox.errors import BrokerError, ConfigurationError

log = logging.getLogger("outbox.relay")

STRICT_VARIABLE = "OUTBOX_REDIS_STRICT"
RISK_CODES = frozenset({"eviction", "no-persistence", "snapshots-only", "fsync"})


@dataclass(frozen=True, slots=True)
class Risk:
    """One way Redis' configuration can lose events the relay has marked published."""

    code: str  # eviction | no-persistence | snapshots-only | fsync
    message: str
    #: Refused in strict mode (``fsync`` is the documented trade-off of ``appendfsync everysec``: a warning).
    severe: bool = True


_FIX = "set appendonly yes, appendfsync always"


def assess(config: dict[str, str]) -> list[Risk]:
    """The risks in Redis settings as read by ``publisher.redis_server_settings`` (absent keys: unknown)."""
    risks: list[Risk] = []
    policy = config.get("maxmemory-policy", "")
    if policy.startswith("allkeys-"):
        why = "Redis evicts the stream or the fence when memory is full and published events vanish"
        risks.append(Risk("eviction", f"maxmemory-policy is {policy}: {why}; set maxmemory-policy noeviction"))
    aof, save = config.get("appendonly"), config.get("save")
    if aof == "no" and save is not None and not save.strip():
        why = "a restart loses every event on the stream"
        risks.append(Risk("no-persistence", f"neither AOF (appendonly no) nor RDB snapshots (save ''): {why}; {_FIX}"))
    elif aof == "no":
        why = "a crash or restart loses the events published since the last snapshot"
        risks.append(Risk("snapshots-only", f"no AOF (appendonly no): {why}; {_FIX}"))
    elif aof == "yes" and config.get("appendfsync", "always") != "always":
        why = "a Redis crash can lose the last second of published events"
        msg = f"appendfsync is {config['appendfsync']}: {why}; set appendfsync always when that second matters"
        risks.append(Risk("fsync", msg, severe=False))
    return risks


class RedisGuard:
    """Reads Redis' settings through ``fetch`` and logs each risk once (again only when it changes).

    ``strict``: the first successful check raises ``ConfigurationError`` (exit 2) on a severe risk; later
    checks (settings changed at run time) log at ERROR instead, since stopping would not make Redis safer.
    """

    def __init__(self, fetch: Callable[[], dict[str, str]], *, strict: bool, on_risk: Callable[[Risk], None]) -> None:
        self._fetch = fetch
        self.strict = strict
        self._on_risk = on_risk
        self.verified = False  # one check has succeeded
        self._reported: set[str] = set()
        self._unchecked_said = False

    def check(self) -> list[Risk]:
        """Read the settings and report new risks; ``BrokerError`` (connection) propagates. CONFIG and INFO both
        refused: ``ConfigurationError`` at the first check in strict mode, else said once and checking ends."""
        try:
            config = self._fetch()
        except BrokerError as exc:
            if exc.transient:
                raise
            if self.strict and not self.verified:  # strict mode cannot vouch for settings it cannot read
                raise ConfigurationError(
                    STRICT_VARIABLE,
                    f"refusing to start: could not verify Redis' eviction and persistence settings "
                    f"({exc}); allow CONFIG GET or INFO to the relay's user, or turn strict mode off",
                ) from exc
            if not self._unchecked_said:
                self._unchecked_said = True
                log.warning("could not check Redis' eviction and persistence settings (%s); make sure "
                            "maxmemory-policy is noeviction and AOF is on", exc)  # fmt: skip
            self.verified = True
            return []
        risks = assess(config)
        first = not self.verified
        self.verified = True
        codes = {r.code for r in risks}
        for r in risks:
            self._on_risk(r)
            if r.code in self._reported:
                continue
            if self.strict and r.severe and first:
                raise ConfigurationError(STRICT_VARIABLE, f"refusing to start: {r.message}")
            level = logging.ERROR if self.strict and r.severe else logging.WARNING
            log.log(level, "Redis can lose events: %s", r.message)
        self._reported = codes
        return risks
