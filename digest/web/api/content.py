"""/api/v1/articles and /api/v1/feeds: push articles from a CMS without a feed, hide
them or change their priority; list, add, pause and poll feeds."""

from __future__ import annotations

from typing import Any

from digest import store
from digest.feeds import ingest
from digest.models import Article, Feed
from digest.operations.problems import Problem, bad_field
from digest.store.articles import latest_articles
from digest.web.api import schemas as s
from digest.web.api.auth import audit
from digest.web.api.spec import operation
from digest.web.base import db, runtime


def article_out(a: Article) -> s.Article:
    return s.Article(
        id=a.id,
        guid=a.guid,
        url=a.url,
        title=a.title,
        section=a.section,
        priority=a.priority,
        hidden=a.hidden,
        published_at=a.published_at,
        seen_at=a.seen_at,
    )


def feed_out(f: Feed) -> s.Feed:
    return s.Feed(
        id=f.id,
        url=f.url,
        section=f.section,
        title=f.title,
        paused=f.paused,
        last_polled_at=f.last_polled_at,
        last_ok_at=f.last_ok_at,
        last_error=f.last_error,
        error_count=f.error_count,
    )


@operation(
    "POST",
    "/articles",
    need="write",
    tag="articles",
    summary="Push articles",
    body=s.ArticlesPush,
    responses={200: s.PushResult},
    max_bytes=8 * 2**20,
)
def push_articles(body: s.ArticlesPush) -> Any:
    """Articles with the fields of `digest articles import`, stored once: an article whose
    guid (or URL) is known already is left as it is, so pushing again adds nothing. A bad
    record is reported by its index (from 1) and the others are stored."""
    now = runtime().clock()
    records = [a.model_dump(exclude_none=True) for a in body.articles]
    articles, errors = ingest.parse_article_records(records, now)
    added = store.insert_articles(db(), articles)
    audit("pushed articles", f"{added} new of {len(records)}")
    db().commit()
    report = []
    for error in errors:
        where, _, reason = error.partition(": ")
        report.append(s.RecordError(index=int(where.removeprefix("record ")), error=reason))
    return s.PushResult(added=added, existing=len(articles) - added, errors=report)


@operation(
    "GET",
    "/articles",
    need="read",
    tag="articles",
    summary="The latest articles",
    query=s.ArticleQuery,
    responses={200: s.ArticleList},
)
def list_articles(query: s.ArticleQuery) -> Any:
    return s.ArticleList(items=[article_out(a) for a in latest_articles(db(), query.limit)])


@operation(
    "PATCH",
    "/articles/{article_id}",
    need="write",
    tag="articles",
    summary="Hide an article or change its priority",
    body=s.ArticleUpdate,
    responses={200: s.Article},
)
def update_article(article_id: int, body: s.ArticleUpdate) -> Any:
    """A hidden article is left out of every edition planned from then on."""
    article = store.articles_by_id(db(), [article_id]).get(article_id)
    if article is None:
        raise Problem(404, f"no article with id {article_id}")
    if body.hidden is not None:
        article.hidden = body.hidden
    if body.priority is not None:
        article.priority = body.priority
    audit(
        "changed article",
        f"{article.title[:120]} (priority {article.priority}, "
        f"{'hidden' if article.hidden else 'shown'})",
    )
    db().commit()
    return article_out(article)


@operation(
    "GET",
    "/feeds",
    need="read",
    tag="feeds",
    summary="Feeds and their health",
    responses={200: s.FeedList},
)
def list_feeds() -> Any:
    return s.FeedList(items=[feed_out(f) for f in store.list_feeds(db())])


def _feed(feed_id: int) -> Feed:
    found = next((f for f in store.list_feeds(db()) if f.id == feed_id), None)
    if found is None:
        raise Problem(404, f"no feed with id {feed_id}")
    return found


@operation(
    "POST",
    "/feeds",
    need="write",
    tag="feeds",
    summary="Add a feed",
    body=s.FeedIn,
    responses={201: s.Feed},
    errors=(409,),
    links={
        201: {
            "PollFeed": {
                "operationId": "poll_feed",
                "parameters": {"feed_id": "$response.body#/id"},
            }
        }
    },
)
def add_feed(body: s.FeedIn) -> Any:
    url = body.url.strip()
    if not url.startswith(("http://", "https://")):
        raise bad_field("url", "a feed is an http:// or https:// URL")
    section = body.section.strip().lower()
    if not section:
        raise bad_field("section", "a section needs a name")
    feed = store.add_feed(db(), url, section)
    audit("added feed", f"{url} ({section})")
    db().commit()
    return feed_out(feed), 201


@operation(
    "PATCH",
    "/feeds/{feed_id}",
    need="write",
    tag="feeds",
    summary="Pause or resume a feed",
    body=s.FeedUpdate,
    responses={200: s.Feed},
)
def update_feed(feed_id: int, body: s.FeedUpdate) -> Any:
    feed = _feed(feed_id)
    feed.paused = body.paused
    audit("feed pause" if body.paused else "feed resume", feed.url)
    db().commit()
    return feed_out(feed)


@operation(
    "POST",
    "/feeds/{feed_id}/poll",
    need="write",
    tag="feeds",
    summary="Poll a feed now",
    responses={200: s.PollResult},
)
def poll_feed(feed_id: int) -> Any:
    """Fetch the feed now; a broken feed says why in `error` (and on the feed)."""
    rt = runtime()
    feed = _feed(feed_id)
    report = ingest.ingest_feed(db(), rt.settings, feed, rt.clock())
    audit("feed poll", feed.url)
    db().commit()
    return s.PollResult(
        feed=feed_out(feed),
        new=report.new,
        seen=report.seen,
        skipped=report.skipped[:50],
        error=report.error,
    )
