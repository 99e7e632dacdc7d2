"""Article selection is pure: windows, exclusions, limits, ranking and grouping."""

from datetime import UTC, datetime, timedelta

import pytest

from digest.editions.selection import (
    Candidate,
    normalise_sections,
    pick_for_sections,
    select_articles,
)

CUT = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)
START = CUT - timedelta(hours=13)


def art(
    i: int,
    hours_ago: float,
    section: str = "news",
    priority: int = 0,
    seen_hours_ago: float | None = None,
) -> Candidate:
    published = CUT - timedelta(hours=hours_ago)
    seen = CUT - timedelta(hours=seen_hours_ago if seen_hours_ago is not None else hours_ago)
    return Candidate(i, section, priority, published, seen)


@pytest.mark.parametrize(
    ("candidate", "included"),
    [
        (art(1, 1), True),
        (art(2, 12.9), True),
        # At the previous cut and stored well before it: the last edition's article.
        (art(3, 13, seen_hours_ago=13.6), False),
        (art(4, -0.5), False),  # published after the cut: next edition
        (art(5, 14, seen_hours_ago=2), True),  # published before, but reached us late
        (art(6, 40, seen_hours_ago=2), False),  # too old even if seen late
        (art(7, 14, seen_hours_ago=14), False),  # seen well before the last edition too
        # Stamped by an ingest run that started just before the last cut and stored
        # its feed after that edition was planned: the last edition never saw it.
        (art(8, 13.2, seen_hours_ago=13.1), True),
    ],
)
def test_window(candidate: Candidate, included: bool) -> None:
    chosen = select_articles([candidate], START, CUT, set(), 12)
    assert (candidate in chosen) is included


def test_previous_edition_articles_are_excluded() -> None:
    chosen = select_articles([art(1, 1), art(2, 2)], START, CUT, {1}, 12)
    assert [c.id for c in chosen] == [2]


def test_rank_is_priority_then_recency_and_limit_is_per_section() -> None:
    news = [art(i, i) for i in range(1, 16)]
    sport = [art(100 + i, i, "sport") for i in range(1, 4)]
    urgent = art(50, 10, priority=5)
    chosen = select_articles(news + sport + [urgent], START, CUT, set(), 12)
    assert [c.id for c in chosen if c.section == "news"][:3] == [50, 1, 2]
    assert len([c for c in chosen if c.section == "news"]) == 12
    assert len([c for c in chosen if c.section == "sport"]) == 3


def test_pick_for_sections_groups_and_limits() -> None:
    snapshot = [art(1, 1, "sport"), art(2, 2, "news"), art(3, 3, "sport"), art(4, 4, "culture")]
    everything = pick_for_sections(snapshot, "", 3)
    assert [c.id for c in everything] == [1, 3, 2]  # sport first (best article), grouped
    only_culture = pick_for_sections(snapshot, "culture", 12)
    assert [c.id for c in only_culture] == [4]
    assert pick_for_sections(snapshot, "weather", 12) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Sport, news", "news,sport"),
        (["news", "news", " x "], "news,x"),
        ("a;b", "a,b"),
    ],
)
def test_normalise_sections(raw: object, expected: str) -> None:
    assert normalise_sections(raw) == expected  # type: ignore[arg-type]
