"""Alert mail: DIGEST_ALERT_TO gets one message when a CRITICAL condition appears and
one when it clears, through the same transport and message builder as every edition.

What was last said about each condition is kept in the database (alert_state), so the
beat task and `digest status --check --alert` (cron) share it and never both mail.
A clear is mailed at once; a condition that comes back within REPEAT_GAP of its clear
mail (it flaps) is not mailed again until then. At most DIGEST_ALERT_PER_HOUR conditions
are mailed about per hour.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid

from sqlalchemy.orm import Session

from digest.config import Settings
from digest.editions.sending import sender_of
from digest.mail.message import Envelope, build_message
from digest.mail.returns import envelope_sender
from digest.mail.transport import Transport
from digest.operations.health import Health, Problem
from digest.store import heartbeats

log = logging.getLogger(__name__)

REPEAT_GAP = timedelta(minutes=15)  # the least time between two mails about one condition
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Known:
    """What the alert mail last said about one condition."""

    key: str
    summary: str
    notified: bool  # the last mail said it was raised (and not yet cleared)
    mailed_at: datetime | None


@dataclass(frozen=True)
class Mail:
    key: str
    raised: bool  # True: the condition appeared; False: it cleared
    text: str
    todo: str
    notified: bool  # the state before this mail (to claim and, on failure, release it)
    mailed_at: datetime | None


def decide(
    known: dict[str, Known],
    criticals: dict[str, Problem],
    now: datetime,
    mailed_last_hour: int,
    per_hour: int,
) -> list[Mail]:
    """The mails to send now: each condition whose state differs from what the last mail
    said, unless it is back within REPEAT_GAP of its clear mail or the hour's budget is
    spent."""
    budget = per_hour - mailed_last_hour
    mails: list[Mail] = []
    # Raised conditions first: when the budget is short, news of trouble goes first.
    for key in sorted(set(known) | set(criticals), key=lambda k: (k not in criticals, k)):
        row = known.get(key)
        raised = key in criticals
        notified = row.notified if row else False
        mailed_at = row.mailed_at if row else None
        if raised == notified:
            continue
        if raised and mailed_at is not None and now - mailed_at < REPEAT_GAP:
            continue  # it cleared moments ago and is back: a flapping condition
        if budget <= 0:
            break
        problem = criticals.get(key)
        text = problem.text if problem else (row.summary if row else key)
        todo = problem.todo if problem else ""
        mails.append(Mail(key, raised, text, todo, notified, mailed_at))
        budget -= 1
    return mails


def compose(
    settings: Settings, mail: Mail, health: Health, to: str, now: datetime
) -> tuple[bytes, str]:
    """One alert message, built by the message builder every digest message goes through."""
    if mail.raised:
        subject = f"[digest CRITICAL] {mail.text}"
        lines = [f"CRITICAL since {now:%Y-%m-%d %H:%M} UTC: {mail.text}"]
        if mail.todo:
            lines.append(f"What to do: {mail.todo}")
    else:
        subject = f"[digest cleared] {mail.text}"
        lines = [f"Cleared at {now:%Y-%m-%d %H:%M} UTC: {mail.text}"]
    lines += ["", "The check now says:", *health.lines(), "", f"-- digest at {settings.base_url}"]
    text = "\n".join(lines) + "\n"
    body = "<pre>" + html.escape(text) + "</pre>"
    envelope = Envelope(
        to_address=to,
        to_name="",
        message_id=make_msgid("alert", domain=settings.sender_domain),
        unsubscribe_url=f"{settings.base_url}/unsubscribe",
        unsubscribe_token="alert",
        text=text,
        html=f"<!DOCTYPE html><html><body>{body}</body></html>",
    )
    message = build_message(sender_of(settings), subject[:200], now, envelope, campaign="alert")
    return message, envelope.message_id


def alert(
    session: Session, settings: Settings, transport: Transport, health: Health, now: datetime
) -> list[str]:
    """Record the CRITICAL conditions of `health`, mail what changed; returns one line
    per mail sent (or not sent). Commits."""
    criticals = health.criticals()
    rows = {r.key: r for r in heartbeats.alert_states(session)}
    for key, problem in criticals.items():
        heartbeats.upsert_alert(session, key, problem.text, True, now)
    for key in rows.keys() - criticals.keys():
        heartbeats.upsert_alert(session, key, "", False, now)
    session.commit()
    known = {k: Known(k, r.summary, r.notified, r.mailed_at) for k, r in rows.items()}
    spent = heartbeats.mails_since(session, now - timedelta(hours=1))
    said = []
    for mail in decide(known, criticals, now, spent, settings.alert_per_hour):
        if not heartbeats.claim_alert(session, mail.key, mail.notified, mail.mailed_at, now):
            session.rollback()
            continue  # another run mails about it
        session.commit()
        what = ("raised: " if mail.raised else "cleared: ") + mail.text
        try:
            with transport:
                for to in settings.alert_to:
                    message, message_id = compose(settings, mail, health, to, now)
                    transport.send(envelope_sender(settings, 0, 0), to, message, message_id)
        except Exception as exc:  # the next run tries again
            heartbeats.release_alert(session, mail.key, mail.notified, mail.mailed_at, now)
            session.commit()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("alert mail not sent (%s): %s", what, reason)
            said.append(f"alert mail NOT sent ({what}): {reason}")
            continue
        said.append(f"alert mail sent to {', '.join(settings.alert_to)} ({what})")
    stale = [
        k
        for k, r in rows.items()
        if k not in criticals
        and not r.notified
        and (r.mailed_at is None or now - r.mailed_at > FORGET_AFTER)
    ]
    heartbeats.forget_alerts(session, stale)
    session.commit()
    return said
