"""Feeds and articles: `digest feeds`, `digest ingest`, `digest articles`."""

from __future__ import annotations

import re
from pathlib import Path

import click

from digest import store
from digest.cli import App, cli, pass_app
from digest.cli.readers import operator_name
from digest.feeds.ingest import check_feed_source, import_articles, ingest_all
from digest.operations import operators
from digest.words import counted


@cli.group()
def feeds() -> None:
    """Manage the feeds articles come from."""


@feeds.command("add")
@click.argument("source")
@click.option("--section", default="news", show_default=True, help="Section its articles go in.")
@pass_app
def feeds_add(app: App, source: str, section: str) -> None:
    """Add a feed by URL, or a local RSS/Atom FILE."""
    path = Path(source)
    url = path.resolve().as_uri() if "://" not in source and path.exists() else source
    if not re.match(r"^(https?|file)://", url):
        raise click.ClickException(f"{source!r} is neither an http(s) URL nor an existing file")
    url, section = check_feed_source(url, section, files=True)
    with app.session() as session:
        feed = store.add_feed(session, url, section)
        operators.record(
            session, operator_name(), "added feed", f"{url} ({feed.section})", app.now()
        )
        session.commit()
        click.echo(f"feed {feed.id} added: {url} [{feed.section}]")


@feeds.command("list")
@pass_app
def feeds_list(app: App) -> None:
    """List feeds and how their last poll went."""
    with app.session() as session:
        for feed in store.list_feeds(session):
            state = f"error: {feed.last_error}" if feed.last_error else "ok"
            if feed.last_polled_at is None:
                polled, state = "never polled", "" if not feed.last_error else state
            else:
                polled = "polled " + feed.last_polled_at.isoformat(timespec="minutes")
            paused = "  PAUSED" if feed.paused else ""
            click.echo(
                f"{feed.id:>4}  [{feed.section}]  {feed.url}  {polled}{paused}  {state}".rstrip()
            )


@cli.command()
@pass_app
def ingest(app: App) -> None:
    """Poll every feed once and store new articles."""
    with app.session() as session:
        reports = ingest_all(session, app.settings, app.now())
    failed = 0
    for r in reports:
        if r.error:
            failed += 1
            click.echo(f"FAILED {r.feed_url}: {r.error}")
        elif r.not_modified:
            click.echo(f"unchanged {r.feed_url}")
        else:
            click.echo(f"ok {r.feed_url}: {r.new} new, {r.seen} already stored")
        for note in r.skipped:
            click.echo(f"  skipped {note}")
    click.echo(f"{counted(len(reports), 'feed')} polled, {failed} failed")


@cli.group()
def articles() -> None:
    """Articles for publishers without feeds."""


@articles.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@pass_app
def articles_import(app: App, file: Path) -> None:
    """Import articles from a JSON list (title, url, summary, section, published_at, priority)."""
    with app.session() as session:
        new, errors = import_articles(session, file, app.now())
        operators.record(
            session,
            operator_name(),
            "imported articles",
            f"{file.name}: {new} new, {len(errors)} records skipped",
            app.now(),
        )
        session.commit()
    for error in errors:
        click.echo(f"skipped {error}", err=True)
    click.echo(f"{new} new articles imported, {len(errors)} records skipped")
