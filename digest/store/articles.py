"""Feeds and articles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import Duplicate
from digest.models import (
    Article,
    Candidate,
    Feed,
)
from digest.store.base import insert_for_session


def add_feed(session: Session, url: str, section: str) -> Feed:
    if session.scalars(select(Feed).where(Feed.url == url)).first():
        raise Duplicate(f"feed {url} is already added")
    feed = Feed(url=url, section=section)
    session.add(feed)
    session.flush()
    return feed


def update_feed(session: Session, feed: Feed, url: str, section: str, title: str) -> Feed:
    """Change a feed's URL, section and name (Duplicate if another feed has the URL)."""
    other = session.scalars(select(Feed).where(Feed.url == url, Feed.id != feed.id)).first()
    if other is not None:
        raise Duplicate(f"feed {url} is already added")
    if url != feed.url:  # a new address starts without the old one's cache validators
        feed.etag = feed.last_modified = None
    feed.url, feed.section, feed.title = url, section, title
    session.flush()
    return feed


def delete_feed(session: Session, feed: Feed) -> None:
    """Remove a feed; its articles stay (their feed becomes none)."""
    session.delete(feed)
    session.flush()


def list_feeds(session: Session) -> list[Feed]:
    return list(session.scalars(select(Feed).order_by(Feed.id)))


def insert_articles(session: Session, articles: Sequence[dict[str, Any]]) -> int:
    """Store articles not seen before (by guid, then by URL). Returns how many were new."""
    guids = [a["guid"] for a in articles if a.get("guid")]
    urls = [a["url"] for a in articles]
    seen_guids = (
        set(session.scalars(select(Article.guid).where(Article.guid.in_(guids))))
        if guids
        else set()
    )
    seen_urls = (
        set(session.scalars(select(Article.url).where(Article.url.in_(urls)))) if urls else set()
    )
    fresh = []
    for article in articles:
        guid = article.get("guid")
        if (guid and guid in seen_guids) or article["url"] in seen_urls:
            continue
        if guid:
            seen_guids.add(guid)
        seen_urls.add(article["url"])
        fresh.append(article)
    if fresh:
        session.execute(insert_for_session(session, Article).on_conflict_do_nothing(), fresh)
    return len(fresh)


def candidate_articles(session: Session, since: datetime, until: datetime) -> list[Candidate]:
    """Articles that could fall in a window ending at `until` (pre-filter; the rest is pure)."""
    stmt = select(
        Article.id, Article.section, Article.priority, Article.published_at, Article.seen_at
    ).where(Article.published_at > since, Article.published_at <= until, ~Article.hidden)
    return [Candidate(*row) for row in session.execute(stmt)]


def articles_by_id(session: Session, ids: Sequence[int]) -> dict[int, Article]:
    return {a.id: a for a in session.scalars(select(Article).where(Article.id.in_(ids)))}


def known_sections(session: Session, since: datetime) -> list[str]:
    """Sections a reader can choose: every feed's, and any article's seen since `since`.

    Articles are bounded by time (published_at is indexed) so the subscribe page does
    not scan the whole archive.
    """
    found = set(session.scalars(select(Feed.section).distinct()))
    found.update(
        session.scalars(select(Article.section).where(Article.published_at > since).distinct())
    )
    return sorted(s for s in found if s)


def latest_articles(session: Session, limit: int = 50) -> list[Article]:
    """The most recently published articles, hidden ones included (for the console)."""
    stmt = select(Article).order_by(Article.published_at.desc(), Article.id.desc())
    return list(session.scalars(stmt.limit(limit)))
