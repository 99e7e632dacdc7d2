"""Subscribers and suppressions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from digest.errors import Duplicate, InvalidInput
from digest.models import (
    Cohort,
    Subscriber,
    Suppression,
)
from digest.store.base import get_or_raise, insert_for_session


def address_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def is_suppressed(session: Session, email: str) -> bool:
    return session.get(Suppression, address_hash(email)) is not None


def suppression_reason(session: Session, email: str) -> str | None:
    """Why an address is suppressed (unsubscribed, bounced, complained...), or None."""
    found = session.get(Suppression, address_hash(email))
    return found.reason if found is not None else None


def suppressed_hashes(session: Session, emails: Iterable[str]) -> set[str]:
    hashes = [address_hash(e) for e in emails]
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        found.update(
            session.scalars(
                select(Suppression.email_hash).where(
                    Suppression.email_hash.in_(hashes[i : i + 500])
                )
            )
        )
    return found


def suppress(
    session: Session, email: str, reason: str, now: datetime, *, override: bool = False
) -> None:
    """Remember an address must never be mailed again (only its hash is kept). An
    existing reason is kept unless `override` (an operator's word outranks a reader's
    own unsubscribe)."""
    stmt = insert_for_session(session, Suppression).values(
        email_hash=address_hash(email), reason=reason, created_at=now
    )
    if override:
        stmt = stmt.on_conflict_do_update(
            index_elements=["email_hash"], set_={"reason": reason, "created_at": now}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=["email_hash"])
    session.execute(stmt)


def add_subscriber(
    session: Session,
    email: str,
    now: datetime,
    *,
    name: str = "",
    timezone: str | None = None,
    morning: bool = True,
    evening: bool = True,
    sections: str = "",
    status: str = "pending",
    consent: str = "",
) -> Subscriber:
    """Insert one subscriber; the address must already be normalised."""
    if find_subscriber(session, email) is not None:
        raise Duplicate(f"{email} is already subscribed")
    if status == "active" and is_suppressed(session, email):
        raise InvalidInput(f"{email} unsubscribed or bounced earlier and cannot be re-added")
    subscriber = Subscriber(
        email=email,
        name=name,
        timezone=timezone,
        morning=morning,
        evening=evening,
        sections=sections,
        status=status,
        consent=consent,
        created_at=now,
        confirmed_at=now if status == "active" else None,
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def insert_subscribers(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Bulk insert; rows whose address exists already are skipped. Returns rows added."""
    if not rows:
        return 0
    stmt = insert_for_session(session, Subscriber).on_conflict_do_nothing(index_elements=["email"])
    result = session.execute(stmt.returning(Subscriber.id), list(rows))
    return len(result.all())


def insert_subscribers_returning(session: Session, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Bulk insert like insert_subscribers; returns the addresses that were added."""
    if not rows:
        return []
    stmt = insert_for_session(session, Subscriber).on_conflict_do_nothing(index_elements=["email"])
    return list(session.scalars(stmt.returning(Subscriber.email), list(rows)))


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    return session.scalars(select(Subscriber).where(Subscriber.email == email)).first()


def get_subscriber(session: Session, subscriber_id: int) -> Subscriber:
    return get_or_raise(session, Subscriber, subscriber_id, "subscriber")


def iter_subscribers(session: Session, status: str | None = None) -> Iterator[Subscriber]:
    """All subscribers in id order, fetched in chunks so memory stays flat."""
    stmt = select(Subscriber).order_by(Subscriber.id)
    if status:
        stmt = stmt.where(Subscriber.status == status)
    yield from session.scalars(stmt.execution_options(yield_per=1000))


def count_subscribers(session: Session) -> dict[str, int]:
    rows = session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
    return {status: n for status, n in rows}


def set_status(session: Session, subscriber: Subscriber, status: str, now: datetime) -> None:
    """Move a subscriber to a new status; leaving for good also suppresses the address."""
    subscriber.status = status
    if status == "active":
        subscriber.confirmed_at = subscriber.confirmed_at or now
    if status in ("unsubscribed", "bounced", "complained"):
        subscriber.unsubscribed_at = now
        suppress(session, subscriber.email, status, now)


def active_timezones(session: Session, default_timezone: str) -> set[str]:
    tz = func.coalesce(Subscriber.timezone, default_timezone)
    return set(session.scalars(select(tz).where(Subscriber.status == "active").distinct()))


def cohort_filter(cohort: Cohort, default_timezone: str) -> Any:
    wants = Subscriber.morning if cohort.slot == "morning" else Subscriber.evening
    return and_(
        Subscriber.status == "active",
        wants.is_(True),
        func.coalesce(Subscriber.timezone, default_timezone) == cohort.timezone,
    )


def cohort_readers_confirmed_by(
    session: Session, cohort: Cohort, default_timezone: str, at: datetime
) -> int:
    """How many of the cohort's readers were already confirmed at `at`."""
    stmt = select(func.count()).where(
        cohort_filter(cohort, default_timezone), Subscriber.confirmed_at <= at
    )
    return int(session.scalar(stmt) or 0)


def cohort_section_choices(session: Session, cohort: Cohort, default_timezone: str) -> list[str]:
    """The distinct section choices among a cohort's readers (one rendering each)."""
    stmt = (
        select(Subscriber.sections)
        .where(cohort_filter(cohort, default_timezone))
        .distinct()
        .order_by(Subscriber.sections)
    )
    return list(session.scalars(stmt))


def lift_suppression(session: Session, email: str) -> None:
    """Forget a suppression: only after the address owner confirmed fresh consent."""
    session.execute(delete(Suppression).where(Suppression.email_hash == address_hash(email)))
