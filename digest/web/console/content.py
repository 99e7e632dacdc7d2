"""The console's feeds and articles."""

from __future__ import annotations

from typing import Any

from flask import abort, render_template, request

from digest import store
from digest.config import SLOTS
from digest.editions import pipeline
from digest.editions.schedule import Cohort, local_day
from digest.errors import DigestError
from digest.feeds import ingest
from digest.operations import engagement, overview
from digest.store.articles import latest_articles
from digest.web.auth import console
from digest.web.base import db, runtime
from digest.web.console.common import checked_id, done, record_action

# --- feeds and articles ------------------------------------------------------------------------


@console.get("/feeds")
def feeds() -> Any:
    return render_template("admin/feeds.html", feeds=store.list_feeds(db()))


@console.post("/feeds")
def feed_add() -> Any:
    try:
        url, section = ingest.check_feed_source(
            request.form.get("url", "")[:2100], request.form.get("section", "news")[:100]
        )
        store.add_feed(db(), url, section)
    except DigestError as exc:
        db().rollback()
        return done(f"Not added: {exc}", "console.feeds")
    record_action("added feed", f"{url} ({section})")
    db().commit()
    return done(f"Feed added: {url}", "console.feeds")


@console.post("/feeds/<int:feed_id>/<action>")
def feed_action(feed_id: int, action: str) -> Any:
    rt = runtime()
    session = db()
    feed = next((f for f in store.list_feeds(session) if f.id == feed_id), None)
    if feed is None or action not in ("pause", "resume", "poll", "edit", "delete"):
        abort(404)
    if action == "edit":
        return _feed_edit(feed)
    if action == "delete":
        if request.form.get("confirm") != "yes":
            return done(f"Nothing changed: tick “I mean it” to delete {feed.url}.", "console.feeds")
        store.delete_feed(session, feed)
        record_action("deleted feed", f"{feed.url} ({feed.section}); its articles are kept")
        session.commit()
        return done(f"Feed deleted: {feed.url} (its articles are kept).", "console.feeds")
    if action == "poll":
        report = ingest.ingest_feed(session, rt.settings, feed, rt.clock())
        message = f"{feed.url}: {report.error or f'{report.new} new articles'}"
    else:
        feed.paused = action == "pause"
        message = f"{feed.url}: {'paused' if feed.paused else 'polled again from now on'}"
    record_action(f"feed {action}", feed.url)
    session.commit()
    return done(message, "console.feeds")


def _feed_edit(feed: Any) -> Any:
    old = (feed.url, feed.section, feed.title)
    try:
        url, section = ingest.check_feed_source(
            request.form.get("url", "")[:2100],
            request.form.get("section", "")[:100],
            files=feed.url.startswith("file://"),
        )
        title = " ".join(request.form.get("title", "").split())[:500]
        store.update_feed(db(), feed, url, section, title)
    except DigestError as exc:
        db().rollback()
        return done(f"Not saved: {exc}", "console.feeds")
    changes = [
        f"{what}: {before or '(none)'} -> {after or '(none)'}"
        for what, before, after in zip(
            ("url", "section", "name"), old, (url, section, title), strict=True
        )
        if before != after
    ]
    record_action("changed feed", f"feed {feed.id}: " + ("; ".join(changes) or "nothing changed"))
    db().commit()
    return done(
        f"Feed {feed.id}: " + ("; ".join(changes) or "nothing changed") + ".", "console.feeds"
    )


@console.get("/articles")
def articles() -> Any:
    """The articles the next edition of a slot would carry, and the latest stored."""
    rt = runtime()
    slot = request.args.get("slot", "morning")
    if slot not in SLOTS:
        abort(404)
    zone = rt.settings.default_timezone
    now = rt.clock()
    upcoming = [
        Cohort(n.slot, n.local.date(), n.timezone)
        for n in overview.next_sends(db(), rt.settings, now)
        if n.slot == slot and n.timezone == zone
    ]
    cohort = upcoming[0] if upcoming else Cohort(slot, local_day(now, zone), zone)
    cut = max(pipeline.cohort_send_at(rt.settings, cohort), now)
    _, snapshot = pipeline.select_snapshot(db(), rt.settings, cohort, cut)
    picked = store.articles_by_id(db(), [c.id for c in snapshot])
    latest = latest_articles(db(), limit=50)
    return render_template(
        "admin/articles.html",
        cohort=cohort,
        next_articles=[picked[c.id] for c in snapshot if c.id in picked],
        latest=latest,
        slots=SLOTS,
        slot=slot,
        most_read=engagement.most_read(db(), now),
    )


@console.post("/articles/<int:article_id>/<action>")
def article_action(article_id: int, action: str) -> Any:
    article = store.articles_by_id(db(), [checked_id(article_id)]).get(article_id)
    if article is None or action not in ("hide", "show", "raise", "lower"):
        abort(404)
    if action in ("hide", "show"):
        # Hidden also means gone from archived editions that carried it (takedown).
        article.hidden = action == "hide"
    else:
        step = 1 if action == "raise" else -1
        article.priority = max(-1000, min(1000, article.priority + step))
    record_action(f"article {action}", f"{article.title[:120]} (priority {article.priority})")
    db().commit()
    slot = request.args.get("slot", "morning")
    return done(f"{article.title[:80]}: {action} done.", "console.articles", slot=slot)
