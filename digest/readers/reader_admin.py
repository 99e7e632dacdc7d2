"""What an operator can do to one reader, from the console or the CLI: look them up,
stop their mail, export their data, and erase them.

Functions take the session first and never commit (the caller owns the transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.errors import InvalidInput, NotFound
from digest.mail.addresses import mailbox_of
from digest.models import Subscriber
from digest.readers import accounts
from digest.store.clicks import forget_reader_clicks, reader_clicks
from digest.store.people import forget_delivery_errors, reader_deliveries, search_subscribers

# Suppressed by an operator (a spam trap, a legal request): like a bounce, no sign-up
# form may mail the address again.
OPERATOR_REASON = "operator"
ERASED = "erased"


@dataclass(frozen=True)
class ReaderView:
    """One reader as the console and `digest subscribers show` present them."""

    id: int
    email: str
    name: str
    status: str
    editions: str
    sections: str
    timezone: str
    consent: str
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    deliveries: list[dict[str, Any]]
    suppressed: str | None = None  # why the address gets no mail: operator, bounced, ...

    @property
    def shown_status(self) -> str:
        """The status as the console says it: a suppressed reader shows as suppressed."""
        if self.suppressed and self.status != ERASED:
            by = "by an operator" if self.suppressed == OPERATOR_REASON else self.suppressed
            return f"suppressed ({by})"
        return self.status


def _editions(subscriber: Subscriber) -> str:
    slots = (("morning", subscriber.morning), ("evening", subscriber.evening))
    chosen = [slot for slot, on in slots if on]
    return ",".join(chosen) or "none"


def find_reader(session: Session, key: str) -> Subscriber:
    """A reader by id or by address (NotFound names what was looked for)."""
    key = key.strip()
    if key.isdigit():
        return store.get_subscriber(session, int(key))
    found = store.find_subscriber(session, key.lower())
    if found is None:
        raise NotFound(f"no subscriber with address {key!r}")
    return found


def search(session: Session, query: str, limit: int = 50) -> list[Subscriber]:
    """Readers whose address contains `query` (case-insensitive), newest first."""
    return search_subscribers(session, query.strip().lower()[:320], limit)


def view(session: Session, subscriber_id: int, default_timezone: str) -> ReaderView:
    """Everything the console shows about one reader, with what they were sent."""
    s = store.get_subscriber(session, subscriber_id)
    return ReaderView(
        id=s.id,
        email=s.email,
        name=s.name,
        status=s.status,
        editions=_editions(s),
        sections=s.sections or "all",
        timezone=s.timezone or f"{default_timezone} (default)",
        consent=s.consent,
        created_at=s.created_at,
        confirmed_at=s.confirmed_at,
        unsubscribed_at=s.unsubscribed_at,
        deliveries=reader_deliveries(session, s.id),
        suppressed=store.suppression_reason(session, s.email),
    )


def export_person(session: Session, subscriber_id: int, default_timezone: str) -> dict[str, Any]:
    """That person's data as JSON-ready values (a data-subject access request)."""
    v = view(session, subscriber_id, default_timezone)
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    return {
        "email": v.email,
        "name": v.name,
        "status": v.status,
        "editions": v.editions,
        "sections": v.sections,
        "timezone": v.timezone,
        "consent": v.consent,
        "created_at": iso(v.created_at),
        "confirmed_at": iso(v.confirmed_at),
        "unsubscribed_at": iso(v.unsubscribed_at),
        "deliveries": [
            {**d, "sent_at": iso(d["sent_at"]), "local_day": d["local_day"].isoformat()}
            for d in v.deliveries
        ],
        # Reader mode's clicks (DIGEST_CLICK_TRACKING=reader); empty in the other modes.
        "clicks": [
            {"edition_id": e, "article_id": a, "clicked_at": iso(at)}
            for e, a, at in reader_clicks(session, subscriber_id)
        ],
    }


def unsubscribe(session: Session, subscriber_id: int, now: datetime) -> Subscriber:
    """Stop all mail to the reader, as their own unsubscribe link would."""
    return accounts.unsubscribe(session, subscriber_id, now)


def suppress(session: Session, subscriber_id: int, now: datetime) -> Subscriber:
    """Stop all mail for good: no sign-up form may mail the address again either."""
    subscriber = store.get_subscriber(session, subscriber_id)
    for form in {subscriber.email, mailbox_of(subscriber.email)}:
        store.suppress(session, form, OPERATOR_REASON, now, override=True)
    return accounts.unsubscribe(session, subscriber_id, now)


def update(
    session: Session, subscriber_id: int, form: accounts.Form, now: datetime | None = None
) -> Subscriber:
    """Change a reader's editions, sections, timezone and name (checked like the form).

    With `now`, sections must be ones the feeds offer (or the reader already has);
    without it the caller has checked them (the CLI, which names the known ones)."""
    subscriber = store.get_subscriber(session, subscriber_id)
    form.sections = [s.strip().lower() for s in form.sections if s.strip()]
    chosen = set(filter(None, ",".join(form.sections).split(",")))
    offered = set(filter(None, subscriber.sections.split(",")))
    offered |= set(accounts.offered_sections(session, now)) if now is not None else chosen
    fields, errors = accounts.validate(form, offered, email=subscriber.email)
    if errors:
        raise InvalidInput("; ".join(errors.values()))
    return accounts.update_preferences(session, subscriber_id, fields)


def describe_change(before: accounts.Form, after: accounts.Form) -> str:
    """What a change of settings changed, for flash messages and the audit log (a name
    is said to have changed, not shown: the log outlives an erasure)."""
    said = []
    if before.editions != after.editions:
        said.append(f"editions: {after.editions}")
    if sorted(before.sections) != sorted(after.sections):
        said.append(f"sections: {', '.join(after.sections) or 'all'}")
    if before.timezone != after.timezone:
        said.append(f"timezone: {after.timezone or 'the default'}")
    if before.name != after.name:
        said.append("name changed")
    return "; ".join(said) or "nothing changed"


def erase(session: Session, subscriber_id: int, now: datetime) -> Subscriber:
    """Delete the person's data (GDPR erasure). The address survives only as the
    suppression hash, so they are never mailed again by mistake; their deliveries stay
    as anonymous rows, so editions keep their counts."""
    subscriber = store.get_subscriber(session, subscriber_id)
    if subscriber.status == ERASED:
        return subscriber
    if subscriber.status not in accounts.LEFT:
        accounts.unsubscribe(session, subscriber_id, now)
    store.suppress(session, subscriber.email, ERASED, now)  # kept if already suppressed
    forget_delivery_errors(session, subscriber_id)
    store.forget_returned(session, subscriber_id)
    forget_reader_clicks(session, subscriber_id)  # reader mode's clicks and sunset notice
    subscriber.email = f"erased-{subscriber.id}@erased.invalid"
    subscriber.name = ""
    subscriber.timezone = None
    subscriber.sections = ""
    subscriber.consent = f"erased {now.strftime('%Y-%m-%dT%H:%MZ')}"
    subscriber.status = ERASED
    subscriber.last_notice_at = None
    session.flush()
    return subscriber
