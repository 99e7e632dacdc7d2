"""Editions: `digest send`, `preview`, `retry` and `sweep` (`status` is in status.py).

`digest send` run in this process exits with one of these codes:

    0  every delivery of the edition(s) was sent (or suppressed: the reader left)
    1  an error stopped it (one line on stderr); 2: a usage error
    3  not finished: deliveries are still queued, claimed or deferred for a retry;
       `digest send` again (or the workers' sweep) finishes them
    4  finished, but some deliveries failed for good (`digest retry ID --failed`)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.orm import Session

from digest import store
from digest.cli import App, cli, parse_day, parse_tz, pass_app
from digest.cli.status import age
from digest.config import SLOTS, Settings
from digest.editions import pipeline, sending
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort, local_day, next_day_of
from digest.editions.selection import normalise_sections
from digest.mail.relays import make_transport


@cli.command()
@click.argument("slot", type=click.Choice(SLOTS))
@click.option("--day", callback=parse_day, help="Local day of the edition (default: today there).")
@click.option("--timezone", callback=parse_tz, help="Only this cohort (default: every timezone).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; change nothing.")
@click.option("--to", "to", default=None, help="Send one test copy to this address only.")
@click.option(
    "--inline", is_flag=True, help="Send from this process even when a broker is configured."
)
@click.option(
    "--all-timezones",
    is_flag=True,
    help="Also send cohorts whose local send time has not come yet today.",
)
@click.option("--force", is_flag=True, help="Allow a --day in the future.")
@pass_app
def send(
    app: App,
    slot: str,
    day: date | None,
    timezone: str | None,
    dry_run: bool,
    to: str | None,
    inline: bool,
    all_timezones: bool,
    force: bool,
) -> None:
    """Plan and send the SLOT edition now (through the workers when a broker is set).

    Without --timezone only the cohorts whose local send time has passed today are sent;
    the others are listed with their time (--all-timezones sends them too).
    """
    settings, now = app.settings, app.now()
    with app.session() as session:
        cohorts = pipeline.cohorts_for(session, settings, slot, now, day, timezone)
        if to:
            from digest.mail.addresses import normalise_address

            address = normalise_address(to)
            zone = timezone or settings.default_timezone
            cohort = Cohort(slot, day or local_day(now, zone), zone)
            mid = pipeline.test_send(
                session, settings, make_transport(settings), cohort, address, now
            )
            click.echo(f"test copy of the {cohort} edition sent to {address} ({mid})")
            return
        if dry_run:
            _dry_run(session, settings, cohorts, now)
            return
        ahead = [c for c in cohorts if c.local_day > local_day(now, c.timezone)]
        if ahead and not force:
            raise click.UsageError(
                f"{ahead[0].local_day} is still ahead in {ahead[0].timezone}: sending it now "
                "uses up that day's edition. Add --force to do it anyway (--dry-run and "
                "`digest preview` show it without sending)."
            )
        if not (timezone or all_timezones or day):
            cohorts = _due_only(settings, cohorts, now)
        if settings.redis_url and not inline:
            _enqueue_plans(app, cohorts)
            return
        transport = make_transport(settings)
        codes = [send_cohort(session, settings, transport, cohort, now) for cohort in cohorts]
    code = EXIT_UNFINISHED if EXIT_UNFINISHED in codes else max(codes, default=EXIT_DONE)
    if code:
        sys.exit(code)


def _due_only(settings: Settings, cohorts: list[Cohort], now: datetime) -> list[Cohort]:
    """The cohorts whose send time has come; says when each of the others is due."""
    due = []
    for cohort in cohorts:
        at = pipeline.cohort_send_at(settings, cohort)
        if at <= now:
            due.append(cohort)
            continue
        local = at.astimezone(ZoneInfo(cohort.timezone)).strftime("%H:%M")
        click.echo(
            f"{cohort}: not due until {local} local time (in {age(now, at)}); "
            "not sent (--all-timezones sends it now)"
        )
    return due


def _enqueue_plans(app: App, cohorts: list[Cohort]) -> None:
    """One digest.plan_edition task per cohort, through the broker."""
    from workers.client import enqueue

    calls = [
        (
            [c.slot],
            {"day": c.local_day.isoformat(), "timezone": c.timezone, "now": app.pinned_now()},
        )
        for c in cohorts
    ]
    for cohort, task_id in zip(
        cohorts, enqueue(app.settings, "digest.plan_edition", calls), strict=True
    ):
        click.echo(f"{cohort}: digest.plan_edition enqueued (task {task_id})")


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


EXIT_DONE, EXIT_UNFINISHED, EXIT_FAILED = 0, 3, 4


def send_cohort(
    session: Session, settings: Settings, transport: Any, cohort: Cohort, now: datetime
) -> int:
    """Plan and send one cohort's edition here; returns its exit code (module docstring)."""
    plan = pipeline.plan_edition(session, settings, cohort, now)
    verb = "planned" if plan.created else "exists"
    click.echo(f"{cohort}: edition {plan.edition_id} {verb} ({plan.status}) {plan.note}")

    def wait_for_relays(seconds: float) -> None:
        click.echo(f"  no relay takes mail now; trying again in {seconds:.0f} s", err=True)
        time.sleep(seconds)

    with ProgressShown() as progress:
        report = sending.run_edition(
            session,
            settings,
            transport,
            plan.edition_id,
            now,
            on_progress=progress,
            sleep=wait_for_relays,
        )
    if report.claimed:
        click.echo(
            f"  via {transport.describe()}: {report.sent} sent, {report.deferred} deferred, "
            f"{report.failed} failed, {report.suppressed} suppressed"
        )
        for error in report.errors[:10]:
            click.echo(f"  {error}")
    counts = store.edition_counts(session, plan.edition_id)
    session.commit()
    return edition_outcome(plan.edition_id, counts, store.first_retry_at(session, plan.edition_id))


def edition_outcome(edition_id: int, counts: dict[str, int], retry_at: datetime | None) -> int:
    """Say plainly what an in-process send left open; returns the exit code."""
    left = {k: counts[k] for k in ("queued", "sending", "deferred") if counts.get(k)}
    if left:
        what = ", ".join(f"{n} {'claimed' if k == 'sending' else k}" for k, n in left.items())
        when = f"; first retry due {retry_at.isoformat(timespec='seconds')}" if retry_at else ""
        click.echo(
            f"edition {edition_id} not finished: {what}{when}. Run `digest send` again "
            f"(or `digest retry {edition_id} --deferred`) to finish it.",
            err=True,
        )
        return EXIT_UNFINISHED
    if counts.get("failed"):
        click.echo(
            f"edition {edition_id} finished with {counts['failed']} failed deliveries "
            f"(`digest retry {edition_id} --failed` tries them again).",
            err=True,
        )
        return EXIT_FAILED
    return EXIT_DONE


class ProgressShown:
    """Progress of a long send: a bar on a terminal, else a line every few seconds."""

    def __init__(
        self,
        every: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        echo: Callable[[str], None] = click.echo,
    ) -> None:
        self.every, self.clock, self.echo = every, clock, echo
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar: Any = None
        self._shown = 0
        self._next = clock() + every

    def __enter__(self) -> ProgressShown:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label="  sending").__enter__()
            self._bar.update(done - self._shown)
            self._shown = done
        elif self.clock() >= self._next and done < total:
            self._next = self.clock() + self.every
            self.echo(f"  {done} of {total} deliveries done")


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


def _send_batches(app: App, batches: list[list[int]], inline: bool) -> None:
    """Enqueue a send_batch task per batch, or send them here without a broker."""
    settings = app.settings
    if settings.redis_url and not inline:
        from workers.client import enqueue
        from workers.config import send_options

        calls = [([batch], {"now": app.pinned_now()}) for batch in batches]
        # Retried and swept rows go ahead of any editions' backlog.
        ids = enqueue(settings, "digest.send_batch", calls, **send_options(first=True))
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
    from digest.editions import dispatch

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
    from digest.editions import dispatch

    with app.session() as session:
        batches = dispatch.sweep(session, app.settings, app.now())
    click.echo(f"{sum(len(b) for b in batches)} deliveries re-queued")
    if batches:
        _send_batches(app, batches, inline)
