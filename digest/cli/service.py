"""Running digest: `digest demo`, `digest dev` (worker + beat) and `digest web`."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import click

from digest import store
from digest.cli import App, cli, pass_app
from digest.cli.send import send_cohort
from digest.db import upgrade
from digest.editions import pipeline
from digest.editions.schedule import next_day_of
from digest.feeds.ingest import import_articles, ingest_all
from digest.mail.relays import make_transport
from digest.readers.subscribers import import_file

DATA = Path(__file__).resolve().parent.parent / "data"


def _demo_feed(target: Path, now: datetime) -> Path:
    """Copy the sample feed with its dates moved into the last hours, so it is news."""
    text = (DATA / "sample_feed.xml").read_text(encoding="utf-8")
    counter = iter(range(1000))

    def stamp(_match: re.Match[str]) -> str:
        when = now - timedelta(minutes=35 * next(counter) + 20)
        return f"<pubDate>{when.strftime('%a, %d %b %Y %H:%M:%S +0000')}</pubDate>"

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(re.sub(r"<pubDate>[^<]*</pubDate>", stamp, text), encoding="utf-8")
    return target


@cli.command()
@pass_app
def demo(app: App) -> None:
    """Sample feed and readers into the embedded database; send the morning edition."""
    settings, now = app.settings, app.now()
    upgrade(settings.database_url)
    click.echo(f"database: {settings.database_url_safe}")
    feed_file = _demo_feed(settings.data_dir / "demo" / "sample_feed.xml", now)
    with app.session() as session:
        if not store.list_feeds(session):
            store.add_feed(session, feed_file.as_uri(), "news")
        reports = ingest_all(session, settings, now)
        new = sum(r.new for r in reports)
        json_file = settings.data_dir / "demo" / "sample_articles.json"
        shutil.copy(DATA / "sample_articles.json", json_file)
        imported, _ = import_articles(session, json_file, now)
        session.commit()
        click.echo(f"articles: {new} from the sample feed, {imported} from sample_articles.json")
        report = import_file(session, DATA / "sample_subscribers.csv", now, confirmed=True)
        session.commit()
        click.echo(f"subscribers: {report.added} added, {report.existing} already there")
        transport = make_transport(settings)
        # The next morning edition readers would get: today's if it is still ahead (a
        # day ahead, forced: the demo shows what tomorrow's readers get).
        day = next_day_of(now, settings.default_timezone, settings.send_time("morning"))
        for cohort in pipeline.cohorts_for(session, settings, "morning", now, day):
            send_cohort(session, settings, transport, cohort, now, who="demo", force=True)
    click.echo(
        f"\nmessages are in {settings.outbox_dir}"
        if settings.smtp is None
        else f"\nmessages went to {transport.describe()}"
    )
    if settings.smtp is None:
        files = sorted(settings.outbox_dir.glob("*.eml"))
        for path in files[:5]:
            click.echo(f"  {path}")
        if len(files) > 5:
            click.echo(f"  ... {len(files)} files in all")
    click.echo("open one in a mail client, or run: digest preview morning --out preview.html")


@cli.command()
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
@click.option("--flower/--no-flower", default=False, help="Also run Flower on loopback.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--loglevel", default="info", show_default=True)
@pass_app
def dev(app: App, concurrency: int, flower: bool, flower_port: int, loglevel: str) -> None:
    """Run Redis (embedded unless DIGEST_REDIS_URL is set), a worker and beat here."""
    from digest.operations import devstack

    upgrade(app.settings.database_url)
    click.echo(f"database ready: {app.settings.database_url_safe}")
    options = devstack.DevOptions(concurrency, loglevel, flower, flower_port)
    code = devstack.run(app.settings, options, click.echo)
    if code:
        raise SystemExit(code)


@cli.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--debug", is_flag=True, help="Reload on code changes, show tracebacks (dev only).")
@pass_app
def web_command(app: App, host: str, port: int, debug: bool) -> None:
    """Run the subscriber web app on Flask's development server (production: gunicorn)."""
    from digest.web import run_dev_server

    click.echo(f"database: {app.settings.database_url_safe}")
    click.echo(f"links in emails point at {app.settings.base_url}")
    run_dev_server(app.settings, host, port, debug=debug, clock=app.now)
