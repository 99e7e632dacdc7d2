"""`digest status --check [--alert] [--every N]`: the monitoring check, with the exit
codes of a Nagios/Icinga plugin (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and its summary
line first, for cron, systemd timers, the compose `monitor` service and real monitors."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
from sqlalchemy.exc import SQLAlchemyError

from digest.cli import App
from digest.config import Settings
from digest.errors import DigestError
from digest.operations import alerts, monitor
from digest.operations.health import UNKNOWN, Health, unknown


def broker_facts(settings: Settings) -> tuple[dict[str, int] | None, str]:
    """Tasks waiting per queue, or the broker's error (nothing without a broker)."""
    if not settings.redis_url:
        return None, ""
    from workers.client import BrokerUnavailable, queue_lengths

    try:
        return queue_lengths(settings), ""
    except BrokerUnavailable as exc:
        return None, str(exc)


def check_once(app: App, alert: bool) -> tuple[Health, list[str]]:
    """Gather, judge and (with `alert`) mail; UNKNOWN when the database cannot be read."""
    said: list[str] = []
    try:
        settings = app.settings
        now = app.now()
        queues, broker_error = broker_facts(settings)
        with app.session() as session:
            health = monitor.check(session, settings, now, queues, broker_error)
            if alert and settings.alert_to:
                from digest.mail.relays import make_transport

                said = alerts.alert(session, settings, make_transport(settings), health, now)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return unknown(f"DIGEST UNKNOWN - cannot read the database: {first}"), said
    except (DigestError, OSError) as exc:
        return unknown(f"DIGEST UNKNOWN - {str(exc).splitlines()[0]}"), said
    return health, said


def run_check(app: App, alert: bool, every: float | None) -> None:
    """Print the check and exit with its level; with `every`, repeat for ever, printing
    the summary line whenever it changes."""
    try:
        settings = app.settings
    except DigestError as exc:  # a bad setting: the check cannot look
        click.echo(f"DIGEST UNKNOWN - {exc}")
        raise click.exceptions.Exit(UNKNOWN) from None
    if alert and not settings.alert_to:
        click.echo("alert mail is off: DIGEST_ALERT_TO is not set", err=True)
    if every is None:
        health, said = check_once(app, alert)
        lines = health.lines() if health.level != UNKNOWN else list(health.details)
        for line in lines + said:
            click.echo(line)
        raise click.exceptions.Exit(health.level)
    last = ""
    while True:
        health, said = check_once(app, alert)
        line = health.summary() if health.level != UNKNOWN else health.details[0]
        shown = line.split(" | ", 1)[0]
        if shown != last:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{stamp} {line}")
            last = shown
        for note in said:
            click.echo(note)
        time.sleep(every)
