"""Editions, their article snapshots and renderings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from digest.models import (
    Article,
    AuditEntry,
    Cohort,
    Edition,
    EditionArticle,
    EditionVariant,
)
from digest.store.base import get_or_raise, insert_for_session, rowcount

# Editions whose rows no sender may claim: paused (until resumed) and cancelled (for good).
HALTED = ("paused", "cancelled")
# Editions that sent nothing and cover no window: they neither supersede nor precede.
UNSENT = ("missed", "superseded")


def find_edition(session: Session, cohort: Cohort) -> Edition | None:
    stmt = select(Edition).where(
        Edition.slot == cohort.slot,
        Edition.local_day == cohort.local_day,
        Edition.timezone == cohort.timezone,
    )
    return session.scalars(stmt).first()


def get_edition(session: Session, edition_id: int) -> Edition:
    return get_or_raise(session, Edition, edition_id, "edition")


def previous_edition(session: Session, timezone: str, before: datetime) -> Edition | None:
    """The latest edition of this timezone cut by `before` (any slot, any status but
    missed and superseded, which cover nothing)."""
    stmt = (
        select(Edition)
        .where(Edition.timezone == timezone, Edition.window_end <= before)
        .where(Edition.status.not_in(UNSENT))
        .order_by(Edition.window_end.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def create_edition(
    session: Session,
    cohort: Cohort,
    *,
    send_at: datetime,
    window_start: datetime,
    now: datetime,
    status: str = "planned",
    note: str = "",
) -> Edition | None:
    """Insert the cohort's edition; None if it exists already (unique on the cohort)."""
    stmt = (
        insert_for_session(session, Edition)
        .values(
            slot=cohort.slot,
            local_day=cohort.local_day,
            timezone=cohort.timezone,
            status=status,
            send_at=send_at,
            window_start=window_start,
            window_end=send_at,
            created_at=now,
            note=note,
        )
        .on_conflict_do_nothing(index_elements=["slot", "local_day", "timezone"])
        .returning(Edition.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    return None if new_id is None else session.get(Edition, new_id)


def edition_article_ids(session: Session, edition_id: int) -> list[int]:
    stmt = (
        select(EditionArticle.article_id)
        .where(EditionArticle.edition_id == edition_id)
        .order_by(EditionArticle.position)
    )
    return list(session.scalars(stmt))


def add_edition_articles(session: Session, edition_id: int, article_ids: Sequence[int]) -> None:
    session.add_all(
        EditionArticle(edition_id=edition_id, article_id=aid, position=i)
        for i, aid in enumerate(article_ids)
    )


def add_variant(session: Session, edition_id: int, sections: str, **fields: Any) -> EditionVariant:
    variant = EditionVariant(edition_id=edition_id, sections=sections, **fields)
    session.add(variant)
    session.flush()
    return variant


def get_variant(session: Session, variant_id: int) -> EditionVariant:
    return get_or_raise(session, EditionVariant, variant_id, "edition variant")


def variant_heads(session: Session, variant_ids: Iterable[int]) -> list[Any]:
    """Each variant's id, edition, sections, subject and slot nonce, without its bodies
    (a send batch has them encoded already, once per process)."""
    v = EditionVariant
    stmt = select(v.id, v.edition_id, v.sections, v.subject, v.slot_nonce)
    return list(session.execute(stmt.where(v.id.in_(sorted(set(variant_ids))))))


def variants(session: Session, edition_id: int) -> list[EditionVariant]:
    stmt = select(EditionVariant).where(EditionVariant.edition_id == edition_id)
    return list(session.scalars(stmt.order_by(EditionVariant.id)))


def latest_covering(session: Session, timezone: str, cut: datetime) -> Edition | None:
    """The timezone's edition that covers the furthest, if it reaches past `cut`: an
    edition cut at `cut` would find nothing of its window left to send."""
    stmt = (
        select(Edition)
        .where(Edition.timezone == timezone, Edition.window_end > cut)
        .where(Edition.status.not_in(UNSENT))
        .order_by(Edition.window_end.desc(), Edition.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def sent_article_ids(
    session: Session, timezone: str, since: datetime, except_edition: int | None = None
) -> set[int]:
    """Articles published after `since` that an edition of this timezone carries
    already, whatever its slot, day or the order it was planned in."""
    stmt = (
        select(EditionArticle.article_id)
        .join(Edition, Edition.id == EditionArticle.edition_id)
        .join(Article, Article.id == EditionArticle.article_id)
        .where(Edition.timezone == timezone, Article.published_at > since)
    )
    if except_edition is not None:
        stmt = stmt.where(Edition.id != except_edition)
    return set(session.scalars(stmt))


def replace_edition_articles(session: Session, edition_id: int, article_ids: Sequence[int]) -> None:
    """A corrected snapshot (a cancelled edition planned again)."""
    session.execute(delete(EditionArticle).where(EditionArticle.edition_id == edition_id))
    add_edition_articles(session, edition_id, article_ids)


def set_edition_status(
    session: Session, edition_id: int, to: str, *, only_from: Sequence[str]
) -> bool:
    """Move the edition to `to` if it is in one of `only_from`; whether it moved
    (one statement: two operators pressing at once cannot both win)."""
    result = session.execute(
        update(Edition)
        .where(Edition.id == edition_id, Edition.status.in_(only_from))
        .values(status=to)
        .execution_options(synchronize_session="fetch")
    )
    return rowcount(result) == 1


def halted_editions(session: Session, edition_ids: Sequence[int]) -> set[int]:
    """Which of these editions are paused or cancelled."""
    if not edition_ids:
        return set()
    stmt = select(Edition.id).where(Edition.id.in_(edition_ids), Edition.status.in_(HALTED))
    return set(session.scalars(stmt))


def audit(session: Session, who: str, action: str, detail: str, now: datetime) -> None:
    """One line in the audit log (the edition layer writes its plans here, with the
    origin of each; digest.operations.operators reads and writes the same table)."""
    session.add(AuditEntry(at=now, operator=who[:64], action=action[:64], detail=detail[:2000]))
