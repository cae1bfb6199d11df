"""Layering at run time: the contracts and the write API load without the database drivers or the broker SDK.

Each check runs in a fresh interpreter whose ``sys.meta_path`` refuses psycopg, SQLAlchemy and redis, so
an import of any of them, direct or indirect, fails the check. (The static rules are in pyproject.toml,
checked by ``lint-imports``.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"psycopg", "sqlalchemy", "redis"}:
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run_blocked(body: str) -> str:
    """Run ``body`` after the blocker in a fresh interpreter; its stdout (the test fails on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(body)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_blocker_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import psycopg"], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked for this test: psycopg" in proc.stderr


def test_contracts_and_errors_import_without_drivers():
    out = run_blocked("""
        import outbox.errors
        import outbox.schemas
        from outbox import schemas

        payload = {
            "tenantId": "t1", "ticketId": "6b0c9c59-6d0b-4d64-9a38-0d7c86c2a2f1",
            "previousStatusId": "open", "newStatusId": "closed", "occurredAt": "2026-01-31T12:00:00Z",
        }
        model = schemas.validate("TICKET_STATUS_CHANGED", payload)
        try:
            schemas.validate("TICKET_STATUS_CHANGED", {**payload, "ticketId": "not-a-uuid"})
        except outbox.errors.PayloadValidationError as exc:
            print("refused", exc.field)
        print(type(model).__name__, len(schemas.registry))
        print(sorted(m for m in sys.modules if m.partition(".")[0] in {"psycopg", "sqlalchemy", "redis"}))
    """)
    assert out.split("\n")[:3] == ["refused ticketId", "TicketStatusChangedV1 176", "[]"], out


def test_write_api_imports_and_validates_without_drivers():
    out = run_blocked("""
        import outbox
        from outbox import Actor, Event, record, record_many, arecord, errors

        assert outbox.record is record and callable(record)
        assert all(hasattr(outbox, name) for name in outbox.__all__)
        assert set(outbox.__all__) <= set(dir(outbox))
        try:
            record(object(), "TICKET_STATUS_CHANGED", {"ticketId": "6b0c9c59-6d0b-4d64-9a38-0d7c86c2a2f1",
                   "previousStatusId": "open", "newStatusId": "closed"}, tenant_id="t1", actor=Actor.system())
        except errors.OutboxError as exc:
            print(type(exc).__name__)
        try:
            record(object(), "TICKET_STATUS_CHANGED", {"ticketId": "not-a-uuid"}, tenant_id="t1")
        except errors.RecordError as exc:
            print(type(exc).__name__, exc.field)
    """)
    # the payload is validated first; then the connection is refused (it is no connection)
    assert out.split("\n")[:2] == ["UnsupportedConnection", "PayloadValidationError ticketId"], out


def test_record_is_the_function_after_the_write_module_is_imported():
    out = run_blocked("""
        import outbox
        from outbox.write import DEFAULT_MAX_PAYLOAD_BYTES
        import outbox.write

        print(type(outbox.record).__name__, outbox.record.__module__, DEFAULT_MAX_PAYLOAD_BYTES)
    """)
    assert out.split("\n")[0] == "function outbox.write 262144", out


def test_contract_modules_load_per_event_type_and_all_on_listing():
    out = run_blocked("""
        from outbox import schemas
        from outbox.schemas._modules import MODULES

        def loaded():
            return [m for m in MODULES if f"outbox.schemas.{m}" in sys.modules]

        print(loaded())
        assert schemas.registry.has_event_type("APPOINTMENT_CREATED") and not schemas.registry.has_event_type("NOPE")
        print(loaded())
        schemas.registry.event_type("TICKET_CREATED")
        print(loaded())
        print(len(schemas.registry.refs()) >= 176, loaded() == list(MODULES))
    """)
    assert out.split("\n")[:4] == ["[]", "[]", "['tickets']", "True True"], out


def test_concurrent_first_lookups_all_find_their_event_type():
    # Writer threads look up event types of a module nobody loaded yet, at the same moment.
    out = run_blocked("""
        import threading
        from outbox import schemas
        from outbox.schemas._modules import EVENT_MODULES

        names = [et for et, mod in EVENT_MODULES.items() if mod == "crm"][:8]
        barrier = threading.Barrier(len(names))
        found, failed = [], []

        def look(name):
            barrier.wait()
            try:
                found.append(schemas.registry.event_type(name).event_type)
            except Exception as exc:
                failed.append(repr(exc))

        threads = [threading.Thread(target=look, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(names), sorted(found) == sorted(names), failed)
    """)
    assert out.split("\n")[0] == "8 True []", out


def test_cli_help_needs_no_driver_broker_or_contract():
    out = run_blocked("""
        import runpy
        sys.argv = ["outbox", "--help"]
        try:
            runpy.run_module("outbox.cli", run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        print("contracts loaded:", sorted(m for m in sys.modules if m.startswith("outbox.schemas.")))
    """)
    for command in ("simulate", "migrate", "relay", "status", "dead-letters", "replay", "demo", "schemas", "catalog",
                    "worker"):  # fmt: skip
        assert f" {command} " in out, (command, out)
    assert "contracts loaded: []" in out
