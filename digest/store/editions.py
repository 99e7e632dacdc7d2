"""Editions, their article snapshots and renderings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.models import (
    Cohort,
    Edition,
    EditionArticle,
    EditionVariant,
)
from digest.store.base import get_or_raise, insert_for_session


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
    """The latest edition of this timezone cut before `before` (any slot, any status)."""
    stmt = (
        select(Edition)
        .where(Edition.timezone == timezone, Edition.window_end < before)
        .where(Edition.status != "missed")
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


def variants(session: Session, edition_id: int) -> list[EditionVariant]:
    stmt = select(EditionVariant).where(EditionVariant.edition_id == edition_id)
    return list(session.scalars(stmt.order_by(EditionVariant.id)))
