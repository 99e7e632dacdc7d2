"""Findings of the second outside security review (issue 17, section 2), each closed:
every test here failed before its fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from digest.mail.tokens import SEALED_DATA_MAX, SEALED_MAX, seal, unseal
from digest.models import AuditEntry
from digest.operations import operators
from digest.readers import accounts
from digest.web import redact_path
from tests.conftest import NOW

PASSWORD = "correct horse battery"


def audit(session) -> list[tuple[str, str, str]]:
    session.expire_all()
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    found = [(e.operator, e.action, e.detail) for e in rows]
    session.rollback()
    return found


@pytest.fixture
def signin(make_app, settings, session) -> Any:
    """A web app with operator ed, whose sign-in delays are recorded instead of slept."""
    operators.add(session, "ed", PASSWORD, NOW)
    session.commit()
    app = make_app(settings)
    waits: list[float] = []
    app.extensions["digest"].sleep = waits.append
    client = app.test_client()

    def post(name: str, password: str, ip: str) -> Any:
        data = {"name": name, "password": password}
        return client.post("/admin/login", data=data, environ_base={"REMOTE_ADDR": ip})

    post.waits = waits  # type: ignore[attr-defined]
    return post


# --- medium: a stranger can lock an operator out ---------------------------------------------


def test_sixty_failures_from_strangers_slow_ann_down_but_never_lock_her_out(signin) -> None:
    for n in range(60):
        r = signin("ed", "guess", f"192.0.2.{n % 2}" if n < 10 else f"198.51.100.{n}")
        assert r.status_code in (401, 429)
    assert max(signin.waits) > 0  # guessing at ed is slowed down...
    r = signin("ed", PASSWORD, "203.0.113.7")  # ...but ed, from a client that never failed,
    assert r.status_code == 302  # signs in
    assert 0 < signin.waits[-1] <= 3.0


def test_a_client_that_keeps_failing_waits_on_a_console_page(signin, session) -> None:
    for _ in range(5):
        assert signin("ed", "guess", "192.0.2.9").status_code == 401
    r = signin("ed", PASSWORD, "192.0.2.9")
    page = r.get_data(as_text=True)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "Please wait" in page and "seconds" in page and 'href="/admin/login"' in page
    assert "console" in page  # the console's layout
    entries = audit(session)
    assert [a for _, a, _ in entries].count("sign-in failed") == 5
    refused = [e for e in entries if e[1] == "sign-in refused"]
    assert len(refused) == 1 and refused[0][0] == "ed" and "192.0.2.9" in refused[0][2]


# --- low: the name is normalised once ----------------------------------------------------------


def test_a_padded_name_counts_against_the_same_name(signin) -> None:
    # Before: the limit saw the name trimmed then cut, the sign-in cut then trimmed, so
    # "ed" + 70 spaces + "x" signed in as ed under a fresh key.
    for n in range(12):
        padded = "  ED" + " " * (62 + n) + "x"
        assert signin(padded, "guess", f"198.51.100.{n}").status_code == 401
    assert signin.waits[-1] > 0  # the 11th and 12th were slowed: one name, one counter


# --- low: log redaction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "GET /unsubscribe/./abc.def.ghi HTTP/1.1",
        "GET /unsubscribe/x/../abc.def.ghi HTTP/1.1",
        "GET /%2e/preferences/%2e/abc.def.ghi HTTP/1.1",
        "GET /confirm/./a.b.c.abc.def.ghi HTTP/1.1",
    ],
)
def test_dot_segments_do_not_put_a_token_in_the_log(line: str) -> None:
    assert "abc.def" not in redact_path(line)


def test_logged_paths_cannot_forge_lines_or_drive_a_terminal() -> None:
    out = redact_path('GET /x%0a127.0.0.1 - - "GET /admin HTTP/1.1" 200%1b[31m HTTP/1.1')
    assert "\n" not in out and "\x1b" not in out
    assert "\\x0a" in out and "\\x1b" in out
    assert "\r" not in redact_path("/a%0d%0ab") and "\u2028" not in redact_path("/a%E2%80%A8")


def test_the_dev_servers_access_log_uses_the_raw_line(make_app, settings, live_server) -> None:
    import logging
    import urllib.request

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("werkzeug").addHandler(handler)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    try:
        base = live_server(make_app(settings))
        try:
            urllib.request.urlopen(base + "/unsubscribe/./abc.def.ghi%0aFORGED")
        except Exception:
            pass
    finally:
        logging.getLogger("werkzeug").removeHandler(handler)
    line = next(r for r in records if "unsubscribe" in r)
    assert "abc.def" not in line and "\n" not in line


# --- low: the name travels in the confirmation link --------------------------------------------


def test_a_200_emoji_name_is_refused_at_the_form(client, settings) -> None:
    data = {
        "email": "emoji@example.com",
        "name": "\U0001f600" * 200,
        "editions": "both",
        "timezone": "UTC",
        "form_token": accounts.form_token(settings.secret_key, datetime.now(UTC)),
    }
    r = client.post("/subscribe", data=data)
    assert r.status_code == 422 and "shorter name" in r.get_data(as_text=True)
    assert accounts.name_fits("\U0001f600" * 75) and not accounts.name_fits("\U0001f600" * 76)
    assert not accounts.name_fits("a" * 101)


def test_the_largest_valid_request_makes_a_link_that_unseal_reads() -> None:
    largest = accounts.largest_request()
    body = json.dumps(largest, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(body) <= SEALED_DATA_MAX
    token = seal("k", "confirm", 2**62, datetime(9999, 1, 1, tzinfo=UTC), largest)
    assert len(token) <= SEALED_MAX
    assert unseal("k", "confirm", token, NOW)[1] == largest
    with pytest.raises(ValueError):
        seal("k", "confirm", 1, NOW, {"name": "x" * (SEALED_DATA_MAX + 1)})
    # The biggest name the form accepts, as emoji: its link is read back.
    emoji = {**largest, "name": accounts.cap_name("\U0001f600" * 200)}
    token = seal("k", "confirm", 1, datetime(9999, 1, 1, tzinfo=UTC), emoji)
    assert unseal("k", "confirm", token, NOW)[1]["name"] == "\U0001f600" * 75


# --- low: control characters in forms ---------------------------------------------------------


def test_nul_in_any_field_is_a_400_not_a_500(make_app, settings, session, client) -> None:
    operators.add(session, "ed", PASSWORD, NOW)
    session.commit()
    r = client.post("/admin/login", data={"name": "ed\x00", "password": "x"})
    assert r.status_code == 400
    assert client.get("/admin/readers?q=a%00b@example.com").status_code == 400
    assert client.post("/subscribe", data={"email": "a\x01@example.com"}).status_code == 400
    console = make_app(settings).test_client()
    console.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert console.get("/admin/readers?q=victim%00@example.com").status_code == 400
    assert console.post("/admin/feeds", data={"url": "http://x\x00/"}).status_code == 400
    assert console.get("/admin/readers?q=tab%09ok").status_code == 200


# --- low: header settings are parsed as what they are -----------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGEST_FROM_ADDRESS", "news@example.com, attacker@evil.example"),
        ("DIGEST_FROM_ADDRESS", "News <news@example.com>"),
        ("DIGEST_FROM_ADDRESS", "news"),
        ("DIGEST_UNSUBSCRIBE_MAILTO", "u@example.com?bcc=all@evil.example"),
        ("DIGEST_UNSUBSCRIBE_MAILTO", "mailto:u@example.com"),
        ("DIGEST_REPLY_TO", "a@example.com;b@example.com"),
        ("DIGEST_BASE_URL", "https://news.example.com>,<https://evil.example"),
        ("DIGEST_BASE_URL", "news.example.com"),
        ("DIGEST_BASE_URL", "javascript://news.example.com"),
        ("DIGEST_BASE_URL", "https://user@news.example.com"),
        ("DIGEST_BASE_URL", "https://news.example.com/?a=b"),
        ("DIGEST_BASE_URL", "https://news example.com"),
    ],
)
def test_header_settings_must_be_one_address_or_one_url(tmp_path, name: str, value: str) -> None:
    from digest.config import load_settings
    from digest.errors import ConfigError

    env = {"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k", name: value}
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000", "https://news.example.com/digest", "http://[::1]:8000"],
)
def test_ordinary_base_urls_and_addresses_are_accepted(tmp_path, url: str) -> None:
    from digest.config import load_settings

    env = {
        "DIGEST_DATA_DIR": str(tmp_path),
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_BASE_URL": url,
        "DIGEST_FROM_ADDRESS": "o'brien+news@mail.example.co.uk",
        "DIGEST_UNSUBSCRIBE_MAILTO": "unsubscribe@example.com",
    }
    assert load_settings(env).base_url == url


# --- low: files in a data folder others can read ----------------------------------------------


def test_sqlite_file_and_inbound_log_are_private_in_an_open_folder(tmp_path, caplog) -> None:
    import logging
    import os
    import stat

    from digest.cli.inbound import log_line
    from digest.config import load_settings
    from digest.db import make_engine, upgrade

    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    old = os.umask(0o022)
    try:
        env = {"DIGEST_DATA_DIR": str(folder), "DIGEST_SECRET_KEY": "k"}
        settings = load_settings(env)
        with caplog.at_level(logging.WARNING, logger="digest.db"):
            upgrade(settings.database_url)
            make_engine(settings.database_url).dispose()
        assert "can be read by other users" in caplog.text
        log_line(settings, NOW, "bounce for x@example.com")
    finally:
        os.umask(old)
    database = next(folder.glob("*.db"))
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    for wal in folder.glob("*.db-*"):
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600, wal
    log = folder / "inbound" / "inbound.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


# --- low: audit gaps ----------------------------------------------------------------------------


def test_cli_adds_imports_exports_and_operator_changes_are_audited(
    tmp_path, database_url, monkeypatch
) -> None:
    from click.testing import CliRunner

    import digest.cli
    from digest.cli import cli
    from digest.db import make_engine, make_sessionmaker

    engines: list[Any] = []

    def tracked(url: str, **kwargs: Any) -> Any:
        engines.append(make_engine(url, **kwargs))
        return engines[-1]

    monkeypatch.setattr(digest.cli, "make_engine", tracked)

    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": database_url,
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "k",
        "LOGNAME": "night-editor",
        "USER": "night-editor",
    }
    feed = tmp_path / "feed.xml"
    feed.write_text("<rss version='2.0'><channel><title>t</title></channel></rss>")
    readers = tmp_path / "readers.csv"
    readers.write_text("email,name\nana@example.com,Ana\nnot-an-address,X\n")
    articles = tmp_path / "articles.json"
    articles.write_text(
        '[{"title": "T", "url": "https://n.example.com/1", "published_at": "2026-11-29T10:00:00Z"}]'
    )

    def run(*args: str, input: str | None = None) -> None:
        try:
            result = CliRunner(env=env).invoke(cli, list(args), input=input)
        finally:
            while engines:
                engines.pop().dispose()
        assert result.exit_code == 0, result.output

    run("init")
    run("feeds", "add", str(feed), "--section", "world")
    run("articles", "import", str(articles))
    run("subscribers", "add", "ben@example.com")
    run("subscribers", "import", str(readers))
    run("subscribers", "export", str(tmp_path / "out.csv"))
    run("operators", "add", "ann", "--password-stdin", input=PASSWORD + "\n")
    run("operators", "passwd", "ANN", "--password-stdin", input="another long password\n")
    run("operators", "remove", "ann")
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            entries = audit(session)
    finally:
        engine.dispose()
    by_action = {action: (who, detail) for who, action, detail in entries}
    assert by_action["added feed"][0] == "night-editor" and "world" in by_action["added feed"][1]
    assert by_action["imported articles"][1] == "articles.json: 1 new, 0 records skipped"
    assert by_action["added reader"][1].endswith("(pending)")
    assert "1 added (pending)" in by_action["imported readers"][1]
    assert "1 bad rows" in by_action["imported readers"][1]
    assert by_action["exported readers"][1].startswith("all 2 readers to ")
    for action in ("operator added", "password changed", "operator removed"):
        assert by_action[action] == ("ann", "by night-editor with the CLI"), action


# --- low: the public archive has a takedown -----------------------------------------------------


def test_hiding_an_article_takes_it_out_of_archived_editions(make_app, tmp_path, database_url):
    from sqlalchemy import select as sel

    from digest.db import make_engine, make_sessionmaker
    from digest.models import Article
    from tests.conftest import FakeClock, make_settings
    from tests.test_archive import publish

    settings = make_settings(tmp_path, database_url, DIGEST_PUBLIC_ARCHIVE="1")
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            world = publish(session, settings)
            first = world["ids"]["second"]  # Ferry timetable changes and Netball final
            clock = FakeClock(datetime(2026, 11, 30, 7, 0, tzinfo=UTC))
            operators.add(session, "ed", PASSWORD, NOW)
            session.commit()
            app = make_app(settings, clock=clock)
            public = app.test_client()
            page = public.get(f"/archive/{first}").get_data(as_text=True)
            gone = "Ferry timetable changes"
            assert gone in page and "Netball final" in page
            article_id = session.scalars(sel(Article.id).where(Article.title == gone)).one()
            session.rollback()  # on SQLite an open transaction holds the write lock
            console = app.test_client()
            console.post("/admin/login", data={"name": "ed", "password": PASSWORD})
            token = _csrf(console)
            r = console.post(f"/admin/articles/{article_id}/hide", data={"csrf": token})
            assert r.status_code == 302
            r = public.get(f"/archive/{first}")
            page = r.get_data(as_text=True)
            assert r.status_code == 200 and gone not in page and "Netball final" in page
            # The operator takes the whole edition off the archive, then puts it back.
            r = console.post(f"/admin/editions/{first}/archive/unpublish", data={"csrf": token})
            assert r.status_code == 302
            assert public.get(f"/archive/{first}").status_code == 404
            assert f"/archive/{first}" not in public.get("/archive").get_data(as_text=True)
            console.post(f"/admin/editions/{first}/archive/publish", data={"csrf": token})
            assert public.get(f"/archive/{first}").status_code == 200
            entries = [a for _, a, _ in audit(session)]
            assert "article hide" in entries and "edition unpublished" in entries
    finally:
        engine.dispose()


def _csrf(client: Any) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/").get_data(as_text=True))
    assert found
    return found.group(1)
