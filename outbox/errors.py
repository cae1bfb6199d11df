"""Typed errors. Every error the library raises on purpose is an ``OutboxError``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class OutboxError(Exception):
    """Base class of every error raised on purpose by this library."""


class ConfigurationError(OutboxError):
    """A setting is missing or malformed; ``variable`` names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        self.variable = variable
        self.reason = reason
        super().__init__(f"{variable}: {reason}")


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a payload (``field`` is a dot path, ``""`` for the whole payload)."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field or '<payload>'}: {self.reason}"


class RecordError(OutboxError):
    """An event was refused before anything was written. ``field`` and ``reason`` say why."""

    def __init__(self, event_type: str, field: str, reason: str) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        super().__init__(f"{event_type}: {field or '<payload>'}: {reason}")


class UnknownEventType(RecordError):
    """The event type is not on the event bus list."""

    def __init__(self, event_type: str) -> None:
        super().__init__(event_type, "event_type", "unknown event type (not in the event catalog / bus list)")


class UnknownSchemaRef(RecordError):
    """A payload schema ref is not in the registry (or does not belong to the event type)."""

    def __init__(self, event_type: str, ref: str) -> None:
        self.ref = ref
        super().__init__(event_type, "schema_ref", f"schema ref {ref!r} is not registered for this event type")


class PayloadValidationError(RecordError):
    """The payload does not satisfy its schema; ``errors`` lists every field problem, first one in the message."""

    def __init__(self, event_type: str, schema_ref: str | None, errors: Sequence[FieldError]) -> None:
        self.schema_ref = schema_ref
        self.errors = list(errors)
        first = self.errors[0] if self.errors else FieldError("", "invalid payload")
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(event_type, first.field, first.reason + more)


class NonUtcTimestamp(PayloadValidationError):
    """A timestamp in the payload (or ``occurred_at``) is naive or not in UTC."""


class TenantMismatch(RecordError):
    """The payload's ``tenantId`` disagrees with the ``tenant_id`` argument."""

    def __init__(self, event_type: str, payload_tenant: str, tenant_id: str) -> None:
        super().__init__(
            event_type,
            "tenantId",
            f"payload tenantId {payload_tenant!r} differs from tenant_id={tenant_id!r}",
        )


class PayloadTooLarge(RecordError):
    """The serialized payload exceeds the configured size limit."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(event_type, "", f"payload is {size} bytes, over the limit of {limit} bytes")


class InvalidArgument(RecordError):
    """An argument of ``record`` other than the payload is malformed (event id, aggregate, actor...)."""


class UnrepresentableValue(InvalidArgument):
    """A value Postgres, JSON or the stream cannot carry (U+0000, a lone surrogate, NaN, a huge integer...)."""


class NestingTooDeep(InvalidArgument):
    """The payload nests objects/arrays deeper than the limit (``outbox.configure(max_depth=...)``)."""

    def __init__(self, event_type: str, field: str, limit: int) -> None:
        self.limit = limit
        super().__init__(event_type, field, f"nested deeper than {limit} levels (outbox.configure(max_depth=...))")


class DuplicateEvent(OutboxError):
    """An event with this event id was already recorded."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(f"event_id {event_id} was already recorded")


class NotInTransaction(OutboxError):
    """``record`` was given an autocommit connection outside a transaction: the event would not be atomic."""

    def __init__(self) -> None:
        super().__init__(
            "record() must run inside the caller's transaction; the connection is in autocommit mode "
            "with no transaction open"
        )


class UnsupportedConnection(OutboxError):
    """``record`` got an object that is not a SQLAlchemy Connection/Session or a psycopg 3 connection."""


#: Process exit code of every command, the relay and the worker when the outbox tables are missing.
#: Restarting cannot help (systemd units list it in ``RestartPreventExitStatus``).
EXIT_TABLES_MISSING = 4


class CaptureUnavailable(OutboxError):
    """WAL capture mode, but this database has no usable logical slot for the outbox: nothing was recorded."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        super().__init__(
            f"OUTBOX_CAPTURE=wal, but this database has no usable logical replication slot {slot!r}, so nothing "
            "would ever read the event: it was NOT recorded (the transaction is still usable). Create the slot "
            "with `outbox migrate --capture wal` (needs wal_level=logical), or record in poll mode "
            "(OUTBOX_CAPTURE=poll)"
        )


class SchemaNotInstalled(OutboxError):
    """The outbox tables are missing: run ``outbox migrate``."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__("outbox tables are missing: run `outbox migrate`")


class BrokerError(OutboxError):
    """The broker refused or failed a publish; ``transient`` says whether retrying can help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


class WalStreamError(OutboxError):
    """The logical replication stream failed or was refused (``outbox.relay.walstream``).

    ``sqlstate`` is the server's error code when the server said why (``42704`` slot or publication missing,
    ``55006`` slot active for another process, ``55000`` slot invalidated or ``wal_level`` too low), None for
    a broken connection or a silent server. ``transient`` says whether reconnecting later can help.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None, transient: bool) -> None:
        self.sqlstate = sqlstate
        self.transient = transient
        super().__init__(message)
