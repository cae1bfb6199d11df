"""Typed errors of the worker's operator API (triggers, run requests). Each names the field at fault."""

from __future__ import annotations

from outbox.errors import OutboxError


class WorkerInputError(OutboxError):
    """A value given to a trigger or run-request function is refused; ``field`` names it, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class InvalidTrigger(WorkerInputError):
    """A trigger field is malformed (empty tenant, workflow name, schema ref...)."""


class UnknownTriggerEventType(InvalidTrigger):
    """The event type resolves to no contract for the tenant (tenant catalog, system catalog, schema registry)."""

    def __init__(self, tenant_id: str, event_type: str) -> None:
        self.tenant_id = tenant_id
        self.event_type = event_type
        super().__init__(
            "event_type",
            f"unknown event type {event_type!r} for tenant {tenant_id!r}: in neither the tenant's catalog, "
            "the system catalog nor the schema registry (the worker would record such events as invalid)",
        )


class InvalidTriggerFilter(InvalidTrigger):
    """The payload filter is not valid JSON, or not the filter grammar (a JSON object jsonb can hold)."""

    def __init__(self, reason: str) -> None:
        super().__init__("payload_filter", reason)


class TriggerNotFound(WorkerInputError):
    """No trigger has this id."""

    def __init__(self, trigger_id: str) -> None:
        self.trigger_id = trigger_id
        super().__init__("id", f"no trigger with id {trigger_id!r}")


class TriggerInUse(WorkerInputError):
    """The trigger has run requests, which reference it: it cannot be removed (disable it instead)."""

    def __init__(self, trigger_id: str, requests: int) -> None:
        self.trigger_id = trigger_id
        self.requests = requests
        super().__init__(
            "id", f"trigger {trigger_id} has {requests} run request(s) and cannot be removed; disable it instead"
        )


class InvalidRunStatus(WorkerInputError):
    """A run-request status outside pending/claimed/done/failed."""

    def __init__(self, status: str) -> None:
        super().__init__("status", f"{status!r} is not one of pending, claimed, done, failed")


class RunRequestNotFound(WorkerInputError):
    """No run request has this id."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__("id", f"no run request with id {request_id!r}")


class RunRequestNotClaimed(WorkerInputError):
    """The run request is not claimed (by this claimer): it cannot be completed or failed."""

    def __init__(self, request_id: str, status: str, claimed_by: str | None) -> None:
        self.request_id = request_id
        self.status = status
        self.claimed_by = claimed_by
        by = f" by {claimed_by!r}" if claimed_by else ""
        super().__init__("id", f"run request {request_id} is {status}{by}, not claimed by the caller")
