"""The platform reader's envelope rules (outbox/envelope.py), and the conformance check every test gets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from outbox import envelope, wire
from tests.conftest import ROOT, envelope_violations


def good() -> dict[str, str]:
    values = wire.values(
        event_id=str(uuid.uuid4()),
        event_type="TICKET_STATUS_CHANGED",
        tenant="tenant-a",
        timestamp=wire.iso_utc(datetime.now(UTC)),
        payload_json='{"tenantId": "tenant-a"}',
        user_id=str(uuid.uuid4()),
        execution_id=str(uuid.uuid4()),
    )
    return dict(zip(wire.FIELDS, values, strict=True))


def test_a_conforming_entry_passes():
    assert envelope.violation(good()) is None
    assert envelope.violation({**good(), "user_id": "", "execution_id": ""}) is None
    assert envelope.violation({**good(), "timestamp": "2026-01-02T03:04:05+02:00"}) is None
    assert envelope.violation({**good(), "event_id": str(uuid.uuid4()).upper()}) is None
    envelope.check(good())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", ""),
        ("event_id", "not-a-uuid"),
        ("event_id", str(uuid.uuid4()) + "x"),
        ("execution_id", "exec-123"),
        ("user_id", "someone@example.com"),
        ("tenant", ""),
        ("event_type", ""),
        ("timestamp", ""),
        ("timestamp", "yesterday"),
        ("timestamp", "2026-02-30T00:00:00.000Z"),  # no such day
        ("timestamp", "2026-01-01T00:00:00"),  # no offset
        ("timestamp", "12026-01-01T00:00:00.000Z"),
        ("timestamp", "0044-03-15T12:00:00.000Z BC"),
        ("payload_json", "[1, 2]"),
        ("payload_json", "{broken"),
        ("payload_json", '"a string"'),
        ("tenant", None),
    ],
)
def test_each_rule_names_its_field(field, value):
    entry: dict[str, object] = {**good(), field: value}
    err = envelope.violation(entry)
    assert err is not None and err.field == field and err.rule == envelope.RULES[field]
    assert field in str(err) and "\n" not in str(err)
    with pytest.raises(envelope.EnvelopeError):
        envelope.check(entry)


def test_a_missing_field_breaks_its_rule():
    entry = good()
    del entry["tenant"]
    err = envelope.violation(entry)
    assert err is not None and err.field == "tenant"


def test_payload_parse_is_skipped_only_when_the_caller_parsed_it():
    entry = {**good(), "payload_json": "[1]"}
    assert envelope.violation(entry) is not None
    assert envelope.violation(entry, payload_is_object=True) is None


def test_envelope_violations_reads_a_real_stream(rds, stream, redis_url):
    rds.xadd(stream, good())  # type: ignore[arg-type]
    bad = {**good(), "execution_id": "exec-123"}
    sid = rds.xadd(stream, bad)  # type: ignore[arg-type]
    found = envelope_violations(redis_url, stream)
    assert found == [f"{sid}: envelope field execution_id must be a UUID or empty (got 'exec-123')"]
    rds.delete(stream)  # this test put a bad entry there on purpose; the fixture must not see it


# The fixture itself, run in an inner pytest session on a copy of tests/conftest.py: an unmarked test that
# leaves a bad entry on its stream errors at teardown; a marked one passes; a good entry passes.
_INNER = """
import uuid
import pytest
from datetime import UTC, datetime
from outbox import wire


def entry(**over):
    values = wire.values(event_id=str(uuid.uuid4()), event_type="X", tenant="t",
                         timestamp=wire.iso_utc(datetime.now(UTC)), payload_json="{}")
    return {**dict(zip(wire.FIELDS, values)), **over}


def test_good(rds, stream):
    rds.xadd(stream, entry())


def test_bad_unmarked(rds, stream):
    rds.xadd(stream, entry(user_id="free text"))


@pytest.mark.raw_stream_entries
def test_bad_marked(rds, stream):
    rds.xadd(stream, entry(user_id="free text"))


def test_bad_on_own_server(stream):
    from outbox.embedded import RedisServer
    import redis
    with RedisServer() as srv:
        redis.Redis.from_url(srv.url).xadd(stream, entry(timestamp="soon"))
"""


def test_conformance_fixture_fails_a_test_that_leaves_a_rejected_entry(tmp_path: Path):
    (tmp_path / "tests").mkdir()
    for name in ("conftest.py", "logical.py"):  # conftest loads the WAL mode's fixtures from tests/logical.py
        shutil.copy(os.path.join(ROOT, "tests", name), tmp_path / "tests" / name)
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_inner.py").write_text(textwrap.dedent(_INNER))
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "tests/test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "PASSED tests/test_inner.py::test_good" in out, out[-3000:]
    assert "PASSED tests/test_inner.py::test_bad_marked" in out, out[-3000:]
    assert "ERROR tests/test_inner.py::test_bad_unmarked" in out, out[-3000:]
    assert "ERROR tests/test_inner.py::test_bad_on_own_server" in out, out[-3000:]
    assert "envelope field user_id must be a UUID or empty (got 'free text')" in out
    assert "envelope field timestamp must be an ISO-8601 date-time (got 'soon')" in out
