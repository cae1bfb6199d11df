"""Micro-benchmark behind the relay profile: what validating one TICKET_CREATED payload costs, and
what it would cost validated differently. One core, no I/O, best of 5 x N calls.

    python -m bench.validation_micro [--n 20000]      (from the repository root)

Rows: the relay's call today (``registry.validate_json`` with the row's schema ref: the bus adapter,
i.e. the union of the v1 contract and the legacy shape), the v1 model alone (what a ref that names
the branch could use), a copy of the v1 model with no Python callbacks (``Opt``'s not-null check by
type, ``occurredAt`` by a pattern in pydantic-core), and JSON parsing alone as the lower bound.
The payload is the ~420-byte one of the other parts, as Postgres returns it (jsonb text).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from bench import common


def payload_text() -> str:
    """The TICKET_CREATED payload in jsonb's text form (", " and ": " separators)."""
    p = common.ticket_payload(str(uuid.uuid4()), str(uuid.uuid4()), common.TICKET_TITLES[0], "2026-11-25T20:00:00.123Z")
    p.update(tenantId="tenant-0001", occurredAt="2026-11-25T20:00:00.123Z", actorUserId=str(uuid.uuid4()))
    p["actorType"] = "USER"
    return json.dumps(p, separators=(", ", ": "))


def bench(fn: Callable[[], Any], n: int) -> float:
    for _ in range(min(500, n)):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    n = ap.parse_args().n

    import pydantic_core

    from outbox import schemas
    from outbox.schemas.base import UUID_PATTERN
    from outbox.schemas.tickets import TicketCreatedV1

    text = payload_text()
    reg = schemas.registry
    ref = reg.event_type("TICKET_CREATED").ref

    utc = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"
    uuid_t = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
    cfg = ConfigDict(strict=True, extra="allow", frozen=True, validate_default=False)

    class Change(BaseModel):
        model_config = cfg
        previous: Any = None
        new: Any = None

    class V1NoCallbacks(BaseModel):  # absent -> None by default; explicit null fails the type check
        model_config = cfg
        tenantId: Annotated[str, StringConstraints(min_length=1)]
        occurredAt: Annotated[str, StringConstraints(pattern=utc)]
        actorUserId: uuid_t = None  # type: ignore[assignment]
        actorContactId: uuid_t = None  # type: ignore[assignment]
        actorType: Literal["USER", "CONTACT", "SYSTEM"] = None  # type: ignore[assignment]
        ticketId: uuid_t
        createdByUserId: uuid_t = None  # type: ignore[assignment]
        createdAt: str = None  # type: ignore[assignment]
        updatedFields: list[str] = None  # type: ignore[assignment]
        changes: dict[str, Change] = None  # type: ignore[assignment]

    try:
        V1NoCallbacks.model_validate_json(text.replace('"USER"', "null"))
        refuses_null = False
    except ValueError:
        refuses_null = True

    rows = [
        ("registry.validate_json(ref=row's ref): union of v1 and legacy (the relay today)",
         bench(lambda: reg.validate_json("TICKET_CREATED", text, ref=ref), n)),
        ("TicketCreatedV1.model_validate_json: v1 alone", bench(lambda: TicketCreatedV1.model_validate_json(text), n)),
        (f"v1 without Python callbacks (explicit null refused: {refuses_null})",
         bench(lambda: V1NoCallbacks.model_validate_json(text), n)),
        ("json.loads (parse only)", bench(lambda: json.loads(text), n)),
        ("pydantic_core.from_json (parse only)", bench(lambda: pydantic_core.from_json(text), n)),
    ]  # fmt: skip
    print(
        common.table([f"TICKET_CREATED payload, {len(text)} bytes", "µs per call"], [[a, round(b, 1)] for a, b in rows])
    )


if __name__ == "__main__":
    main()
