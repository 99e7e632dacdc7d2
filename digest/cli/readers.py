"""Subscribers: `digest subscribers ...` (mail that comes back: digest/cli/inbound.py).

The commands on one reader (show, unsubscribe, suppress, erase, export-one, update) call
digest.readers.reader_admin, as the console does, and write every change to the audit log under
the name of the OS user who ran them.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import click
from sqlalchemy.orm import Session

from digest import store
from digest.cli import App, cli, pass_app
from digest.config import open_private
from digest.editions.selection import normalise_sections
from digest.errors import InvalidInput, SendError
from digest.mail.relays import make_transport
from digest.models import SUBSCRIBER_STATUSES, Subscriber
from digest.operations import operators
from digest.readers import accounts, bulk, reader_admin
from digest.readers.subscribers import export_csv, export_private, import_file, subscriber_fields
from digest.words import counted

STATUSES = (*SUBSCRIBER_STATUSES, reader_admin.ERASED)


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
@click.option(
    "--send-confirmation",
    is_flag=True,
    help="Without --confirmed: email the opt-in link now (else none is sent).",
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
    send_confirmation: bool,
) -> None:
    """Add one subscriber: active with --confirmed, else pending until they confirm
    (with --send-confirmation they are emailed the link; without, nobody is)."""
    if confirmed and send_confirmation:
        raise click.UsageError("--confirmed readers need no confirmation email")
    fields = subscriber_fields(email, name, timezone, editions, sections)
    with app.session() as session:
        check_sections(session, fields["sections"], app.now())
        s = store.add_subscriber(
            session,
            now=app.now(),
            status="active" if confirmed else "pending",
            consent="cli",
            **fields,
        )
        _audit(session, app, "added reader", f"reader {s.id} ({s.status})")
        session.commit()
        click.echo(f"subscriber {s.id} added: {s.email} ({s.status})")
        if not confirmed:
            _confirmations(app, session, [s.email], send_confirmation)


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--confirmed", is_flag=True, help="Only for lists with proven consent.")
@click.option(
    "--send-confirmation",
    is_flag=True,
    help="Without --confirmed: email each new reader the opt-in link (else none is sent).",
)
@pass_app
def subscribers_import(app: App, file: Path, confirmed: bool, send_confirmation: bool) -> None:
    """Import subscribers from a CSV with columns email,name,timezone,editions,sections
    (comma, semicolon or tab separated). New readers are pending until they confirm:
    --send-confirmation emails them the link; --confirmed makes them active at once."""
    if confirmed and send_confirmation:
        raise click.UsageError("--confirmed readers need no confirmation email")
    with app.session() as session:
        report = import_file(session, file, app.now(), confirmed=confirmed)
        _audit(
            session,
            app,
            "imported readers",
            f"{file.name}: {report.added} added ({'active' if confirmed else 'pending'}), "
            f"{report.existing} already there, {report.suppressed} suppressed, "
            f"{len(report.errors)} bad rows",
        )
        session.commit()
    for line, reason in report.errors:
        click.echo(f"line {line}: {reason}", err=True)
    click.echo(
        f"{report.added} added, {report.existing} already subscribed, "
        f"{report.suppressed} suppressed (unsubscribed or bounced before), "
        f"{len(report.errors)} bad rows"
    )
    if not confirmed and report.added_emails:
        with app.session() as session:
            _confirmations(app, session, report.added_emails, send_confirmation)


def _confirmations(app: App, session: Session, emails: list[str], send: bool) -> None:
    """Email pending readers their opt-in link (send), or say that nobody was."""
    if not send:
        click.echo(
            f"no confirmation email sent: {len(emails)} pending readers get nothing until "
            "they confirm (--send-confirmation sends the link; the console can resend it)"
        )
        return
    notices = []
    for email in emails:
        found = store.find_subscriber(session, email)
        notice = found and bulk.resend_confirmation(
            session, app.settings, found.id, app.now(), source="cli"
        )
        if notice:
            notices.append(notice)
    session.commit()
    transport = make_transport(app.settings)
    failed = 0
    for notice in notices:
        try:
            accounts.send_notice(app.settings, transport, notice, app.now())
        except SendError as exc:
            failed += 1
            accounts.forget_notice(session, notice)
            click.echo(f"confirmation to {notice.email} not sent: {exc}", err=True)
    session.commit()
    click.echo(f"{len(notices) - failed} confirmation emails sent")
    if failed:
        raise click.ClickException(f"{failed} confirmation emails could not be sent")


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
        where = "standard output" if str(file) == "-" else str(file.resolve())
        _audit(session, app, "exported readers", f"all {counted(n, 'reader')} to {where}")
        session.commit()
    click.echo(f"{counted(n, 'subscriber')} exported", err=True)


@subscribers.command("list")
@click.option("--status", default=None, type=click.Choice(STATUSES))
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


def check_sections(session: Session, sections: str, now: datetime) -> None:
    """InvalidInput naming any chosen section that no feed (or recent article) has."""
    chosen = [s for s in sections.split(",") if s]
    if not chosen:
        return
    offered = accounts.offered_sections(session, now)
    unknown = sorted(set(chosen) - set(offered))
    if unknown:
        known = ", ".join(offered) if offered else "none yet (add a feed first)"
        raise InvalidInput(f"unknown section {', '.join(unknown)!r}; the feeds' sections: {known}")


# --- one reader -----------------------------------------------------------------------------


def operator_name() -> str:
    """Who ran the command, for the audit log: the OS user."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        return f"uid {os.getuid()}"


def _audit(session: Session, app: App, action: str, detail: str) -> None:
    # The same actions and details as the console (digest/web/console/) writes.
    operators.record(session, operator_name(), action, detail, app.now())


def _act(
    app: App,
    reader: str,
    act: Callable[[Session, int, datetime], Subscriber],
    action: str,
    confirm: Callable[[Subscriber], None] | None = None,
) -> Subscriber:
    with app.session() as session:
        subscriber = reader_admin.find_reader(session, reader)
        if subscriber.status == reader_admin.ERASED:
            raise InvalidInput(f"subscriber {subscriber.id} is erased; nothing is left to change")
        if confirm:
            confirm(subscriber)
        was = subscriber.status
        act(session, subscriber.id, app.now())
        _audit(session, app, action, f"reader {subscriber.id} (was {was})")
        session.commit()
        return subscriber


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="minutes") if value else "-"


@subscribers.command("show")
@click.argument("reader")
@pass_app
def subscribers_show(app: App, reader: str) -> None:
    """Show one reader (ADDRESS or ID): settings, consent and what they were sent."""
    with app.session() as session:
        found = reader_admin.find_reader(session, reader)
        v = reader_admin.view(session, found.id, app.settings.default_timezone)
    rows = [
        ("id", str(v.id)),
        ("email", v.email),
        ("name", v.name or "-"),
        ("status", v.status),
        ("editions", v.editions),
        ("sections", v.sections),
        ("timezone", v.timezone),
        ("consent", v.consent or "-"),
        ("created", _when(v.created_at)),
        ("confirmed", _when(v.confirmed_at)),
        ("unsubscribed", _when(v.unsubscribed_at)),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':<14}{value}")
    click.echo(f"deliveries:   {len(v.deliveries) or 'none'}")
    for d in v.deliveries:
        error = f"  ({d['error']})" if d.get("error") else ""
        click.echo(
            f"  edition {d['edition_id']:>6}  {d['slot']:<8} {d['local_day']}  "
            f"{d['status']:<10} {_when(d['sent_at'])}{error}"
        )


@subscribers.command("unsubscribe")
@click.argument("reader")
@pass_app
def subscribers_unsubscribe(app: App, reader: str) -> None:
    """Stop all mail to one reader (ADDRESS or ID), as their own unsubscribe link would."""
    s = _act(app, reader, reader_admin.unsubscribe, "unsubscribed")
    click.echo(f"subscriber {s.id} unsubscribed: {s.email}")


@subscribers.command("suppress")
@click.argument("reader")
@pass_app
def subscribers_suppress(app: App, reader: str) -> None:
    """Stop all mail to one reader for good: no sign-up may mail the address again."""
    s = _act(app, reader, reader_admin.suppress, "suppressed")
    click.echo(f"subscriber {s.id} suppressed for good: {s.email}")


@subscribers.command("erase")
@click.argument("reader")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def subscribers_erase(app: App, reader: str, yes: bool) -> None:
    """Erase one reader's personal data for good (the address is kept only as a hash,
    so it is never mailed again; their deliveries stay as anonymous counts)."""

    def confirm(s: Subscriber) -> None:
        if not yes:
            click.confirm(f"Erase subscriber {s.id} ({s.email})? This cannot be undone", abort=True)

    s = _act(app, reader, reader_admin.erase, "erased", confirm)
    click.echo(f"subscriber {s.id} erased")


@subscribers.command("export-one")
@click.argument("reader")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file (readable by its owner only); - (the default) for standard output.",
)
@pass_app
def subscribers_export_one(app: App, reader: str, out: Path) -> None:
    """Export everything kept about one reader as JSON (a data-subject access request)."""
    with app.session() as session:
        found = reader_admin.find_reader(session, reader)
        data = reader_admin.export_person(session, found.id, app.settings.default_timezone)
        _audit(session, app, "exported", f"reader {found.id}")
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        if str(out) != "-":
            _write_private(out, text)
        session.commit()
    if str(out) == "-":
        click.echo(text, nl=False)
    else:
        click.echo(f"subscriber {found.id} exported to {out}", err=True)


def _write_private(path: Path, text: str) -> None:
    try:
        handle = open_private(path, "w", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    with handle:
        handle.write(text)


@subscribers.command("update")
@click.argument("reader")
@click.option("--name", default=None)
@click.option("--timezone", default=None, help="IANA name, e.g. Europe/London.")
@click.option("--editions", default=None, type=click.Choice(["morning", "evening", "both"]))
@click.option("--sections", default=None, help="Comma-separated; empty means all.")
@pass_app
def subscribers_update(
    app: App,
    reader: str,
    name: str | None,
    timezone: str | None,
    editions: str | None,
    sections: str | None,
) -> None:
    """Change one reader's name, timezone, editions or sections (the rest stay)."""
    with app.session() as session:
        subscriber = reader_admin.find_reader(session, reader)
        if subscriber.status == reader_admin.ERASED:
            raise InvalidInput(f"subscriber {subscriber.id} is erased; nothing is left to change")
        form = accounts.form_of(subscriber)
        if sections is not None:
            check_sections(session, normalise_sections(sections), app.now())
            form.sections = [s for s in sections.split(",") if s.strip()]
        form.name = form.name if name is None else name
        form.timezone = form.timezone if timezone is None else timezone
        form.editions = editions or form.editions
        changed = [
            key
            for key, value in (
                ("name", name),
                ("timezone", timezone),
                ("editions", editions),
                ("sections", sections),
            )
            if value is not None
        ]
        if not changed:
            raise click.UsageError("say what to change: --name, --timezone, --editions, --sections")
        before = accounts.form_of(subscriber)
        s = reader_admin.update(session, subscriber.id, form)
        what = reader_admin.describe_change(before, accounts.form_of(s))
        _audit(session, app, "changed reader", f"reader {s.id}: {what}")
        session.commit()
    click.echo(f"subscriber {s.id} updated: {', '.join(changed)}")
