"""Counts for the operator's overview: who is due, what is sending, how it went."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from digest.models import Delivery, Edition, Subscriber


def readers_per_cohort(session: Session, default_timezone: str) -> dict[tuple[str, str], int]:
    """Active readers by (timezone, slot)."""
    tz = func.coalesce(Subscriber.timezone, default_timezone)
    stmt = (
        select(
            tz,
            func.sum(cast(Subscriber.morning, Integer)),
            func.sum(cast(Subscriber.evening, Integer)),
        )
        .where(Subscriber.status == "active")
        .group_by(tz)
    )
    counts: dict[tuple[str, str], int] = {}
    for zone, morning, evening in session.execute(stmt):
        counts[(zone, "morning")] = int(morning or 0)
        counts[(zone, "evening")] = int(evening or 0)
    return counts


def editions_with_status(session: Session, status: str, limit: int = 50) -> list[Edition]:
    stmt = select(Edition).where(Edition.status == status).order_by(Edition.id.desc())
    return list(session.scalars(stmt.limit(limit)))


def editions_page(session: Session, limit: int = 50, offset: int = 0) -> list[Edition]:
    stmt = select(Edition).order_by(Edition.send_at.desc(), Edition.id.desc())
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def count_editions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Edition)) or 0)


def counts_by_edition(session: Session, edition_ids: list[int]) -> dict[int, dict[str, int]]:
    """Delivery counts by status for each of the editions."""
    found: dict[int, dict[str, int]] = {i: {} for i in edition_ids}
    if not edition_ids:
        return found
    stmt = (
        select(Delivery.edition_id, Delivery.status, func.count())
        .where(Delivery.edition_id.in_(edition_ids))
        .group_by(Delivery.edition_id, Delivery.status)
    )
    for edition_id, status, n in session.execute(stmt):
        found[edition_id][status] = n
    return found


def sent_since(session: Session, edition_ids: list[int], since: datetime) -> dict[int, int]:
    """Messages sent since `since`, per edition (for a messages-per-second figure)."""
    if not edition_ids:
        return {}
    stmt = (
        select(Delivery.edition_id, func.count())
        .where(Delivery.edition_id.in_(edition_ids), Delivery.sent_at >= since)
        .group_by(Delivery.edition_id)
    )
    return {edition_id: n for edition_id, n in session.execute(stmt)}


def delivery_counts_since(session: Session, since: datetime) -> dict[str, int]:
    """Deliveries of editions planned since `since`, by status."""
    stmt = (
        select(Delivery.status, func.count())
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(Edition.created_at >= since)
        .group_by(Delivery.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def per_day(session: Session, column: Any, since: datetime) -> dict[date, int]:
    """How many subscribers have `column` (a timestamp) on each UTC day since `since`."""
    day = func.date(column)
    stmt = select(day, func.count()).where(column >= since).group_by(day)
    out: dict[date, int] = {}
    for value, n in session.execute(stmt):
        out[value if isinstance(value, date) else date.fromisoformat(str(value))] = n
    return out


def signups_per_day(session: Session, since: datetime) -> dict[date, int]:
    return per_day(session, Subscriber.confirmed_at, since)


def unsubscribes_per_day(session: Session, since: datetime) -> dict[date, int]:
    return per_day(session, Subscriber.unsubscribed_at, since)


def edition_errors(
    session: Session, edition_id: int, limit: int = 30
) -> list[tuple[str, str, int]]:
    """The distinct errors of an edition's failed and deferred deliveries, most common first."""
    stmt = (
        select(Delivery.status, Delivery.last_error, func.count())
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_(("failed", "deferred")),
        )
        .group_by(Delivery.status, Delivery.last_error)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return [(status, error or "", n) for status, error, n in session.execute(stmt)]
