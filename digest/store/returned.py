"""Returned mail: one row per bounce, complaint or unsubscribe that came back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import Session, aliased

from digest.models import Delivery, ReturnedMail, Subscriber, WebhookSeen
from digest.store.base import insert_for_session


@dataclass(frozen=True)
class ReturnedRow:
    """One row of the console's returned-mail page."""

    id: int
    at: datetime
    subscriber_id: int
    address: str
    status: str
    kind: str
    source: str
    reason: str
    edition_id: int | None


def add_returned(
    session: Session,
    subscriber_id: int,
    kind: str,
    source: str,
    reason: str,
    now: datetime,
    edition_id: int | None = None,
) -> None:
    session.add(
        ReturnedMail(
            at=now,
            subscriber_id=subscriber_id,
            edition_id=edition_id,
            kind=kind,
            source=source,
            reason=reason[:1000],
        )
    )
    session.flush()


def last_success(session: Session, subscriber_id: int) -> datetime | None:
    """When the newest message to this reader was handed over that nothing came back for."""
    returned = exists().where(
        ReturnedMail.subscriber_id == Delivery.subscriber_id,
        ReturnedMail.edition_id == Delivery.edition_id,
    )
    stmt = select(func.max(Delivery.sent_at)).where(
        Delivery.subscriber_id == subscriber_id, Delivery.status == "sent", ~returned
    )
    value = session.scalar(stmt)
    return value if isinstance(value, datetime) else None


def count_soft(session: Session, subscriber_ids: Sequence[int], since: datetime) -> dict[int, int]:
    """Soft bounces per reader since `since` and since their last successful delivery."""
    if not subscriber_ids:
        return {}
    later_success = exists().where(
        Delivery.subscriber_id == ReturnedMail.subscriber_id,
        Delivery.status == "sent",
        Delivery.sent_at > ReturnedMail.at,
        ~exists()
        .where(
            and_(
                ReturnedMail.subscriber_id == Delivery.subscriber_id,
                ReturnedMail.edition_id == Delivery.edition_id,
            )
        )
        .correlate(Delivery),
    )
    cleared = aliased(ReturnedMail)
    # An operator's un-suppress starts the count afresh.
    cleared_later = exists().where(
        cleared.subscriber_id == ReturnedMail.subscriber_id,
        cleared.kind == "unsuppressed",
        cleared.at >= ReturnedMail.at,
    )
    counts: dict[int, int] = {}
    for i in range(0, len(subscriber_ids), 500):
        stmt = (
            select(ReturnedMail.subscriber_id, func.count())
            .where(
                ReturnedMail.subscriber_id.in_(subscriber_ids[i : i + 500]),
                ReturnedMail.kind == "soft",
                ReturnedMail.at >= since,
                ~later_success,
                ~cleared_later,
            )
            .group_by(ReturnedMail.subscriber_id)
        )
        counts.update({sid: int(n) for sid, n in session.execute(stmt)})
    return counts


def returned_page(
    session: Session,
    *,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> list[ReturnedRow]:
    """Newest returned mail first, with the reader's current address and status."""
    stmt = (
        select(ReturnedMail, Subscriber.email, Subscriber.status)
        .join(Subscriber, Subscriber.id == ReturnedMail.subscriber_id)
        .order_by(ReturnedMail.at.desc(), ReturnedMail.id.desc())
        .limit(limit)
    )
    if kind:
        stmt = stmt.where(ReturnedMail.kind == kind)
    if since is not None:
        stmt = stmt.where(ReturnedMail.at >= since)
    if until is not None:
        stmt = stmt.where(ReturnedMail.at < until)
    return [
        ReturnedRow(
            r.id, r.at, r.subscriber_id, email, status, r.kind, r.source, r.reason, r.edition_id
        )
        for r, email, status in session.execute(stmt)
    ]


def forget_returned(session: Session, subscriber_id: int) -> None:
    """An erased reader's returned mail goes with them (its reasons may name the address)."""
    session.execute(delete(ReturnedMail).where(ReturnedMail.subscriber_id == subscriber_id))


def first_time(session: Session, key: str, now: datetime, keep: timedelta) -> bool:
    """Remember a webhook delivery's key; False if it was seen before (a replay).
    Keys older than `keep` are forgotten (their timestamps are stale by then anyway)."""
    session.execute(delete(WebhookSeen).where(WebhookSeen.at < now - keep))
    stmt = insert_for_session(session, WebhookSeen).values(key=key[:200], at=now)
    stmt = stmt.on_conflict_do_nothing(index_elements=["key"]).returning(WebhookSeen.key)
    return session.execute(stmt).first() is not None
