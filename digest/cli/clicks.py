"""`digest sunset`: what the hourly reader-mode upkeep does, now."""

from __future__ import annotations

import click

from digest.cli import App, cli, pass_app
from digest.mail.relays import make_transport
from digest.readers import sunset


@cli.command("sunset")
@pass_app
def sunset_command(app: App) -> None:
    """Delete reader clicks past DIGEST_CLICK_RETENTION_DAYS; ask readers with no click in
    their last DIGEST_SUNSET_EDITIONS editions whether they still want them, and
    unsubscribe (as inactive) those who did not answer within DIGEST_SUNSET_DAYS."""
    settings = app.settings
    if settings.click_tracking != "reader":
        raise click.ClickException(
            "the sunset needs DIGEST_CLICK_TRACKING=reader (it is "
            f"{settings.click_tracking!r}): nothing is known of who clicked"
        )
    with app.session() as session:
        report = sunset.click_upkeep(session, settings, make_transport(settings), app.now())
    click.echo(f"reader clicks past retention deleted: {report['purged']}")
    if not sunset.enabled(settings):
        click.echo("sunset: off (DIGEST_SUNSET_EDITIONS=0)")
    else:
        click.echo(f"sunset: {report['asked']} asked, {report['ended']} unsubscribed as inactive")
    errors = report["errors"]
    assert isinstance(errors, list)
    for error in errors:
        click.echo(f"not sent: {error}", err=True)
    if errors:
        raise SystemExit(1)
