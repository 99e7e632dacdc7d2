"""The `digest` operator CLI. Errors are one line and a non-zero exit, not a traceback."""

from __future__ import annotations

import re
import shutil
import sys
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digest import pipeline, sending, store
from digest.config import SLOTS, Settings, check_timezone, load_settings
from digest.db import make_engine, make_sessionmaker, upgrade
from digest.editions import normalise_sections
from digest.errors import ConfigError, DigestError
from digest.ingest import import_articles, ingest_all
from digest.render import slot_values
from digest.schedule import Cohort, next_day_of
from digest.subscribers import export_csv, import_file, subscriber_fields
from digest.transport import make_transport

DATA = Path(__file__).resolve().parent / "data"


class App:
    """What every command needs, built on first use."""

    def __init__(self, now: datetime | None) -> None:
        self._now = now

    @cached_property
    def settings(self) -> Settings:
        return load_settings()

    @cached_property
    def sessions(self) -> Any:
        return make_sessionmaker(make_engine(self.settings.database_url))

    def session(self) -> Session:
        return self.sessions()

    def now(self) -> datetime:
        return self._now or datetime.now(UTC)

    def pinned_now(self) -> str | None:
        """The --now instant as ISO text for tasks; None lets workers read their clock."""
        return self._now.isoformat() if self._now else None


class Group(click.Group):
    """Turns digest's own errors and database errors into one clear line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DigestError as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            hint = " (run `digest init` first?)" if "no such table" in first else ""
            raise click.ClickException(f"database error: {first}{hint}") from None


pass_app = click.make_pass_decorator(App)


def parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise click.BadParameter("give a UTC offset, e.g. 2026-03-01T19:00:00+00:00")
    return when.astimezone(UTC)


@click.group(cls=Group)
@click.option(
    "--now",
    callback=parse_now,
    hidden=True,
    envvar="DIGEST_NOW",
    help="Pretend it is this instant (ISO 8601 with offset).",
)
@click.pass_context
def cli(ctx: click.Context, now: datetime | None) -> None:
    """digest: twice-daily email digests from your feeds."""
    ctx.obj = App(now)


@cli.command()
@pass_app
def init(app: App) -> None:
    """Create or upgrade the database schema."""
    upgrade(app.settings.database_url)
    click.echo(f"database ready: {app.settings.database_url_safe}")


# --- feeds and articles --------------------------------------------------------------


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
    with app.session() as session:
        feed = store.add_feed(session, url, section.strip().lower() or "news")
        session.commit()
        click.echo(f"feed {feed.id} added: {url} [{feed.section}]")


@feeds.command("list")
@pass_app
def feeds_list(app: App) -> None:
    """List feeds and how their last poll went."""
    with app.session() as session:
        for feed in store.list_feeds(session):
            state = f"error: {feed.last_error}" if feed.last_error else "ok"
            polled = (
                feed.last_polled_at.isoformat(timespec="minutes")
                if feed.last_polled_at
                else "never"
            )
            click.echo(f"{feed.id:>4}  [{feed.section}]  {feed.url}  polled {polled}  {state}")


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
            click.echo(f"FAILED {r.error}")
        elif r.not_modified:
            click.echo(f"unchanged {r.feed_url}")
        else:
            click.echo(f"ok {r.feed_url}: {r.new} new, {r.seen} already stored")
        for note in r.skipped:
            click.echo(f"  skipped {note}")
    click.echo(f"{len(reports)} feeds polled, {failed} failed")


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
        session.commit()
    for error in errors:
        click.echo(f"skipped {error}", err=True)
    click.echo(f"{new} new articles imported, {len(errors)} records skipped")


# --- subscribers -----------------------------------------------------------------------


@cli.group()
def subscribers() -> None:
    """Add, import, export and list subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="")
@click.option("--timezone", default=None, help="IANA name, e.g. Europe/London.")
@click.option("--editions", default="both", type=click.Choice(["morning", "evening", "both"]))
@click.option("--sections", default="", help="Comma-separated; empty means all.")
@click.option(
    "--confirmed", is_flag=True, help="Consent is proven: active at once, no opt-in email."
)
@pass_app
def subscribers_add(
    app: App,
    email: str,
    name: str,
    timezone: str | None,
    editions: str,
    sections: str,
    confirmed: bool,
) -> None:
    """Add one subscriber."""
    fields = subscriber_fields(email, name, timezone, editions, sections)
    with app.session() as session:
        s = store.add_subscriber(
            session,
            now=app.now(),
            status="active" if confirmed else "pending",
            consent="cli",
            **fields,
        )
        session.commit()
        click.echo(f"subscriber {s.id} added: {s.email} ({s.status})")


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--confirmed", is_flag=True, help="Only for lists with proven consent.")
@pass_app
def subscribers_import(app: App, file: Path, confirmed: bool) -> None:
    """Import subscribers from a CSV with columns email,name,timezone,editions,sections."""
    with app.session() as session:
        report = import_file(session, file, app.now(), confirmed=confirmed)
        session.commit()
    for line, reason in report.errors:
        click.echo(f"line {line}: {reason}", err=True)
    click.echo(
        f"{report.added} added, {report.existing} already subscribed, "
        f"{report.suppressed} suppressed (unsubscribed or bounced before), "
        f"{len(report.errors)} bad rows"
    )


@subscribers.command("export")
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
@pass_app
def subscribers_export(app: App, file: Path) -> None:
    """Export every subscriber to a CSV file (- for standard output)."""
    with app.session() as session:
        if str(file) == "-":
            n = export_csv(session, sys.stdout)
        else:
            with file.open("w", newline="", encoding="utf-8") as handle:
                n = export_csv(session, handle)
    click.echo(f"{n} subscribers exported", err=True)


@subscribers.command("list")
@click.option("--status", default=None)
@click.option("--limit", default=50, show_default=True)
@pass_app
def subscribers_list(app: App, status: str | None, limit: int) -> None:
    """List subscribers (first LIMIT) and the count by status."""
    with app.session() as session:
        for i, s in enumerate(store.iter_subscribers(session, status)):
            if i >= limit:
                break
            editions = "+".join(
                e for e, on in (("morning", s.morning), ("evening", s.evening)) if on
            )
            click.echo(
                f"{s.id:>6}  {s.email:<40} {s.status:<12} {editions:<15} "
                f"{s.timezone or '(default)'}  {s.sections or 'all sections'}"
            )
        counts = store.count_subscribers(session)
    click.echo("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no subscribers")


# --- sending -------------------------------------------------------------------------


def parse_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-29") from None


def parse_tz(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    try:
        return check_timezone(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("slot", type=click.Choice(SLOTS))
@click.option("--day", callback=parse_day, help="Local day of the edition (default: today there).")
@click.option("--timezone", callback=parse_tz, help="Only this cohort (default: every timezone).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.option("--to", "to", default=None, help="Send one test copy to this address only.")
@click.option(
    "--inline", is_flag=True, help="Send from this process even when a broker is configured."
)
@pass_app
def send(
    app: App,
    slot: str,
    day: date | None,
    timezone: str | None,
    dry_run: bool,
    to: str | None,
    inline: bool,
) -> None:
    """Plan and send the SLOT edition now (through the workers when a broker is set)."""
    settings, now = app.settings, app.now()
    if settings.redis_url and not (inline or dry_run or to):
        from workers.client import enqueue

        kwargs = {
            "day": day.isoformat() if day else None,
            "timezone": timezone,
            "now": app.pinned_now(),
        }
        [task_id] = enqueue(settings, "digest.plan_edition", [([slot], kwargs)])
        click.echo(f"digest.plan_edition enqueued for the {slot} edition: task {task_id}")
        return
    with app.session() as session:
        cohorts = pipeline.cohorts_for(session, settings, slot, now, day, timezone)
        if to:
            from digest.addresses import normalise_address

            address = normalise_address(to)
            cohort = Cohort(slot, cohorts[0].local_day, timezone or settings.default_timezone)
            mid = pipeline.test_send(
                session, settings, make_transport(settings), cohort, address, now
            )
            click.echo(f"test copy of the {cohort} edition sent to {address} ({mid})")
            return
        if dry_run:
            _dry_run(session, settings, cohorts, now)
            return
        transport = make_transport(settings)
        for cohort in cohorts:
            _send_cohort(session, settings, transport, cohort, now)


def _dry_run(session: Session, settings: Settings, cohorts: list[Cohort], now: datetime) -> None:
    for cohort in cohorts:
        edition = store.find_edition(session, cohort)
        if edition is not None:
            click.echo(f"{cohort}: edition {edition.id} exists ({edition.status}); nothing to plan")
            continue
        cut = min(pipeline.cohort_send_at(settings, cohort), now)
        start, snapshot = pipeline.select_snapshot(session, settings, cohort, cut)
        choices = store.cohort_section_choices(session, cohort, settings.default_timezone)
        click.echo(
            f"{cohort}: window {start.isoformat(timespec='minutes')} .. "
            f"{cut.isoformat(timespec='minutes')}, {len(snapshot)} articles, "
            f"{len(choices)} section choices"
        )
        for view in pipeline.article_views(session, snapshot[: settings.max_articles]):
            click.echo(f"  [{view.section}] {view.title}")


def _send_cohort(
    session: Session, settings: Settings, transport: Any, cohort: Cohort, now: datetime
) -> None:
    plan = pipeline.plan_edition(session, settings, cohort, now)
    verb = "planned" if plan.created else "exists"
    click.echo(f"{cohort}: edition {plan.edition_id} {verb} ({plan.status}) {plan.note}")
    report = sending.run_edition(session, settings, transport, plan.edition_id, now)
    if report.claimed:
        click.echo(
            f"  via {transport.describe()}: {report.sent} sent, {report.deferred} deferred, "
            f"{report.failed} failed, {report.suppressed} suppressed"
        )
        for error in report.errors[:10]:
            click.echo(f"  {error}")


@cli.command()
@click.argument("slot", type=click.Choice(SLOTS))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="HTML file to write.")
@click.option("--day", callback=parse_day, help="Local day (default: the next SLOT edition's day).")
@click.option("--timezone", callback=parse_tz)
@click.option("--sections", default="", help="Preview what readers of these sections get.")
@pass_app
def preview(
    app: App, slot: str, out: Path, day: date | None, timezone: str | None, sections: str
) -> None:
    """Write the SLOT edition as a reader would see it to an HTML file."""
    settings, now = app.settings, app.now()
    tz = timezone or settings.default_timezone
    day = day or next_day_of(now, tz, settings.send_time(slot))
    with app.session() as session:
        cohort = pipeline.cohorts_for(session, settings, slot, now, day, tz)[0]
        found = pipeline.preview(session, settings, cohort, now, normalise_sections(sections))
    if found is None:
        raise click.ClickException(f"the {cohort} edition has no articles to show")
    page, prepared = found
    links = {
        k: f"{settings.base_url}/{k.removesuffix('_url')}/preview"
        for k in ("unsubscribe_url", "preferences_url", "view_url")
    }
    out.write_text(
        prepared.html.fill(slot_values(name="Reader", for_html=True, **links)), encoding="utf-8"
    )
    click.echo(f"{page.subject}\nwritten to {out}")


@cli.command()
@click.argument("edition_id", required=False, type=int)
@pass_app
def status(app: App, edition_id: int | None) -> None:
    """Delivery counts by status for one edition, or the latest editions."""
    with app.session() as session:
        editions = (
            [store.get_edition(session, edition_id)] if edition_id else store.list_editions(session)
        )
        if not editions:
            click.echo("no editions yet")
        for e in editions:
            counts = store.edition_counts(session, e.id)
            shown = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no deliveries"
            click.echo(
                f"edition {e.id}  {e.slot} {e.local_day} {e.timezone}  [{e.status}]  {shown}"
            )
            if e.note and edition_id:
                click.echo(f"  {e.note}")
    if app.settings.redis_url:
        from workers.client import BrokerUnavailable, queue_lengths

        try:
            lengths = queue_lengths(app.settings)
        except BrokerUnavailable as exc:
            click.echo(str(exc))
            return
        for queue, waiting in lengths.items():
            click.echo(f"queue {queue}: {waiting} tasks waiting")


# --- workers -------------------------------------------------------------------------


def _send_batches(app: App, batches: list[list[int]], inline: bool) -> None:
    """Enqueue a send_batch task per batch, or send them here without a broker."""
    settings = app.settings
    if settings.redis_url and not inline:
        from workers.client import enqueue

        calls = [([batch], {"now": app.pinned_now()}) for batch in batches]
        ids = enqueue(settings, "digest.send_batch", calls)
        click.echo(f"  {len(ids)} digest.send_batch tasks enqueued")
        return
    transport, report = make_transport(settings), sending.BatchReport()
    with app.session() as session:
        for batch in batches:
            report.add(sending.send_batch(session, settings, transport, batch, app.now()))
    click.echo(
        f"  via {transport.describe()}: {report.sent} sent, {report.deferred} deferred, "
        f"{report.failed} failed, {report.suppressed} suppressed"
    )


@cli.command()
@click.argument("edition_id", type=int)
@click.option("--failed", is_flag=True, help="Retry deliveries that failed.")
@click.option("--deferred", is_flag=True, help="Retry deferred deliveries now.")
@click.option("--inline", is_flag=True, help="Send from this process even with a broker.")
@pass_app
def retry(app: App, edition_id: int, failed: bool, deferred: bool, inline: bool) -> None:
    """Put an edition's failed and/or deferred deliveries back in the queue and send them."""
    from digest import dispatch

    statuses = [name for name, on in (("failed", failed), ("deferred", deferred)) if on]
    if not statuses:
        raise click.UsageError("say which deliveries to retry: --failed, --deferred or both")
    with app.session() as session:
        count, batches = dispatch.retry_edition(
            session, app.settings, edition_id, statuses, app.now()
        )
    click.echo(f"edition {edition_id}: {count} deliveries re-queued")
    if batches:
        _send_batches(app, batches, inline)


@cli.command()
@click.option("--inline", is_flag=True, help="Send from this process even with a broker.")
@pass_app
def sweep(app: App, inline: bool) -> None:
    """Re-queue deliveries no worker is carrying (stuck in sending, lost tasks) and send."""
    from digest import dispatch

    with app.session() as session:
        batches = dispatch.sweep(session, app.settings, app.now())
    click.echo(f"{sum(len(b) for b in batches)} deliveries re-queued")
    if batches:
        _send_batches(app, batches, inline)


@cli.command()
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
@click.option("--flower/--no-flower", default=False, help="Also run Flower on loopback.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--loglevel", default="info", show_default=True)
@pass_app
def dev(app: App, concurrency: int, flower: bool, flower_port: int, loglevel: str) -> None:
    """Run Redis (embedded unless DIGEST_REDIS_URL is set), a worker and beat here."""
    from digest import devstack

    upgrade(app.settings.database_url)
    click.echo(f"database ready: {app.settings.database_url_safe}")
    options = devstack.DevOptions(concurrency, loglevel, flower, flower_port)
    code = devstack.run(app.settings, options, click.echo)
    if code:
        raise SystemExit(code)


@cli.command()
@click.argument("file", type=click.File("rb"), default="-")
@pass_app
def inbound(app: App, file: BinaryIO) -> None:
    """Act on one inbound message (FILE or standard input): a mailto unsubscribe, a
    bounce report or a complaint report. For the MTA to pipe the unsubscribe and
    bounce mailboxes into; exits 0 for mail it ignores, so nothing bounces back."""
    from digest.inbound import apply, classify

    raw = file.read(10_000_000)
    now = app.now()
    found = classify(raw, app.settings.secret_key, now)
    try:
        with app.session() as session:
            outcome = apply(session, found, now)
            session.commit()
    except SQLAlchemyError as exc:
        # EX_TEMPFAIL: the MTA keeps the message and tries again, rather than bouncing
        # a reader's unsubscribe request back to them.
        click.echo(f"database unavailable, try again later: {exc.__class__.__name__}", err=True)
        sys.exit(75)
    click.echo(outcome)


# --- demo ------------------------------------------------------------------------------


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
        # The next morning edition readers would get: today's if it is still ahead.
        day = next_day_of(now, settings.default_timezone, settings.send_time("morning"))
        for cohort in pipeline.cohorts_for(session, settings, "morning", now, day):
            _send_cohort(session, settings, transport, cohort, now)
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


# --- web -------------------------------------------------------------------------------


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


def main() -> None:
    cli(prog_name="digest")


if __name__ == "__main__":
    main()
