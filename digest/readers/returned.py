"""The one place that decides what returned mail does to a reader, whatever path it came
by (the MTA pipe, an IMAP bounce mailbox, an ESP's webhook).

Outcomes: a hard bounce (the address is gone) suppresses that exact address; a soft
bounce is counted, and `limit` of them within `days` days with no successful delivery
after them suppress it too; a complaint suppresses the address and its +tag and dot
variants; an unsubscribe is a reader leaving. Paths only parse and authenticate, then
call `act`. Nothing here raises for an unknown or erased reader: returned mail about
someone we no longer know is acknowledged and dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from digest import store, words
from digest.config import Settings
from digest.errors import InvalidInput, NotFound
from digest.mail.addresses import mailbox_of
from digest.models import Subscriber
from digest.readers import accounts

OUTCOMES = ("hard", "soft", "complaint", "unsubscribe")
STATUS_FOR = {"unsubscribe": "unsubscribed", "hard": "bounced", "complaint": "complained"}
# C0 and C1 control characters, DEL, and Unicode line/paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class SoftRule:
    """How many soft bounces, within how many days, suppress a reader."""

    limit: int = 3
    days: int = 14

    @classmethod
    def of(cls, settings: Settings) -> SoftRule:
        return cls(settings.soft_bounce_limit, settings.soft_bounce_days)


def clean(text: object, limit: int = 300) -> str:
    """Report text fit for a log line or a terminal: no control characters, one line."""
    return " ".join(_CONTROL.sub(" ", str(text or "")).split())[:limit]


def find_reader(session: Session, address: str) -> Subscriber | None:
    """The reader with exactly this address (case aside); never a +tag or dot variant."""
    wanted = address.strip().lower()
    found = store.find_subscriber(session, wanted)
    if found is None and "@" in wanted:
        local, _, domain = address.strip().rpartition("@")
        found = store.find_subscriber(session, f"{local}@{domain.lower()}")
    return found


def act(
    session: Session,
    subscriber_id: int,
    kind: str,
    reason: str,
    source: str,
    now: datetime,
    rule: SoftRule,
    edition_id: int | None = None,
) -> str:
    """Record what came back for a reader and act on it. Returns what was done, as one line."""
    reason = clean(reason)
    if kind not in OUTCOMES:
        raise ValueError(f"unknown outcome {kind!r}")
    try:
        subscriber = accounts.reader(session, subscriber_id)
    except NotFound:
        return f"ignored: {reason}, but the reader no longer exists"
    masked = accounts.mask_address(subscriber.email)
    store.add_returned(session, subscriber.id, kind, source, reason, now, edition_id)
    if kind == "soft":
        since = now - timedelta(days=rule.days)
        count = store.count_soft(session, [subscriber.id], since).get(subscriber.id, 0)
        counted = (
            f"{reason}: soft bounce {count} of {rule.limit} in {words.counted(rule.days, 'day')}"
        )
        if count < rule.limit or subscriber.status in accounts.LEFT:
            return f"{counted}; {masked} stays {subscriber.status}"
        subscriber = accounts.leave(session, subscriber.id, "bounced", now)
        return f"{counted}; {masked} is now {subscriber.status}"
    subscriber = accounts.leave(session, subscriber.id, STATUS_FOR[kind], now)
    return f"{reason}: {masked} is now {subscriber.status}"


def act_on_address(
    session: Session,
    address: str,
    kind: str,
    reason: str,
    source: str,
    now: datetime,
    rule: SoftRule,
    edition_id: int | None = None,
) -> str:
    """`act` for a path that knows only the address (an ESP's event)."""
    subscriber = find_reader(session, address)
    if subscriber is None:
        return f"ignored: {clean(reason)}, for an address that is no reader"
    return act(session, subscriber.id, kind, reason, source, now, rule, edition_id)


def unsuppress(session: Session, subscriber_id: int, now: datetime) -> Subscriber:
    """An operator takes back a bounce or complaint: the reader is active again, the
    suppression it made is lifted and soft bounces count afresh. An unsubscribed reader
    is not taken back (only their own confirmed sign-up may do that)."""
    subscriber = accounts.reader(session, subscriber_id)
    if subscriber.status not in ("bounced", "complained"):
        raise InvalidInput(
            f"reader {subscriber_id} is {subscriber.status}: only a bounced or complained "
            "reader can be un-suppressed"
        )
    for form in {subscriber.email, mailbox_of(subscriber.email)}:
        if store.suppression_reason(session, form) == subscriber.status:
            store.lift_suppression(session, form)
    reason = f"un-suppressed by an operator (was {subscriber.status})"
    store.add_returned(session, subscriber.id, "unsuppressed", "console", reason, now)
    subscriber.status = "active"
    subscriber.unsubscribed_at = None
    session.flush()
    return subscriber
