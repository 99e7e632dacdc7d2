"""The facts the monitoring check, the console's banner and /metrics read: cheap
counts by status (over indexes) and each recent edition's first and last message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.models import Delivery, Edition, Suppression

WAITING = ("queued", "sending", "deferred")


@dataclass(frozen=True)
class EditionActivity:
    """A recent edition, how many of its rows wait, and its first and last message."""

    id: int
    slot: str
    local_day: date
    timezone: str
    status: str
    send_at: datetime
    created_at: datetime
    waiting: int  # queued or claimed (deferred rows wait for their retry time)
    first_sent: datetime | None
    last_sent: datetime | None

    @property
    def cohort(self) -> str:
        return f"{self.slot} {self.local_day.isoformat()} {self.timezone}"


def waiting_counts(session: Session) -> dict[str, int]:
    """Deliveries of every edition that are queued, claimed or deferred."""
    stmt = (
        select(Delivery.status, func.count())
        .where(Delivery.status.in_(WAITING))
        .group_by(Delivery.status)
    )
    found = {status: 0 for status in WAITING}
    found.update({status: int(n) for status, n in session.execute(stmt)})
    return found


def cohorts_from(session: Session, first_day: date) -> set[tuple[str, date, str]]:
    """(slot, local day, timezone) of every edition from `first_day` on, in one query."""
    stmt = select(Edition.slot, Edition.local_day, Edition.timezone).where(
        Edition.local_day >= first_day
    )
    return {(slot, day, zone) for slot, day, zone in session.execute(stmt)}


def edition_status_counts(session: Session) -> dict[str, int]:
    stmt = select(Edition.status, func.count()).group_by(Edition.status)
    return {status: int(n) for status, n in session.execute(stmt)}


def suppression_counts(session: Session) -> dict[str, int]:
    stmt = select(Suppression.reason, func.count()).group_by(Suppression.reason)
    return {reason: int(n) for reason, n in session.execute(stmt)}


def recent_editions(session: Session, since: datetime) -> list[EditionActivity]:
    """Editions sent (or due) since `since`, and editions still sending whatever their
    age, with their first and last message (one index lookup each)."""
    first = (
        select(func.min(Delivery.sent_at))
        .where(Delivery.edition_id == Edition.id)
        .scalar_subquery()
    )
    last = (
        select(func.max(Delivery.sent_at))
        .where(Delivery.edition_id == Edition.id)
        .scalar_subquery()
    )
    stmt = (
        select(Edition, first, last)
        .where((Edition.send_at >= since) | Edition.status.in_(("planned", "sending")))
        .order_by(Edition.send_at, Edition.id)
    )
    rows = list(session.execute(stmt))
    ids = [edition.id for edition, _, _ in rows]
    waiting: dict[int, int] = {}
    if ids:
        counts = (
            select(Delivery.edition_id, func.count())
            .where(Delivery.edition_id.in_(ids), Delivery.status.in_(("queued", "sending")))
            .group_by(Delivery.edition_id)
        )
        waiting = {edition_id: int(n) for edition_id, n in session.execute(counts)}
    return [
        EditionActivity(
            id=e.id,
            slot=e.slot,
            local_day=e.local_day,
            timezone=e.timezone,
            status=e.status,
            send_at=e.send_at,
            created_at=e.created_at,
            waiting=waiting.get(e.id, 0),
            first_sent=_utc(first_at),
            last_sent=_utc(last_at),
        )
        for e, first_at, last_at in rows
    ]


def _utc(value: datetime | str | None) -> datetime | None:
    """A subquery's MIN/MAX, as an aware UTC instant whatever the dialect hands back."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
