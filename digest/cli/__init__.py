"""The `digest` operator CLI. Errors are one line and a non-zero exit, not a traceback.

Each command group lives in a module of this package; importing them registers them.
May import: anything in digest; nothing in digest imports it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digest.config import Settings, check_timezone, load_settings
from digest.db import make_engine, make_sessionmaker, upgrade, wait_for_database
from digest.editions import dispatch
from digest.errors import ConfigError, DigestError, InvalidInput, SendStopped


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

    def close(self) -> None:
        """Close the database connections this command opened (the process may go on:
        tests, `digest status --check --every`)."""
        if "sessions" in self.__dict__:
            self.sessions.kw["bind"].dispose()

    def now(self) -> datetime:
        return self._now or datetime.now(UTC)

    def pinned_now(self) -> str | None:
        """The --now instant as ISO text for tasks; None lets workers read their clock."""
        return self._now.isoformat() if self._now else None


class Unfinished(click.ClickException):
    """One line, and exit 3: as `digest send` ends an edition it left unfinished."""

    exit_code = 3


class Group(click.Group):
    """Turns digest's own errors and database errors into one clear line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SendStopped as exc:
            raise Unfinished(f"{exc}; not finished, the rest waits in the queue") from None
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
        return dispatch.parse_now(value)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from None


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
    ctx.call_on_close(ctx.obj.close)


@cli.command()
@pass_app
def init(app: App) -> None:
    """Create or upgrade the database schema (waiting DIGEST_DATABASE_WAIT_SECONDS for it)."""
    settings = app.settings
    wait_for_database(
        settings.database_url,
        settings.database_wait_seconds,
        notify=lambda line: click.echo(line, err=True),
    )
    upgrade(settings.database_url)
    click.echo(f"database ready: {settings.database_url_safe}")


def parse_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    try:
        return dispatch.parse_day(value or None)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from None


def parse_tz(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    try:
        return check_timezone(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def main() -> None:
    cli(prog_name="digest")


# Registers the commands of each group on `cli` (they import it from here).
from digest.cli import (  # noqa: E402,F401
    api_tokens,
    check,
    clicks,
    content,
    inbound,
    operators,
    readers,
    send,
    service,
    status,
)
