"""The public archive (DIGEST_PUBLIC_ARCHIVE=1): past editions, by day, newest first,
with nothing personal in them.

An edition is shown once at least one reader was sent it, unless an operator
unpublished it; articles hidden since are cut from its page (rendered again without
them). Otherwise it shows as the web version shows it
(pages.public_html): the per-reader slots filled with values that are nobody's.
Of its renderings (one per choice of sections) the one with every section is shown,
else the one with the most articles. No Flask here; the caller owns the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import pages, pipeline
from digest.errors import NotFound
from digest.store.archive import (
    archived_edition,
    archived_editions,
    hidden_article_ids,
    variant_summaries,
)

PAGE_SIZE = 60
MAX_PAGE = 10_000


@dataclass(frozen=True)
class Entry:
    """One edition in the archive's list."""

    edition_id: int
    slot: str
    timezone: str
    subject: str
    variant_id: int


@dataclass
class Day:
    day: date
    entries: list[Entry] = field(default_factory=list)


def best_variant(rows: Sequence[tuple[int, int, str, int, str]]) -> tuple[int, int, str, int, str]:
    """Every section if there is such a rendering, else the one with the most articles."""
    return min(rows, key=lambda r: (r[2] != "", -r[3], r[0]))


def days(session: Session, now: datetime, page: int = 0) -> tuple[list[Day], bool]:
    """One page of the archive grouped by local day, newest first, and whether an
    older page follows."""
    page = max(0, min(page, MAX_PAGE))
    editions = archived_editions(session, now, PAGE_SIZE + 1, page * PAGE_SIZE)
    more = len(editions) > PAGE_SIZE
    editions = editions[:PAGE_SIZE]
    by_edition: dict[int, list[tuple[int, int, str, int, str]]] = {}
    for row in variant_summaries(session, [e.id for e in editions]):
        by_edition.setdefault(row[1], []).append(row)
    grouped: list[Day] = []
    for edition in editions:
        rows = by_edition.get(edition.id)
        if not rows:
            continue
        chosen = best_variant(rows)
        if not grouped or grouped[-1].day != edition.local_day:
            grouped.append(Day(edition.local_day))
        grouped[-1].entries.append(
            Entry(edition.id, edition.slot, edition.timezone, chosen[4], chosen[0])
        )
    return grouped, more


def edition_page(
    session: Session, settings: Settings, edition_id: int, now: datetime, banner: str
) -> str:
    """An archived edition as a web page, `banner` (trusted markup) above it."""
    edition = archived_edition(session, edition_id, now)
    rows = variant_summaries(session, [edition_id]) if edition else []
    if edition is None or not rows:
        raise NotFound("no such edition in the archive")
    if hidden_article_ids(session, edition_id):
        # An article hidden after the edition went out leaves its archived page too.
        prepared = pipeline.rendering_without_hidden(session, settings, edition)
        if prepared is None:
            raise NotFound("no such edition in the archive")
        return pages.public_page(settings, prepared, banner)
    variant = store.get_variant(session, best_variant(rows)[0])
    return pages.public_html(settings, variant, banner, session=session, now=now)
