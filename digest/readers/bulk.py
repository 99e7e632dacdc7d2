"""One operator action on many readers: a selection, or every reader a filter matches
(digest/store/readers_query). The same rules as the one-reader actions; erased readers
are left alone. No Flask here; the caller owns the transaction and sends the mail.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions.selection import normalise_sections
from digest.errors import InvalidInput
from digest.readers import accounts, reader_admin
from digest.readers.subscribers import parse_editions, parse_timezone

# Each action, as the confirmation page says it ("... 1,204 readers").
ACTIONS = {
    "editions": "set the editions to",
    "sections": "set the sections to",
    "timezone": "set the timezone to",
    "unsubscribe": "unsubscribe",
    "suppress": "suppress for good",
    "resend": "send the confirmation email again to the pending ones among",
    "erase": "erase",
}
NEEDS_VALUE = ("editions", "sections", "timezone")


@dataclass
class BulkResult:
    """What a bulk action did: readers changed, left as they were, and the confirmation
    emails to send once it is committed."""

    changed: int = 0
    skipped: int = 0
    notices: list[accounts.Notice] = field(default_factory=list)


def check_value(action: str, value: str, offered_sections: Collection[str]) -> str:
    """The value an action sets, checked (InvalidInput says what is wrong)."""
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action {action[:40]!r}")
    if action == "editions":
        parse_editions(value)
    elif action == "timezone":
        parse_timezone(value)
    elif action == "sections":
        chosen = [s for s in normalise_sections(value.split(",")).split(",") if s]
        unknown = sorted(set(chosen) - set(offered_sections))
        if unknown:
            raise InvalidInput(f"there is no section called {', '.join(unknown)[:200]}")
        return ",".join(chosen)
    return value


def apply(
    session: Session,
    settings: Settings,
    action: str,
    value: str,
    ids: Iterable[int],
    now: datetime,
) -> BulkResult:
    """Do `action` to each reader in `ids` (value checked by check_value first)."""
    result = BulkResult()
    for subscriber_id in ids:
        subscriber = store.get_subscriber(session, subscriber_id)
        if subscriber.status == reader_admin.ERASED:
            result.skipped += 1
            continue
        if action == "editions":
            subscriber.morning, subscriber.evening = parse_editions(value)
        elif action == "sections":
            subscriber.sections = normalise_sections(value.split(","))
        elif action == "timezone":
            subscriber.timezone = parse_timezone(value)
        elif action == "unsubscribe":
            if subscriber.status in accounts.LEFT:
                result.skipped += 1
                continue
            reader_admin.unsubscribe(session, subscriber_id, now)
        elif action == "suppress":
            reader_admin.suppress(session, subscriber_id, now)
        elif action == "erase":
            reader_admin.erase(session, subscriber_id, now)
        elif action == "resend":
            notice = resend_confirmation(session, settings, subscriber_id, now)
            if notice is None:
                result.skipped += 1
                continue
            result.notices.append(notice)
        result.changed += 1
    session.flush()
    return result


def resend_confirmation(
    session: Session, settings: Settings, subscriber_id: int, now: datetime, source: str = "console"
) -> accounts.Notice | None:
    """The confirmation email for a pending reader, with their current choices (None
    when they are not pending, or may get no mail, or got one minutes ago)."""
    subscriber = store.get_subscriber(session, subscriber_id)
    if subscriber.status != "pending":
        return None
    form = accounts.form_of(subscriber)
    fields = {
        "email": subscriber.email,
        "name": form.name,
        "timezone": subscriber.timezone,
        "morning": subscriber.morning,
        "evening": subscriber.evening,
        "sections": subscriber.sections,
    }
    notice = accounts.request_subscription(session, settings, fields, now, source=source)
    return notice if notice.kind == "confirm" else None
