"""Engines, sessions and migrations; the only place that knows about dialect quirks."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from digest.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    """Point bare postgresql:// URLs at psycopg 3, the driver digest ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with SQLite set up for several processes writing at once."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not path.startswith("file:"):
            private_database_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def preload_driver(url: str) -> None:
    """Import the database's driver now. A Celery worker does this before it forks its
    pool: each pool process would otherwise import it on its first task (psycopg costs
    about 0.2 s of CPU a process). A URL or driver that is wrong is left for the first
    connection to report, as it would have been."""
    try:
        make_url(normalise_url(url)).get_dialect().import_dbapi()
    except Exception:  # reported where it is used, in its own words
        pass


def private_database_file(path: Path) -> None:
    """Make the SQLite file 0600 before SQLite opens it, whatever its folder's mode (its
    -wal and -shm files take the same mode), and warn when others can read the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc.strerror)
    folder_mode = path.parent.stat().st_mode & 0o777
    if folder_mode & 0o007:
        log.warning(
            "the database's folder %s can be read by other users (mode %o): chmod 700 it",
            path.parent,
            folder_mode,
        )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below); pysqlite's implicit BEGIN is deferred.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # single statements that commit on their own (the send loop's records)
        # A deferred transaction that later writes can fail at once with "database is
        # locked" when another process writes; IMMEDIATE waits on busy_timeout instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# Answers that waiting cannot change: a wrong password, a missing role or database, a
# URL libpq rejects before it connects ("connection is bad: invalid port number").
REFUSALS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "connection is bad",
    "invalid ",
)


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def wait_for_database(
    url: str, deadline_seconds: float, notify: Callable[[str], None] | None = None
) -> None:
    """Connect until the database answers; DatabaseUnavailable after deadline_seconds.

    A database container takes connections some seconds after it starts (PostgreSQL's
    image first initialises on a socket-only server), so a refusal is not yet an error.
    notify hears once that digest is waiting, and why.
    """
    start = time.monotonic()
    told = False
    while True:
        remaining = deadline_seconds - (time.monotonic() - start)
        try:
            _connect_once(url, timeout=remaining)
            return
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            if any(refusal in reason for refusal in REFUSALS):
                raise DatabaseUnavailable(
                    f"database {safe_url(url)} refused digest: {reason}"
                ) from None
            remaining = deadline_seconds - (time.monotonic() - start)
            if remaining <= 0:
                raise DatabaseUnavailable(
                    f"database {safe_url(url)} did not answer within {deadline_seconds:g} s"
                    f" (DIGEST_DATABASE_WAIT_SECONDS): {reason}"
                ) from None
            if notify and not told:
                notify(f"waiting up to {deadline_seconds:g} s for the database: {reason}")
                told = True
            time.sleep(min(1.0, remaining))


def _connect_once(url: str, timeout: float) -> None:
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if make_url(normalise_url(url)).get_backend_name() == "postgresql":
        # libpq waits at least 2 s; without a limit a silent host holds us for minutes.
        kwargs["connect_args"] = {"connect_timeout": min(10, max(2, math.ceil(timeout)))}
    try:
        engine = make_engine(url, **kwargs)
    except OSError as exc:  # the SQLite file's folder cannot be made
        raise DatabaseUnavailable(
            f"database {safe_url(url)}: cannot create {exc.filename}: {exc.strerror}"
        ) from None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the database to the newest schema (what `digest init` runs)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
