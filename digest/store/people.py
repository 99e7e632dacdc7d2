"""Queries about people for operators: finding readers and what they were sent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from digest.models import Delivery, Edition, Subscriber


def search_subscribers(session: Session, query: str, limit: int = 50) -> list[Subscriber]:
    """Readers whose address contains `query` (already lower-cased), newest first."""
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = (
        select(Subscriber)
        .where(Subscriber.email.like(f"%{escaped}%", escape="\\"))
        .order_by(Subscriber.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def reader_deliveries(
    session: Session, subscriber_id: int, limit: int = 60
) -> list[dict[str, Any]]:
    """The reader's latest deliveries with their edition, newest first."""
    stmt = (
        select(
            Delivery.edition_id,
            Edition.slot,
            Edition.local_day,
            Edition.timezone,
            Delivery.status,
            Delivery.sent_at,
            Delivery.last_error,
        )
        .join(Edition, Edition.id == Delivery.edition_id)
        .where(Delivery.subscriber_id == subscriber_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    keys = ("edition_id", "slot", "local_day", "timezone", "status", "sent_at", "error")
    return [dict(zip(keys, row, strict=True)) for row in session.execute(stmt)]


def forget_delivery_errors(session: Session, subscriber_id: int) -> None:
    """Clear the relays' error texts of a reader's deliveries (they may quote the
    address); the rows and their statuses stay, so edition counts do not change."""
    session.execute(
        update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(last_error=None)
    )
