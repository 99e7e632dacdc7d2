"""The operator console (/admin) through Flask's test client, on SQLite and PostgreSQL,
with a real SMTP server where mail goes out. Browser journeys are in test_console_browser."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from digest import store
from digest.cli import cli
from digest.config import Settings, parse_smtp_url
from digest.feeds import ingest
from digest.models import AuditEntry, Delivery, Subscriber
from digest.operations import operators
from digest.store.articles import latest_articles
from tests.conftest import add_articles, make_settings, wait_for

TZ = "Australia/Sydney"
# Just after Sydney's morning send time on 30 November (19:00 UTC the day before).
AT = datetime(2026, 11, 29, 19, 5, tzinfo=UTC)
PASSWORD = "correct horse battery"


class Clock:
    now = AT

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def console(make_app, settings: Settings, session, smtp_server) -> Any:
    """A signed-in console client, on a settings object that sends to a real SMTP sink."""
    smtp = settings.with_(smtp=parse_smtp_url(smtp_server[1]))
    operators.add(session, "ed", PASSWORD, AT)
    session.commit()
    client = make_app(smtp, clock=Clock()).test_client()
    r = client.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/"
    client.settings = smtp
    return client


def csrf(client: Any, path: str = "/admin/") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def audit(session) -> list[tuple[str, str, str]]:
    session.expire_all()
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    found = [(e.operator, e.action, e.detail) for e in rows]
    session.rollback()  # end the read: on SQLite an open transaction holds the write lock
    return found


def reader_row(session, subscriber_id: int) -> Any:
    """A reader as the database has it now (read in a transaction that ends at once)."""
    session.expire_all()
    row = store.get_subscriber(session, subscriber_id)
    # A copy: after the rollback the row's attributes would be loaded again.
    copy = SimpleNamespace(**{c.key: getattr(row, c.key) for c in Subscriber.__table__.columns})
    session.rollback()
    return copy


def readers(session, n: int = 3) -> list[Any]:
    add_articles(
        session,
        datetime(2026, 11, 29, 18, 0, tzinfo=UTC),
        [("Ferry timetable changes", "news"), ("Netball final", "sport")],
    )
    found = [
        store.add_subscriber(session, f"r{i}@example.com", AT, status="active", timezone=TZ)
        for i in range(n)
    ]
    session.commit()
    return found


# --- the gate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/editions", "/admin/readers", "/admin/audit", "/admin/live.json"]
)
def test_every_page_needs_a_signed_in_operator(client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    r = client.post("/admin/readers/1/erase", data={"confirm": "erase"})
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_sign_in_sets_a_strict_cookie_for_the_console_only(
    make_app, settings, session, tmp_path, database_url
) -> None:
    operators.add(session, "ed", PASSWORD, AT)
    session.commit()
    https = make_app(settings, clock=Clock()).test_client()  # base URL is https
    r = https.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    cookie = r.headers["Set-Cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/admin"):
        assert flag in cookie
    http = make_settings(tmp_path, database_url, DIGEST_BASE_URL="http://localhost:8000")
    r = (
        make_app(http, clock=Clock())
        .test_client()
        .post("/admin/login", data={"name": "ed", "password": PASSWORD})
    )
    assert "Secure" not in r.headers["Set-Cookie"]
    # The readers' pages still set no cookie (RFC 8058 one-click needs none).
    assert https.get("/subscribe").headers.get("Set-Cookie") is None


def test_wrong_passwords_are_refused_and_limited(make_app, settings, session) -> None:
    operators.add(session, "ed", PASSWORD, AT)
    session.commit()
    client = make_app(settings, clock=Clock()).test_client()
    for _ in range(5):
        r = client.post("/admin/login", data={"name": "ed", "password": "wrong password!"})
        assert r.status_code == 401 and "do not match" in r.get_data(as_text=True)
    r = client.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert r.status_code == 429  # even the right password waits now
    # Guessing one name from many addresses is slowed down, never locked (issue 17).
    waits: list[float] = []
    client.application.extensions["digest"].sleep = waits.append
    codes = [
        client.post(
            "/admin/login",
            data={"name": "ed", "password": "x"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        ).status_code
        for n in range(10, 20)
    ]
    assert codes == [401] * 10 and waits[-1] > 0


def test_posts_without_the_csrf_token_or_from_elsewhere_change_nothing(console, session) -> None:
    reader_id = readers(session, 1)[0].id
    url = f"/admin/readers/{reader_id}/unsubscribe"
    assert console.post(url).status_code == 403
    assert console.post(url, data={"csrf": "forged"}).status_code == 403
    token = csrf(console)
    r = console.post(url, data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert reader_row(session, reader_id).status == "active"
    assert console.post(url, data={"csrf": token}).status_code == 302  # not confirmed
    assert reader_row(session, reader_id).status == "active"
    assert console.post(url, data={"csrf": token, "confirm": "yes"}).status_code == 302
    assert reader_row(session, reader_id).status == "unsubscribed"
    assert audit(session)[-1] == ("ed", "unsubscribed", f"reader {reader_id} (was active)")


def test_sign_in_redirects_only_inside_the_console(make_app, settings, session) -> None:
    operators.add(session, "ed", PASSWORD, AT)
    session.commit()
    client = make_app(settings, clock=Clock()).test_client()
    form = {"name": "ed", "password": PASSWORD}
    r = client.post("/admin/login?next=https://evil.example/", data=form)
    assert r.headers["Location"] == "/admin/"
    client.post("/admin/logout", data={"csrf": csrf(client)})
    r = client.post("/admin/login?next=/admin/audit", data=form)
    assert r.headers["Location"] == "/admin/audit"


# --- overview, trigger, retry, test copy ----------------------------------------------------


def test_overview_shows_next_sends_readers_and_feeds(console, session) -> None:
    readers(session, 2)
    store.add_feed(session, "https://feeds.example.com/a.xml", "news")
    session.commit()
    page = console.get("/admin/").get_data(as_text=True)
    assert "Next sends" in page and TZ in page and "due now" in page  # Sydney's morning
    assert "active" in page and "https://feeds.example.com/a.xml" in page
    assert "Last 30 days" in page


def test_trigger_confirms_then_sends_with_progress_and_audit(console, session, smtp_server):
    sink, _ = smtp_server
    readers(session, 3)
    r = console.get(f"/admin/trigger?slot=morning&timezone={TZ}")
    page = r.get_data(as_text=True)
    assert "3 readers" in page and "Ferry timetable changes" in page
    assert not sink.messages  # the confirmation sends nothing
    r = console.post(
        "/admin/trigger", data={"slot": "morning", "timezone": TZ, "csrf": csrf(console)}
    )
    assert r.status_code == 302 and "/admin/editions/" in r.headers["Location"]
    edition_id = int(r.headers["Location"].rsplit("/", 1)[1])
    wait_for(lambda: len(sink.messages) == 3, 20, "three messages")

    def finished() -> bool:
        data = console.get(f"/admin/live.json?edition={edition_id}").get_json()
        (row,) = [e for e in data["editions"] if e["edition_id"] == edition_id]
        return row["sent"] == row["total"] == 3

    wait_for(finished, 20, "the live progress to show 3 of 3 sent")
    who, what, detail = audit(session)[-1]
    assert (who, what) == ("ed", "planned") and detail.startswith("[console] morning")
    page = console.get(f"/admin/editions/{edition_id}").get_data(as_text=True)
    assert "Ferry timetable changes" in page and "all sections" in page
    preview = console.get(f"/admin/editions/{edition_id}/preview?sections=")
    assert preview.status_code == 200 and "Good morning Reader," in preview.get_data(as_text=True)


def test_retry_requeues_failed_deliveries_and_sends_them(console, session, smtp_server) -> None:
    sink, _ = smtp_server
    readers(session, 2)
    r = console.post(
        "/admin/trigger", data={"slot": "morning", "timezone": TZ, "csrf": csrf(console)}
    )
    edition_id = int(r.headers["Location"].rsplit("/", 1)[1])
    wait_for(lambda: len(sink.messages) == 2, 20, "two messages")

    def recorded() -> bool:
        counts = store.edition_counts(session, edition_id)
        session.rollback()
        return counts == {"sent": 2}

    wait_for(recorded, 20, "both recorded")
    session.execute(
        Delivery.__table__.update()  # type: ignore[attr-defined]
        .where(Delivery.edition_id == edition_id)
        .values(status="failed", last_error="550 test")
    )
    session.commit()
    page = console.get(f"/admin/editions/{edition_id}").get_data(as_text=True)
    assert "550 test" in page and "Retry these now" in page
    r = console.post(
        f"/admin/editions/{edition_id}/retry",
        data={"status": "failed", "csrf": csrf(console)},
    )
    assert r.status_code == 302
    wait_for(lambda: len(sink.messages) == 4, 20, "the two retried messages")
    assert audit(session)[-1][1] == "retried"


def test_test_copy_goes_out_and_into_the_audit_log(console, session, smtp_server) -> None:
    sink, _ = smtp_server
    readers(session, 1)
    r = console.post(
        "/admin/test-send",
        data={"edition": "morning", "to": "editor@example.com", "csrf": csrf(console)},
    )
    assert r.status_code == 302 and r.headers["Location"] == "/admin/test-send"
    (msg,) = sink.to("editor@example.com")
    assert msg["Subject"].startswith("[TEST]")
    who, what, detail = audit(session)[-1]
    # Masked: the audit log outlives any reader's erasure.
    assert (who, what) == ("ed", "test copy sent") and "e***@example.com" in detail
    assert "e***@example.com" in console.get("/admin/audit").get_data(as_text=True)
    bad = console.post(
        "/admin/test-send", data={"edition": "morning", "to": "nope", "csrf": csrf(console)}
    )
    assert bad.status_code == 422 and "No test copy sent" in bad.get_data(as_text=True)


# --- readers ---------------------------------------------------------------------------------


def test_reader_search_view_change_export_and_erase(console, session) -> None:
    ana_id = readers(session, 2)[0].id
    page = console.get("/admin/readers?q=r0@").get_data(as_text=True)
    assert "r0@example.com" in page and "r1@example.com" not in page
    page = console.get(f"/admin/readers/{ana_id}").get_data(as_text=True)
    assert "r0@example.com" in page and TZ in page
    token = csrf(console, f"/admin/readers/{ana_id}")
    r = console.post(
        f"/admin/readers/{ana_id}/settings",
        data={"csrf": token, "name": "Ana", "editions": "evening", "timezone": "Europe/London"},
    )
    assert r.status_code == 302
    changed = reader_row(session, ana_id)
    assert (changed.name, changed.morning, changed.timezone) == ("Ana", False, "Europe/London")
    export = console.get(f"/admin/readers/{ana_id}/export.json")
    assert export.headers["Content-Disposition"].startswith("attachment")
    assert json.loads(export.get_data())["email"] == "r0@example.com"
    # Erasing needs the word typed; then only the hash is left.
    assert console.post(f"/admin/readers/{ana_id}/erase", data={"csrf": token}).status_code == 302
    assert reader_row(session, ana_id).status == "active"
    r = console.post(f"/admin/readers/{ana_id}/erase", data={"csrf": token, "confirm": "erase"})
    assert r.status_code == 302
    assert reader_row(session, ana_id).status == "erased"
    assert store.find_subscriber(session, "r0@example.com") is None
    assert store.is_suppressed(session, "r0@example.com")
    session.rollback()
    actions = [a for _, a, _ in audit(session)]
    assert actions[-3:] == ["changed reader", "exported", "erased"]


# --- feeds and articles ----------------------------------------------------------------------


def test_feeds_can_be_added_paused_and_resumed(console, session) -> None:
    token = csrf(console, "/admin/feeds")
    r = console.post("/admin/feeds", data={"csrf": token, "url": "ftp://x", "section": "news"})
    assert r.status_code == 302
    assert store.list_feeds(session) == []
    session.rollback()
    console.post(
        "/admin/feeds",
        data={"csrf": token, "url": "https://feeds.example.com/a.xml", "section": "Sport"},
    )
    (feed,) = store.list_feeds(session)
    feed_id, section = feed.id, feed.section
    session.rollback()
    assert section == "sport"
    console.post(f"/admin/feeds/{feed_id}/pause", data={"csrf": token})
    session.expire_all()
    assert store.list_feeds(session)[0].paused
    assert ingest.ingest_all(session, console.settings, AT) == []  # paused: not polled
    session.commit()
    console.post(f"/admin/feeds/{feed_id}/resume", data={"csrf": token})
    session.expire_all()
    assert not store.list_feeds(session)[0].paused
    session.rollback()
    assert [a for _, a, _ in audit(session)][-3:] == ["added feed", "feed pause", "feed resume"]


def test_hidden_articles_leave_the_next_edition(console, session) -> None:
    readers(session, 1)
    page = console.get("/admin/articles?slot=morning").get_data(as_text=True)
    assert "Ferry timetable changes" in page and "Netball final" in page
    ferry_id = next(a.id for a in latest_articles(session) if a.title.startswith("Ferry"))
    session.rollback()
    token = csrf(console, "/admin/articles")
    console.post(f"/admin/articles/{ferry_id}/hide?slot=morning", data={"csrf": token})
    console.post(f"/admin/articles/{ferry_id}/raise?slot=morning", data={"csrf": token})
    session.expire_all()
    candidates = store.candidate_articles(session, datetime(2026, 11, 28, tzinfo=UTC), AT)
    assert ferry_id not in [c.id for c in candidates]
    assert store.articles_by_id(session, [ferry_id])[ferry_id].priority == 1


# --- the CLI that makes operators --------------------------------------------------------------


def test_operators_add_from_the_cli(tmp_path, sqlite_url) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "k",
    }
    runner = CliRunner(env=env)
    r = runner.invoke(cli, ["operators", "add", "Ed", "--password-stdin"], input="short\n")
    assert r.exit_code != 0 and "at least 12 characters" in r.output
    r = runner.invoke(cli, ["operators", "add", "ed", "--password-stdin"], input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["operators", "add", "ed", "--password-stdin"], input=PASSWORD + "\n")
    assert r.exit_code != 0 and "exists already" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["operators", "list"])
    assert "ed\tlast sign-in never" in r.output
