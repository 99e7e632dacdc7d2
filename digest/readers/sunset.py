"""The sunset (DIGEST_SUNSET_EDITIONS, reader mode only): a reader who clicked nothing
in their last N editions gets one "still want this?" email with a one-click keep link;
one who neither answers nor clicks within DIGEST_SUNSET_DAYS is unsubscribed as
inactive, audited under the name "sunset".

Only editions rendered in reader mode count: before it, nobody's clicks were known.
Functions take the session first; `run` commits after each reader it mails or ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import make_msgid

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import sending
from digest.editions.render import environment
from digest.errors import SendError
from digest.mail.message import Envelope, build_message
from digest.mail.returns import envelope_sender
from digest.mail.tokens import make_token
from digest.mail.transport import Transport
from digest.readers import accounts
from digest.store import clicks as click_store
from digest.store.operators import add_audit
from digest.words import counted

log = logging.getLogger(__name__)
AUDIT_NAME = "sunset"
PAGE = 500


@dataclass
class SunsetReport:
    asked: int = 0
    ended: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"sunset: {self.asked} asked, {self.ended} unsubscribed as inactive"


def enabled(settings: Settings) -> bool:
    return settings.sunset_editions > 0 and settings.click_tracking == "reader"


def silent_readers(session: Session, settings: Settings, subscriber_ids: list[int]) -> list[int]:
    """Those of the readers whose last N sent editions were all tracked per reader and
    who clicked none since the first of them, and were not asked since then."""
    n = settings.sunset_editions
    history = click_store.last_sent_editions(session, subscriber_ids, n)
    full = {
        sid: rows
        for sid, rows in history.items()
        if len(rows) == n and all(mode == "reader" for _, _, mode in rows)
    }
    if not full:
        return []
    last_click = click_store.last_clicks(session, list(full))
    notices = click_store.sunset_notices(session, list(full))
    silent = []
    for sid, rows in sorted(full.items()):
        oldest = min(sent for _, sent, _ in rows)
        if (clicked := last_click.get(sid)) is not None and clicked >= oldest:
            continue
        notice = notices.get(sid)
        if notice is not None and (
            (notice.kept_at is None and notice.ended_at is None)  # waiting for an answer
            or max(notice.asked_at, notice.kept_at or notice.asked_at) >= oldest
        ):
            continue  # asked (or answered) within these editions already
        silent.append(sid)
    return silent


def compose(settings: Settings, subscriber_id: int, email: str, now: datetime) -> tuple[bytes, str]:
    """The re-permission email, through the one message builder."""
    keep_token = make_token(
        settings.secret_key, "keep", subscriber_id, now + timedelta(days=settings.sunset_days + 7)
    )
    links = sending.account_links(settings, subscriber_id)
    subject = f"Do you still want {settings.from_name}?"
    context = {
        "subject": subject,
        "sender_name": settings.from_name,
        "postal_address": settings.postal_address,
        "editions": settings.sunset_editions,
        "days": settings.sunset_days,
        "keep_url": f"{settings.base_url}/keep/{keep_token}",
        **links,
    }
    html_env, text_env = environment(settings.templates_dir)
    envelope = Envelope(
        to_address=email,
        to_name="",
        message_id=make_msgid("sunset", domain=settings.sender_domain),
        unsubscribe_url=links["unsubscribe_url"],
        unsubscribe_token=links["unsubscribe_token"],
        text=text_env.get_template("email/sunset.txt").render(context),
        html=html_env.get_template("email/sunset.html").render(context),
    )
    sender = sending.sender_of(settings)
    return build_message(sender, subject, now, envelope, campaign="sunset"), envelope.message_id


def ask(
    session: Session, settings: Settings, transport: Transport, subscriber_id: int, now: datetime
) -> None:
    """Send one reader the question and record it (SendError if it did not go)."""
    subscriber = store.get_subscriber(session, subscriber_id)
    message, message_id = compose(settings, subscriber_id, subscriber.email, now)
    transport.send(
        envelope_sender(settings, 0, subscriber_id), subscriber.email, message, message_id
    )
    click_store.ask_sunset(session, subscriber_id, now)


def end_unanswered(session: Session, settings: Settings, now: datetime) -> int:
    """Unsubscribe, as inactive, the readers who did not answer in time."""
    ended = 0
    for sid in click_store.unanswered_sunsets(session, now - timedelta(days=settings.sunset_days)):
        subscriber = store.get_subscriber(session, sid)
        if subscriber.status == "active":
            accounts.leave(session, sid, "unsubscribed", now)
            add_audit(
                session,
                AUDIT_NAME,
                "unsubscribe-inactive",
                f"reader {sid}: no click in {counted(settings.sunset_editions, 'edition')} and no "
                f"answer within {counted(settings.sunset_days, 'day')} (reason: inactive)",
                now,
            )
            ended += 1
            click_store.end_sunset(session, sid, now)
        else:  # they left (or were erased) meanwhile: not the sunset's doing
            click_store.forget_sunset(session, sid)
        session.commit()
    return ended


def run(session: Session, settings: Settings, transport: Transport, now: datetime) -> SunsetReport:
    """One pass: end what expired, then ask the readers who went silent."""
    report = SunsetReport()
    if not enabled(settings):
        return report
    report.ended = end_unanswered(session, settings, now)
    after = 0
    with transport:
        while ids := click_store.active_reader_ids(session, after, PAGE):
            after = ids[-1]
            for sid in silent_readers(session, settings, ids):
                try:
                    ask(session, settings, transport, sid, now)
                except SendError as exc:
                    session.rollback()
                    report.errors.append(f"reader {sid}: {exc}")
                    continue
                session.commit()
                report.asked += 1
    session.commit()  # end the last page's read
    return report


def keep(session: Session, subscriber_id: int, now: datetime) -> bool:
    """The reader answered "keep": True if a question was open (audited)."""
    store.get_subscriber(session, subscriber_id)  # NotFound for a reader no longer on file
    kept = click_store.keep_sunset(session, subscriber_id, now)
    if kept:
        add_audit(session, AUDIT_NAME, "keep", f"reader {subscriber_id} answered: keep", now)
    return kept


def asked_at(session: Session, subscriber_id: int) -> datetime | None:
    notice = click_store.sunset_notices(session, [subscriber_id]).get(subscriber_id)
    return None if notice is None else notice.asked_at


def click_upkeep(
    session: Session, settings: Settings, transport: Transport, now: datetime
) -> dict[str, int | list[str]]:
    """What runs hourly in reader mode: the retention purge, then the sunset."""
    retention = timedelta(days=settings.click_retention_days)
    purged = click_store.purge_reader_clicks(session, now - retention)
    session.commit()
    report = run(session, settings, transport, now)
    return {
        "purged": purged,
        "asked": report.asked,
        "ended": report.ended,
        "errors": report.errors[:20],
    }
