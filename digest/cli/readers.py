"""Subscribers: `digest subscribers ...` (mail that comes back: digest/cli/inbound.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from digest import store
from digest.cli import App, cli, pass_app
from digest.subscribers import export_csv, export_private, import_file, subscriber_fields


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
            n = export_private(session, file)
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
