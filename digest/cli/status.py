"""`digest status`: the console's overview as text, and what no worker is carrying."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from digest import store
from digest.cli import App, cli, pass_app
from digest.operations import engagement, overview
from digest.readers.inbound import count_kept, kept_folder
from digest.store import overview as q
from digest.words import counted

RECENT = 12  # past editions shown without --all


@cli.command()
@click.argument("edition_id", required=False, type=int)
@click.option("--all", "show_all", is_flag=True, help="Every edition, not only the current ones.")
@click.option(
    "--check",
    is_flag=True,
    help="Monitoring check: one summary line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
)
@click.option("--alert", is_flag=True, help="With --check: mail DIGEST_ALERT_TO what changed.")
@click.option(
    "--every",
    type=click.FloatRange(min=1),
    help="With --check: run for ever, every this many seconds (the compose monitor).",
)
@pass_app
def status(
    app: App,
    edition_id: int | None,
    show_all: bool,
    check: bool,
    alert: bool,
    every: float | None,
) -> None:
    """Next sends, editions being sent, recent editions, feeds and readers; and what no
    worker is carrying (rows without a task, claims of stopped workers).
    With EDITION_ID: that edition's counts and note. With --check: the monitoring check."""
    if check:
        from digest.cli.monitor import run_check

        run_check(app, alert, every)
    if alert or every:
        raise click.UsageError("--alert and --every go with --check")
    settings, now = app.settings, app.now()
    lengths: dict[str, int] | None = None
    broker_error = None
    if settings.redis_url:
        from workers.client import BrokerUnavailable, queue_lengths

        try:
            lengths = queue_lengths(settings)
        except BrokerUnavailable as exc:
            broker_error = str(exc)
    with app.session() as session:
        if edition_id:
            _edition_lines(session, [store.get_edition(session, edition_id)], notes=True)
            for line in engagement.status_lines(engagement.edition_clicks(session, edition_id)):
                click.echo(line)
        else:
            data = overview.overview(session, settings, now)
            _overview_lines(data)
            click.echo("Editions" + ("" if show_all else " (sending, then the latest; --all)"))
            shown = (
                q.editions_page(session, limit=10_000) if show_all else _current_editions(session)
            )
            _edition_lines(session, shown, notes=False)
        orphan = now - timedelta(seconds=settings.claim_seconds)
        waiting = store.waiting_rows(session, now, orphan)
    kept = count_kept(settings.data_dir)  # replies `digest inbound` kept for a person
    click.echo(f"replies kept: {kept} in {kept_folder(settings.data_dir)}")
    for line in waiting_lines(waiting, now, lengths, bool(settings.redis_url)):
        click.echo(line)
    if broker_error:
        click.echo(broker_error)
    for queue, count in (lengths or {}).items():
        click.echo(f"queue {queue}: {counted(count, 'task')} waiting")
    _health_lines(app, lengths, broker_error or "")


def _health_lines(app: App, lengths: dict[str, int] | None, broker_error: str) -> None:
    """The monitoring check's verdict, so that `digest status` says loudly what stopped."""
    from digest.operations import monitor

    with app.session() as session:
        health = monitor.check(session, app.settings, app.now(), lengths, broker_error)
    click.echo(f"Health: {health.summary().split(' | ', 1)[0]}")
    for p in sorted(health.problems, key=lambda p: -p.level):
        click.echo(f"  {p.text}: {p.todo}")


def _current_editions(session: Any) -> list[Any]:
    """Editions being sent or planned, whatever their age, then the latest by send time:
    a backlog of old editions never pushes the current ones off the list."""
    current = (
        q.editions_with_status(session, "sending")
        + q.editions_with_status(session, "paused")
        + q.editions_with_status(session, "planned")
    )
    seen = {e.id for e in current}
    latest = [e for e in q.editions_page(session, limit=RECENT) if e.id not in seen]
    return current + latest


def _edition_lines(session: Any, editions: list[Any], *, notes: bool) -> None:
    if not editions:
        click.echo("  no editions yet")
    counts = q.counts_by_edition(session, [e.id for e in editions])
    for e in editions:
        shown = "  ".join(f"{k}: {v}" for k, v in sorted(counts[e.id].items())) or "no deliveries"
        click.echo(f"  edition {e.id}  {e.slot} {e.local_day} {e.timezone}  [{e.status}]  {shown}")
        if e.note and notes:
            click.echo(f"    {e.note}")


def _overview_lines(data: overview.Overview) -> None:
    click.echo("Next sends")
    for n in data.next_sends:
        due = "  due now" if n.due_now else ""
        click.echo(
            f"  {n.slot:<8} {n.timezone:<24} {n.local:%a %d %b %H:%M} local "
            f"({n.utc:%H:%M} UTC)  {counted(n.readers, 'reader')}{due}"
        )
    click.echo("Sending now" if data.sending else "Sending now: nothing")
    for p in data.sending:
        paused = (
            f"  PAUSED: `digest resume {p.edition_id}` sends the {p.waiting + p.deferred} held"
            if p.status == "paused"
            else ""
        )
        click.echo(
            f"  edition {p.edition_id} {p.slot} {p.local_day} {p.timezone}: {p.done} of "
            f"{p.total} done (sent {p.sent}, deferred {p.deferred}, failed {p.failed}), "
            f"{p.per_second} msg/s{paused}"
        )
    last = "  ".join(f"{k}: {v}" for k, v in sorted(data.last_24h.items())) or "nothing"
    click.echo(f"Last 24 hours: {last}")
    click.echo("Feeds" if data.feeds else "Feeds: none")
    for f in data.feeds:
        polled = f"{f.last_polled_at:%Y-%m-%d %H:%M}" if f.last_polled_at else "never"
        state = "paused" if f.paused else (f"error: {f.last_error[:100]}" if f.last_error else "ok")
        click.echo(f"  {f.url}  last poll {polled}  {state}")
    readers = "  ".join(f"{k}: {v}" for k, v in sorted(data.readers.items())) or "none yet"
    click.echo(f"Readers: {readers}")


def age(since: datetime, now: datetime) -> str:
    """'4m12s', '3h05m', '40s': how long ago `since` was."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def waiting_lines(
    waiting: dict[str, tuple[int, datetime | None]],
    now: datetime,
    lengths: dict[str, int] | None,
    broker: bool,
) -> list[str]:
    """Warnings about deliveries no worker is carrying (empty when all is well)."""
    lines = []
    queued, oldest = waiting["queued"]
    if queued and oldest and (not broker or lengths is not None and not sum(lengths.values())):
        where = (
            "no task waiting in the broker" if broker else "no broker: `digest sweep` sends them"
        )
        lines.append(
            f"WARNING: {counted(queued, 'delivery')} queued with no task ({where}), "
            f"the oldest queued {age(oldest, now)} ago; the sweep re-enqueues them"
        )
    expired, oldest = waiting["expired"]
    if expired and oldest:
        lines.append(
            f"WARNING: {counted(expired, 'delivery')} claimed by stopped workers, the oldest claim "
            f"ended {age(oldest, now)} ago; the sweep re-queues them"
        )
    due, oldest = waiting["due"]
    if due and oldest:
        lines.append(
            f"{due} deferred deliveries due for a retry, the oldest since {age(oldest, now)} ago"
        )
    return lines
