"""Click and open counts, reader clicks (reader mode) and sunset notices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from digest.models import (
    Article,
    ClickCount,
    Delivery,
    Edition,
    EditionArticle,
    EditionVariant,
    OpenCount,
    ReaderClick,
    Subscriber,
    SunsetNotice,
)
from digest.store.base import insert_for_session

Tally = tuple[int, int]  # (human, machine)


def edition_links(session: Session, edition_id: int) -> tuple[datetime, dict[int, str]] | None:
    """When an edition's first message went (its send time before any did) and the
    stored URL of each of its articles; None if there is no such edition."""
    first = session.execute(
        select(Edition.send_at, func.min(Delivery.sent_at))
        .outerjoin(Delivery, Delivery.edition_id == Edition.id)
        .where(Edition.id == edition_id)
        .group_by(Edition.id, Edition.send_at)
    ).first()
    if first is None:
        return None
    rows = session.execute(
        select(Article.id, Article.url)
        .join(EditionArticle, EditionArticle.article_id == Article.id)
        .where(EditionArticle.edition_id == edition_id)
    )
    return first[1] or first[0], {aid: url for aid, url in rows}


def add_click_counts(session: Session, counts: Mapping[tuple[int, int, datetime], Tally]) -> None:
    """Add to the (edition, article, hour) counts, creating rows as needed."""
    for (edition_id, article_id, hour), (human, machine) in sorted(counts.items()):
        stmt = insert_for_session(session, ClickCount).values(
            edition_id=edition_id, article_id=article_id, hour=hour, human=human, machine=machine
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["edition_id", "article_id", "hour"],
                set_={
                    "human": ClickCount.human + stmt.excluded.human,
                    "machine": ClickCount.machine + stmt.excluded.machine,
                },
            )
        )


def add_open_counts(session: Session, counts: Mapping[tuple[int, datetime], Tally]) -> None:
    for (edition_id, hour), (human, machine) in sorted(counts.items()):
        stmt = insert_for_session(session, OpenCount).values(
            edition_id=edition_id, hour=hour, human=human, machine=machine
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["edition_id", "hour"],
                set_={
                    "human": OpenCount.human + stmt.excluded.human,
                    "machine": OpenCount.machine + stmt.excluded.machine,
                },
            )
        )


def add_reader_clicks(
    session: Session, clicks: Sequence[tuple[int, int, int, datetime]], erased: str = "erased"
) -> int:
    """Store (subscriber, edition, article, at) human clicks of readers still on file
    (not erased), and count each as an answer to a pending sunset notice."""
    ids = {c[0] for c in clicks}
    if not ids:
        return 0
    known = set(
        session.scalars(
            select(Subscriber.id).where(Subscriber.id.in_(ids), Subscriber.status != erased)
        )
    )
    rows = [
        ReaderClick(subscriber_id=s, edition_id=e, article_id=a, clicked_at=at)
        for s, e, a, at in clicks
        if s in known
    ]
    session.add_all(rows)
    if known:
        last = max(c[3] for c in clicks)
        session.execute(
            update(SunsetNotice)
            .where(
                SunsetNotice.subscriber_id.in_(known),
                SunsetNotice.kept_at.is_(None),
                SunsetNotice.ended_at.is_(None),
            )
            .values(kept_at=last)
        )
    session.flush()
    return len(rows)


def forget_reader_clicks(session: Session, subscriber_id: int) -> None:
    """Everything reader mode kept about one reader (on erasure)."""
    session.execute(delete(ReaderClick).where(ReaderClick.subscriber_id == subscriber_id))
    session.execute(delete(SunsetNotice).where(SunsetNotice.subscriber_id == subscriber_id))


def reader_clicks(session: Session, subscriber_id: int) -> list[tuple[int, int, datetime]]:
    """One reader's clicks on file: (edition, article, time), oldest first."""
    stmt = (
        select(ReaderClick.edition_id, ReaderClick.article_id, ReaderClick.clicked_at)
        .where(ReaderClick.subscriber_id == subscriber_id)
        .order_by(ReaderClick.clicked_at, ReaderClick.id)
    )
    return [(e, a, at) for e, a, at in session.execute(stmt)]


def purge_reader_clicks(session: Session, before: datetime) -> int:
    """Delete reader clicks older than `before` (DIGEST_CLICK_RETENTION_DAYS)."""
    result = session.execute(delete(ReaderClick).where(ReaderClick.clicked_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


# --- what the console and the CLI show ---------------------------------------------------


def clicks_by_article(session: Session, edition_ids: Iterable[int]) -> dict[int, Tally]:
    """(human, machine) per article over the given editions."""
    ids = list(edition_ids)
    if not ids:
        return {}
    stmt = (
        select(ClickCount.article_id, func.sum(ClickCount.human), func.sum(ClickCount.machine))
        .where(ClickCount.edition_id.in_(ids))
        .group_by(ClickCount.article_id)
    )
    return {aid: (int(h or 0), int(m or 0)) for aid, h, m in session.execute(stmt)}


def clicks_by_hour(session: Session, edition_id: int) -> list[tuple[datetime, int, int]]:
    stmt = (
        select(ClickCount.hour, func.sum(ClickCount.human), func.sum(ClickCount.machine))
        .where(ClickCount.edition_id == edition_id)
        .group_by(ClickCount.hour)
        .order_by(ClickCount.hour)
    )
    return [(hour, int(h or 0), int(m or 0)) for hour, h, m in session.execute(stmt)]


def opens_total(session: Session, edition_id: int) -> Tally:
    row = session.execute(
        select(func.sum(OpenCount.human), func.sum(OpenCount.machine)).where(
            OpenCount.edition_id == edition_id
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


def recent_clicks(
    session: Session, since: datetime, article_ids: Iterable[int] | None = None
) -> dict[int, int]:
    """Human clicks per article in hours from `since` on (every edition)."""
    stmt = (
        select(ClickCount.article_id, func.sum(ClickCount.human))
        .where(ClickCount.hour >= since)
        .group_by(ClickCount.article_id)
    )
    if article_ids is not None:
        stmt = stmt.where(ClickCount.article_id.in_(list(article_ids)))
    return {aid: int(h or 0) for aid, h in session.execute(stmt)}


def most_read(session: Session, since: datetime, limit: int = 50) -> list[tuple[Article, int, int]]:
    """The articles with the most human clicks since `since`: (article, human, machine)."""
    human = func.sum(ClickCount.human).label("human")
    stmt = (
        select(Article, human, func.sum(ClickCount.machine))
        .join(ClickCount, ClickCount.article_id == Article.id)
        .where(ClickCount.hour >= since)
        .group_by(Article.id)
        .order_by(human.desc(), Article.id.desc())
        .limit(limit)
    )
    return [(a, int(h or 0), int(m or 0)) for a, h, m in session.execute(stmt)]


# --- the sunset ----------------------------------------------------------------------------


def last_sent_editions(
    session: Session, subscriber_ids: Sequence[int], per_reader: int
) -> dict[int, list[tuple[int, datetime, str]]]:
    """Each reader's latest sent deliveries, newest first: (edition, sent_at, tracking
    mode of the rendering they got), at most `per_reader` each."""
    if not subscriber_ids:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=Delivery.subscriber_id, order_by=Delivery.sent_at.desc())
        .label("rank")
    )
    inner = (
        select(
            Delivery.subscriber_id,
            Delivery.edition_id,
            Delivery.sent_at,
            EditionVariant.click_tracking,
            rank,
        )
        .join(EditionVariant, EditionVariant.id == Delivery.variant_id)
        .where(Delivery.subscriber_id.in_(list(subscriber_ids)), Delivery.status == "sent")
        .subquery()
    )
    stmt = select(
        inner.c.subscriber_id, inner.c.edition_id, inner.c.sent_at, inner.c.click_tracking
    ).where(inner.c.rank <= per_reader)
    found: dict[int, list[tuple[int, datetime, str]]] = {}
    for sid, eid, sent_at, mode in session.execute(stmt.order_by(inner.c.sent_at.desc())):
        found.setdefault(sid, []).append((eid, sent_at, mode))
    return found


def active_reader_ids(session: Session, after_id: int, limit: int) -> list[int]:
    stmt = (
        select(Subscriber.id)
        .where(Subscriber.status == "active", Subscriber.id > after_id)
        .order_by(Subscriber.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def last_clicks(session: Session, subscriber_ids: Sequence[int]) -> dict[int, datetime]:
    """Each reader's latest click on file (reader mode)."""
    if not subscriber_ids:
        return {}
    stmt = (
        select(ReaderClick.subscriber_id, func.max(ReaderClick.clicked_at))
        .where(ReaderClick.subscriber_id.in_(list(subscriber_ids)))
        .group_by(ReaderClick.subscriber_id)
    )
    return {sid: at for sid, at in session.execute(stmt)}


def sunset_notices(session: Session, subscriber_ids: Sequence[int]) -> dict[int, SunsetNotice]:
    if not subscriber_ids:
        return {}
    stmt = select(SunsetNotice).where(SunsetNotice.subscriber_id.in_(list(subscriber_ids)))
    return {n.subscriber_id: n for n in session.scalars(stmt)}


def ask_sunset(session: Session, subscriber_id: int, now: datetime) -> None:
    """Record that the reader was asked now (a fresh question after an earlier keep)."""
    notice = session.get(SunsetNotice, subscriber_id)
    if notice is None:
        session.add(SunsetNotice(subscriber_id=subscriber_id, asked_at=now))
    else:
        notice.asked_at, notice.kept_at, notice.ended_at = now, None, None
    session.flush()


def keep_sunset(session: Session, subscriber_id: int, now: datetime) -> bool:
    """The reader answered: True if a pending question was open."""
    result = session.execute(
        update(SunsetNotice)
        .where(
            SunsetNotice.subscriber_id == subscriber_id,
            SunsetNotice.kept_at.is_(None),
            SunsetNotice.ended_at.is_(None),
        )
        .values(kept_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def unanswered_sunsets(session: Session, asked_before: datetime) -> list[int]:
    stmt = select(SunsetNotice.subscriber_id).where(
        SunsetNotice.asked_at < asked_before,
        SunsetNotice.kept_at.is_(None),
        SunsetNotice.ended_at.is_(None),
    )
    return list(session.scalars(stmt.order_by(SunsetNotice.subscriber_id)))


def end_sunset(session: Session, subscriber_id: int, now: datetime) -> None:
    session.execute(
        update(SunsetNotice).where(SunsetNotice.subscriber_id == subscriber_id).values(ended_at=now)
    )


def forget_sunset(session: Session, subscriber_id: int) -> None:
    session.execute(delete(SunsetNotice).where(SunsetNotice.subscriber_id == subscriber_id))


def inactive_unsubscribes(session: Session, since: datetime) -> int:
    """Readers the sunset unsubscribed since `since` (the overview's count)."""
    stmt = select(func.count()).where(SunsetNotice.ended_at >= since)
    return int(session.execute(stmt).scalar_one())


def pending_sunsets(session: Session) -> int:
    stmt = select(func.count()).where(
        SunsetNotice.kept_at.is_(None), SunsetNotice.ended_at.is_(None)
    )
    return int(session.execute(stmt).scalar_one())
