"""Which articles go into an edition: pure selection, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from digest.models import Candidate


def rank_key(c: Candidate) -> tuple[int, float, int]:
    return (-c.priority, -c.published_at.timestamp(), -c.id)


# An ingest run stamps its articles when it starts and commits them feed by feed, so an
# article stamped a little before the last cut may only have been stored after it.
INGEST_SLACK = timedelta(minutes=30)


def in_window(
    c: Candidate, window_start: datetime, window_end: datetime, late_grace: timedelta
) -> bool:
    """Published in the window, or reached us around or after the last edition though
    published a little before it (feeds are polled, not pushed). Articles the last
    edition did carry are excluded by the caller."""
    if c.published_at > window_end:
        return False
    if c.published_at > window_start:
        return True
    return (
        window_start - INGEST_SLACK < c.seen_at <= window_end
        and c.published_at > window_start - late_grace
    )


def select_articles(
    candidates: Iterable[Candidate],
    window_start: datetime,
    window_end: datetime,
    exclude_ids: set[int],
    limit: int,
    late_grace: timedelta = timedelta(hours=24),
) -> list[Candidate]:
    """The edition's snapshot: the best `limit` articles of every section, ranked.

    Keeping `limit` per section (not overall) lets a reader who follows only one
    section still get a full edition of it from the same snapshot.
    """
    eligible = sorted(
        (
            c
            for c in candidates
            if c.id not in exclude_ids and in_window(c, window_start, window_end, late_grace)
        ),
        key=rank_key,
    )
    per_section: dict[str, int] = {}
    chosen: list[Candidate] = []
    for c in eligible:
        if per_section.get(c.section, 0) < limit:
            per_section[c.section] = per_section.get(c.section, 0) + 1
            chosen.append(c)
    return chosen


def pick_for_sections(snapshot: Sequence[Candidate], sections: str, limit: int) -> list[Candidate]:
    """What a reader with this section choice ("" = all) sees, grouped by section.

    Sections appear in the order of their best article; articles keep their rank.
    """
    wanted = set(filter(None, sections.split(",")))
    top = sorted((c for c in snapshot if not wanted or c.section in wanted), key=rank_key)[:limit]
    order: dict[str, int] = {}
    for c in top:
        order.setdefault(c.section, len(order))
    return sorted(top, key=lambda c: (order[c.section], rank_key(c)))


def normalise_sections(raw: Iterable[str] | str | None) -> str:
    """Sorted, de-duplicated, lower-case section names joined by commas."""
    if raw is None:
        return ""
    items = raw.replace(";", ",").split(",") if isinstance(raw, str) else raw
    return ",".join(sorted({s.strip().lower() for s in items if s and s.strip()}))
