"""The editions the public archive may show: sent to someone and not taken off it by an
operator, by day, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Exists, select
from sqlalchemy.orm import Session

from digest.models import Article, Delivery, Edition, EditionArticle, EditionVariant


def _sent() -> Exists:
    return (
        select(Delivery.id)
        .where(Delivery.edition_id == Edition.id, Delivery.status == "sent")
        .exists()
    )


def archived_editions(
    session: Session, until: datetime, limit: int, offset: int = 0
) -> list[Edition]:
    """Editions due by `until` that at least one reader was sent, newest day first."""
    stmt = (
        select(Edition)
        .where(Edition.send_at <= until, Edition.unpublished.is_(False), _sent())
        .order_by(Edition.local_day.desc(), Edition.send_at.desc(), Edition.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(stmt))


def archived_edition(session: Session, edition_id: int, until: datetime) -> Edition | None:
    """The edition if the archive may show it (see archived_editions), else None."""
    stmt = select(Edition).where(
        Edition.id == edition_id,
        Edition.send_at <= until,
        Edition.unpublished.is_(False),
        _sent(),
    )
    return session.scalars(stmt).first()


def variant_summaries(
    session: Session, edition_ids: Sequence[int]
) -> list[tuple[int, int, str, int, str]]:
    """(id, edition_id, sections, article_count, subject) of the editions' renderings,
    without their HTML (a page of the archive lists sixty of them)."""
    stmt = select(
        EditionVariant.id,
        EditionVariant.edition_id,
        EditionVariant.sections,
        EditionVariant.article_count,
        EditionVariant.subject,
    ).where(EditionVariant.edition_id.in_(edition_ids))
    return [tuple(row) for row in session.execute(stmt)]  # type: ignore[misc]


def hidden_article_ids(session: Session, edition_id: int) -> list[int]:
    """The edition's articles that an operator has hidden since (takedown)."""
    stmt = (
        select(EditionArticle.article_id)
        .join(Article, Article.id == EditionArticle.article_id)
        .where(EditionArticle.edition_id == edition_id, Article.hidden.is_(True))
    )
    return list(session.scalars(stmt))
