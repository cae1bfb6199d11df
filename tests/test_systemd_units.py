"""The shipped systemd units pass ``systemd-analyze verify`` and rate 3.0 or less in ``systemd-analyze security``,
and agree with the code: notify protocol, exit codes that must not restart, install paths of the README."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from outbox.errors import EXIT_TABLES_MISSING
from tests.conftest import ROOT

UNITS = {
    "relay": Path(ROOT) / "deploy" / "outbox-relay.service",
    "worker": Path(ROOT) / "deploy" / "outbox-worker.service",
}
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")


def service(path: Path) -> dict[str, list[str]]:
    """The [Service] section, every value of repeated keys kept."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_matches_the_daemon_and_the_readme(name: str) -> None:
    s = service(UNITS[name])
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) >= 10
    assert s["Restart"] == ["on-failure"]
    assert set(s["RestartPreventExitStatus"][0].split()) == {"2", str(EXIT_TABLES_MISSING)}
    assert s["User"] == ["outbox"] and s["Group"] == ["outbox"]
    assert s["EnvironmentFile"] == [f"/etc/outbox/{name}.env"]
    assert s["ExecStart"] == [f"/opt/outbox/venv/bin/outbox {name}"]
    readme = (Path(ROOT) / "README.md").read_text()
    for needle in (f"/etc/outbox/{name}.env", f"outbox-{name}.service", "/opt/outbox/venv", "useradd"):
        assert needle in readme, f"README's systemd section does not mention {needle}"
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNITS[name].read_text())  # well-formed


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``verify`` needs ExecStart to exist: the copies run this interpreter instead of /opt/outbox/venv."""
    copies = []
    for path in UNITS.values():
        text = path.read_text()
        checked = text.replace("ExecStart=/opt/outbox/venv/bin/outbox ", f"ExecStart={sys.executable} -m outbox.cli ")
        assert checked != text
        copy = tmp_path / path.name
        copy.write_text(checked)
        copies.append(str(copy))
    assert ANALYZE is not None
    res = subprocess.run([ANALYZE, "verify", *copies], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


@needs_analyze
@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_are_hardened_to_exposure_3_or_less(name: str) -> None:
    """``--threshold`` counts in tenths of the printed exposure (default 100 = 10.0): 30 means 3.0."""
    assert ANALYZE is not None
    res = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=30", str(UNITS[name])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert found, res.stdout + res.stderr
    assert res.returncode == 0 and float(found.group(1)) <= 3.0, res.stdout[-3000:]
