"""Surveys: survey templates, invitations sent to contacts (usually for a closed ticket), reminders, expiry,
responses, and CSAT alert rules (reference actions).

Rules worth knowing:

- A survey is one invitation of a template to one contact: sent -> responded | expired. ``send_survey`` returns
  the survey id and the one-time token of its link (only a hash is stored); a response must present that token.
- Ticket surveys (for a resolved/closed ticket, at most one open survey per ticket and template) also emit the
  legacy bus types the older survey workflow listens to: SURVEY_INVITATION_SENT beside SURVEY_SENT,
  SURVEY_RESPONSE_SUBMITTED beside SURVEY_RESPONSE_RECEIVED, and SURVEY_NEGATIVE_RESPONSE when the score is at or
  below the template's negative threshold. Legacy bus types need a UUID tenant.
- Scores must lie on the template's scale (csat 1-5, nps 0-10 by default).
- ``sweep_surveys`` (scheduler) expires surveys past their expiry and reminds the others whose last mail is older
  than the template's reminder interval, up to its reminder limit; ``remind_survey`` reminds one at once.
- CSAT alert rules watch the average csat score of a scope (an agent or a team: the ticket's assignee when the
  response came; or the whole org) over a daily/weekly/monthly window ending at the sweep time;
  ``evaluate_csat_alerts`` emits CSAT_ALERT_TRIGGERED when it is below the rule's threshold, with the previous
  window's average as baseline, at most once per window length per rule.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Column, DateTime, Float, Integer, String, Table, Text, Uuid, func, select

from domain import crm as _crm
from domain import tickets as _tickets
from domain.base import (
    Ctx,
    InvalidInput,
    InvalidTransition,
    emit,
    emits,
    fetch,
    iso,
    legacy_tenant,
    metadata,
    new_id,
    now,
    opt_str,
    update_row,
    uuid_arg,
    when_arg,
)

templates = Table(
    "ref_survey_templates",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("survey_type", String, nullable=False),
    Column("scale_min", Integer, nullable=False),
    Column("scale_max", Integer, nullable=False),
    Column("negative_at_or_below", Float, nullable=False),
    Column("reminder_after_hours", Integer, nullable=False),
    Column("max_reminders", Integer, nullable=False),
    Column("expires_after_days", Integer, nullable=False),
)

surveys = Table(
    "ref_surveys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("template_id", Uuid, nullable=False),
    Column("survey_type", String, nullable=False),
    Column("contact_id", Uuid, nullable=False),
    Column("client_id", Uuid),
    Column("ticket_id", Uuid, index=True),
    Column("channel", String, nullable=False),
    Column("token_hash", String, nullable=False),
    Column("status", String, nullable=False),  # sent | responded | expired
    Column("reminders_sent", Integer, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("last_sent_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

responses = Table(
    "ref_survey_responses",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("survey_id", Uuid, nullable=False, unique=True),
    Column("survey_type", String, nullable=False),
    Column("ticket_id", Uuid),
    Column("assignee_id", Uuid),  # the ticket's assignee when the response came (CSAT scopes)
    Column("assignee_type", String),
    Column("score", Float, nullable=False),
    Column("comment", Text),
    Column("responded_at", DateTime(timezone=True), nullable=False, index=True),
)

alert_rules = Table(
    "ref_csat_alert_rules",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("window", String, nullable=False),
    Column("scope_type", String, nullable=False),
    Column("scope_id", Uuid),
    Column("threshold", Float, nullable=False),
    Column("min_responses", Integer, nullable=False),
    Column("last_triggered_at", DateTime(timezone=True)),
)

alerts = Table(
    "ref_csat_alerts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", String, nullable=False, index=True),
    Column("rule_id", Uuid, nullable=False, index=True),
    Column("score", Float, nullable=False),
    Column("baseline", Float),
    Column("responses", Integer, nullable=False),
    Column("triggered_at", DateTime(timezone=True), nullable=False),
)

SURVEY_TYPES = ("csat", "nps", "custom")
CHANNELS = ("email", "sms", "in_app", "push")
WINDOWS = {"daily": timedelta(days=1), "weekly": timedelta(days=7), "monthly": timedelta(days=30)}
SCOPE_TYPES = ("agent", "team", "org")
# defaults per survey type: (scale_min, scale_max, negative at or below)
SCALES = {"csat": (1, 5, 2.0), "nps": (0, 10, 6.0)}


class SurveyInvite(NamedTuple):
    """A sent survey: its id and the one-time token of its link (never stored in clear)."""

    survey_id: str
    token: str


# ---- helpers -------------------------------------------------------------------------------------


def _int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    return float(value)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- templates -----------------------------------------------------------------------------------


@emits()
def create_template(
    ctx: Ctx,
    name: str,
    *,
    survey_type: str = "csat",
    scale: tuple[int, int] | None = None,
    negative_at_or_below: float | None = None,
    reminder_after_hours: int = 48,
    max_reminders: int = 2,
    expires_after_days: int = 14,
) -> str:
    """Create a survey template (type, score scale, negative threshold, reminder and expiry policy); emits nothing."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("template name must not be empty")
    if survey_type not in SURVEY_TYPES:
        raise InvalidInput(f"survey_type must be one of {SURVEY_TYPES}, got {survey_type!r}")
    lo, hi, neg = SCALES.get(survey_type, (None, None, None))
    if scale is not None:
        if not isinstance(scale, tuple | list) or len(scale) != 2:
            raise InvalidInput(f"scale must be (min, max), got {scale!r}")
        lo, hi = _int("scale min", scale[0], minimum=0), _int("scale max", scale[1], minimum=0)
    if lo is None or hi is None or lo >= hi:
        raise InvalidInput(f"a {survey_type} template needs a scale (min < max), got {scale!r}")
    if negative_at_or_below is not None:
        neg = _number("negative_at_or_below", negative_at_or_below)
    if neg is None or not lo <= neg <= hi:
        raise InvalidInput(f"negative_at_or_below must lie on the scale {lo}-{hi}, got {neg!r}")
    tid = new_id()
    ctx.conn.execute(
        templates.insert().values(
            id=tid, tenant_id=ctx.tenant_id, name=name.strip(), survey_type=survey_type, scale_min=lo, scale_max=hi,
            negative_at_or_below=neg,
            reminder_after_hours=_int("reminder_after_hours", reminder_after_hours, minimum=1),
            max_reminders=_int("max_reminders", max_reminders, minimum=0),
            expires_after_days=_int("expires_after_days", expires_after_days, minimum=1),
        )
    )  # fmt: skip
    return tid


# ---- sending, reminders, expiry ------------------------------------------------------------------


@emits("SURVEY_SENT", "SURVEY_INVITATION_SENT")
def send_survey(
    ctx: Ctx,
    template_id: str,
    *,
    ticket_id: str | None = None,
    contact_id: str | None = None,
    channel: str = "email",
) -> SurveyInvite:
    """Invite a contact to a survey: about a resolved/closed ticket (to its contact unless ``contact_id``), or on its
    own (``contact_id`` required); emits SURVEY_SENT, plus the legacy SURVEY_INVITATION_SENT for a ticket survey."""
    tpl = fetch(ctx, templates, "survey template", template_id, for_update=False)
    if channel not in CHANNELS:
        raise InvalidInput(f"channel must be one of {CHANNELS}, got {channel!r}")
    contact = uuid_arg("contact_id", contact_id) if contact_id is not None else None
    ticket, client = None, None
    if ticket_id is not None:
        t = fetch(ctx, _tickets.tickets, "ticket", ticket_id)
        if t["status"] not in _tickets.CLOSED_STATUSES:
            raise InvalidTransition("ticket", t["status"], "surveyed")
        legacy_tenant(ctx, "survey events")
        open_one = ctx.conn.execute(
            select(surveys.c.id).where(surveys.c.ticket_id == t["id"], surveys.c.template_id == tpl["id"],
                                       surveys.c.status == "sent").limit(1)
        ).first()  # fmt: skip
        if open_one is not None:
            raise InvalidTransition("ticket survey", "sent", "sent again")
        ticket, client = str(t["id"]), opt_str(t["client_id"])
        contact = contact or opt_str(t["contact_id"])
    if contact is None:
        raise InvalidInput("a survey needs a contact (contact_id, or a ticket with a contact)")
    token = secrets.token_urlsafe(24)
    token_hash = _hash(token)
    sid, at = new_id(), now()
    ctx.conn.execute(
        surveys.insert().values(
            id=sid, tenant_id=ctx.tenant_id, template_id=tpl["id"], survey_type=tpl["survey_type"], contact_id=contact,
            client_id=client, ticket_id=ticket, channel=channel, token_hash=token_hash, status="sent",
            reminders_sent=0, sent_at=at, last_sent_at=at, expires_at=at + timedelta(days=tpl["expires_after_days"]),
        )
    )  # fmt: skip
    emit(ctx, "SURVEY_SENT",
         {"surveyId": sid, "surveyType": tpl["survey_type"], "recipientId": contact, "ticketId": ticket,
          "sentAt": iso(at), "channel": channel, "templateId": str(tpl["id"])},
         aggregate=f"survey:{sid}", to_state="sent")  # fmt: skip
    if ticket is not None:
        emit(ctx, "SURVEY_INVITATION_SENT",
             {"invitationId": sid, "ticketId": ticket, "companyId": client, "contactId": contact,
              "surveyTokenHash": token_hash},
             aggregate=f"survey:{sid}")  # fmt: skip
    return SurveyInvite(sid, token)


def _remind(ctx: Ctx, s: Any, at: datetime) -> None:
    n = s["reminders_sent"] + 1
    update_row(ctx, surveys, s, reminders_sent=n, last_sent_at=at)
    emit(ctx, "SURVEY_REMINDER_SENT",
         {"surveyId": str(s["id"]), "recipientId": str(s["contact_id"]), "ticketId": opt_str(s["ticket_id"]),
          "sentAt": iso(at), "channel": s["channel"], "reminderNumber": n},
         aggregate=f"survey:{s['id']}")  # fmt: skip


def _expire(ctx: Ctx, s: Any, at: datetime) -> None:
    update_row(ctx, surveys, s, status="expired", closed_at=at)
    emit(ctx, "SURVEY_EXPIRED",
         {"surveyId": str(s["id"]), "recipientId": str(s["contact_id"]), "ticketId": opt_str(s["ticket_id"]),
          "expiredAt": iso(at)},
         aggregate=f"survey:{s['id']}", from_state="sent", to_state="expired")  # fmt: skip


@emits("SURVEY_REMINDER_SENT")
def remind_survey(ctx: Ctx, survey_id: str) -> int:
    """Send a reminder for an unanswered, unexpired survey now; emits SURVEY_REMINDER_SENT and returns its number
    (InvalidTransition once answered, expired, or at the template's reminder limit)."""
    s = fetch(ctx, surveys, "survey", survey_id)
    at = now()
    if s["status"] != "sent" or s["expires_at"] <= at:
        raise InvalidTransition("survey", "expired" if s["status"] == "sent" else s["status"], "reminded")
    limit = ctx.conn.execute(select(templates.c.max_reminders).where(templates.c.id == s["template_id"])).scalar_one()
    if s["reminders_sent"] >= limit:
        raise InvalidTransition("survey reminders", s["reminders_sent"], s["reminders_sent"] + 1)
    _remind(ctx, s, at)
    return int(s["reminders_sent"]) + 1


@emits("SURVEY_REMINDER_SENT", "SURVEY_EXPIRED")
def sweep_surveys(ctx: Ctx, *, at: datetime | None = None) -> dict[str, list[str]]:
    """Scheduler sweep of this tenant's unanswered surveys as of ``at`` (default now): expire those past their
    expiry (SURVEY_EXPIRED), remind those due (SURVEY_REMINDER_SENT); returns {"expired": [...], "reminded": [...]}."""
    when = when_arg("time", at)
    rows = ctx.conn.execute(
        select(surveys, templates.c.reminder_after_hours, templates.c.max_reminders)
        .join(templates, templates.c.id == surveys.c.template_id)
        .where(surveys.c.tenant_id == ctx.tenant_id, surveys.c.status == "sent")
        .order_by(surveys.c.sent_at, surveys.c.id)
        .with_for_update(of=surveys, skip_locked=True)
    ).mappings()
    out: dict[str, list[str]] = {"expired": [], "reminded": []}
    for s in [dict(r) for r in rows]:
        if s["expires_at"] <= when:
            _expire(ctx, s, when)
            out["expired"].append(str(s["id"]))
        elif (s["reminders_sent"] < s["max_reminders"]
              and s["last_sent_at"] + timedelta(hours=s["reminder_after_hours"]) <= when):  # fmt: skip
            _remind(ctx, s, when)
            out["reminded"].append(str(s["id"]))
    return out


# ---- responses -----------------------------------------------------------------------------------


def _name(ctx: Ctx, table: Any, column: str, entity_id: Any) -> str | None:
    if entity_id is None:
        return None
    row = ctx.conn.execute(
        select(table.c[column]).where(table.c.id == entity_id, table.c.tenant_id == ctx.tenant_id)
    ).first()
    return None if row is None else str(row[0])


@emits("SURVEY_RESPONSE_RECEIVED", "SURVEY_RESPONSE_SUBMITTED", "SURVEY_NEGATIVE_RESPONSE")
def submit_response(ctx: Ctx, survey_id: str, token: str, score: float, *, comment: str | None = None) -> str:
    """Record the answer to a survey through its link token (sent -> responded) and return the response id; emits
    SURVEY_RESPONSE_RECEIVED, and for a ticket survey the legacy SURVEY_RESPONSE_SUBMITTED and, for a score at or below
    the template's negative threshold, SURVEY_NEGATIVE_RESPONSE (with the ticket number, client, contact, assignee)."""
    s = fetch(ctx, surveys, "survey", survey_id)
    if not isinstance(token, str) or not hmac.compare_digest(_hash(token), s["token_hash"]):
        raise InvalidInput("the survey token does not match")
    tpl = fetch(ctx, templates, "survey template", s["template_id"], for_update=False)
    value = _number("score", score)
    if not tpl["scale_min"] <= value <= tpl["scale_max"]:
        raise InvalidInput(f"score must lie on the scale {tpl['scale_min']}-{tpl['scale_max']}, got {score!r}")
    if comment is not None and not isinstance(comment, str):
        raise InvalidInput("comment must be a string")
    text = comment.strip() if comment and comment.strip() else None
    at = now()
    if s["status"] != "sent" or s["expires_at"] <= at:
        raise InvalidTransition("survey", "expired" if s["status"] == "sent" else s["status"], "responded")
    t = None
    if s["ticket_id"] is not None:
        legacy_tenant(ctx, "survey events")
        t = (
            ctx.conn.execute(_tickets.tickets.select().where(_tickets.tickets.c.id == s["ticket_id"]))
            .mappings()
            .first()
        )
    rid = new_id()
    ctx.conn.execute(
        responses.insert().values(
            id=rid, tenant_id=ctx.tenant_id, survey_id=s["id"], survey_type=s["survey_type"], ticket_id=s["ticket_id"],
            assignee_id=t["assignee_id"] if t else None, assignee_type=t["assignee_type"] if t else None, score=value,
            comment=text, responded_at=at,
        )
    )  # fmt: skip
    update_row(ctx, surveys, s, status="responded", closed_at=at)
    sid, ticket = str(s["id"]), opt_str(s["ticket_id"])
    emit(ctx, "SURVEY_RESPONSE_RECEIVED",
         {"surveyId": sid, "responseId": rid, "recipientId": str(s["contact_id"]), "ticketId": ticket,
          "respondedAt": iso(at), "score": value, "comment": text},
         aggregate=f"survey:{sid}", from_state="sent", to_state="responded")  # fmt: skip
    if ticket is None:
        return rid
    company = opt_str(s["client_id"])
    emit(ctx, "SURVEY_RESPONSE_SUBMITTED",
         {"responseId": rid, "ticketId": ticket, "companyId": company, "rating": value, "hasComment": text is not None},
         aggregate=f"survey:{sid}")  # fmt: skip
    if value <= tpl["negative_at_or_below"]:
        assignee = t["assignee_id"] if t and t["assignee_type"] == "user" else None
        emit(ctx, "SURVEY_NEGATIVE_RESPONSE",
             {"responseId": rid, "ticketId": ticket, "ticketNumber": t["number"] if t else ticket,
              "companyId": company, "companyName": _name(ctx, _crm.clients, "name", s["client_id"]),
              "contactName": _name(ctx, _crm.contacts, "full_name", s["contact_id"]), "rating": value,
              "comment": text, "assignedTo": opt_str(assignee)},
             aggregate=f"survey:{sid}")  # fmt: skip
    return rid


# ---- CSAT alerts ---------------------------------------------------------------------------------


@emits()
def create_alert_rule(
    ctx: Ctx,
    *,
    window: str,
    threshold: float,
    scope_type: str = "org",
    scope_id: str | None = None,
    min_responses: int = 1,
) -> str:
    """Watch the average csat score of an agent, a team or the org over a window; emits nothing."""
    if window not in WINDOWS:
        raise InvalidInput(f"window must be one of {tuple(WINDOWS)}, got {window!r}")
    if scope_type not in SCOPE_TYPES:
        raise InvalidInput(f"scope_type must be one of {SCOPE_TYPES}, got {scope_type!r}")
    if (scope_type == "org") != (scope_id is None):
        raise InvalidInput("an agent or team rule needs a scope_id; an org rule has none")
    scope = uuid_arg("scope_id", scope_id) if scope_id is not None else None
    rid = new_id()
    ctx.conn.execute(
        alert_rules.insert().values(id=rid, tenant_id=ctx.tenant_id, window=window, scope_type=scope_type,
                                    scope_id=scope, threshold=_number("threshold", threshold),
                                    min_responses=_int("min_responses", min_responses, minimum=1))
    )  # fmt: skip
    return rid


def _average(ctx: Ctx, rule: Any, start: datetime, end: datetime) -> tuple[float | None, int]:
    r = responses
    cond = [r.c.tenant_id == ctx.tenant_id, r.c.survey_type == "csat", r.c.responded_at >= start,
            r.c.responded_at < end]  # fmt: skip
    if rule["scope_type"] == "agent":
        cond += [r.c.assignee_type == "user", r.c.assignee_id == rule["scope_id"]]
    elif rule["scope_type"] == "team":
        cond += [r.c.assignee_type == "team", r.c.assignee_id == rule["scope_id"]]
    avg, n = ctx.conn.execute(select(func.avg(r.c.score), func.count()).where(*cond)).one()
    return (None if avg is None else round(float(avg), 2)), int(n)


@emits("CSAT_ALERT_TRIGGERED")
def evaluate_csat_alerts(ctx: Ctx, *, at: datetime | None = None) -> list[str]:
    """Scheduler sweep of this tenant's CSAT alert rules as of ``at`` (default now): emits CSAT_ALERT_TRIGGERED for
    each rule whose window average (with enough responses) is below its threshold and that did not fire within the
    last window length; returns the alert ids."""
    when = when_arg("time", at)
    rules = ctx.conn.execute(
        alert_rules.select().where(alert_rules.c.tenant_id == ctx.tenant_id).order_by(alert_rules.c.id)
        .with_for_update(skip_locked=True)
    ).mappings()  # fmt: skip
    out = []
    for rule in [dict(x) for x in rules]:
        span = WINDOWS[rule["window"]]
        if rule["last_triggered_at"] is not None and rule["last_triggered_at"] > when - span:
            continue
        score, n = _average(ctx, rule, when - span, when)
        if score is None or n < rule["min_responses"] or score >= rule["threshold"]:
            continue
        baseline, _ = _average(ctx, rule, when - 2 * span, when - span)
        aid = new_id()
        ctx.conn.execute(
            alerts.insert().values(id=aid, tenant_id=ctx.tenant_id, rule_id=rule["id"], score=score, baseline=baseline,
                                   responses=n, triggered_at=when)
        )  # fmt: skip
        ctx.conn.execute(alert_rules.update().where(alert_rules.c.id == rule["id"]).values(last_triggered_at=when))
        emit(ctx, "CSAT_ALERT_TRIGGERED",
             {"window": rule["window"], "score": score, "baseline": baseline,
              "delta": None if baseline is None else round(score - baseline, 2), "threshold": rule["threshold"],
              "triggeredAt": iso(when), "scopeType": rule["scope_type"], "scopeId": opt_str(rule["scope_id"]),
              "alertId": aid, "responseCount": n},
             aggregate=f"csat-rule:{rule['id']}")  # fmt: skip
        out.append(aid)
    return out
