"""Shared fixtures: real databases (SQLite always, PostgreSQL when CI gives a URL) and a
real SMTP server (aiosmtpd in this process)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.drop_after is not None and len(self.messages) >= self.drop_after:
            server.transport.close()
            return "421 closing"
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
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
    def factory(self) -> SMTPProtocol:
        return SMTPProtocol(self.handler, decode_data=False, enable_SMTPUTF8=True)


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
