"""`digest inbound`: one message from the MTA's pipe (bounces, complaints, unsubscribe
requests and replies).

Written for the way an MTA runs it: as an unprivileged user (Postfix's `nobody`), from
a folder it may not write, with next to no environment. Settings come from the file
named by --env-file or DIGEST_ENV_FILE; nothing is written outside the data folder; no
secret key is ever made. Exit 0 when the message was handled (or is not ours), 75
(EX_TEMPFAIL: the MTA keeps it and tries again) when settings, database or data folder
are not usable. Every outcome is one line, on stdout and in <data>/inbound/inbound.log.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import BinaryIO, NoReturn

import click
from dotenv import dotenv_values
from sqlalchemy.exc import SQLAlchemyError

from digest.cli import App, cli, pass_app
from digest.config import (
    Settings,
    append_private,
    load_settings,
    others_can_read,
    private_folder,
)
from digest.errors import DigestError

EX_TEMPFAIL = 75
MAX_MESSAGE = 10_000_000


def read_env(env_file: str | None) -> dict[str, str]:
    """DIGEST_* variables from the environment and, when given, a dotenv file (whose
    values win: it is named on purpose)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DIGEST_")}
    if env_file:
        path = Path(env_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise DigestError(f"cannot read settings file {path}: {reason}") from None
        env.update({k: v for k, v in dotenv_values(stream=StringIO(text)).items() if v is not None})
    return env


def settings_from(env_file: str | None) -> Settings:
    """The settings `digest inbound` runs with. The data folder must be an absolute path
    (the MTA's working folder is its spool) and the database must exist."""
    env = read_env(env_file)
    data_dir = env.get("DIGEST_DATA_DIR", "")
    if not data_dir or not Path(data_dir).is_absolute():
        raise DigestError("DIGEST_DATA_DIR must be set to an absolute path (in --env-file)")
    settings = load_settings(env, create_secret=False)
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # SQLite would create an empty file here: the database is not where it is said to be.
        raise DigestError(f"no database at {url.removeprefix('sqlite:///')} (run `digest init`)")
    return settings


def tempfail(message: str) -> NoReturn:
    click.echo(f"digest inbound: try again later: {message}", err=True)
    sys.exit(EX_TEMPFAIL)


def log_line(settings: Settings, now: datetime, line: str) -> None:
    from digest.readers.returned import clean

    line = clean(line, 2000)  # report text may carry CR, LF or ESC: never into a log
    click.echo(line)
    try:
        folder = settings.data_dir / "inbound"
        private_folder(folder)
        with append_private(folder / "inbound.log") as log:
            log.write(f"{now.isoformat(timespec='seconds')} {line}\n")
        if others_can_read(folder) or others_can_read(settings.data_dir):
            click.echo(
                f"digest inbound: warning: other users can read {settings.data_dir} "
                "or its inbound folder: chmod 700 them",
                err=True,
            )
    except OSError as exc:
        # What was done is done; a second delivery would only log it again.
        click.echo(f"digest inbound: cannot write the log: {exc.strerror}", err=True)


@cli.command()
@click.argument("file", type=click.File("rb"), default="-")
@click.option(
    "--env-file",
    envvar="DIGEST_ENV_FILE",
    default=None,
    help="Settings file (KEY=value lines); also DIGEST_ENV_FILE.",
)
@click.option(
    "--recipient",
    default=None,
    help="The address the MTA delivered to (default: $ORIGINAL_RECIPIENT, set by Postfix).",
)
@click.option(
    "--imap",
    "imap_url",
    default=None,
    metavar="URL",
    help="Read a bounce mailbox instead: imaps://user:pass@host/INBOX?move=Processed.",
)
@pass_app
def inbound(
    app: App, file: BinaryIO, env_file: str | None, recipient: str | None, imap_url: str | None
) -> None:
    """Act on one inbound message (FILE or standard input): a bounce or complaint report,
    a mailto unsubscribe, or a reply (kept under the data folder). For the MTA to pipe
    the bounce, unsubscribe and reply addresses into; exit 75 means "try again later".
    With --imap, every message of a bounce mailbox instead (processed ones are moved or
    flagged, the rest left alone)."""
    if imap_url is not None:
        from digest.readers.mailbox import parse_imap_url

        try:
            parse_imap_url(imap_url)  # a wrong URL is the operator's to fix, not a retry
        except DigestError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        if imap_url is not None:
            run_imap(app, env_file, imap_url)
            return
        run(app, file, env_file, recipient)
    except SystemExit:
        raise
    except DigestError as exc:
        tempfail(str(exc))
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        tempfail(f"database unavailable: {first}")
    except Exception as exc:  # noqa: BLE001 - a traceback would end up in a bounce
        tempfail(f"{exc.__class__.__name__}: {exc}")


def run(app: App, file: BinaryIO, env_file: str | None, recipient: str | None) -> None:
    from digest.readers.inbound import apply, classify, keep
    from digest.readers.returned import SoftRule

    settings = settings_from(env_file)
    raw = file.read(MAX_MESSAGE + 1)
    now = app.now()
    if len(raw) > MAX_MESSAGE:
        # Refused whole: nothing partial is kept, and exit 0 so the MTA does not retry.
        while file.read(1 << 20):
            pass
        log_line(settings, now, f"refused: a message over {MAX_MESSAGE:,} bytes; nothing kept")
        return
    recipient = recipient or os.environ.get("ORIGINAL_RECIPIENT") or ""
    found = classify(raw, settings.secret_key, now, recipient)
    if found.kind == "reply":
        try:
            path = keep(raw, settings.data_dir, now)
        except OSError as exc:
            folder = settings.data_dir
            raise DigestError(f"cannot keep the reply under {folder}: {exc.strerror}") from None
        log_line(settings, now, f"kept: {found.detail}: {path.name}")
        return
    from digest.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            outcome = apply(session, found, now, SoftRule.of(settings))
            session.commit()
    finally:
        engine.dispose()
    log_line(settings, now, outcome)


def run_imap(app: App, env_file: str | None, url: str) -> None:
    from digest.db import make_engine, make_sessionmaker
    from digest.operations.bounce_mailbox import read_bounce_mailbox

    settings = settings_from(env_file)
    now = app.now()
    engine = make_engine(settings.database_url)
    try:
        tally = read_bounce_mailbox(settings, make_sessionmaker(engine), url, now)
    finally:
        engine.dispose()
    for line in tally.lines:
        log_line(settings, now, line)
    click.echo(
        f"mailbox: {tally.seen} read, {tally.processed} acted on and moved or flagged, "
        f"{tally.left} left for a person"
    )
