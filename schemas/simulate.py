"""Realistic (and deliberately invalid) payloads built from an event type's contract.

``example("TICKET_CREATED", seed=7)`` walks the contract's JSON Schema and fills it with values that
look like the platform's: UUIDs, UTC timestamps ending in ``Z``, enum members, decimal-string money
beside a ``currency``, e-mail addresses, ticket numbers, names and statuses picked from the field
names, non-empty arrays, ``changes`` maps whose keys match ``updatedFields``, ``previousX``/``newX``
pairs that differ. Every example is validated against the registry before it is returned.

``invalid_variants("TICKET_CREATED")`` returns payloads that break the contract in one known way
each (missing required field, wrong type, bad UUID, non-UTC timestamp, enum value not allowed,
null for an optional key, empty ``tenantId``, array below ``minItems``...), together with the
field and reason the validator reports. Each variant is checked against the registry.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from outbox import schemas
from outbox.errors import PayloadValidationError
from outbox.schemas.registry import EventType, Registry
from outbox.wire import iso_utc

OptionalMode = Literal["some", "all", "none"]
DEFAULT_TENANT = "7f3c9d2e-1a4b-4c8d-9e0f-5a6b7c8d9e01"
UNION_TENANT = "tenant-acme-msp"  # not a UUID: see invalid_variants
MISSING: Any = object()  # get_path: no value at that path


class SimulationError(ValueError):
    """A simulated payload could not be built (bad override path, generator bug...)."""


@dataclass(frozen=True)
class InvalidVariant:
    """A payload that breaks the contract in one way, and the error the validator must report."""

    description: str
    payload: dict[str, Any]
    expected_field: str
    expected_reason_substring: str

    def check(self, event_type: str, registry: Registry | None = None) -> PayloadValidationError:
        """Validate the payload; return the error, or raise ``AssertionError`` if it is not the expected one."""
        reg = registry if registry is not None else schemas.registry
        try:
            reg.validate(event_type, self.payload)
        except PayloadValidationError as exc:
            if exc.field != self.expected_field or self.expected_reason_substring not in (exc.reason or ""):
                raise AssertionError(
                    f"{event_type}: variant {self.description!r} failed with {exc.field!r}: {exc.reason!r}, "
                    f"expected {self.expected_field!r} containing {self.expected_reason_substring!r}"
                ) from None
            return exc
        raise AssertionError(f"{event_type}: variant {self.description!r} was accepted by the validator")


# ---- overrides -------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (``5``, ``true``, ``null``, ``"x"``, ``[1]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"changes.status.new=closed"`` -> ``("changes.status.new", "closed")`` (value parsed by ``parse_value``)."""
    path, sep, value = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise SimulationError(f"expected FIELD=VALUE (dot path on the left), got {text!r}")
    return path, parse_value(value)


def parse_assignments(
    items: Iterable[str], event_type: str | None = None, registry: Registry | None = None
) -> dict[str, Any]:
    """Many ``FIELD=VALUE`` strings as an ``overrides`` mapping (later ones win).

    With ``event_type``, a value that parses as a JSON number where the contract wants a string keeps its text
    (``amountDue=250.00`` -> ``"250.00"``, ``ticketNumber=10423`` -> ``"10423"``); quote it to force either way.
    """
    out: dict[str, Any] = {}
    schema: dict[str, Any] | None = None
    if event_type is not None:
        reg = registry if registry is not None else schemas.registry
        schema = reg.json_schema(reg.event_type(event_type).ref)
    for item in items:
        path, value = parse_assignment(item)
        if schema is not None and isinstance(value, int | float) and not isinstance(value, bool):
            target = schema_at(schema, path)
            if target is not None and target.get("type") == "string" and "enum" not in target:
                value = item.partition("=")[2]
        out[path] = value
    return out


def schema_at(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The (resolved) JSON Schema of the value at a dot path of a payload, or ``None`` if the contract has none."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(s: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in s:
            s = defs[s["$ref"].rsplit("/", 1)[-1]]
        if "anyOf" in s:
            options = [o for o in s["anyOf"] if o.get("type") != "null"]
            if len(options) == 1:
                return resolve(options[0])
        return s

    def walk(s: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
        s = resolve(s)
        if not parts:
            return s
        props = s.get("properties", {})
        if parts[0] in props:
            return walk(props[parts[0]], parts[1:])
        if s.get("type") == "array" and isinstance(s.get("items"), dict) and parts[0].isdigit():
            return walk(s["items"], parts[1:])
        values = s.get("additionalProperties")
        if isinstance(values, dict):
            for k in range(1, len(parts) + 1):  # map keys may be dot paths themselves
                found = walk(values, parts[k:])
                if found is not None:
                    return found
        return None

    return walk(schema, path.split("."))


def _segments(payload: Any, path: str) -> list[str]:
    """Split a dot path into keys, matching existing dotted keys (``changes.attributes.impact.new``)."""
    parts = path.split(".")
    if any(not p for p in parts):
        raise SimulationError(f"malformed field path {path!r}")
    segs: list[str] = []
    node: Any = payload
    i = 0
    while i < len(parts):
        j = i + 1
        if isinstance(node, dict):
            j = next((k for k in range(len(parts), i + 1, -1) if ".".join(parts[i:k]) in node), i + 1)
            if parts[i] not in node and j == i + 1 and segs[-1:] == ["changes"] and len(parts) - i > 1:
                # a new key of a changes map: everything up to a trailing previous/new is the (dot path) key
                j = len(parts) - 1 if parts[-1] in ("previous", "new") else len(parts)
                j = max(j, i + 1)
        seg = ".".join(parts[i:j])
        if isinstance(node, dict):
            node = node.get(seg)
        elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            node = None
        segs.append(seg)
        i = j
    return segs


def set_path(payload: dict[str, Any], path: str, value: Any) -> None:
    """Assign ``value`` at a dot path, creating objects on the way; numeric parts index into lists.

    Keys that contain dots (``changes`` maps keyed by field paths) are matched as a whole.
    """
    segs = _segments(payload, path)
    node: Any = payload
    for i, part in enumerate(segs):
        last = i == len(segs) - 1
        where = ".".join(segs[: i + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise SimulationError(f"{where}: {'.'.join(segs[:i])} is a list; use a numeric index")
            idx = int(part)
            if idx > len(node):
                raise SimulationError(f"{where}: index out of range (the list has {len(node)} items)")
            if idx == len(node):
                node.append(None)
            if last:
                node[idx] = value
            else:
                if not isinstance(node[idx], dict | list):
                    node[idx] = {}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict | list):
                    node[part] = [] if segs[i + 1] == "0" else {}
                node = node[part]
        else:  # pragma: no cover - set_path always creates containers on the way
            raise SimulationError(f"{where}: cannot descend into a {type(node).__name__}")


def get_path(payload: Any, path: str) -> Any:
    """The value at a dot path, or ``MISSING``."""
    node = payload
    for part in _segments(payload, path):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return MISSING
    return node


def del_path(payload: dict[str, Any], path: str) -> None:
    """Remove the key at a dot path (no error if it is absent)."""
    *head, last = _segments(payload, path)
    node = get_path(payload, ".".join(head)) if head else payload
    if isinstance(node, dict):
        node.pop(last, None)


def _override_change_keys(overrides: Mapping[str, Any]) -> list[str]:
    """The ``changes`` keys the overrides talk about (so the generated map and ``updatedFields`` match them)."""
    keys: list[str] = []
    fields = overrides.get("updatedFields")
    if isinstance(fields, list) and all(isinstance(f, str) for f in fields):
        keys.extend(fields)
    changes = overrides.get("changes")
    if isinstance(changes, dict):
        keys.extend(str(k) for k in changes)
    for path in overrides:
        if path.startswith("changes."):
            parts = path.split(".")[1:]
            keys.append(
                ".".join(parts[:-1]) if len(parts) > 1 and parts[-1] in ("previous", "new") else ".".join(parts)
            )
    return list(dict.fromkeys(k for k in keys if k))


# ---- word lists --------------------------------------------------------------------------------------

_FIRST = ["Maria", "James", "Aisha", "Chen", "Lukas", "Priya", "Tom", "Sofia", "Omar", "Emma", "Kenji", "Grace"]
_LAST = ["Lopez", "Carter", "Khan", "Wei", "Becker", "Patel", "Nguyen", "Rossi", "Haddad", "Walsh", "Sato", "Okafor"]
_COMPANIES = [
    "Northwind Traders", "Contoso Dental", "Bluebird Logistics", "Harbor View Clinic", "Summit Legal LLP",
    "Greenleaf Architects", "Riverside Accounting", "Pinecrest Schools", "Atlas Manufacturing", "Orchid Hotels",
]  # fmt: skip
_TITLES: dict[str, list[str]] = {
    "ticket": [
        "Printer offline on 3rd floor",
        "VPN drops every 10 minutes",
        "New hire laptop setup",
        "Outlook keeps asking for password",
        "Shared drive permissions for Finance",
        "Wi-Fi slow in conference room B",
    ],
    "project": [
        "Office 365 migration",
        "Firewall replacement",
        "Branch office network rollout",
        "Backup infrastructure refresh",
    ],
    "task": ["Configure firewall rules", "Migrate user mailboxes", "Image new workstations", "Update runbook"],
    "appointment": ["Onsite network assessment", "Quarterly business review", "Server room inspection"],
    "document": ["Q3 network audit", "Master services agreement", "Onboarding checklist", "Disaster recovery plan"],
    "invoice": ["Managed services - monthly", "Project milestone 2", "Hardware purchase"],
}
_SENTENCES = [
    "Users on the third floor cannot print since this morning's power outage.",
    "Customer confirmed the issue is resolved after the driver update.",
    "Rebooted the access point and the connection is stable again.",
    "Please schedule the replacement for after business hours.",
    "Attached the logs from the affected workstation.",
    "Waiting on the vendor to ship the replacement part.",
]
_REASONS = [
    "Customer requested a different time slot",
    "Duplicate of an existing request",
    "Escalated per SLA policy",
    "Resolved by the customer",
    "Assigned to the on-call technician",
]
_STATUSES: dict[str, list[str]] = {
    "ticket": ["open", "in_progress", "awaiting_customer", "on_hold", "resolved", "closed"],
    "invoice": ["draft", "finalized", "sent", "partially_paid", "paid", "overdue"],
    "project": ["planned", "active", "on_hold", "completed", "cancelled"],
    "task": ["todo", "in_progress", "blocked", "done"],
    "contract": ["draft", "active", "expiring", "expired", "terminated"],
    "client": ["prospect", "active", "inactive", "churned"],
    "appointment": ["scheduled", "confirmed", "completed", "cancelled"],
    "default": ["pending", "active", "completed", "failed"],
}
_CHANGE_KEYS: dict[str, list[str]] = {
    "ticket": ["status", "priority", "title", "dueDate", "assignedTo", "category", "attributes.impact"],
    "project": ["status", "name", "endDate", "budgetHours", "managerId", "description"],
    "task": ["status", "name", "dueDate", "estimatedHours", "assignedTo"],
    "contract": ["status", "endDate", "renewalAt", "billingFrequency", "totalAmount"],
    "client": ["name", "status", "phone", "billingEmail", "address.city", "accountManagerId"],
    "company": ["name", "phone", "website", "address.city", "accountManagerId"],
    "contact": ["fullName", "email", "phone", "title", "address.city"],
    "asset": ["name", "status", "location", "serialNumber", "warranty.expiresAt"],
    "default": ["status", "name", "description"],
}
_MONEY_WORDS = frozenset(
    {"amount", "total", "balance", "price", "cost", "subtotal", "tax", "fee", "fees", "revenue", "refunded"}
)


def _words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


def _entity(event_type: str) -> str:
    et = event_type.lower()
    for key in ("project_task", "task"):
        if et.startswith(key):
            return "task"
    for key in ("ticket", "invoice", "payment", "credit_note", "contract", "project", "client", "company",
                "contact", "asset", "appointment", "document", "survey", "email", "integration", "rmm"):  # fmt: skip
        if et.startswith(key):
            return key
    aliases = {"inbound": "email", "outbound": "email", "technician": "appointment", "schedule": "appointment",
               "time": "ticket", "csat": "survey", "recurring": "invoice", "note": "client", "interaction": "client"}  # fmt: skip
    head = et.split("_")[0]
    return aliases.get(head, head)


# ---- generator ---------------------------------------------------------------------------------------


class _Gen:
    def __init__(
        self,
        entry: EventType,
        schema: dict[str, Any],
        *,
        tenant_id: str,
        seed: int | None,
        optional: OptionalMode,
    ) -> None:
        self.entry = entry
        self.event_type = entry.event_type
        self.entity = _entity(entry.event_type)
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.root = schema
        # Seeded per event type, so one seed gives each type its own ids (and the same ones on every run).
        self.rng = random.Random(f"{seed}:{entry.event_type}") if seed is not None else random.Random()
        self.tenant_id = tenant_id
        self.optional = optional
        if seed is None:
            now = datetime.now(UTC)
            self.now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        else:
            start = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
            self.now = start + timedelta(
                seconds=self.rng.randrange(0, 300 * 86400), milliseconds=self.rng.randrange(1000)
            )
        self.company = self.rng.choice(_COMPANIES)
        self.actor_user = self.uuid()
        self.actor_kind = self.rng.choices(["USER", "SYSTEM", "CONTACT"], weights=[7, 2, 1])[0]
        if optional == "all":
            self.actor_kind = "USER"
        keys = _CHANGE_KEYS.get(self.entity, _CHANGE_KEYS["default"])
        self.change_keys: list[str] = self.rng.sample(keys, self.rng.choice([1, 2]))
        self.counter = self.rng.randrange(10000, 99999)
        # changes/updatedFields come together; always on updates, sometimes (initial values) on creations
        self.with_changes = not entry.event_type.endswith("_CREATED") or self.rng.random() < 0.5
        self.failing = any(w in self.event_type for w in ("FAIL", "ERROR", "BOUNCE", "DECLINE", "REJECT", "EXPIRED"))

    # -- primitives --
    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ts(self, when: datetime) -> str:
        return iso_utc(when)

    def when_for(self, name: str) -> datetime:
        n = name.lower()
        if n in ("occurredat",) or "overdue" in n:
            return self.now
        if "due" in n and "OVERDUE" in self.event_type:
            return self.now - timedelta(days=self.rng.randint(3, 40))
        if n == "createdat" and self.event_type.endswith("_CREATED"):
            return self.now - timedelta(milliseconds=self.rng.randrange(1, 2000))
        if n.endswith("edat") and not n.startswith(("created", "scheduled")):
            # past participle + At (completedAt, rescheduledAt, requestedAt): the moment of this event
            return self.now - timedelta(seconds=self.rng.randint(0, 5), milliseconds=self.rng.randrange(1000))
        if any(w in n for w in ("end", "until", "expir", "renewal", "due", "deadline")):
            return self.now + timedelta(days=self.rng.randint(5, 45), hours=self.rng.randint(0, 8))
        if any(w in n for w in ("start", "scheduled", "requested", "next", "arriv", "eta")):
            return self.now + timedelta(days=self.rng.randint(1, 4), hours=self.rng.randint(0, 8))
        if any(w in n for w in ("created", "last", "since", "original")):
            return self.now - timedelta(days=self.rng.randint(1, 30), minutes=self.rng.randint(0, 600))
        return self.now - timedelta(seconds=self.rng.randint(0, 5), milliseconds=self.rng.randrange(1000))

    def money(self, name: str) -> str:
        n = name.lower()
        if "tax" in n:
            return f"{self.rng.randint(5, 150)}.{self.rng.randint(0, 99):02d}"
        return f"{self.rng.randint(40, 4800)}.{self.rng.choice([0, 0, 50, 99, 25, 75]):02d}"

    def email(self, name: str = "") -> str:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        domain = re.sub(r"[^a-z]", "", self.company.lower().split()[0]) + ".example.com"
        if "billing" in name.lower():
            return f"{self.rng.choice(['billing', 'accounts', 'ap', 'finance', 'invoices'])}@{domain}"
        if "support" in name.lower():
            return f"{self.rng.choice(['support', 'helpdesk', 'it', 'servicedesk'])}@{domain}"
        return f"{first.lower()}.{last.lower()}@{domain}"

    def full_name(self) -> str:
        return f"{self.rng.choice(_FIRST)} {self.rng.choice(_LAST)}"

    def title(self) -> str:
        return self.rng.choice(_TITLES.get(self.entity, _TITLES["ticket"]))

    def status(self) -> str:
        return self.rng.choice(_STATUSES.get(self.entity, _STATUSES["default"]))

    # -- strings from field names --
    def string_for(self, name: str, parent: str = "") -> str:  # a lookup table written as code
        n = name.lower()
        if n == "name" and any(w in parent.lower() for w in ("attachment", "file", "output")):
            return self.rng.choice(["screenshot.png", "event-log.txt", "quote-2025-114.pdf", "network-diagram.vsdx"])
        if n == "name" and parent:
            return self.full_name()  # signers, recipients, from/to/cc: people
        w = _words(name)
        last = w[-1] if w else n
        rng = self.rng
        if n == "tenantid" or n == "tenant":
            return self.tenant_id
        if n in ("currency", "currencycode"):
            return rng.choice(["USD", "USD", "EUR", "GBP", "CAD", "AUD"])
        if _MONEY_WORDS & set(w) and ("amount" in w or not {"count", "id", "date", "at", "days"} & set(w)):
            return self.money(name)
        if "email" in n and last != "id":
            return self.email(name)
        if n.endswith("at") and len(w) > 1 and w[-1] == "at":
            return self.ts(self.when_for(name))
        if last == "date" or n == "date":
            return self.when_for(name).date().isoformat()
        if last == "time":
            return f"{rng.randint(8, 17):02d}:{rng.choice([0, 15, 30, 45]):02d}"
        if n == "ticketnumber":
            return f"T-{self.counter}"
        if n == "invoicenumber":
            return f"INV-{self.now.year}-{rng.randint(1, 9999):04d}"
        if n in ("serialnumber",):
            return "SN-" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
        if "phone" in n:
            return f"+1-555-{rng.randint(100, 999):03d}-{rng.randint(1000, 9999):04d}"
        if n.startswith("external") or n in ("gatewaytransactionid", "providermessageid", "threadid", "mailhogid",
                                                "inreplyto", "contentid", "webhookid", "syncid"):  # fmt: skip
            return self.external_id(name)
        if last == "id" or n == "id" or last == "ids":
            return self.uuid()
        if n in ("surveytokenhash",) or n.endswith("hash"):
            return f"{rng.getrandbits(256):064x}"
        if n in ("storagekey", "rawpayloadref"):
            ext = "json" if "payload" in n else "pdf"
            return f"tenants/{self.tenant_id}/{'webhooks' if ext == 'json' else 'files'}/{self.uuid()}.{ext}"
        if n in ("filename", "documentname"):
            return rng.choice(["Q3-network-audit.pdf", "signed-msa-2025.pdf", "invoice-10442.pdf", "floorplan.png"])
        if n == "contenttype":
            return rng.choice(["application/pdf", "image/png", "text/plain"])
        if n in ("name", "fullname", "contactname", "requestername", "sendername", "author", "previousname", "newname"):
            if self.entity in ("client", "company") and n in ("name", "previousname", "newname"):
                return rng.choice(_COMPANIES)
            if self.entity in ("project", "task", "document") and n in ("name", "previousname", "newname"):
                return self.title()
            if self.entity == "asset" and n in ("name", "previousname", "newname"):
                return f"WS-{rng.choice(['ACCT', 'HR', 'OPS', 'DEV'])}-{rng.randint(1, 99):03d}"
            return self.full_name()
        if n in ("clientname", "companyname", "client", "company"):
            return self.company
        if n == "tagname":
            return rng.choice(["vip", "after-hours", "hardware", "billing-hold", "onboarding"])
        if n == "servicename":
            return rng.choice(["Managed Backup", "Onsite Support", "Network Assessment", "Microsoft 365 Setup"])
        if n == "taskname":
            return rng.choice(_TITLES["task"])
        if n == "providername":
            return rng.choice(["Microsoft 365", "Google Workspace", "QuickBooks Online", "NinjaOne"])
        if n == "devicename":
            return f"{rng.choice(['WS', 'SRV', 'LT'])}-{rng.choice(['ACCT', 'HR', 'OPS'])}-{rng.randint(1, 99):03d}"
        if n in ("title", "subject"):
            t = self.title()
            return f"Re: {t}" if n == "subject" and self.entity in ("email", "ticket") else t
        if n in ("description", "content", "comment", "commentcontent", "notes", "text", "message", "messagepreview",
                 "bodypreview", "worksummary", "newcontent", "oldcontent", "newcommentcontent", "oldcommentcontent"):  # fmt: skip
            s = rng.choice(_SENTENCES)
            return s[:60] if "preview" in n else s
        if n == "html":
            return f"<p>{rng.choice(_SENTENCES)}</p>"
        if "reason" in n:
            return rng.choice(_REASONS)
        if last == "status" or n in ("currentstatus", "status"):
            return self.status()
        if "responsestate" in n:
            return rng.choice(["awaiting_client", "awaiting_internal", "none"])
        if "priority" in n:
            return rng.choice(["low", "medium", "high", "critical"])
        if n == "severity":
            return rng.choice(["info", "warning", "critical"])
        if n in ("channel",):
            return rng.choice(["email", "portal", "phone"])
        if n == "method":
            if self.entity in ("payment", "invoice", "credit_note"):
                return rng.choice(["credit_card", "ach", "check", "wire"])
            return rng.choice(["email", "api"])
        if n in ("source",):
            return rng.choice(["email", "portal", "api", "rmm"])
        if n in ("entitytype", "contexttype", "sourcetype"):
            return self.entity if self.entity in ("ticket", "project", "client", "contact", "asset") else "ticket"
        if n in ("code", "errorcode", "failurecode"):
            if self.entity == "payment":
                return rng.choice(["card_declined", "insufficient_funds", "expired_card"])
            return rng.choice(["TIMEOUT", "AUTH_FAILED", "RATE_LIMITED", "UPSTREAM_5XX"])
        if n in ("errormessage", "failuremessage"):
            if self.entity == "payment":
                return "The card was declined by the issuing bank."
            return rng.choice(["Connection timed out after 30s", "Token expired", "Upstream returned HTTP 503"])
        if n == "smtpcode":
            return rng.choice(["550", "552", "421"])
        if n == "smtpmessage":
            return rng.choice(["5.1.1 User unknown", "5.2.2 Mailbox full", "4.7.0 Try again later"])
        if n == "provider":
            if self.entity == "rmm":
                return rng.choice(["ninjaone", "datto", "connectwise_automate"])
            if self.entity == "email":
                return rng.choice(["microsoft", "google"])
            return rng.choice(["quickbooks", "xero", "google_calendar", "microsoft_graph"])
        if n == "adaptertype":
            return rng.choice(["quickbooks_online", "xero", "csv"])
        if n == "timezone":
            return rng.choice(["America/New_York", "Europe/Berlin", "America/Chicago", "Australia/Sydney"])
        if n == "location":
            return rng.choice(["Conference Room B", "Server room, 2nd floor", "Main office reception"])
        if n in ("scope",):
            return rng.choice(["contacts", "companies", "calendar", "devices"])
        if n == "strategy":
            return rng.choice(["keep_target", "keep_newest", "merge_fields"])
        if n == "outcome":
            return rng.choice(["resolved", "follow_up_required", "parts_ordered"])
        if n == "interactiontype":
            return rng.choice(["call", "email", "meeting", "note"])
        if n == "matchedby":
            return rng.choice(["thread_id", "in_reply_to", "subject_token"])
        if n == "complainttype":
            return rng.choice(["abuse", "not-spam", "other"])
        if n == "approvaltype":
            return rng.choice(["manager", "client", "finance"])
        if n in ("assettype", "devicetype"):
            return rng.choice(["workstation", "server", "laptop", "firewall"])
        if n == "alertclass":
            return rng.choice(["disk_space", "cpu_high", "offline", "antivirus"])
        if n == "mappingtype":
            return rng.choice(["company", "contact", "invoice", "device"])
        if n.endswith("ownertype") or n.endswith("assigneetype"):
            return rng.choice(["user", "team"])
        if n == "webhookeventtype":
            return rng.choice(["device.offline", "alert.triggered", "device.updated"])
        if n == "eventname":
            return rng.choice(["custom.invoice_synced", "custom.contract_signed", "custom.device_enrolled"])
        if n == "templateid":
            return self.uuid()
        if "version" in n:
            return f"{rng.randint(1, 5)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
        if "url" in n or "link" in n:
            return f"https://portal.example.com/{self.entity}s/{self.uuid()}"
        if "warning" in n:
            return rng.choice(
                ["2 clients skipped: no billing address", "Contract C-1042 has no rate for 'Onsite Support'"]
            )
        if "reference" in n:
            return self.external_id("providerMessageId")
        if "field" in n:
            return rng.choice(self.change_keys)
        return f"{' '.join(w).capitalize() or name} {rng.randint(100, 999)}"

    def external_id(self, name: str) -> str:
        n = name.lower()
        rng = self.rng
        if n in ("providermessageid", "inreplyto", "contentid"):
            return f"<{rng.getrandbits(64):016x}@mail.example.com>"
        if n == "gatewaytransactionid":
            return "ch_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))
        if n == "mailhogid":
            return f"{rng.getrandbits(96):024x}@mailhog.example"
        if n == "threadid":
            return f"thread-{rng.getrandbits(48):012x}"
        prefix = {"externalalertid": "alert", "externaldeviceid": "dev", "externaleventid": "evt"}.get(n, "ext")
        return f"{prefix}-{rng.randint(100000, 999999)}"

    def number_for(self, name: str, integer: bool) -> int | float:
        n = name.lower()
        rng = self.rng
        value: float
        if "CSAT" in self.event_type and n in ("score", "threshold"):
            value = round(rng.uniform(2.4, 3.4), 2) if n == "score" else 3.5
        elif "rating" in n:
            value = rng.randint(1, 2) if "NEGATIVE" in self.event_type else rng.randint(1, 5)
        elif n == "score":
            value = rng.randint(0, 10)
        elif "durationms" in n or n.endswith("ms"):
            value = rng.randint(800, 90000)
        elif n in ("minutes", "requestedduration") or "duration" in n:
            value = rng.choice([15, 30, 45, 60, 90, 120])
        elif "size" in n or "bytes" in n:
            value = rng.randint(2048, 8_000_000)
        elif n.startswith("days"):
            value = rng.randint(1, 60)
        elif "seconds" in n:
            value = rng.randint(60, 86400)
        elif "number" in n:
            value = rng.randint(1, 3)
        elif "failed" in n or n in ("skipped", "deleted"):
            value = rng.randint(0, 3)
        elif "count" in n or n.startswith("items") or n in ("created", "updated") or n.endswith("created"):
            value = rng.randint(1, 40)
        elif n in ("threshold", "capacitylimit"):
            value = rng.choice([40, 80, 100])
        elif n in ("currentbooked",):
            value = rng.randint(30, 110)
        elif n in ("baseline",):
            value = round(rng.uniform(3.5, 4.8), 2)
        elif n == "delta":
            value = round(-rng.uniform(0.3, 1.5), 2)
        elif "hours" in n:
            value = rng.choice([1.5, 4, 8, 12, 40])
        else:
            value = rng.randint(1, 100)
        if integer:
            return int(value)
        return float(value)

    def any_for(self, name: str) -> Any:
        n = name.lower()
        if n == "conditions":
            return {"maxAmount": self.money("amount"), "requiresManagerSignOff": self.rng.random() < 0.5}
        if n in ("outputs", "output"):
            kind = self.rng.choice(["thumbnail", "preview", "transcript"])
            return {"kind": kind, "storageKey": self.string_for("storageKey")}
        if n.startswith("previous") or n.startswith("new") or n.startswith("old"):
            base = re.sub(r"^(previous|new|old)", "", name) or "value"
            return self.change_value(base)
        return self.string_for(name)

    def change_value(self, key: str) -> Any:
        leaf = key.split(".")[-1]
        n = leaf.lower()
        rng = self.rng
        if "hours" in n:
            return self.number_for(leaf, integer=False)
        if n in ("value",):
            return self.external_id("external")
        if n in ("assignedto", "manager", "owner"):
            return self.uuid()
        if n == "impact":
            return rng.choice(["single_user", "department", "company_wide"])
        if n == "category":
            return rng.choice(["Hardware", "Network", "Email", "Accounts & Access", "Software"])
        if n == "billingfrequency":
            return rng.choice(["monthly", "quarterly", "annually"])
        if n == "website":
            return f"https://www.{re.sub(r'[^a-z]', '', rng.choice(_COMPANIES).lower().split()[0])}.example.com"
        if n == "city":
            return rng.choice(["Denver", "Austin", "Portland", "Toronto", "Leeds", "Munich"])
        if n == "title" and self.entity == "contact":
            return rng.choice(["Office Manager", "IT Coordinator", "CFO", "Operations Lead"])
        return self.string_for(leaf)

    # -- schema walk --
    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[-1]]
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"]
            if options:
                return self.resolve(options[0])
        return schema

    def value(self, schema: dict[str, Any], name: str, path: str, parent: str = "") -> Any:
        s = self.resolve(schema)
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return self.rng.choice(s["enum"])
        t = s.get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), None)
        if t == "string":
            return self.string(s, name, parent)
        if t == "integer":
            return self.number_for(name, integer=True)
        if t == "number":
            return self.number_for(name, integer=False)
        if t == "boolean":
            if name.lower() in ("is_closed",):
                return True
            return self.rng.random() < 0.5
        if t == "array":
            return self.array(s, name, path)
        if t == "object" or "properties" in s:
            if "properties" in s:
                return self.obj(s, path, parent=name)
            return self.mapping(s, name, path)
        return self.any_for(name)

    def string(self, s: dict[str, Any], name: str, parent: str = "") -> str:
        fmt = s.get("format")
        if fmt == "uuid":
            if name == "tenantId":
                return self.tenant_id
            if name == "actorUserId" or (name.endswith("ByUserId") and self.actor_kind == "USER"):
                return self.actor_user
            return self.uuid()
        if fmt == "date-time":
            return self.ts(self.when_for(name))
        if fmt == "date":
            return self.when_for(name).date().isoformat()
        if fmt == "email":
            return self.email(name)
        value = self.string_for(name, parent)
        pattern = s.get("pattern")
        if pattern and not re.search(pattern, value):
            # e.g. DecimalStr: a money-like decimal string, else the first candidate that fits
            for candidate in (self.money(name), self.uuid(), str(self.rng.randint(1, 999))):
                if re.search(pattern, candidate):
                    value = candidate
                    break
        min_len = int(s.get("minLength", 0))
        if len(value) < min_len:
            value = value.ljust(min_len, "x")
        if "maxLength" in s:
            value = value[: int(s["maxLength"])]
        return value

    def array(self, s: dict[str, Any], name: str, path: str) -> list[Any]:
        items = s.get("items", {})
        if name == "updatedFields":
            return list(self.change_keys)
        lo = int(s.get("minItems", 0))
        hi = int(s.get("maxItems", max(lo, 2)))
        count = max(lo, 1, min(hi, self.rng.choice([1, 1, 2])))
        singular = re.sub(r"(Ids)$", "Id", name)
        singular = singular[:-1] if singular.endswith("s") and not singular.endswith("ss") else singular
        if singular in ("to", "cc", "bcc"):
            singular = "recipient"
        return [self.value(items, singular, f"{path}.{i}") for i in range(count)]

    def mapping(self, s: dict[str, Any], name: str, path: str) -> dict[str, Any]:
        values = s.get("additionalProperties", True)
        vs = self.resolve(values) if isinstance(values, dict) else {}
        if name == "changes":
            out: dict[str, Any] = {}
            for key in self.change_keys:
                if "properties" in vs and {"previous", "new"} <= set(vs["properties"]):
                    out[key] = self.pair_object(vs, key)
                elif vs:
                    out[key] = self.value(vs, key.split(".")[-1], f"{path}.{key}")
                else:
                    out[key] = self.change_value(key)
            return out
        if name.lower() == "rawpayload":
            return {"type": self.string_for("webhookEventType"), "deviceId": self.external_id("externalDeviceId")}
        keys = ["id", "type"][: self.rng.choice([1, 2])]
        if vs:
            return {k: self.value(vs, k, f"{path}.{k}") for k in keys}
        return {k: self.string_for(k) for k in keys}

    def pair_object(self, vs: dict[str, Any], key: str) -> dict[str, Any]:
        props = vs["properties"]
        obj: dict[str, Any] = {}
        created = self.event_type.endswith("_CREATED")
        for prop, ps in props.items():
            if prop == "previous" and created and "previous" not in vs.get("required", ()):
                continue  # a new record's initial values: nothing before
            if prop in ("previous", "new"):
                p = self.resolve(ps)
                obj[prop] = self.change_value(key) if not p or p.get("type") is None else self.value(ps, key, key)
            elif prop in vs.get("required", ()):
                obj[prop] = self.value(ps, prop, f"{key}.{prop}")
        self.differ(obj, "previous", "new", lambda: self.change_value(key))
        return obj

    def include(self, name: str, required: bool) -> bool:
        if required or self.optional == "all":
            return True
        if self.optional == "none":
            return False
        n = name.lower()
        if n == "actortype":
            return True
        if n == "actoruserid":
            return self.actor_kind == "USER"
        if n == "actorcontactid":
            return self.actor_kind == "CONTACT"
        if any(w in n for w in ("error", "failure", "decline", "bounce", "reject")) and not self.failing:
            return False
        if name in ("changes", "updatedFields"):
            return self.with_changes
        return self.rng.random() < 0.6

    def obj(self, s: dict[str, Any], path: str, parent: str = "") -> dict[str, Any]:
        props: dict[str, Any] = s.get("properties", {})
        required = set(s.get("required", ()))
        out: dict[str, Any] = {}
        for name, ps in props.items():
            if not self.include(name, name in required):
                continue
            if name == "actorType":
                out[name] = self.actor_kind
                continue
            out[name] = self.value(ps, name, f"{path}.{name}" if path else name, parent)
        self.fix_pairs(out, props)
        return out

    def differ(self, obj: dict[str, Any], a: str, b: str, regen: Callable[[], Any]) -> None:
        if a not in obj or b not in obj:
            return
        for _ in range(30):
            if obj[a] != obj[b]:
                return
            obj[b] = regen()

    def fix_pairs(self, out: dict[str, Any], props: dict[str, Any]) -> None:
        for key in list(out):
            m = re.match(r"^(previous|old)([A-Z].*)$", key)
            if not m:
                continue
            partner = "new" + m.group(2)
            if partner not in out:
                continue
            ps = self.resolve(props[partner])
            if "enum" in ps:
                others = [v for v in ps["enum"] if v != out[key]]
                if others and out[partner] == out[key]:
                    out[partner] = self.rng.choice(others)
                continue
            self.differ(out, key, partner, lambda p=props[partner], n=partner: self.value(p, n, n))  # type: ignore[misc]
        for key in list(out):
            m = re.match(r"^(.*)(start|Start)(At|Date|Time)?$", key)
            end = m and m.group(1) + ("end" if m.group(2) == "start" else "End") + (m.group(3) or "")
            if end and end in out and isinstance(out[key], str) and isinstance(out[end], str):
                # the other side of a previous/new pair must still differ (previousEndAt vs newEndAt)
                other = re.sub(r"^new", "previous", end) if end.startswith("new") else re.sub(r"^previous", "new", end)
                for _ in range(10):
                    out[end] = self.after(out[key], out[end])
                    if out.get(other) != out[end]:
                        break

    def repair_pairs(self, payload: dict[str, Any], overridden: set[str]) -> None:
        """After overrides: where one side of a previous/new pair was set to the other's value, move the other."""
        props = self.resolve(self.root).get("properties", {})
        for key in list(payload):
            m = re.match(r"^(previous|old)([A-Z].*)$", key)
            partner = "new" + m.group(2) if m else ""
            if not m or partner not in payload or payload[key] != payload[partner] or partner not in props:
                continue
            if (key in overridden) == (partner in overridden):
                continue
            fix, spec = (partner, props[partner]) if key in overridden else (key, props.get(key, props[partner]))
            for _ in range(30):
                payload[fix] = self.value(spec, fix, fix)
                if payload[key] != payload[partner]:
                    break
        changes = payload.get("changes")
        if not isinstance(changes, dict):
            return
        for ckey, change in changes.items():
            if not isinstance(change, dict) or "previous" not in change or change.get("previous") != change.get("new"):
                continue
            prev_set = f"changes.{ckey}.previous" in overridden
            new_set = f"changes.{ckey}.new" in overridden
            if prev_set == new_set:
                continue
            fix = "new" if prev_set else "previous"
            for _ in range(30):
                change[fix] = self.change_value(ckey)
                if change["previous"] != change["new"]:
                    break

    def after(self, start: str, end: str) -> str:
        """An end that comes after ``start`` (same format as ``start``)."""
        try:
            if start.endswith("Z"):
                t0 = datetime.fromisoformat(start[:-1] + "+00:00")
                return self.ts(t0 + timedelta(minutes=self.rng.choice([30, 60, 90, 120])))
            d0 = datetime.fromisoformat(start)
            return (d0 + timedelta(days=self.rng.randint(30, 365))).date().isoformat()
        except ValueError:
            return end


# ---- public API -------------------------------------------------------------------------------------


def _schema_of(entry: EventType, registry: Registry) -> dict[str, Any]:
    """JSON Schema of the contract (v2 shape for union types; the legacy model for legacy-only types)."""
    return _json_schema(registry, entry.ref)


@functools.lru_cache(maxsize=1024)
def _json_schema(registry: Registry, ref: str) -> dict[str, Any]:
    # read-only below; refs are never re-bound to another model once registered
    return registry.json_schema(ref)


def example(
    event_type: str,
    *,
    tenant_id: str | uuid.UUID | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
    optional: OptionalMode = "some",
) -> dict[str, Any]:
    """A realistic, valid payload of ``event_type`` (raises ``UnknownEventType`` / ``PayloadValidationError``).

    ``overrides`` maps dot paths to values (``{"changes.status.new": "closed"}``), applied last; use
    ``parse_assignments`` to turn ``field=value`` strings (JSON values) into one. ``seed`` makes the result
    reproducible. ``optional``: ``"some"`` (a realistic subset), ``"all"`` or ``"none"`` of the optional keys.
    """
    reg = registry if registry is not None else schemas.registry
    entry = reg.event_type(event_type)
    gen = _Gen(
        entry,
        _schema_of(entry, reg),
        tenant_id=str(tenant_id) if tenant_id is not None else DEFAULT_TENANT,
        seed=seed,
        optional=optional,
    )
    overrides = overrides or {}
    if keys := _override_change_keys(overrides):
        gen.change_keys = keys
    payload = gen.obj(gen.root, "")
    for path, value in overrides.items():
        set_path(payload, path, copy.deepcopy(value))
    if overrides:
        gen.repair_pairs(payload, set(overrides))
    reg.validate(event_type, payload)
    return payload


# ---- invalid variants ---------------------------------------------------------------------------------


def _wrong_type_value(schema: dict[str, Any]) -> tuple[Any, str] | None:
    t = schema.get("type")
    if "enum" in schema or "const" in schema:
        return None
    return {
        "string": (12345, "Input should be a valid string"),
        "integer": ("42", "Input should be a valid integer"),
        "number": ("4.5", "Input should be a valid number"),
        "boolean": ("yes", "Input should be a valid boolean"),
        "array": ("not-a-list", "Input should be a valid"),  # list (python) / array (JSON)
        "object": ("not-an-object", "Input should be"),  # a valid dictionary / an object
    }.get(t if isinstance(t, str) else "")


def _walk(gen: _Gen, schema: dict[str, Any], payload: Any, path: str) -> Iterable[tuple[str, dict[str, Any], bool]]:
    """(path, resolved schema, required) for every key present in the payload, depth first."""
    s = gen.resolve(schema)
    if isinstance(payload, dict) and "properties" in s:
        required = set(s.get("required", ()))
        for name, ps in s["properties"].items():
            if name not in payload:
                continue
            p = f"{path}.{name}" if path else name
            yield p, gen.resolve(ps), name in required
            yield from _walk(gen, ps, payload[name], p)
    elif isinstance(payload, dict) and isinstance(s.get("additionalProperties"), dict):
        for key, val in payload.items():
            yield from _walk(gen, s["additionalProperties"], val, f"{path}.{key}")
    elif isinstance(payload, list) and isinstance(s.get("items"), dict) and payload:
        yield from _walk(gen, s["items"], payload[0], f"{path}.0")


def invalid_variants(
    event_type: str,
    *,
    tenant_id: str | uuid.UUID | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
    verify: bool = True,
) -> list[InvalidVariant]:
    """Payloads that break ``event_type``'s contract in one known way each, with the error each produces.

    Built from ``example(..., optional="all")``. With ``verify`` (default) every variant is validated and an
    ``AssertionError`` raised if one is accepted or fails on another field than the one it names.
    """
    reg = registry if registry is not None else schemas.registry
    entry = reg.event_type(event_type)
    if tenant_id is None and entry.legacy_model is not None:
        # The bus also accepts the older shape, which wants a UUID tenantId: a non-UUID tenant keeps every
        # variant invalid under both shapes (a v2 payload missing e.g. occurredAt can be a valid older one).
        tenant_id = UNION_TENANT
    base = example(event_type, tenant_id=tenant_id, seed=seed, registry=reg, optional="all")
    gen = _Gen(entry, _schema_of(entry, reg), tenant_id=str(tenant_id or DEFAULT_TENANT), seed=seed, optional="all")
    fields = list(_walk(gen, gen.root, base, ""))
    top = [(p, s, r) for p, s, r in fields if "." not in p]
    nested = [(p, s, r) for p, s, r in fields if "." in p]
    out: list[InvalidVariant] = []

    def variant(description: str, path: str, value: Any, reason: str, *, delete: bool = False) -> None:
        payload = copy.deepcopy(base)
        if delete:
            del_path(payload, path)
        else:
            set_path(payload, path, value)
        out.append(InvalidVariant(description, payload, path, reason))

    for path, _s, req in top:
        if req:
            variant(f"required field {path} is missing", path, None, "required field is missing", delete=True)
    seen_types: set[str] = set()
    for path, s, _req in top + nested:
        wrong = _wrong_type_value(s)
        t = str(s.get("type"))
        if wrong is None or t in seen_types or path == "tenantId":
            continue
        seen_types.add(t)
        variant(f"{path} has the wrong type ({type(wrong[0]).__name__} instead of {t})", path, wrong[0], wrong[1])
    uuids = [f for f in top + nested if f[1].get("format") == "uuid" and f[0] != "tenantId"]
    if uuids:
        path = next((f for f in uuids if f[2]), uuids[0])[0]
        variant(f"{path} is not a UUID", path, "not-a-uuid", "must be a UUID")
    stamps = [f for f in top + nested if f[1].get("format") == "date-time"]
    if stamps:
        path = stamps[0][0]
        variant(f"{path} has a +02:00 offset instead of Z", path, "2025-03-14T09:26:53.000+02:00", "ending in 'Z'")
        variant(f"{path} is a naive timestamp (no Z)", path, "2025-03-14T09:26:53", "ending in 'Z'")
        variant(f"{path} is not a timestamp", path, "yesterday at noonZ", "ending in 'Z'")
    enums = [f for f in top + nested if "enum" in f[1]]
    if enums:
        path, s, _ = next((f for f in enums if f[2]), enums[0])
        variant(f"{path} is not one of {s['enum']}", path, "NOT_AN_ALLOWED_VALUE", "Input should be")
    optionals = [f for f in top if not f[2]]
    if optionals:
        path = optionals[0][0]
        variant(f"optional {path} is null (must be omitted instead)", path, None, "must not be null")
    tenant = next((s for p, s, _ in top if p == "tenantId"), None)
    if tenant is not None:
        reason = "must be a UUID" if tenant.get("format") == "uuid" else "at least 1 character"
        variant("tenantId is empty", "tenantId", "", reason)
    for path, s, _req in top + nested:
        if int(s.get("minItems", 0)) > 0:
            variant(f"{path} has fewer than {s['minItems']} item(s)", path, [], "at least")
    emails = [f for f in top + nested if f[1].get("format") == "email"]
    if emails:
        path = emails[0][0]
        variant(f"{path} is not an e-mail address", path, "not-an-email", "must be an e-mail address")
    for path, _s, req in nested:
        if req:
            variant(f"nested required field {path} is missing", path, None, "required field is missing", delete=True)
            break
    if entry.legacy_model is not None:
        # With a UUID tenant given by the caller, some variants may be valid payloads of the older shape.
        out = [v for v in out if not _accepted(reg, event_type, v.payload)]
    if verify:
        for v in out:
            v.check(event_type, reg)
    return out


def _accepted(reg: Registry, event_type: str, payload: dict[str, Any]) -> bool:
    try:
        reg.validate(event_type, payload)
    except PayloadValidationError:
        return False
    return True
