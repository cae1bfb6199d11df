"""Billing: invoices, payments, credit notes, contracts and billing runs put their events on the stream once, valid."""

from __future__ import annotations

import uuid
from decimal import Decimal

import psycopg
import pytest

import domain.billing  # noqa: F401 - registers the billing (and crm) tables before the engine fixture creates them
from domain import billing, crm
from domain.base import InvalidInput, InvalidTransition, NotFound, WrongTenant

COVERED = {
    "INVOICE_GENERATED",
    "INVOICE_FINALIZED",
    "INVOICE_SENT",
    "INVOICE_STATUS_CHANGED",
    "INVOICE_DUE_DATE_CHANGED",
    "INVOICE_OVERDUE",
    "INVOICE_WRITTEN_OFF",
    "PAYMENT_RECORDED",
    "PAYMENT_APPLIED",
    "PAYMENT_FAILED",
    "PAYMENT_REFUNDED",
    "CREDIT_NOTE_CREATED",
    "CREDIT_NOTE_APPLIED",
    "CREDIT_NOTE_VOIDED",
    "CONTRACT_CREATED",
    "CONTRACT_UPDATED",
    "CONTRACT_STATUS_CHANGED",
    "CONTRACT_RENEWAL_UPCOMING",
    "RECURRING_BILLING_RUN_STARTED",
    "RECURRING_BILLING_RUN_COMPLETED",
    "RECURRING_BILLING_RUN_FAILED",
}
USER = str(uuid.uuid4())


def only(emitted, event_type):
    """The id of the single event of this type an action emitted."""
    ids = [eid for et, eid in emitted if et == event_type]
    assert len(ids) == 1, f"{event_type} emitted {len(ids)} times: {emitted}"
    return ids[0]


def outbox_count(db_url):
    with psycopg.connect(db_url) as c:
        return c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]


def status_change(published, emitted, invoice_id):
    """(previousStatus, newStatus) of the INVOICE_STATUS_CHANGED an action emitted for this invoice."""
    for et, eid in emitted:
        if et == "INVOICE_STATUS_CHANGED":
            got = published.expect_once(et, eid)
            if got["payload"]["invoiceId"] == invoice_id:
                p, e = got["payload"], got["entry"]
                assert (e["from_state"], e["to_state"]) == (p["previousStatus"], p["newStatus"])
                return p["previousStatus"], p["newStatus"]
    raise AssertionError(f"no INVOICE_STATUS_CHANGED for {invoice_id} in {emitted}")


def sent_invoice(act, client, amount, *, due="2026-02-15", currency="USD"):
    iid, _ = act("t1", billing.generate_invoice, client, lines=[{"description": "Services", "unit_price": amount}],
                 due_date=due, currency=currency, user=USER)  # fmt: skip
    act("t1", billing.finalize_invoice, iid, user=USER)
    act("t1", billing.send_invoice, iid, user=USER)
    return iid


def test_invoice_lifecycle(act, published):
    cid, _ = act("t1", crm.create_client, name="Acme Dental", status="active", user=USER)
    lines = [{"description": "Onsite support", "quantity": 10, "unit_price": "95.50"},
             {"description": "Backup licence", "unit_price": "49.99"}]  # fmt: skip
    iid, ev = act("t1", billing.generate_invoice, cid, lines=lines, due_date="2026-02-15", user=USER)
    p = published.expect_once("INVOICE_GENERATED", only(ev, "INVOICE_GENERATED"))["payload"]
    assert (p["invoiceId"], p["clientId"], p["userId"], p["status"]) == (iid, cid, USER, "draft")
    assert (p["totalAmount"], p["invoiceNumber"]) == ("1004.99", "INV-000001")

    _, ev = act("t1", billing.finalize_invoice, iid, user=USER)
    p = published.expect_once("INVOICE_FINALIZED", only(ev, "INVOICE_FINALIZED"))["payload"]
    assert (p["invoiceId"], p["status"], p["totalAmount"], p["invoiceNumber"]) == (
        iid, "finalized", "1004.99", "INV-000001")  # fmt: skip
    assert status_change(published, ev, iid) == ("draft", "finalized")

    _, ev = act("t1", billing.send_invoice, iid, delivery_method="portal", user=USER)
    got = published.expect_once("INVOICE_SENT", only(ev, "INVOICE_SENT"))
    p = got["payload"]
    assert (p["invoiceId"], p["clientId"], p["deliveryMethod"], p["sentByUserId"]) == (iid, cid, "portal", USER)
    assert got["entry"]["user_id"] == USER
    assert status_change(published, ev, iid) == ("finalized", "sent")

    _, ev = act("t1", billing.change_due_date, iid, "2026-02-20", today="2026-02-01", user=USER)
    assert [et for et, _ in ev] == ["INVOICE_DUE_DATE_CHANGED"]
    got = published.expect_once("INVOICE_DUE_DATE_CHANGED", ev[0][1])
    assert (got["payload"]["invoiceId"], got["payload"]["previousDueDate"], got["payload"]["newDueDate"]) == (
        iid, "2026-02-15", "2026-02-20")  # fmt: skip

    flagged, ev = act("t1", billing.mark_overdue_invoices, today="2026-03-04")  # the nightly job: system actor
    assert flagged == [iid]
    got = published.expect_once("INVOICE_OVERDUE", only(ev, "INVOICE_OVERDUE"))
    p = got["payload"]
    assert (p["invoiceId"], p["clientId"], p["dueDate"], p["amountDue"], p["currency"], p["daysOverdue"]) == (
        iid, cid, "2026-02-20", "1004.99", "USD", 12)  # fmt: skip
    assert p["actorType"] == "SYSTEM" and got["entry"]["user_id"] == ""
    assert status_change(published, ev, iid) == ("sent", "overdue")
    assert act("t1", billing.mark_overdue_invoices, today="2026-03-05")[0] == []  # flagged once

    amount, ev = act("t1", billing.write_off_invoice, iid, reason="client insolvent", user=USER)
    p = published.expect_once("INVOICE_WRITTEN_OFF", only(ev, "INVOICE_WRITTEN_OFF"))["payload"]
    assert (p["invoiceId"], p["amountWrittenOff"], p["currency"], p["reason"]) == (
        iid, "1004.99", "USD", "client insolvent")  # fmt: skip
    assert amount == "1004.99"
    assert status_change(published, ev, iid) == ("overdue", "written_off")


def test_payments(act, published):
    cid, _ = act("t1", crm.create_client, name="Globex", status="active", user=USER)
    inv_a, inv_b = sent_invoice(act, cid, "500.00"), sent_invoice(act, cid, "300.00")

    pid, ev = act("t1", billing.record_payment, cid, amount="650.00", currency="USD", method="bank_transfer",
                  gateway_transaction_id="tx_8812", user=USER)  # fmt: skip
    p = published.expect_once("PAYMENT_RECORDED", only(ev, "PAYMENT_RECORDED"))["payload"]
    assert (p["paymentId"], p["clientId"], p["amount"], p["currency"], p["method"]) == (
        pid, cid, "650.00", "USD", "bank_transfer")  # fmt: skip
    assert (p["receivedByUserId"], p["gatewayTransactionId"]) == (USER, "tx_8812")

    _, ev = act("t1", billing.apply_payment, pid, {inv_a: "500.00", inv_b: Decimal("100")}, user=USER)
    p = published.expect_once("PAYMENT_APPLIED", only(ev, "PAYMENT_APPLIED"))["payload"]
    assert p["paymentId"] == pid and p["appliedByUserId"] == USER
    assert sorted((a["invoiceId"], a["amountApplied"]) for a in p["applications"]) == sorted(
        [(inv_a, "500.00"), (inv_b, "100.00")])  # fmt: skip
    assert status_change(published, ev, inv_a) == ("sent", "paid")
    assert status_change(published, ev, inv_b) == ("sent", "partially_paid")

    amount, ev = act("t1", billing.refund_payment, pid, reason="overpaid", user=USER)
    got = published.expect_once("PAYMENT_REFUNDED", only(ev, "PAYMENT_REFUNDED"))
    p = got["payload"]
    assert (p["paymentId"], p["amount"], p["currency"], p["reason"], p["refundedByUserId"]) == (
        pid, "50.00", "USD", "overpaid", USER)  # fmt: skip
    assert amount == "50.00" and (got["entry"]["from_state"], got["entry"]["to_state"]) == (
        "received", "partially_refunded")  # fmt: skip

    # the client's card is declined in the portal: the actor is the contact
    kid, _ = act("t1", crm.create_contact, cid, full_name="Hank Scorpio", user=USER)
    fid, ev = act("t1", billing.record_failed_payment, cid, amount="200.00", currency="USD", method="card",
                  invoice_id=inv_b, failure_code="card_declined", failure_message="Insufficient funds",
                  retryable=True, contact=kid)  # fmt: skip
    p = published.expect_once("PAYMENT_FAILED", only(ev, "PAYMENT_FAILED"))["payload"]
    assert (p["paymentId"], p["invoiceId"], p["clientId"], p["amount"], p["method"]) == (
        fid, inv_b, cid, "200.00", "card")  # fmt: skip
    assert (p["failureCode"], p["retryable"], p["actorContactId"], p["actorType"]) == (
        "card_declined", True, kid, "CONTACT")  # fmt: skip

    # the partly paid invoice goes overdue, then is given more time: back to partially_paid
    _, ev = act("t1", billing.mark_overdue_invoices, today="2026-03-01")
    p = published.expect_once("INVOICE_OVERDUE", only(ev, "INVOICE_OVERDUE"))["payload"]
    assert (p["invoiceId"], p["amountDue"], p["daysOverdue"]) == (inv_b, "200.00", 14)
    _, ev = act("t1", billing.change_due_date, inv_b, "2026-03-31", today="2026-03-01", user=USER)
    published.expect_once("INVOICE_DUE_DATE_CHANGED", only(ev, "INVOICE_DUE_DATE_CHANGED"))
    assert status_change(published, ev, inv_b) == ("overdue", "partially_paid")


def test_credit_notes(act, published):
    cid, _ = act("t1", crm.create_client, name="Initech", status="active", user=USER)
    iid = sent_invoice(act, cid, "200.00", currency="EUR")

    nid, ev = act("t1", billing.create_credit_note, cid, amount="150.00", currency="EUR", reason="SLA miss",
                  user=USER)  # fmt: skip
    got = published.expect_once("CREDIT_NOTE_CREATED", only(ev, "CREDIT_NOTE_CREATED"))
    p = got["payload"]
    assert (p["creditNoteId"], p["clientId"], p["amount"], p["currency"], p["status"], p["createdByUserId"]) == (
        nid, cid, "150.00", "EUR", "open", USER)  # fmt: skip

    amount, ev = act("t1", billing.apply_credit_note, nid, iid, user=USER)
    got = published.expect_once("CREDIT_NOTE_APPLIED", only(ev, "CREDIT_NOTE_APPLIED"))
    p = got["payload"]
    assert (p["creditNoteId"], p["invoiceId"], p["amountApplied"], p["currency"], p["appliedByUserId"]) == (
        nid, iid, "150.00", "EUR", USER)  # fmt: skip
    assert amount == "150.00" and (got["entry"]["from_state"], got["entry"]["to_state"]) == ("open", "applied")
    assert status_change(published, ev, iid) == ("sent", "partially_paid")

    nid2, _ = act("t1", billing.create_credit_note, cid, amount="80.00", currency="EUR", user=USER)
    _, ev = act("t1", billing.void_credit_note, nid2, reason="issued twice", user=USER)
    got = published.expect_once("CREDIT_NOTE_VOIDED", only(ev, "CREDIT_NOTE_VOIDED"))
    assert (got["payload"]["creditNoteId"], got["payload"]["reason"], got["payload"]["voidedByUserId"]) == (
        nid2, "issued twice", USER)  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("open", "voided")

    spare, _ = act("t1", billing.generate_invoice, cid, lines=[{"description": "Spare", "unit_price": "10.00"}],
                   due_date="2026-03-01", currency="EUR", user=USER)  # fmt: skip
    _, ev = act("t1", billing.void_invoice, spare, user=USER)
    assert status_change(published, ev, spare) == ("draft", "void")


def test_contracts_and_recurring_billing(act, published):
    cid, _ = act("t1", crm.create_client, name="Umbrella", status="active", user=USER)
    kid, ev = act("t1", billing.create_contract, cid, name="Managed services", start_date="2026-01-01",
                  end_date="2026-12-31", amount="1200.00", currency="EUR", user=USER)  # fmt: skip
    p = published.expect_once("CONTRACT_CREATED", only(ev, "CONTRACT_CREATED"))["payload"]
    assert (p["contractId"], p["clientId"], p["startDate"], p["endDate"], p["status"], p["createdByUserId"]) == (
        kid, cid, "2026-01-01", "2026-12-31", "draft", USER)  # fmt: skip

    fields, ev = act("t1", billing.update_contract, kid, amount="1350.00", name="Managed services+", user=USER)
    p = published.expect_once("CONTRACT_UPDATED", only(ev, "CONTRACT_UPDATED"))["payload"]
    assert (p["contractId"], p["clientId"], p["updatedFields"]) == (kid, cid, ["amount", "name"]) and fields == [
        "amount", "name"]  # fmt: skip
    assert p["changes"] == {"amount": {"previous": "1200.00", "new": "1350.00"},
                            "name": {"previous": "Managed services", "new": "Managed services+"}}  # fmt: skip

    _, ev = act("t1", billing.change_contract_status, kid, "active", user=USER)
    got = published.expect_once("CONTRACT_STATUS_CHANGED", only(ev, "CONTRACT_STATUS_CHANGED"))
    assert (got["payload"]["contractId"], got["payload"]["previousStatus"], got["payload"]["newStatus"]) == (
        kid, "draft", "active")  # fmt: skip
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("draft", "active")

    reminded, ev = act("t1", billing.send_renewal_reminders, today="2026-12-10")
    assert reminded == [kid]
    p = published.expect_once("CONTRACT_RENEWAL_UPCOMING", only(ev, "CONTRACT_RENEWAL_UPCOMING"))["payload"]
    assert (p["contractId"], p["clientId"], p["renewalAt"], p["daysUntilRenewal"]) == (kid, cid, "2026-12-31", 21)
    assert act("t1", billing.send_renewal_reminders, today="2026-12-11")[0] == []  # reminded once per end date

    schedule = str(uuid.uuid4())
    rid, ev = act("t1", billing.start_billing_run, run_date="2026-01-01", schedule_id=schedule, user=USER)
    p = published.expect_once("RECURRING_BILLING_RUN_STARTED", only(ev, "RECURRING_BILLING_RUN_STARTED"))["payload"]
    assert (p["runId"], p["scheduleId"], p["initiatedByUserId"]) == (rid, schedule, USER)
    result, ev = act("t1", billing.execute_billing_run, rid)
    assert result["invoicesCreated"] == 1
    p = published.expect_once("INVOICE_GENERATED", only(ev, "INVOICE_GENERATED"))["payload"]
    assert (p["clientId"], p["totalAmount"], p["status"]) == (cid, "1350.00", "draft") and "userId" not in p
    p = published.expect_once("RECURRING_BILLING_RUN_COMPLETED", only(ev, "RECURRING_BILLING_RUN_COMPLETED"))["payload"]
    assert (p["runId"], p["invoicesCreated"], p["failedCount"]) == (rid, 1, 0) and "warnings" not in p

    # a second client's contract is due, but the client was archived: nothing can be billed, the run fails
    gone, _ = act("t1", crm.create_client, name="Gone Ltd", status="active", user=USER)
    k2, _ = act("t1", billing.create_contract, gone, name="Support", start_date="2026-01-10", amount="90.00",
                currency="EUR", user=USER)  # fmt: skip
    act("t1", billing.change_contract_status, k2, "active", user=USER)
    act("t1", crm.archive_client, gone, user=USER)
    rid2, _ = act("t1", billing.start_billing_run, run_date="2026-01-15")
    result, ev = act("t1", billing.execute_billing_run, rid2)
    assert [et for et, _ in ev] == ["RECURRING_BILLING_RUN_FAILED"]
    got = published.expect_once("RECURRING_BILLING_RUN_FAILED", ev[0][1])
    p = got["payload"]
    assert (p["runId"], p["errorCode"], p["retryable"]) == (rid2, "NO_BILLABLE_CONTRACT", False)
    assert k2 in p["errorMessage"] and "archived" in p["errorMessage"]
    assert (got["entry"]["from_state"], got["entry"]["to_state"]) == ("running", "failed")

    # the worker running a billing run dies: the scheduler closes the run as failed, retryable
    rid3, _ = act("t1", billing.start_billing_run, run_date="2026-02-01")
    _, ev = act("t1", billing.fail_billing_run, rid3, error_message="worker lost", error_code="TIMEOUT")
    p = published.expect_once("RECURRING_BILLING_RUN_FAILED", only(ev, "RECURRING_BILLING_RUN_FAILED"))["payload"]
    assert (p["runId"], p["errorCode"], p["errorMessage"], p["retryable"]) == (rid3, "TIMEOUT", "worker lost", True)


def test_bad_input_emits_nothing(act, published, db_url):
    cid, _ = act("t1", crm.create_client, name="Hooli", status="active", user=USER)
    draft, _ = act("t1", billing.generate_invoice, cid, lines=[{"description": "x", "unit_price": "10.00"}],
                   due_date="2026-02-01", user=USER)  # fmt: skip
    sent = sent_invoice(act, cid, "100.00")
    pid, _ = act("t1", billing.record_payment, cid, amount="30.00", currency="USD", method="card", user=USER)
    rid, _ = act("t1", billing.start_billing_run, run_date="2026-01-01")
    before = outbox_count(db_url)

    with pytest.raises(NotFound):
        act("t1", billing.finalize_invoice, str(uuid.uuid4()))
    with pytest.raises(NotFound):
        act("t1", billing.generate_invoice, str(uuid.uuid4()), lines=[{"description": "x", "unit_price": "1"}],
            due_date="2026-01-01")  # fmt: skip
    with pytest.raises(WrongTenant):
        act("t2", billing.finalize_invoice, draft)
    with pytest.raises(WrongTenant):
        act("t2", billing.record_payment, cid, amount="1.00", currency="USD", method="card")
    with pytest.raises(InvalidTransition):
        act("t1", billing.send_invoice, draft)  # not finalized yet
    with pytest.raises(InvalidTransition):
        act("t1", billing.write_off_invoice, draft)
    with pytest.raises(InvalidTransition):
        act("t1", billing.finalize_invoice, sent)
    with pytest.raises(InvalidTransition):
        act("t1", billing.apply_payment, pid, {draft: "10.00"})  # drafts are not payable
    with pytest.raises(InvalidTransition):
        act("t1", billing.start_billing_run, run_date="2026-01-02")  # one run at a time
    with pytest.raises(InvalidInput):
        act("t1", billing.record_payment, cid, amount=12.5, currency="USD", method="card")  # floats are not money
    with pytest.raises(InvalidInput):
        act("t1", billing.record_payment, cid, amount="12.345", currency="USD", method="card")
    with pytest.raises(InvalidInput):
        act("t1", billing.record_payment, cid, amount="12.00", currency="usd", method="card")
    with pytest.raises(InvalidInput):
        act("t1", billing.apply_payment, pid, {sent: "40.00"})  # more than the payment's unapplied 30.00
    with pytest.raises(InvalidInput):
        act("t1", billing.send_invoice, sent, delivery_method="fax")
    with pytest.raises(InvalidInput):
        act("t1", billing.generate_invoice, cid, lines=[], due_date="2026-01-01")
    with pytest.raises(InvalidInput):
        act("t1", billing.change_due_date, sent, "next week")
    with pytest.raises(InvalidInput):
        act("t1", billing.create_contract, cid, name="x", start_date="2026-02-01", end_date="2026-01-01",
            amount="1.00", currency="USD")  # fmt: skip
    assert outbox_count(db_url) == before

    nid, _ = act("t1", billing.create_credit_note, cid, amount="20.00", currency="USD", user=USER)
    act("t1", billing.apply_credit_note, nid, sent, amount="5.00", user=USER)
    act("t1", billing.execute_billing_run, rid)
    before = outbox_count(db_url)
    with pytest.raises(InvalidTransition):
        act("t1", billing.void_credit_note, nid)  # partly applied
    with pytest.raises(InvalidTransition):
        act("t1", billing.execute_billing_run, rid)  # already completed
    with pytest.raises(InvalidTransition):
        act("t1", billing.void_invoice, sent)  # money was credited against it
    with pytest.raises(InvalidInput):
        act("t1", billing.apply_credit_note, nid, sent, amount="16.00")  # only 15.00 credit left
    assert outbox_count(db_url) == before
