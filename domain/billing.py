"""Billing: invoices, payments, credit notes, contracts and recurring billing runs (reference actions).

Money is stored as NUMERIC(14, 2) and travels as decimal strings ("120.00") beside an ISO currency code.
Invoice statuses: draft -> finalized -> sent -> partially_paid / overdue -> paid | written_off; draft,
finalized and unpaid sent invoices can be voided. Every status move emits INVOICE_STATUS_CHANGED besides
the event of the action itself (INVOICE_FINALIZED, INVOICE_SENT, INVOICE_OVERDUE, INVOICE_WRITTEN_OFF).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import JSON, Column, Date, DateTime, Integer, Numeric, String, Table, Text, Uuid, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain import crm
from domain.base import (
    Ctx,
    DomainError,
    InvalidInput,
    InvalidTransition,
    diff,
    emit,
    emits,
    fetch,
    iso,
    metadata,
    new_id,
    now,
    text_arg,
    uuid_arg,
)

Money = Numeric(14, 2, asdecimal=True)

invoices = Table(
    "ref_invoices",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("contract_id", Uuid),
    Column("run_id", Uuid),
    Column("number", String, nullable=False),
    Column("status", String, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("total", Money, nullable=False),
    Column("amount_paid", Money, nullable=False, default=Decimal(0)),
    Column("amount_credited", Money, nullable=False, default=Decimal(0)),
    Column("amount_written_off", Money, nullable=False, default=Decimal(0)),
    Column("due_date", Date, nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

counters = Table(
    "ref_billing_counters",
    metadata,
    Column("tenant_id", String, primary_key=True),
    Column("last_invoice_number", Integer, nullable=False),
)

payments = Table(
    "ref_payments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("status", String, nullable=False),  # received | partially_refunded | refunded | failed
    Column("amount", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String, nullable=False),
    Column("amount_applied", Money, nullable=False, default=Decimal(0)),
    Column("amount_refunded", Money, nullable=False, default=Decimal(0)),
    Column("gateway_transaction_id", String),
    Column("invoice_id", Uuid),  # the invoice a failed attempt was for
    Column("failure_code", String),
    Column("failure_message", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

credit_notes = Table(
    "ref_credit_notes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("status", String, nullable=False),  # open | partially_applied | applied | voided
    Column("amount", Money, nullable=False),
    Column("remaining", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

allocations = Table(
    "ref_invoice_allocations",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("invoice_id", Uuid, nullable=False, index=True),
    Column("source", String, nullable=False),  # payment | credit_note
    Column("source_id", Uuid, nullable=False),
    Column("amount", Money, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

contracts = Table(
    "ref_contracts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("status", String, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date),
    Column("amount", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("billing_frequency", String, nullable=False),
    Column("next_billing_date", Date, nullable=False),
    Column("periods_billed", Integer, nullable=False, default=0),
    Column("renewal_notified_for", Date),  # the end date a renewal reminder was already sent for
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

billing_runs = Table(
    "ref_billing_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("schedule_id", Uuid),
    Column("status", String, nullable=False),  # running | completed | failed
    Column("run_date", Date, nullable=False),
    Column("invoices_created", Integer, nullable=False, default=0),
    Column("failed_count", Integer, nullable=False, default=0),
    Column("error_message", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

CENT = Decimal("0.01")
PAYMENT_TERMS_DAYS = 30
RENEWAL_WINDOW_DAYS = 30
DELIVERY_METHODS = ("email", "portal", "print")
PAYABLE = ("finalized", "sent", "partially_paid", "overdue")  # invoices money can be applied to
COLLECTIBLE = ("sent", "partially_paid", "overdue")  # invoices the client was asked to pay
FREQUENCY_MONTHS = {"monthly": 1, "quarterly": 3, "annually": 12}
CONTRACT_FIELDS = frozenset({"name", "end_date", "amount", "billing_frequency"})
CONTRACT_MOVES = {
    "draft": ("active", "terminated"),
    "active": ("suspended", "terminated", "expired"),
    "suspended": ("active", "terminated"),
    "terminated": (),
    "expired": (),
}
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


# ---- argument checks and money -------------------------------------------------------------------


def _money(value: Any, what: str, *, allow_zero: bool = False) -> Decimal:
    """A positive amount with at most two decimals, from a decimal string, int or Decimal (never a float)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidInput(f"{what} must be a decimal string like '120.00', got {value!r}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a decimal string like '120.00', got {value!r}") from None
    if not d.is_finite() or d < 0 or (d == 0 and not allow_zero):
        raise InvalidInput(f"{what} must be a positive amount, got {value!r}")
    if d != d.quantize(CENT):
        raise InvalidInput(f"{what} has more than two decimals: {value!r}")
    return d.quantize(CENT)


def amount_str(d: Decimal) -> str:
    """The wire form of an amount: a decimal string with two decimals."""
    return str(Decimal(d).quantize(CENT))


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY_RE.match(value):
        raise InvalidInput(f"currency must be an ISO 4217 code like 'USD', got {value!r}")
    return value


def _date(value: Any, what: str) -> date:
    if isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a date, not a datetime")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a date like '2026-01-31', got {value!r}") from None


def _today(today: date | str | None) -> date:
    return _date(today, "today") if today is not None else datetime.now(UTC).date()


def _add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _client(ctx: Ctx, client_id: str, wanted: str) -> dict[str, Any]:
    c = fetch(ctx, crm.clients, "client", client_id, for_update=False)
    if c["status"] == "archived":
        raise InvalidTransition("client", "archived", wanted)
    return c


def _balance(inv: Mapping[str, Any]) -> Decimal:
    return Decimal(inv["total"] - inv["amount_paid"] - inv["amount_credited"] - inv["amount_written_off"])


# ---- invoices ------------------------------------------------------------------------------------


def _set_invoice_status(ctx: Ctx, inv: dict[str, Any], new_status: str, at: datetime, **values: Any) -> None:
    ctx.conn.execute(
        invoices.update().where(invoices.c.id == inv["id"]).values(status=new_status, updated_at=at, **values)
    )
    iid = str(inv["id"])
    emit(ctx, "INVOICE_STATUS_CHANGED", {"invoiceId": iid, "previousStatus": inv["status"], "newStatus": new_status,
                                         "changedAt": iso(at)},
         aggregate=f"invoice:{iid}", from_state=inv["status"], to_state=new_status)  # fmt: skip
    inv.update(values, status=new_status)


def _lines(lines: Any) -> tuple[list[dict[str, str]], Decimal]:
    if not isinstance(lines, list | tuple) or not lines:
        raise InvalidInput("lines must be a non-empty list of {description, quantity, unit_price}")
    out, total = [], Decimal(0)
    for n, line in enumerate(lines):
        if not isinstance(line, Mapping):
            raise InvalidInput(f"lines[{n}] must be a mapping")
        description = text_arg(f"lines[{n}].description", line.get("description"))
        qty_raw = line.get("quantity", 1)
        if isinstance(qty_raw, bool) or not isinstance(qty_raw, str | int | Decimal):
            raise InvalidInput(f"lines[{n}].quantity must be a number (int, Decimal or decimal string)")
        try:
            qty = Decimal(str(qty_raw))
        except InvalidOperation:
            raise InvalidInput(f"lines[{n}].quantity must be a number, got {qty_raw!r}") from None
        if not qty.is_finite() or qty <= 0:
            raise InvalidInput(f"lines[{n}].quantity must be positive")
        price = _money(line.get("unit_price"), f"lines[{n}].unit_price", allow_zero=True)
        amount = (qty * price).quantize(CENT, rounding=ROUND_HALF_UP)
        total += amount
        out.append({"description": description, "quantity": str(qty), "unitPrice": amount_str(price),
                    "amount": amount_str(amount)})  # fmt: skip
    if total <= 0:
        raise InvalidInput("an invoice must total more than zero")
    return out, total


def _next_number(ctx: Ctx) -> str:
    stmt = pg_insert(counters).values(tenant_id=ctx.tenant_id, last_invoice_number=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[counters.c.tenant_id], set_={"last_invoice_number": counters.c.last_invoice_number + 1}
    )
    n = ctx.conn.execute(stmt.returning(counters.c.last_invoice_number)).scalar_one()
    return f"INV-{n:06d}"


def _generate(
    ctx: Ctx, client: Mapping[str, Any], lines: Any, currency: Any, due: date, **refs: Any
) -> tuple[str, Decimal]:
    items, total = _lines(lines)
    currency = _currency(currency)
    iid, number = new_id(), _next_number(ctx)
    ctx.conn.execute(
        invoices.insert().values(id=iid, tenant_id=ctx.tenant_id, client_id=client["id"], number=number,
                                 status="draft", currency=currency, lines=items, total=total, amount_paid=0,
                                 amount_credited=0, amount_written_off=0, due_date=due, **refs)
    )  # fmt: skip
    emit(ctx, "INVOICE_GENERATED", {"invoiceId": iid, "clientId": str(client["id"]), "userId": ctx.user_id,
                                    "totalAmount": amount_str(total), "status": "draft", "invoiceNumber": number},
         aggregate=f"invoice:{iid}", to_state="draft")  # fmt: skip
    return iid, total


@emits("INVOICE_GENERATED")
def generate_invoice(
    ctx: Ctx,
    client_id: str,
    *,
    lines: list[Mapping[str, Any]],
    due_date: date | str,
    currency: str = "USD",
    contract_id: str | None = None,
) -> str:
    """Draft an invoice for a client from its lines (quantity x unit_price); emits INVOICE_GENERATED."""
    due = _date(due_date, "due_date")
    client = _client(ctx, client_id, "invoiced")
    refs: dict[str, Any] = {}
    if contract_id is not None:
        k = fetch(ctx, contracts, "contract", contract_id, for_update=False)
        if k["client_id"] != client["id"]:
            raise InvalidInput(f"contract {contract_id} belongs to another client")
        refs["contract_id"] = k["id"]
    iid, _ = _generate(ctx, client, lines, currency, due, **refs)
    return iid


@emits("INVOICE_FINALIZED", "INVOICE_STATUS_CHANGED")
def finalize_invoice(ctx: Ctx, invoice_id: str) -> None:
    """Lock a draft invoice against edits (draft -> finalized); emits INVOICE_FINALIZED and INVOICE_STATUS_CHANGED."""
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] != "draft":
        raise InvalidTransition("invoice", inv["status"], "finalized")
    _set_invoice_status(ctx, inv, "finalized", now())
    iid = str(inv["id"])
    emit(ctx, "INVOICE_FINALIZED", {"invoiceId": iid, "clientId": str(inv["client_id"]), "userId": ctx.user_id,
                                    "totalAmount": amount_str(inv["total"]), "status": "finalized",
                                    "invoiceNumber": inv["number"]},
         aggregate=f"invoice:{iid}", from_state="draft", to_state="finalized")  # fmt: skip


@emits("INVOICE_SENT", "INVOICE_STATUS_CHANGED")
def send_invoice(ctx: Ctx, invoice_id: str, *, delivery_method: str = "email") -> None:
    """Deliver a finalized invoice (first send: finalized -> sent) or resend an unpaid one; emits INVOICE_SENT."""
    if delivery_method not in DELIVERY_METHODS:
        raise InvalidInput(f"delivery_method must be one of {DELIVERY_METHODS}")
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] not in ("finalized", *COLLECTIBLE):
        raise InvalidTransition("invoice", inv["status"], "sent")
    at = now()
    if inv["status"] == "finalized":
        _set_invoice_status(ctx, inv, "sent", at, sent_at=at)
    else:
        ctx.conn.execute(invoices.update().where(invoices.c.id == inv["id"]).values(sent_at=at, updated_at=at))
    iid = str(inv["id"])
    emit(ctx, "INVOICE_SENT", {"invoiceId": iid, "clientId": str(inv["client_id"]), "sentByUserId": ctx.user_id,
                               "sentAt": iso(at), "deliveryMethod": delivery_method},
         aggregate=f"invoice:{iid}")  # fmt: skip


@emits("INVOICE_STATUS_CHANGED")
def void_invoice(ctx: Ctx, invoice_id: str) -> None:
    """Cancel an invoice nothing was paid, credited or written off against; emits INVOICE_STATUS_CHANGED."""
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] not in ("draft", "finalized", "sent", "overdue") or _balance(inv) != inv["total"]:
        raise InvalidTransition("invoice", inv["status"], "void")
    _set_invoice_status(ctx, inv, "void", now())


@emits("INVOICE_DUE_DATE_CHANGED", "INVOICE_STATUS_CHANGED")
def change_due_date(ctx: Ctx, invoice_id: str, new_due_date: date | str, *, today: date | str | None = None) -> None:
    """Move an open invoice's due date (an overdue one given time again is no longer overdue).

    Emits INVOICE_DUE_DATE_CHANGED, and INVOICE_STATUS_CHANGED (overdue -> sent/partially_paid) when it is
    no longer late on ``today``.
    """
    new_due, day = _date(new_due_date, "new_due_date"), _today(today)
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] not in ("draft", "finalized", *COLLECTIBLE):
        raise InvalidTransition("invoice", inv["status"], "rescheduled")
    if new_due == inv["due_date"]:
        raise InvalidTransition("invoice due date", inv["due_date"].isoformat(), new_due.isoformat())
    at, previous = now(), inv["due_date"]
    ctx.conn.execute(invoices.update().where(invoices.c.id == inv["id"]).values(due_date=new_due, updated_at=at))
    iid = str(inv["id"])
    emit(ctx, "INVOICE_DUE_DATE_CHANGED", {"invoiceId": iid, "previousDueDate": previous.isoformat(),
                                           "newDueDate": new_due.isoformat(), "changedAt": iso(at)},
         aggregate=f"invoice:{iid}", from_state=previous.isoformat(), to_state=new_due.isoformat())  # fmt: skip
    if inv["status"] == "overdue" and new_due >= day:
        back = "partially_paid" if _balance(inv) < inv["total"] else "sent"
        _set_invoice_status(ctx, inv, back, at)


@emits("INVOICE_OVERDUE", "INVOICE_STATUS_CHANGED")
def mark_overdue_invoices(ctx: Ctx, *, today: date | str | None = None) -> list[str]:
    """Flag the tenant's sent invoices that are past due and unpaid (scheduled job, system actor).

    Emits INVOICE_OVERDUE (amount due, days late) and INVOICE_STATUS_CHANGED (-> overdue) for each; returns their ids.
    """
    day = _today(today)
    rows = ctx.conn.execute(
        invoices.select()
        .where(invoices.c.tenant_id == ctx.tenant_id, invoices.c.status.in_(("sent", "partially_paid")),
               invoices.c.due_date < day)
        .order_by(invoices.c.due_date, invoices.c.id)
        .with_for_update(skip_locked=True)
    ).mappings()  # fmt: skip
    flagged = []
    for row in list(rows):
        inv, at = dict(row), now()
        _set_invoice_status(ctx, inv, "overdue", at)
        iid = str(inv["id"])
        emit(ctx, "INVOICE_OVERDUE", {"invoiceId": iid, "clientId": str(inv["client_id"]), "overdueAt": iso(at),
                                      "dueDate": inv["due_date"].isoformat(), "amountDue": amount_str(_balance(inv)),
                                      "currency": inv["currency"], "daysOverdue": (day - inv["due_date"]).days},
             aggregate=f"invoice:{iid}")  # fmt: skip
        flagged.append(iid)
    return flagged


@emits("INVOICE_WRITTEN_OFF", "INVOICE_STATUS_CHANGED")
def write_off_invoice(ctx: Ctx, invoice_id: str, *, reason: str | None = None) -> str:
    """Write off the unpaid balance of a sent invoice (-> written_off); emits INVOICE_WRITTEN_OFF and the status change.

    Returns the amount written off.
    """
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] not in COLLECTIBLE:
        raise InvalidTransition("invoice", inv["status"], "written_off")
    balance, at = _balance(inv), now()
    _set_invoice_status(ctx, inv, "written_off", at, amount_written_off=inv["amount_written_off"] + balance)
    iid = str(inv["id"])
    emit(ctx, "INVOICE_WRITTEN_OFF", {"invoiceId": iid, "writtenOffAt": iso(at), "reason": reason,
                                      "amountWrittenOff": amount_str(balance), "currency": inv["currency"]},
         aggregate=f"invoice:{iid}")  # fmt: skip
    return amount_str(balance)


def _settle(ctx: Ctx, inv: dict[str, Any], at: datetime, **money: Decimal) -> None:
    """Add paid/credited money to a locked invoice and move its status (-> partially_paid / paid) if it changes."""
    inv.update({k: inv[k] + v for k, v in money.items()})
    values = {k: inv[k] for k in money}
    balance = _balance(inv)
    if balance == 0:
        new = "paid"
    elif inv["status"] in ("finalized", "sent"):
        new = "partially_paid"
    else:
        new = inv["status"]  # partially_paid stays, overdue stays overdue until paid in full
    if new != inv["status"]:
        _set_invoice_status(ctx, inv, new, at, **values)
    else:
        ctx.conn.execute(invoices.update().where(invoices.c.id == inv["id"]).values(updated_at=at, **values))


def _payable(ctx: Ctx, invoice_id: str, client_id: Any, currency: str, amount: Decimal) -> dict[str, Any]:
    inv = fetch(ctx, invoices, "invoice", invoice_id)
    if inv["status"] not in PAYABLE:
        raise InvalidTransition("invoice", inv["status"], "paid")
    if inv["client_id"] != client_id:
        raise InvalidInput(f"invoice {invoice_id} belongs to another client")
    if inv["currency"] != currency:
        raise InvalidInput(f"invoice {invoice_id} is in {inv['currency']}, not {currency}")
    if amount > _balance(inv):
        raise InvalidInput(
            f"{amount_str(amount)} exceeds the balance {amount_str(_balance(inv))} of invoice {invoice_id}"
        )
    return inv


def _allocate(ctx: Ctx, inv: Mapping[str, Any], source: str, source_id: Any, amount: Decimal, at: datetime) -> None:
    ctx.conn.execute(
        allocations.insert().values(id=new_id(), tenant_id=ctx.tenant_id, invoice_id=inv["id"], source=source,
                                    source_id=source_id, amount=amount, applied_at=at)
    )  # fmt: skip


# ---- payments ------------------------------------------------------------------------------------


@emits("PAYMENT_RECORDED")
def record_payment(
    ctx: Ctx,
    client_id: str,
    *,
    amount: str | Decimal,
    currency: str,
    method: str,
    gateway_transaction_id: str | None = None,
    received_at: datetime | None = None,
) -> str:
    """Record money received from a client (unapplied until apply_payment); emits PAYMENT_RECORDED."""
    amt, currency, method = _money(amount, "amount"), _currency(currency), text_arg("method", method)
    if received_at is not None and (not isinstance(received_at, datetime) or received_at.utcoffset() is None):
        raise InvalidInput("received_at must be a timezone-aware datetime")
    client = fetch(ctx, crm.clients, "client", client_id, for_update=False)  # archived clients still pay their debts
    pid, at = new_id(), received_at or now()
    ctx.conn.execute(
        payments.insert().values(id=pid, tenant_id=ctx.tenant_id, client_id=client["id"], status="received",
                                 amount=amt, currency=currency, method=method, amount_applied=0, amount_refunded=0,
                                 gateway_transaction_id=gateway_transaction_id, received_at=at)
    )  # fmt: skip
    emit(ctx, "PAYMENT_RECORDED", {"paymentId": pid, "clientId": str(client["id"]), "receivedAt": iso(at),
                                   "amount": amount_str(amt), "currency": currency, "method": method,
                                   "receivedByUserId": ctx.user_id, "gatewayTransactionId": gateway_transaction_id},
         aggregate=f"payment:{pid}", to_state="received")  # fmt: skip
    return pid


@emits("PAYMENT_APPLIED", "INVOICE_STATUS_CHANGED")
def apply_payment(ctx: Ctx, payment_id: str, applications: Mapping[str, str | Decimal]) -> None:
    """Allocate a payment's unapplied money to invoices ({invoice_id: amount}) of the same client and currency.

    Emits PAYMENT_APPLIED, and INVOICE_STATUS_CHANGED for each invoice it moves (-> partially_paid / paid).
    """
    if not isinstance(applications, Mapping) or not applications:
        raise InvalidInput("applications must map invoice ids to amounts")
    wanted = {str(k): _money(v, f"amount for invoice {k}") for k, v in applications.items()}
    p = fetch(ctx, payments, "payment", payment_id)
    if p["status"] not in ("received", "partially_refunded"):
        raise InvalidTransition("payment", p["status"], "applied")
    unapplied = p["amount"] - p["amount_applied"] - p["amount_refunded"]
    if (asked := sum(wanted.values(), Decimal(0))) > unapplied:
        raise InvalidInput(f"applying {amount_str(asked)} exceeds the unapplied {amount_str(unapplied)}")
    locked = [(_payable(ctx, i, p["client_id"], p["currency"], a), a) for i, a in sorted(wanted.items())]
    at = now()
    for inv, amt in locked:
        _allocate(ctx, inv, "payment", p["id"], amt, at)
        _settle(ctx, inv, at, amount_paid=amt)
    total = sum(wanted.values(), Decimal(0))
    ctx.conn.execute(
        payments.update().where(payments.c.id == p["id"]).values(amount_applied=p["amount_applied"] + total)
    )
    pid = str(p["id"])
    emit(ctx, "PAYMENT_APPLIED", {"paymentId": pid, "appliedAt": iso(at), "appliedByUserId": ctx.user_id,
                                  "applications": [{"invoiceId": str(inv["id"]), "amountApplied": amount_str(amt)}
                                                   for inv, amt in locked]},
         aggregate=f"payment:{pid}")  # fmt: skip


@emits("PAYMENT_FAILED")
def record_failed_payment(
    ctx: Ctx,
    client_id: str,
    *,
    amount: str | Decimal,
    currency: str,
    method: str,
    invoice_id: str | None = None,
    failure_code: str | None = None,
    failure_message: str | None = None,
    retryable: bool = False,
) -> str:
    """Record a payment attempt the gateway declined (kept as a failed payment); emits PAYMENT_FAILED."""
    amt, currency, method = _money(amount, "amount"), _currency(currency), text_arg("method", method)
    client = fetch(ctx, crm.clients, "client", client_id, for_update=False)
    inv_id = None
    if invoice_id is not None:
        inv = fetch(ctx, invoices, "invoice", invoice_id, for_update=False)
        if inv["client_id"] != client["id"]:
            raise InvalidInput(f"invoice {invoice_id} belongs to another client")
        inv_id = inv["id"]
    pid, at = new_id(), now()
    ctx.conn.execute(
        payments.insert().values(id=pid, tenant_id=ctx.tenant_id, client_id=client["id"], status="failed",
                                 amount=amt, currency=currency, method=method, amount_applied=0, amount_refunded=0,
                                 invoice_id=inv_id, failure_code=failure_code, failure_message=failure_message,
                                 received_at=at)
    )  # fmt: skip
    emit(ctx, "PAYMENT_FAILED", {"paymentId": pid, "invoiceId": str(inv_id) if inv_id else None,
                                 "clientId": str(client["id"]), "failedAt": iso(at), "amount": amount_str(amt),
                                 "currency": currency, "method": method, "failureCode": failure_code,
                                 "failureMessage": failure_message, "retryable": retryable},
         aggregate=f"payment:{pid}", to_state="failed")  # fmt: skip
    return pid


@emits("PAYMENT_REFUNDED")
def refund_payment(ctx: Ctx, payment_id: str, *, amount: str | Decimal | None = None, reason: str | None = None) -> str:
    """Refund unapplied money of a payment (all of it by default); emits PAYMENT_REFUNDED. Returns the amount."""
    p = fetch(ctx, payments, "payment", payment_id)
    if p["status"] not in ("received", "partially_refunded"):
        raise InvalidTransition("payment", p["status"], "refunded")
    unapplied = Decimal(p["amount"] - p["amount_applied"] - p["amount_refunded"])
    amt = _money(amount, "amount") if amount is not None else unapplied
    if amt <= 0 or amt > unapplied:
        raise InvalidInput(f"can refund at most the unapplied {amount_str(unapplied)} (unapply invoices first)")
    refunded = p["amount_refunded"] + amt
    status = "refunded" if refunded == p["amount"] else "partially_refunded"
    at = now()
    ctx.conn.execute(payments.update().where(payments.c.id == p["id"]).values(amount_refunded=refunded, status=status))
    pid = str(p["id"])
    emit(ctx, "PAYMENT_REFUNDED", {"paymentId": pid, "refundedAt": iso(at), "refundedByUserId": ctx.user_id,
                                   "amount": amount_str(amt), "currency": p["currency"], "reason": reason},
         aggregate=f"payment:{pid}", from_state=p["status"], to_state=status)  # fmt: skip
    return amount_str(amt)


# ---- credit notes --------------------------------------------------------------------------------


@emits("CREDIT_NOTE_CREATED")
def create_credit_note(
    ctx: Ctx, client_id: str, *, amount: str | Decimal, currency: str, reason: str | None = None
) -> str:
    """Issue credit to a client (open until applied or voided); emits CREDIT_NOTE_CREATED."""
    amt, currency = _money(amount, "amount"), _currency(currency)
    client = _client(ctx, client_id, "credited")
    nid, at = new_id(), now()
    ctx.conn.execute(
        credit_notes.insert().values(id=nid, tenant_id=ctx.tenant_id, client_id=client["id"], status="open",
                                     amount=amt, remaining=amt, currency=currency, reason=reason, created_at=at)
    )  # fmt: skip
    emit(ctx, "CREDIT_NOTE_CREATED", {"creditNoteId": nid, "clientId": str(client["id"]), "status": "open",
                                      "createdByUserId": ctx.user_id, "createdAt": iso(at),
                                      "amount": amount_str(amt), "currency": currency},
         aggregate=f"credit_note:{nid}", to_state="open")  # fmt: skip
    return nid


@emits("CREDIT_NOTE_APPLIED", "INVOICE_STATUS_CHANGED")
def apply_credit_note(ctx: Ctx, credit_note_id: str, invoice_id: str, *, amount: str | Decimal | None = None) -> str:
    """Consume credit against an invoice (by default as much as both allow); emits CREDIT_NOTE_APPLIED.

    Also INVOICE_STATUS_CHANGED when the invoice moves (-> partially_paid / paid). Returns the amount applied.
    """
    cn = fetch(ctx, credit_notes, "credit note", credit_note_id)
    if cn["status"] not in ("open", "partially_applied"):
        raise InvalidTransition("credit note", cn["status"], "applied")
    inv = fetch(ctx, invoices, "invoice", invoice_id, for_update=False)
    amt = _money(amount, "amount") if amount is not None else min(Decimal(cn["remaining"]), _balance(inv))
    if amt <= 0 or amt > cn["remaining"]:
        raise InvalidInput(f"can apply at most the remaining credit {amount_str(cn['remaining'])}")
    inv = _payable(ctx, invoice_id, cn["client_id"], cn["currency"], amt)
    remaining, at = cn["remaining"] - amt, now()
    status = "applied" if remaining == 0 else "partially_applied"
    _allocate(ctx, inv, "credit_note", cn["id"], amt, at)
    _settle(ctx, inv, at, amount_credited=amt)
    ctx.conn.execute(
        credit_notes.update().where(credit_notes.c.id == cn["id"]).values(remaining=remaining, status=status)
    )
    nid = str(cn["id"])
    emit(ctx, "CREDIT_NOTE_APPLIED", {"creditNoteId": nid, "invoiceId": str(inv["id"]), "appliedByUserId": ctx.user_id,
                                      "appliedAt": iso(at), "amountApplied": amount_str(amt),
                                      "currency": cn["currency"]},
         aggregate=f"credit_note:{nid}", from_state=cn["status"], to_state=status)  # fmt: skip
    return amount_str(amt)


@emits("CREDIT_NOTE_VOIDED")
def void_credit_note(ctx: Ctx, credit_note_id: str, *, reason: str | None = None) -> None:
    """Cancel a credit note none of which was applied; emits CREDIT_NOTE_VOIDED."""
    cn = fetch(ctx, credit_notes, "credit note", credit_note_id)
    if cn["status"] != "open":
        raise InvalidTransition("credit note", cn["status"], "voided")
    at = now()
    ctx.conn.execute(credit_notes.update().where(credit_notes.c.id == cn["id"]).values(status="voided", remaining=0))
    nid = str(cn["id"])
    emit(ctx, "CREDIT_NOTE_VOIDED", {"creditNoteId": nid, "voidedByUserId": ctx.user_id, "voidedAt": iso(at),
                                     "reason": reason},
         aggregate=f"credit_note:{nid}", from_state="open", to_state="voided")  # fmt: skip


# ---- contracts -----------------------------------------------------------------------------------


def _contract_view(values: Mapping[str, Any]) -> dict[str, Any]:
    """Contract fields as they travel in ``changes`` (dates ISO, money decimal strings)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, date):
            out[k] = v.isoformat()
        elif isinstance(v, Decimal):
            out[k] = amount_str(v)
        else:
            out[k] = v
    return out


@emits("CONTRACT_CREATED")
def create_contract(
    ctx: Ctx,
    client_id: str,
    *,
    name: str,
    start_date: date | str,
    amount: str | Decimal,
    currency: str,
    end_date: date | str | None = None,
    billing_frequency: str = "monthly",
) -> str:
    """Set up a recurring-billing contract for a client (status draft); emits CONTRACT_CREATED."""
    name, amt, currency = text_arg("name", name), _money(amount, "amount"), _currency(currency)
    start = _date(start_date, "start_date")
    end = _date(end_date, "end_date") if end_date is not None else None
    if end is not None and end <= start:
        raise InvalidInput("end_date must be after start_date")
    if billing_frequency not in FREQUENCY_MONTHS:
        raise InvalidInput(f"billing_frequency must be one of {sorted(FREQUENCY_MONTHS)}")
    client = _client(ctx, client_id, "contracted")
    kid, at = new_id(), now()
    ctx.conn.execute(
        contracts.insert().values(id=kid, tenant_id=ctx.tenant_id, client_id=client["id"], name=name, status="draft",
                                  start_date=start, end_date=end, amount=amt, currency=currency,
                                  billing_frequency=billing_frequency, next_billing_date=start, periods_billed=0,
                                  updated_at=at)
    )  # fmt: skip
    emit(ctx, "CONTRACT_CREATED", {"contractId": kid, "clientId": str(client["id"]), "createdByUserId": ctx.user_id,
                                   "createdAt": iso(at), "startDate": start.isoformat(),
                                   "endDate": end.isoformat() if end else None, "status": "draft"},
         aggregate=f"contract:{kid}", to_state="draft")  # fmt: skip
    return kid


@emits("CONTRACT_UPDATED")
def update_contract(ctx: Ctx, contract_id: str, **fields: Any) -> list[str]:
    """Edit name/end_date/amount/billing_frequency of a live contract; emits CONTRACT_UPDATED with the changes."""
    if not fields or set(fields) - CONTRACT_FIELDS:
        raise InvalidInput(f"can update only {sorted(CONTRACT_FIELDS)}")
    if "name" in fields:
        fields["name"] = text_arg("name", fields["name"])
    if "amount" in fields:
        fields["amount"] = _money(fields["amount"], "amount")
    if fields.get("end_date") is not None:
        fields["end_date"] = _date(fields["end_date"], "end_date")
    if "billing_frequency" in fields and fields["billing_frequency"] not in FREQUENCY_MONTHS:
        raise InvalidInput(f"billing_frequency must be one of {sorted(FREQUENCY_MONTHS)}")
    k = fetch(ctx, contracts, "contract", contract_id)
    if not CONTRACT_MOVES[k["status"]]:
        raise InvalidTransition("contract", k["status"], "updated")
    if fields.get("end_date") is not None and fields["end_date"] <= k["start_date"]:
        raise InvalidInput("end_date must be after start_date")
    updated, changes = diff(_contract_view({f: k[f] for f in fields}), _contract_view(fields))
    changes = {p: {s: v for s, v in c.items() if v is not None} for p, c in changes.items()}  # unset sides omitted
    if not updated:
        return []
    at = now()
    ctx.conn.execute(contracts.update().where(contracts.c.id == k["id"]).values(**fields, updated_at=at))
    kid = str(k["id"])
    emit(ctx, "CONTRACT_UPDATED", {"contractId": kid, "clientId": str(k["client_id"]), "updatedAt": iso(at),
                                   "updatedFields": updated, "changes": changes},
         aggregate=f"contract:{kid}")  # fmt: skip
    return updated


@emits("CONTRACT_STATUS_CHANGED")
def change_contract_status(ctx: Ctx, contract_id: str, new_status: str) -> None:
    """Move a contract along draft -> active <-> suspended -> terminated/expired; emits CONTRACT_STATUS_CHANGED."""
    if new_status not in CONTRACT_MOVES:
        raise InvalidInput(f"status must be one of {sorted(CONTRACT_MOVES)}")
    k = fetch(ctx, contracts, "contract", contract_id)
    if new_status not in CONTRACT_MOVES[k["status"]]:
        raise InvalidTransition("contract", k["status"], new_status)
    if new_status == "active":
        _client(ctx, str(k["client_id"]), "under an active contract")
    at = now()
    ctx.conn.execute(contracts.update().where(contracts.c.id == k["id"]).values(status=new_status, updated_at=at))
    kid = str(k["id"])
    emit(ctx, "CONTRACT_STATUS_CHANGED", {"contractId": kid, "clientId": str(k["client_id"]),
                                          "previousStatus": k["status"], "newStatus": new_status, "changedAt": iso(at)},
         aggregate=f"contract:{kid}", from_state=k["status"], to_state=new_status)  # fmt: skip


@emits("CONTRACT_RENEWAL_UPCOMING")
def send_renewal_reminders(
    ctx: Ctx, *, today: date | str | None = None, window_days: int = RENEWAL_WINDOW_DAYS
) -> list[str]:
    """Remind once per end date of each active contract ending within the window (scheduled job).

    Emits CONTRACT_RENEWAL_UPCOMING for each; returns their contract ids.
    """
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 0:
        raise InvalidInput("window_days must be a non-negative integer")
    day = _today(today)
    rows = ctx.conn.execute(
        contracts.select()
        .where(contracts.c.tenant_id == ctx.tenant_id, contracts.c.status == "active",
               contracts.c.end_date.is_not(None), contracts.c.end_date >= day,
               contracts.c.end_date <= day + timedelta(days=window_days),
               contracts.c.renewal_notified_for.is_distinct_from(contracts.c.end_date))
        .order_by(contracts.c.end_date, contracts.c.id)
        .with_for_update(skip_locked=True)
    ).mappings()  # fmt: skip
    reminded = []
    for k in list(rows):
        ctx.conn.execute(contracts.update().where(contracts.c.id == k["id"]).values(renewal_notified_for=k["end_date"]))
        kid = str(k["id"])
        emit(ctx, "CONTRACT_RENEWAL_UPCOMING", {"contractId": kid, "clientId": str(k["client_id"]),
                                                "renewalAt": k["end_date"].isoformat(),
                                                "daysUntilRenewal": (k["end_date"] - day).days},
             aggregate=f"contract:{kid}")  # fmt: skip
        reminded.append(kid)
    return reminded


# ---- recurring billing runs ----------------------------------------------------------------------


@emits("RECURRING_BILLING_RUN_STARTED")
def start_billing_run(ctx: Ctx, *, run_date: date | str | None = None, schedule_id: str | None = None) -> str:
    """Open a recurring billing run for a date (one running run per tenant); emits RECURRING_BILLING_RUN_STARTED."""
    day = _today(run_date)
    schedule = uuid_arg("schedule_id", schedule_id) if schedule_id is not None else None
    running = ctx.conn.execute(
        select(billing_runs.c.id).where(billing_runs.c.tenant_id == ctx.tenant_id, billing_runs.c.status == "running")
    ).first()
    if running is not None:
        raise InvalidTransition("billing run", f"running ({running[0]})", "started")
    rid, at = new_id(), now()
    ctx.conn.execute(
        billing_runs.insert().values(id=rid, tenant_id=ctx.tenant_id, schedule_id=schedule, status="running",
                                     run_date=day, invoices_created=0, failed_count=0, started_at=at)
    )  # fmt: skip
    emit(ctx, "RECURRING_BILLING_RUN_STARTED", {"runId": rid, "scheduleId": schedule, "startedAt": iso(at),
                                                "initiatedByUserId": ctx.user_id},
         aggregate=f"billing_run:{rid}", to_state="running")  # fmt: skip
    return rid


def _due_contracts(ctx: Ctx, day: date) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in ctx.conn.execute(
            contracts.select()
            .where(contracts.c.tenant_id == ctx.tenant_id, contracts.c.status == "active",
                   contracts.c.next_billing_date <= day,
                   contracts.c.end_date.is_(None) | (contracts.c.next_billing_date <= contracts.c.end_date))
            .order_by(contracts.c.next_billing_date, contracts.c.id)
            .with_for_update()
        ).mappings()
    ]  # fmt: skip


def _finish_run(ctx: Ctx, run: Mapping[str, Any], status: str, **values: Any) -> None:
    ctx.conn.execute(
        billing_runs.update().where(billing_runs.c.id == run["id"]).values(status=status, finished_at=now(), **values)
    )


@emits("INVOICE_GENERATED", "RECURRING_BILLING_RUN_COMPLETED", "RECURRING_BILLING_RUN_FAILED")
def execute_billing_run(ctx: Ctx, run_id: str) -> dict[str, Any]:
    """Invoice every active contract due on the run date and advance its next billing date.

    Each contract is billed in a savepoint: one that cannot be billed (e.g. its client was archived) is counted
    in failedCount with a warning. Emits INVOICE_GENERATED per invoice, then RECURRING_BILLING_RUN_COMPLETED, or
    RECURRING_BILLING_RUN_FAILED when contracts were due and none could be billed. Returns the run's counts.
    """
    run = fetch(ctx, billing_runs, "billing run", run_id)
    if run["status"] != "running":
        raise InvalidTransition("billing run", run["status"], "executed")
    day: date = run["run_date"]
    created, warnings = 0, []
    for k in _due_contracts(ctx, day):
        billed = k["periods_billed"] + 1  # periods count from the start date, so month ends do not drift
        period_end = _add_months(k["start_date"], FREQUENCY_MONTHS[k["billing_frequency"]] * billed)
        lines = [{"description": f"{k['name']} ({k['next_billing_date'].isoformat()} to "
                                 f"{(period_end - timedelta(days=1)).isoformat()})",
                  "quantity": 1, "unit_price": amount_str(k["amount"])}]  # fmt: skip
        mark, savepoint = len(ctx.emitted), ctx.conn.begin_nested()
        try:
            client = _client(ctx, str(k["client_id"]), "invoiced")
            _generate(ctx, client, lines, k["currency"], day + timedelta(days=PAYMENT_TERMS_DAYS),
                      contract_id=k["id"], run_id=run["id"])  # fmt: skip
            ctx.conn.execute(
                contracts.update()
                .where(contracts.c.id == k["id"])
                .values(next_billing_date=period_end, periods_billed=billed)
            )
            savepoint.commit()
            created += 1
        except DomainError as exc:
            savepoint.rollback()
            del ctx.emitted[mark:]
            warnings.append(f"contract {k['id']}: {exc}")
    at, rid = now(), str(run["id"])
    if warnings and not created:
        message = f"none of the {len(warnings)} due contracts could be billed: " + "; ".join(warnings)
        _finish_run(ctx, run, "failed", failed_count=len(warnings), error_message=message)
        emit(ctx, "RECURRING_BILLING_RUN_FAILED", {"runId": rid, "failedAt": iso(at), "errorMessage": message,
                                                   "errorCode": "NO_BILLABLE_CONTRACT", "retryable": False},
             aggregate=f"billing_run:{rid}", from_state="running", to_state="failed")  # fmt: skip
        return {"status": "failed", "invoicesCreated": 0, "failedCount": len(warnings), "warnings": warnings}
    _finish_run(ctx, run, "completed", invoices_created=created, failed_count=len(warnings))
    emit(ctx, "RECURRING_BILLING_RUN_COMPLETED", {"runId": rid, "completedAt": iso(at), "invoicesCreated": created,
                                                  "failedCount": len(warnings), "warnings": warnings or None},
         aggregate=f"billing_run:{rid}", from_state="running", to_state="completed")  # fmt: skip
    return {"status": "completed", "invoicesCreated": created, "failedCount": len(warnings), "warnings": warnings}


@emits("RECURRING_BILLING_RUN_FAILED")
def fail_billing_run(
    ctx: Ctx, run_id: str, *, error_message: str, error_code: str | None = None, retryable: bool = True
) -> None:
    """Close a running billing run that crashed outside the domain (worker died, timeout); emits ..._RUN_FAILED."""
    error_message = text_arg("error_message", error_message)
    run = fetch(ctx, billing_runs, "billing run", run_id)
    if run["status"] != "running":
        raise InvalidTransition("billing run", run["status"], "failed")
    _finish_run(ctx, run, "failed", error_message=error_message)
    rid = str(run["id"])
    emit(ctx, "RECURRING_BILLING_RUN_FAILED", {"runId": rid, "failedAt": iso(), "errorCode": error_code,
                                               "errorMessage": error_message, "retryable": retryable},
         aggregate=f"billing_run:{rid}", from_state="running", to_state="failed")  # fmt: skip
