"""What readers read, as the console and `digest status EDITION` show it: clicks per
article and per section, per thousand delivered, human against machine, the first 48
hours as a small inline SVG chart, and the most-read articles of the last days.

Functions of the session and `now`; the counts come from digest/store/clicks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from digest import store
from digest.models import Article
from digest.store import clicks as click_store

CHART_HOURS = 48


@dataclass(frozen=True)
class ArticleClicks:
    article_id: int
    title: str
    url: str
    section: str
    human: int
    machine: int


@dataclass(frozen=True)
class EditionClicks:
    articles: list[ArticleClicks]
    sections: list[tuple[str, int, int]]  # (section, human, machine), in edition order
    delivered: int
    human: int
    machine: int
    opens: tuple[int, int]
    hours: list[tuple[int, int]]  # (human, machine) per hour of the first CHART_HOURS

    @property
    def per_thousand(self) -> float | None:
        """Human clicks per thousand messages delivered (None before any was)."""
        return round(1000 * self.human / self.delivered, 1) if self.delivered else None

    @property
    def chart_svg(self) -> str:
        return chart_svg(self.hours)


def edition_clicks(session: Session, edition_id: int) -> EditionClicks:
    """An edition's clicks: per article in the order shown, per section, in total."""
    edition = store.get_edition(session, edition_id)
    ids = store.edition_article_ids(session, edition_id)
    by_id = store.articles_by_id(session, ids)
    counts = click_store.clicks_by_article(session, [edition_id])
    articles = [
        ArticleClicks(a.id, a.title, a.url, a.section, *counts.get(a.id, (0, 0)))
        for a in (by_id[i] for i in ids if i in by_id)
    ]
    sections: dict[str, list[int]] = {}
    for a in articles:
        tally = sections.setdefault(a.section, [0, 0])
        tally[0] += a.human
        tally[1] += a.machine
    start = edition.send_at.replace(minute=0, second=0, microsecond=0)
    hours = [[0, 0] for _ in range(CHART_HOURS)]
    for hour, human, machine in click_store.clicks_by_hour(session, edition_id):
        index = int((hour - start).total_seconds() // 3600)
        if 0 <= index < CHART_HOURS:
            hours[index][0] += human
            hours[index][1] += machine
    return EditionClicks(
        articles=articles,
        sections=[(name, h, m) for name, (h, m) in sections.items()],
        delivered=store.edition_counts(session, edition_id).get("sent", 0),
        human=sum(a.human for a in articles),
        machine=sum(a.machine for a in articles),
        opens=click_store.opens_total(session, edition_id),
        hours=[(h, m) for h, m in hours],
    )


def status_lines(report: EditionClicks) -> list[str]:
    """`digest status EDITION`: a line per article, then the edition's totals."""
    lines = [
        f"    {a.title[:60]}  clicks: {a.human} human, {a.machine} machine" for a in report.articles
    ]
    per = report.per_thousand
    lines.append(
        f"    clicks: {report.human} human, {report.machine} machine"
        + (f"  ({per:g} per thousand delivered)" if per is not None else "")
    )
    return lines


def most_read(
    session: Session, now: datetime, days: int = 7, limit: int = 30
) -> list[tuple[Article, int, int]]:
    """The articles with the most human clicks in the last `days` days, every edition."""
    return click_store.most_read(session, now - timedelta(days=days), limit)


def chart_svg(hours: list[tuple[int, int]], width: int = 480, height: int = 96) -> str:
    """Human (dark) and machine (light) clicks per hour as stacked bars: numbers only,
    no script, nothing from a feed (safe to put in a page as it is)."""
    peak = max([h + m for h, m in hours] + [1])
    bar = width / max(1, len(hours))
    plot = height - 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Clicks per hour over the first '
        f'{len(hours)} hours: human dark, machine light; peak {peak}">'
    ]
    for i, (human, machine) in enumerate(hours):
        x = round(i * bar + 0.5, 1)
        w = round(max(1.0, bar - 1), 1)
        h_human = round(plot * human / peak, 1)
        h_machine = round(plot * machine / peak, 1)
        if machine:
            y = round(plot - h_human - h_machine, 1)
            parts.append(
                f'<rect x="{x}" y="{y}" width="{w}" height="{h_machine}" fill="#c9c9c2">'
                f"<title>hour {i + 1}: {machine} machine</title></rect>"
            )
        if human:
            parts.append(
                f'<rect x="{x}" y="{round(plot - h_human, 1)}" width="{w}" height="{h_human}" '
                f'fill="#0b4f8a"><title>hour {i + 1}: {human} human</title></rect>'
            )
    parts.append(
        f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" stroke="#666" stroke-width="1"/>'
    )
    for mark in (0, 12, 24, 36, 48):
        if mark <= len(hours):
            x = min(width - 12, round(mark * bar, 1))
            parts.append(
                f'<text x="{x}" y="{height - 2}" font-size="10" fill="#666">{mark}h</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
