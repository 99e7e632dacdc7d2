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

import click
from sqlalchemy.orm import Session

from digest import store
from digest.cli import App, cli, parse_day, parse_tz, pass_app
from digest.cli.readers import operator_name
from digest.cli.status import age
from digest.config import SLOTS, Settings
from digest.editions import control, dispatch, guard, pipeline, sending
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort, local_day, next_day_of
from digest.editions.selection import normalise_sections
from digest.mail.relays import make_transport
from digest.store import overview as q
from digest.words import counted


@cli.command()
@click.argument("slot", type=click.Choice(SLOTS))
@click.option("--day", callback=parse_day, help="Local day of the edition (default: today there).")
@click.option("--timezone", callback=parse_tz, help="Only this cohort (default: every timezone).")
@click.option("--dry-run", is_flag=True, help="Say what the same command would do; change nothing.")
@click.option("--to", "to", default=None, help="Send one test copy to this address only.")
@click.option(
    "--inline", is_flag=True, help="Send from this process even when a broker is configured."
)
@click.option(
    "--all-timezones",
    is_flag=True,
    help="Also send cohorts whose local send time has not come yet today.",
)
@click.option("--force", is_flag=True, help="Allow a --day in the future (audited).")
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
    the others are listed with their time (--all-timezones sends them too). Each cohort
    goes through the same guard as beat, the console and the Celery task; --dry-run
    says what this command would do without it, and does nothing.
    """
    settings, now = app.settings, app.now()
    with app.session() as session:
        if to:
            _test_copy(session, settings, slot, day, timezone, to, now, dry_run)
            return
        cohorts = pipeline.cohorts_for(session, settings, slot, now, day, timezone)
        early = bool(timezone or all_timezones or day)
        decisions = [
            guard.may_plan(session, settings, c, now, origin=guard.CLI, force=force, early=early)
            for c in cohorts
        ]
        session.rollback()
        refused = [d for d in decisions if d.action == guard.REFUSE]
        broker = bool(settings.redis_url and not inline)
        if dry_run:
            for decision in decisions:
                _say_dry(session, settings, decision, now, broker)
            return
        if refused:
            raise click.UsageError(
                f"{refused[0].cohort}: {refused[0].reason}. Nothing was sent (--dry-run "
                "and `digest preview` show it without sending)."
            )
        todo = []
        for decision in decisions:
            if decision.action == guard.WAIT:
                click.echo(_not_due(settings, decision, now))
            elif decision.action == guard.EXISTS and (broker or decision.status != "sending"):
                click.echo(f"{decision.cohort}: {decision.reason}")
            else:
                todo.append(decision)
        if broker:
            _enqueue_plans(app, [d for d in todo if not d.forced])
            _plan_forced_here(app, session, [d for d in todo if d.forced])
            return
        transport = make_transport(settings)
        who = operator_name()
        codes = [
            send_cohort(session, settings, transport, d.cohort, now, who=who, force=force)
            for d in todo
        ]
    code = EXIT_UNFINISHED if EXIT_UNFINISHED in codes else max(codes, default=EXIT_DONE)
    if code:
        sys.exit(code)


def _test_copy(
    session: Session,
    settings: Settings,
    slot: str,
    day: date | None,
    timezone: str | None,
    to: str,
    now: datetime,
    dry_run: bool,
) -> None:
    """One test copy to `to` (with --dry-run: what it would be, sending nothing)."""
    from digest.mail.addresses import normalise_address

    address = normalise_address(to)
    zone = timezone or settings.default_timezone
    cohort = Cohort(slot, day or local_day(now, zone), zone)
    if dry_run:
        found = pipeline.preview(session, settings, cohort, now)
        if found is None:
            raise click.ClickException(f"the {cohort} edition has no articles to show")
        click.echo(
            f"would send a test copy of the {cohort} edition to {address}: "
            f"[TEST] {found[0].subject} (dry run: nothing sent)"
        )
        return
    mid = pipeline.test_send(session, settings, make_transport(settings), cohort, address, now)
    click.echo(f"test copy of the {cohort} edition sent to {address} ({mid})")


def _not_due(settings: Settings, decision: guard.Decision, now: datetime) -> str:
    at = pipeline.cohort_send_at(settings, decision.cohort)
    return (
        f"{decision.cohort}: {decision.reason} (in {age(now, at)}); not sent "
        "(--all-timezones sends it now)"
    )


def _say_dry(
    session: Session, settings: Settings, d: guard.Decision, now: datetime, broker: bool
) -> None:
    """What the same command without --dry-run would do with this cohort."""
    cohort = d.cohort
    if d.action == guard.WAIT:
        click.echo(_not_due(settings, d, now))
        return
    if d.action == guard.REFUSE:
        click.echo(f"{cohort}: would refuse: {d.reason}")
        return
    if d.action == guard.EXISTS:
        more = ""
        if d.status == "sending" and not broker:
            counts = store.edition_counts(session, d.edition_id or 0)
            left = counts.get("queued", 0) + counts.get("deferred", 0)
            more = f"; would send its {counted(left, 'delivery')} still open"
        click.echo(f"{cohort}: {d.reason}{more}")
        return
    if d.action == guard.RECORD:
        click.echo(f"{cohort}: would be recorded as {d.status}, no mail: {d.reason}")
        return
    cut = min(pipeline.cohort_send_at(settings, cohort), now)
    start, snapshot = pipeline.select_snapshot(session, settings, cohort, cut)
    readers = q.readers_per_cohort(session, settings.default_timezone)
    count = readers.get((cohort.timezone, cohort.slot), 0)
    how = "digest.plan_edition would be enqueued" if broker and not d.forced else "would send"
    if not snapshot:
        what = (
            "nothing to send; no edition would be recorded"
            if d.early
            else "no articles: the edition would be recorded as empty, no mail"
        )
        click.echo(f"{cohort}: {d.reason}; {what}")
        return
    if not count:
        click.echo(f"{cohort}: {d.reason}; no reader would get it")
        return
    choices = store.cohort_section_choices(session, cohort, settings.default_timezone)
    click.echo(
        f"{cohort}: {how} to {counted(count, 'reader')} ({d.reason}): window "
        f"{start.isoformat(timespec='minutes')} .. {cut.isoformat(timespec='minutes')}, "
        f"{counted(len(snapshot), 'article')}, {counted(len(choices), 'section choice')}"
    )
    for view in pipeline.article_views(session, snapshot[: settings.max_articles]):
        click.echo(f"  [{view.section}] {view.title}")


def _enqueue_plans(app: App, decisions: list[guard.Decision]) -> None:
    """One digest.plan_edition task per cohort, through the broker (the worker asks the
    guard again: what changed meanwhile counts)."""
    if not decisions:
        return
    from workers.client import enqueue

    cohorts = [d.cohort for d in decisions]
    calls = [
        (
            [c.slot],
            {
                "day": c.local_day.isoformat(),
                "timezone": c.timezone,
                "now": app.pinned_now(),
                "requested_by": f"cli:{operator_name()}",
            },
        )
        for c in cohorts
    ]
    for cohort, task_id in zip(
        cohorts, enqueue(app.settings, "digest.plan_edition", calls), strict=True
    ):
        click.echo(f"{cohort}: digest.plan_edition enqueued (task {task_id})")


def _plan_forced_here(app: App, session: Session, decisions: list[guard.Decision]) -> None:
    """A forced day is planned in this process (no Celery client may force one) and its
    sends handed to the workers."""
    for d in decisions:
        plan_decision, plan = pipeline.plan_cohort(
            session,
            app.settings,
            d.cohort,
            app.now(),
            origin=guard.CLI,
            who=operator_name(),
            force=True,
        )
        if plan is None:
            click.echo(f"{d.cohort}: not sent: {plan_decision.reason}")
            continue
        click.echo(f"{d.cohort}: edition {plan.edition_id} {plan.status} {plan.note}")
        if plan.status == "sending":
            batches = dispatch.queued_batches(session, plan.edition_id, app.settings.batch_size)
            _send_batches(app, list(batches), inline=False)


EXIT_DONE, EXIT_UNFINISHED, EXIT_FAILED = 0, 3, 4


def send_cohort(
    session: Session,
    settings: Settings,
    transport: Any,
    cohort: Cohort,
    now: datetime,
    *,
    who: str = "",
    force: bool = False,
) -> int:
    """Plan (as the guard allows) and send one cohort's edition here; returns its exit
    code (module docstring)."""
    decision, plan = pipeline.plan_cohort(
        session, settings, cohort, now, origin=guard.CLI, who=who, force=force
    )
    if plan is None:
        click.echo(f"{cohort}: not sent: {decision.reason}")
        return EXIT_DONE if decision.action == guard.WAIT else EXIT_UNFINISHED
    if plan.status == pipeline.NOTHING:
        click.echo(f"{cohort}: {plan.note}")
        return EXIT_DONE
    verb = "planned" if plan.created else "exists"
    click.echo(f"{cohort}: edition {plan.edition_id} {verb} ({plan.status}) {plan.note}")
    if plan.status not in ("sending", "done"):
        return _halted_outcome(session, plan.edition_id) if plan.status in store.HALTED else 0

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
    if store.get_edition(session, plan.edition_id).status in store.HALTED:
        return _halted_outcome(session, plan.edition_id)
    return edition_outcome(plan.edition_id, counts, store.first_retry_at(session, plan.edition_id))


def _halted_outcome(session: Session, edition_id: int) -> int:
    """An operator paused or cancelled the edition: say how far it got."""
    now_standing = control.standing(session, edition_id)
    hint = (
        f"`digest resume {edition_id}` sends the rest"
        if now_standing.status == "paused"
        else f"`digest replan {edition_id}` sends it, corrected, to who did not get it"
    )
    click.echo(f"{now_standing.describe()}; {hint}.", err=True)
    return EXIT_UNFINISHED


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
        click.echo(f"  {counted(len(ids), 'digest.send_batch task')} enqueued")
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
    click.echo(f"edition {edition_id}: {counted(count, 'delivery')} re-queued")
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
    click.echo(f"{counted(sum(len(b) for b in batches), 'delivery')} re-queued")
    if batches:
        _send_batches(app, batches, inline)


# --- stop a wrong edition while it goes out --------------------------------------------------


@cli.command()
@click.argument("edition_id", type=int)
@pass_app
def pause(app: App, edition_id: int) -> None:
    """Pause an edition being sent: every worker stops within a few seconds; what is
    not sent waits, untried, for `digest resume`."""
    with app.session() as session:
        done = control.pause(session, edition_id, app.now(), origin=guard.CLI, who=operator_name())
    click.echo(f"paused: {done.describe()}")


@cli.command()
@click.argument("edition_id", type=int)
@click.option("--inline", is_flag=True, help="Send from this process even with a broker.")
@pass_app
def resume(app: App, edition_id: int, inline: bool) -> None:
    """Resume a paused edition and send what it held."""
    with app.session() as session:
        done, queued = dispatch.resume_edition(
            session,
            edition_id,
            app.now(),
            app.settings.batch_size,
            origin=guard.CLI,
            who=operator_name(),
        )
        batches = list(queued)
    click.echo(f"resumed: {done.describe()}")
    if batches:
        _send_batches(app, batches, inline)


@cli.command()
@click.argument("edition_id", type=int)
@click.option(
    "--wait",
    "wait_seconds",
    default=10.0,
    show_default=True,
    help="Seconds to wait for messages in flight to finish before reporting.",
)
@pass_app
def cancel(app: App, edition_id: int, wait_seconds: float) -> None:
    """Cancel an edition being sent (or paused): what is not sent is never sent; says
    how many readers got it."""
    with app.session() as session:
        done = control.cancel(session, edition_id, app.now(), origin=guard.CLI, who=operator_name())
        deadline = time.monotonic() + wait_seconds
        while done.in_flight and time.monotonic() < deadline:
            time.sleep(0.5)  # lanes record or give back what they hold within seconds
            done = control.settle(session, edition_id)
    click.echo(f"cancelled: {done.describe()}")
    if done.in_flight:
        click.echo(
            f"{done.in_flight} messages were still in flight: each is recorded as sent or "
            "cancelled as its lane finishes (`digest status EDITION` shows which).",
            err=True,
        )
    click.echo(
        f"To send it corrected to the readers who did not get it: hide the article "
        f"(console, Articles) and `digest replan {edition_id}`."
    )


@cli.command()
@click.argument("edition_id", type=int)
@click.option("--inline", is_flag=True, help="Send from this process even with a broker.")
@pass_app
def replan(app: App, edition_id: int, inline: bool) -> None:
    """Plan a cancelled edition again (hidden articles leave it) and send it to the
    readers who did not get it; those who did get nothing twice."""
    with app.session() as session:
        done, queued = control.replan(
            session, app.settings, edition_id, app.now(), origin=guard.CLI, who=operator_name()
        )
        batches = list(dispatch.queued_batches(session, edition_id, app.settings.batch_size))
    click.echo(f"planned again: {done.describe()}")
    if batches:
        _send_batches(app, batches, inline)
