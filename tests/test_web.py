"""The web app through Flask's test client, a real HTTP server on loopback, and gunicorn."""

from __future__ import annotations

import http.client
import logging
import random
import re
import signal
import string
import sys
import time
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
from sqlalchemy import event, select

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.db import make_engine, make_sessionmaker
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.tokens import PURPOSES, make_token, seal
from digest.mail.transport import SMTPTransport
from digest.models import Delivery, Subscriber, Suppression
from digest.readers import accounts
from digest.web import EDITION_CSP, redact_path
from tests.conftest import NOW, add_articles, make_settings, wait_for

TZ = "Australia/Sydney"
MORNING = Cohort("morning", date(2026, 11, 30), TZ)  # cut at 2026-11-29 19:00 UTC
AFTER_CUT = datetime(2026, 11, 29, 19, 1, tzinfo=UTC)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


# --- helpers -------------------------------------------------------------------------------


def token(settings: Settings, purpose: str, subscriber_id: int, **kw: Any) -> str:
    return make_token(settings.secret_key, purpose, subscriber_id, **kw)


def add_reader(session, email: str, status: str = "active", **kw: Any) -> Subscriber:
    kw.setdefault("timezone", TZ)
    s = store.add_subscriber(session, email, NOW, status=status, **kw)
    session.commit()
    return s


def add_sample_articles(session) -> None:
    when = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)
    add_articles(session, when, [("Ferry timetable changes", "news"), ("Netball final", "sport")])
    session.commit()


def signup(client: Any, settings: Settings, **fields: Any) -> Any:
    headers = fields.pop("headers", None)
    data = {
        "email": "reader@example.com",
        "name": "Reader",
        "editions": "both",
        "timezone": TZ,
        "form_token": accounts.form_token(settings.secret_key, NOW),
    }
    data.update(fields)
    return client.post("/subscribe", data=data, headers=headers)


def db_state(sessions) -> tuple[Any, ...]:
    """Everything a link could change, read in a fresh session."""
    with sessions() as s:
        return (
            s.execute(
                select(
                    Subscriber.id,
                    Subscriber.email,
                    Subscriber.status,
                    Subscriber.name,
                    Subscriber.timezone,
                    Subscriber.morning,
                    Subscriber.evening,
                    Subscriber.sections,
                    Subscriber.consent,
                    Subscriber.confirmed_at,
                    Subscriber.unsubscribed_at,
                ).order_by(Subscriber.id)
            ).all(),
            s.execute(select(Suppression.email_hash, Suppression.reason)).all(),
            s.execute(select(Delivery.id, Delivery.status).order_by(Delivery.id)).all(),
        )


def status_of(sessions, subscriber_id: int) -> str:
    with sessions() as s:
        return store.get_subscriber(s, subscriber_id).status


def outbox(settings: Settings) -> dict[str, Any]:
    """The messages the outbox transport wrote, by recipient."""
    found = {}
    for path in sorted(settings.outbox_dir.glob("*.eml")):
        msg: Any = message_from_bytes(path.read_bytes(), policy=policy.default)
        found[msg["To"].addresses[0].addr_spec] = msg
    return found


def text_of(msg: Any) -> str:
    return str(msg.get_body(("plain",)).get_content())


def link_path(text: str, route: str) -> str:
    url = re.search(rf"https://news\.example\.com/{route}/\S+", text)
    assert url, f"no /{route}/ link in {text!r}"
    return urlsplit(url.group(0)).path


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server) -> Settings:
    return settings.with_(smtp=parse_smtp_url(smtp_server[1]))


@pytest.fixture
def smtp_client(make_app, smtp_settings: Settings, clock) -> Any:
    return make_app(smtp_settings, clock=clock).test_client()


# --- subscribe and confirm -------------------------------------------------------------------


def test_subscribe_page_offers_sections_and_the_default_timezone(client, session) -> None:
    store.add_feed(session, "https://feeds.example.com/biz.xml", "business")
    add_sample_articles(session)
    for path in ("/subscribe", "/"):
        r = client.get(path)
        assert r.status_code == 200
    page = r.get_data(as_text=True)
    for section in ("business", "news", "sport"):
        assert f'name="sections" value="{section}"' in page
    assert '<option value="Australia/Sydney" selected>' in page
    assert 'data-auto="1"' in page  # the browser's own timezone replaces the default
    assert re.search(r'name="form_token" value="[0-9a-f]+-[0-9a-f]+\.[\w-]+"', page)
    assert "1 Example Street, Sydney" in page  # sender identified on every page
    assert "Set-Cookie" not in r.headers
    nonce = re.search(r'<script nonce="([^"]+)">', page)
    assert nonce and f"'nonce-{nonce.group(1)}'" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "same-origin"


def test_sign_up_and_confirm_over_smtp(smtp_client, smtp_settings, smtp_server, sessions):
    sink, _ = smtp_server
    r = signup(smtp_client, smtp_settings, name="Zoë")
    assert r.status_code == 200
    assert "Check your inbox" in r.get_data(as_text=True)
    [msg] = sink.to("reader@example.com")
    assert msg["From"] == "The Daily Digest <digest@example.com>"
    body = text_of(msg)
    assert "Hello," in body and "Zoë" not in body and "The Daily Digest, 1 Example Street" in body
    with sessions() as s:
        reader = store.find_subscriber(s, "reader@example.com")
        assert reader is not None and reader.status == "pending" and reader.name == ""

    # Opening the link (as a mail scanner would) changes nothing; the button does.
    confirm = link_path(body, "confirm")
    for _ in range(2):
        r = smtp_client.get(confirm)
        assert r.status_code == 200 and "Confirm my subscription" in r.get_data(as_text=True)
    assert status_of(sessions, reader.id) == "pending"
    r = smtp_client.post(confirm)
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "You are subscribed" in page
    assert "first morning edition arrives Monday at 06:00" in page
    assert status_of(sessions, reader.id) == "active"
    with sessions() as s:
        assert store.get_subscriber(s, reader.id).name == "Zoë"  # stored on confirmation


def test_sign_up_without_smtp_goes_to_the_outbox(client, settings: Settings, sessions) -> None:
    assert signup(client, settings).status_code == 200
    msg = outbox(settings)["reader@example.com"]
    assert msg["Subject"] == "Confirm your subscription to The Daily Digest"
    assert client.post(link_path(text_of(msg), "confirm")).status_code == 200
    with sessions() as s:
        reader = store.find_subscriber(s, "reader@example.com")
        assert reader is not None and reader.status == "active"


def test_bad_input_is_explained_and_nothing_else_is_lost(client, settings, session, sessions):
    add_sample_articles(session)
    r = signup(
        client,
        settings,
        email="not-an-address",
        name="Zoë <script>",
        timezone="Europe/London",
        editions="evening",
        sections=["sport", "gossip"],
    )
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    assert 'role="alert"' in page
    assert "Enter a valid email address" in page and 'aria-invalid="true"' in page
    assert "There is no section called gossip." in page
    assert 'value="not-an-address"' in page
    assert 'value="Zoë &lt;script&gt;"' in page and "<script>" not in page.split("</form>")[0]
    assert '<option value="Europe/London" selected>' in page and 'data-auto="1"' not in page
    assert 'value="evening" checked' in page and 'value="sport" checked' in page
    assert db_state(sessions)[0] == [] and outbox(settings) == {}


def test_form_needs_a_fresh_token_from_this_site(client, settings, clock, sessions) -> None:
    r = signup(client, settings, form_token="")
    assert r.status_code == 422 and "could not be checked" in r.get_data(as_text=True)
    assert 'value="reader@example.com"' in r.get_data(as_text=True)
    clock.advance(hours=13)
    r = signup(client, settings)
    assert r.status_code == 422 and "open too long" in r.get_data(as_text=True)
    clock.advance(hours=-13)
    r = signup(client, settings, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = signup(client, settings, headers={"Origin": "null"})
    assert r.status_code == 403
    assert db_state(sessions)[0] == []
    # Only DIGEST_BASE_URL's origin counts, not whatever Host the request names.
    r = signup(client, settings, headers={"Origin": "http://localhost"})
    assert r.status_code == 403
    r = signup(client, settings, headers={"Origin": "https://news.example.com"})
    assert r.status_code == 200


def test_repeated_sign_up_never_reveals_who_is_subscribed(client, settings, session, sessions):
    active = add_reader(session, "active@example.com", name="Ana", sections="news")
    gone = add_reader(session, "gone@example.com")
    accounts.unsubscribe(session, gone.id, NOW)
    session.commit()
    assert signup(client, settings, email="pending@example.com").status_code == 200

    pages = {}
    for email in ("active@example.com", "gone@example.com", "pending@example.com", "n@ex.com"):
        r = signup(client, settings, email=email, name="Mallory", sections="", editions="morning")
        assert r.status_code == 200
        pages[email] = (
            r.get_data(as_text=True).replace(email, "ADDRESS"),
            sorted(r.headers.keys()),
        )
    assert len(set(map(str, pages.values()))) == 1

    mail = outbox(settings)
    assert mail["active@example.com"]["Subject"] == "You are already subscribed to The Daily Digest"
    for email in ("gone@example.com", "pending@example.com", "n@ex.com"):
        assert mail[email]["Subject"].startswith("Confirm your subscription")
    with sessions() as s:
        kept = store.get_subscriber(s, active.id)
        assert (kept.name, kept.sections, kept.evening) == ("Ana", "news", True)
        assert store.get_subscriber(s, gone.id).status == "unsubscribed"  # until confirmed
        assert store.is_suppressed(s, "gone@example.com")


def test_web_resubscribe_of_a_suppressed_address_needs_confirmation(
    client, settings, session, sessions
) -> None:
    from io import StringIO

    from digest.readers.subscribers import import_csv

    reader = add_reader(session, "back@example.com")
    assert (
        client.post(
            f"/unsubscribe/{token(settings, 'unsubscribe', reader.id)}", data=ONE_CLICK
        ).status_code
        == 200
    )
    assert signup(client, settings, email="back@example.com").status_code == 200
    with sessions() as s:
        report = import_csv(s, StringIO("email\nback@example.com\n"), NOW, confirmed=True)
        s.commit()
        assert report.suppressed == 1
    assert status_of(sessions, reader.id) == "unsubscribed"

    confirm = link_path(text_of(outbox(settings)["back@example.com"]), "confirm")
    assert client.get(confirm).status_code == 200
    assert status_of(sessions, reader.id) == "unsubscribed"  # a scanner's GET lifts nothing
    assert client.post(confirm).status_code == 200
    with sessions() as s:
        assert store.get_subscriber(s, reader.id).status == "active"
        assert not store.is_suppressed(s, "back@example.com")


def test_confirm_links_that_do_not_work_say_so(client, settings, session, sessions, clock):
    pending = add_reader(session, "p@example.com", status="pending")
    asked = {"at": str(int(NOW.timestamp() - 60) * 1000), "editions": "both"}
    expired = seal(settings.secret_key, "confirm", pending.id, NOW - timedelta(minutes=1), asked)
    r = client.get(f"/confirm/{expired}")
    assert r.status_code == 400
    assert "This link has expired. Nothing has been changed." in r.get_data(as_text=True)
    r = client.get(f"/confirm/{token(settings, 'preferences', pending.id)}")
    assert r.status_code == 400 and "not valid" in r.get_data(as_text=True)
    nobody = seal(settings.secret_key, "confirm", 999_999, NOW + timedelta(hours=1), asked)
    r = client.get(f"/confirm/{nobody}")
    assert r.status_code == 404 and "could not find" in r.get_data(as_text=True)
    assert status_of(sessions, pending.id) == "pending"
    unsealed = token(settings, "confirm", pending.id, expires=NOW + timedelta(hours=72))
    assert client.get(f"/confirm/{unsealed}").status_code == 400

    good = seal(settings.secret_key, "confirm", pending.id, NOW + timedelta(hours=72), asked)
    client.post(f"/unsubscribe/{token(settings, 'unsubscribe', pending.id)}", data=ONE_CLICK)
    r = client.get(f"/confirm/{good}")
    assert r.status_code == 400 and "no longer valid" in r.get_data(as_text=True)
    assert status_of(sessions, pending.id) == "unsubscribed"


# --- unsubscribe ---------------------------------------------------------------------------


def test_get_never_unsubscribes_one_click_post_does(make_app, settings, session, sessions, clock):
    reader = add_reader(session, "reader@example.com")
    other = add_reader(session, "other@example.com")
    app = make_app(settings, clock=clock)
    client = app.test_client(use_cookies=False)
    url = f"/unsubscribe/{token(settings, 'unsubscribe', reader.id)}"
    before = db_state(sessions)
    for _ in range(3):
        r = client.get(url)
        assert r.status_code == 200
        assert client.head(url).status_code == 200
    page = r.get_data(as_text=True)
    assert page.count("<form") == 1 and page.count("<button") == 1
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "r***@example.com" in page and "reader@example.com" not in page
    # A POST without the RFC 8058 body is not an unsubscribe either.
    assert client.post(url).status_code == 400
    assert db_state(sessions) == before

    r = client.post(url, data=ONE_CLICK)
    assert r.status_code == 200
    assert "Location" not in r.headers and "Set-Cookie" not in r.headers
    assert "You are unsubscribed" in r.get_data(as_text=True)
    assert status_of(sessions, reader.id) == "unsubscribed"
    assert status_of(sessions, other.id) == "active"
    with sessions() as s:
        assert store.is_suppressed(s, "reader@example.com")
    assert client.post(url, data=ONE_CLICK).status_code == 200  # again: still fine
    assert "You are unsubscribed" in client.get(url).get_data(as_text=True)

    # Providers may post multipart, or the bare body; both count.
    for kw in (
        {"data": ONE_CLICK, "content_type": "multipart/form-data"},
        {"data": b"List-Unsubscribe=One-Click", "content_type": "text/plain"},
    ):
        url = f"/unsubscribe/{token(settings, 'unsubscribe', other.id)}"
        assert client.post(url, **kw).status_code == 200
    assert status_of(sessions, other.id) == "unsubscribed"


def test_unsubscribe_during_a_running_edition_stops_the_unsent_message(
    client, smtp_settings, smtp_server, session, sessions
) -> None:
    sink, _ = smtp_server
    add_sample_articles(session)
    readers = [add_reader(session, f"{n}@example.com", name=n) for n in ("ana", "ben", "cy")]
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER_CUT)
    assert plan.queued == 3
    transport = SMTPTransport(smtp_settings.smtp)
    ids = store.delivery_ids(session, plan.edition_id)
    first = sending.send_batch(session, smtp_settings, transport, ids[:1], AFTER_CUT)
    assert first.sent == 1  # the edition is under way

    # ben uses the one-click URL his List-Unsubscribe header carries.
    ben = readers[1]
    url = sending.reader_links(smtp_settings, ben.id, plan.edition_id)["unsubscribe_url"]
    assert client.post(urlsplit(url).path, data=ONE_CLICK).status_code == 200

    report = sending.run_edition(session, smtp_settings, transport, plan.edition_id, AFTER_CUT)
    assert sink.to("ben@example.com") == []
    assert len(sink.to("cy@example.com")) == 1 and report.sent == 1
    with sessions() as s:
        row = store.find_delivery(s, plan.edition_id, ben.id)
        assert row is not None and row.status == "suppressed"
        assert store.edition_counts(s, plan.edition_id) == {"sent": 2, "suppressed": 1}
        assert store.get_edition(s, plan.edition_id).status == "done"


# --- preferences ---------------------------------------------------------------------------


def test_preferences_show_and_change_the_readers_choices(client, settings, session, sessions):
    add_sample_articles(session)
    reader = add_reader(session, "reader@example.com", name="Ana", sections="news")
    url = f"/preferences/{token(settings, 'preferences', reader.id)}"
    r = client.get(url)
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and "r***@example.com" in page and "reader@example.com" not in page
    assert 'value="news" checked' in page and 'value="sport">' in page
    assert 'value="Ana"' in page and '<option value="Australia/Sydney" selected>' in page
    unsubscribe = re.search(r'href="(/unsubscribe/[^"]+)"', page)
    assert unsubscribe and client.get(unsubscribe.group(1)).status_code == 200

    form = {
        "name": "Ana B",
        "editions": "evening",
        "timezone": "Europe/London",
        "sections": ["sport", "news"],
    }
    r = client.post(url, data=form)
    assert r.status_code == 200 and "Saved." in r.get_data(as_text=True)
    with sessions() as s:
        got = store.get_subscriber(s, reader.id)
        assert (got.name, got.morning, got.evening, got.timezone, got.sections) == (
            "Ana B",
            False,
            True,
            "Europe/London",
            "news,sport",
        )

    before = db_state(sessions)
    r = client.post(url, data={**form, "timezone": "Mars/Base", "sections": ["gossip"]})
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    assert "Choose a timezone from the list." in page and "no section called gossip" in page
    r = client.post(url, data=form, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert db_state(sessions) == before

    client.post(unsubscribe.group(1), data=ONE_CLICK)
    r = client.get(url)
    assert r.status_code == 200 and "You are unsubscribed" in r.get_data(as_text=True)
    assert client.post(url, data=form).status_code == 409
    assert status_of(sessions, reader.id) == "unsubscribed"


# --- web version, health, errors ---------------------------------------------------------------


def view_path(settings: Settings, edition_id: int, subscriber_id: int) -> str:
    return urlsplit(sending.reader_links(settings, subscriber_id, edition_id)["view_url"]).path


def test_web_version_is_the_readers_own_edition(client, settings, session, clock) -> None:
    add_sample_articles(session)
    ben = add_reader(session, "ben@example.com", name="Ben", sections="sport")
    late = add_reader(session, "late@example.com", morning=False)
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER_CUT)
    r = client.get(view_path(settings, plan.edition_id, ben.id))
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "Good morning," in page and "Netball final" in page
    assert "Ferry timetable" not in page and "DGST" not in page
    assert r.headers["Content-Security-Policy"] == EDITION_CSP
    assert r.headers["Referrer-Policy"] == "same-origin"  # the token never leaves the site
    r = client.get(view_path(settings, plan.edition_id, late.id))
    assert r.status_code == 404
    r = client.get(f"/editions/{plan.edition_id}/{token(settings, 'unsubscribe', ben.id)}")
    assert r.status_code == 400


def test_a_forwarded_view_link_reads_one_edition_and_nothing_else(
    client, settings, session, clock
) -> None:
    """The view token names its edition and expires; the page has no personal part."""
    add_sample_articles(session)
    ben = add_reader(session, "ben@example.com", name="Ben Secretname")
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER_CUT)
    path = view_path(settings, plan.edition_id, ben.id)
    page = client.get(path).get_data(as_text=True)
    personal = sending.reader_links(settings, ben.id, plan.edition_id)
    for key in ("unsubscribe_token", "unsubscribe_url", "preferences_url"):
        assert personal[key] not in page
    assert make_token(settings.secret_key, "preferences", ben.id) not in page
    assert "Secretname" not in page and "ben@example.com" not in page
    assert "View in your browser" not in page  # no link to itself
    # The generic pages the web version links to ask for the email's own links.
    r = client.get("/preferences")
    assert r.status_code == 200 and "use the link" in r.get_data(as_text=True).lower()
    # The same token opens no other edition, and an old-style unscoped one opens none.
    other = urlsplit(path).path.replace(f"/editions/{plan.edition_id}/", "/editions/999/")
    assert client.get(other).status_code == 400
    unscoped = token(settings, "view", ben.id)
    assert client.get(f"/editions/{plan.edition_id}/{unscoped}").status_code == 400
    # It works for DIGEST_VIEW_TTL_DAYS (30) after the edition, then says it expired.
    clock.advance(days=29)
    assert client.get(path).status_code == 200
    clock.advance(days=2)
    r = client.get(path)
    assert r.status_code == 400 and "expired" in r.get_data(as_text=True)


def test_an_edition_id_beyond_the_database_range_is_a_404(client) -> None:
    assert client.get(f"/editions/{2**40}/1.x.abc").status_code == 404
    assert client.get(f"/editions/{10**30}/1.x.abc").status_code == 404


def test_healthz(client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unreachable_database(make_app, tmp_path, caplog) -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    app = make_app(make_settings(tmp_path, url))
    r = app.test_client().get("/healthz")
    assert r.status_code == 503 and r.get_json()["status"] == "error"
    assert "hunter2" not in caplog.text and "hunter2" not in r.get_data(as_text=True)


def test_unknown_pages_and_methods_get_a_plain_page(client) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and "The Daily Digest" in r.get_data(as_text=True)
    assert client.delete("/subscribe").status_code == 405


def test_logs_never_show_tokens() -> None:
    assert (
        redact_path("GET /unsubscribe/1.x.AbC-_d HTTP/1.1") == "GET /unsubscribe/<token> HTTP/1.1"
    )
    assert redact_path("/editions/12/1.x.AbC?x=1") == "/editions/12/<token>?x=1"
    assert redact_path("/preferences/a.b.c") == "/preferences/<token>"
    assert redact_path("/healthz") == "/healthz"
    # Percent-encoded paths route to the same pages: their tokens are cut out too.
    for path in ("/%70references/1.x.AbC", "/%2570references/1.x.AbC", "/PREFERENCES/1.x.AbC"):
        assert "AbC" not in redact_path(path), path
    assert "AbC" not in redact_path("GET /unsub%73cribe/1.x.AbC HTTP/1.1")
    assert "AbC" not in redact_path("/editions/%31%32/1.x.AbC")


# --- ten thousand forgeries ----------------------------------------------------------------


def forgeries(settings: Settings, ids: list[int], n: int) -> list[tuple[str, str]]:
    """(purpose, token) pairs, none valid for its purpose: random, re-signed, swapped,
    flipped, borrowed from another purpose, expired, signed with another key."""
    rng = random.Random(8058)
    alphabet = string.ascii_letters + string.digits + "-_"
    out: list[tuple[str, str]] = []
    for i in range(n):
        purpose = PURPOSES[i % len(PURPOSES)]
        sid = ids[i % len(ids)]
        real = token(settings, purpose, sid)
        sid36, exp, mac = real.split(".")
        kind = (i // len(PURPOSES)) % 7
        if kind == 0:
            forged = "".join(rng.choices(alphabet, k=rng.randint(1, 90)))
        elif kind == 1:
            forged = f"{sid36}.{exp}.{''.join(rng.choices(alphabet, k=22))}"
        elif kind == 2:  # another subscriber's id under this one's signature
            other = ids[(i + 1) % len(ids)]
            forged = token(settings, purpose, other).split(".")[0] + f".{exp}.{mac}"
        elif kind == 3:
            j = rng.randrange(len(mac))
            forged = f"{sid36}.{exp}.{mac[:j]}{'A' if mac[j] != 'A' else 'B'}{mac[j + 1 :]}"
        elif kind == 4:
            forged = token(settings, PURPOSES[(i + 1) % len(PURPOSES)], sid)
        elif kind == 5:
            forged = token(
                settings, purpose, sid, expires=NOW - timedelta(seconds=rng.randint(1, 10**6))
            )
        else:
            forged = make_token("not-our-key", purpose, sid)
        out.append((purpose, forged))
    return out


def test_ten_thousand_forged_tokens_change_nothing(make_app, sqlite_url, tmp_path, clock) -> None:
    """Run once, on SQLite: a forged token is refused before any query, which the test
    checks by counting them, so the database dialect cannot matter."""
    settings = make_settings(tmp_path, sqlite_url)
    app = make_app(settings, clock=clock)
    runtime = app.extensions["digest"]
    with runtime.sessions() as session:
        add_sample_articles(session)
        readers = [
            add_reader(session, "a@example.com"),
            add_reader(session, "b@example.com", status="pending"),
            add_reader(session, "c@example.com", sections="sport"),
        ]
        plan = pipeline.plan_edition(session, settings, MORNING, AFTER_CUT)
        ids = [r.id for r in readers]
    before = db_state(runtime.sessions)
    # No cookie jar and ready-encoded bodies: the client's own work is most of the time.
    client = app.test_client(use_cookies=False)
    form = "application/x-www-form-urlencoded"
    requests = {
        "unsubscribe": lambda t: client.post(
            f"/unsubscribe/{t}", data=b"List-Unsubscribe=One-Click", content_type=form
        ),
        "confirm": lambda t: client.post(f"/confirm/{t}"),
        "preferences": lambda t: client.post(
            f"/preferences/{t}", data=b"editions=morning&timezone=UTC", content_type=form
        ),
        "view": lambda t: client.get(f"/editions/{plan.edition_id}/{t}"),
        "keep": lambda t: client.post(f"/keep/{t}"),  # the sunset's answer
    }
    queries = []

    def count(*_args: Any) -> None:
        queries.append(1)

    event.listen(runtime.engine, "before_cursor_execute", count)
    statuses: dict[int, int] = {}
    try:
        for purpose, forged in forgeries(settings, ids, 10_000):
            code = requests[purpose](forged).status_code
            statuses[code] = statuses.get(code, 0) + 1
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    assert statuses == {400: 10_000}
    assert queries == []
    assert db_state(runtime.sessions) == before
    assert outbox(settings) == {}


# --- a real HTTP server, and gunicorn ----------------------------------------------------------


def http_post(base: str, path: str, body: bytes, content_type: str) -> tuple[int, Any, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_sign_up_confirm_and_one_click_over_real_http(
    make_app, live_server, smtp_settings, smtp_server, sessions, clock, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    sink, _ = smtp_server
    base = live_server(make_app(smtp_settings, clock=clock))

    with urlopen(f"{base}/subscribe", timeout=10) as r:
        form_token = re.search(r'name="form_token" value="([^"]+)"', r.read().decode()).group(1)  # type: ignore[union-attr]
    body = (
        f"email=reader%40example.com&name=Ana&editions=both&timezone=Europe%2FLondon"
        f"&form_token={form_token}"
    ).encode()
    status, headers, page = http_post(base, "/subscribe", body, "application/x-www-form-urlencoded")
    assert status == 200 and b"Check your inbox" in page and headers["Set-Cookie"] is None
    [msg] = sink.to("reader@example.com")
    with urlopen(base + link_path(text_of(msg), "confirm"), data=b"", timeout=10) as r:
        assert r.status == 200  # the page's button: a POST with no cookie
    with sessions() as s:
        reader = store.find_subscriber(s, "reader@example.com")
        assert reader is not None and reader.status == "active"

    # The List-Unsubscribe URL, as a mail provider would use it: GET shows a page...
    url = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    path = urlsplit(url).path
    for _ in range(2):
        with urlopen(base + path, timeout=10) as r:
            assert r.status == 200
    assert status_of(sessions, reader.id) == "active"
    # ... and a cookieless POST with the RFC 8058 body unsubscribes, with no redirect.
    status, headers, page = http_post(
        base, path, b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    )
    assert status == 200 and headers["Location"] is None and headers["Set-Cookie"] is None
    assert status_of(sessions, reader.id) == "unsubscribed"
    assert "/unsubscribe/<token>" in caplog.text and path not in caplog.text


def test_gunicorn_runs_the_app_factory(spawn, sqlite_url, tmp_path) -> None:
    """The production server with settings from the environment (once: the views are the
    ones the other tests run on both databases)."""
    settings = make_settings(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        reader = add_reader(session, "reader@example.com")
    env = {
        "PATH": str(Path(sys.executable).parent),
        "DIGEST_DATA_DIR": str(tmp_path / "gunicorn"),
        "DIGEST_DATABASE_URL": settings.database_url,
        "DIGEST_SECRET_KEY": settings.secret_key,
        "DIGEST_BASE_URL": settings.base_url,
    }
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:digest.gunicorn_conf",
        "digest.web:create_app()",
    ]
    env.update(WEB_BIND="127.0.0.1:0", WEB_WORKERS="1")
    child = spawn("gunicorn", argv, env)
    deadline = time.monotonic() + 60  # generous: CI machines can be busy
    while not (found := re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", child.output())):
        assert child.alive() and time.monotonic() < deadline, child.output()[-2000:]
        time.sleep(0.05)
    base = found.group(1)
    while True:
        try:
            with urlopen(f"{base}/healthz", timeout=5) as r:
                assert r.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, child.output()[-2000:]
            time.sleep(0.05)
    path = f"/unsubscribe/{token(settings, 'unsubscribe', reader.id)}"
    status, headers, _ = http_post(
        base, path, b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    )
    assert status == 200 and headers["Set-Cookie"] is None
    assert status_of(sessions, reader.id) == "unsubscribed"
    wait_for(lambda: "POST /unsubscribe/<token>" in child.output(), 10, "the access log line")
    # The same page by a percent-encoded path: it answers, and its token is not logged.
    prefs = token(settings, "preferences", reader.id)
    with urlopen(f"{base}/%70references/{prefs}", timeout=5) as r:
        assert r.status == 200
    wait_for(lambda: "/preferences/<token>" in child.output(), 10, "the encoded path's log line")
    for secret in (path.rsplit("/", 1)[1], prefs):
        assert secret not in child.output()  # the token never reaches the log
    child.signal(signal.SIGQUIT)  # gunicorn's quick shutdown; SIGTERM waits on idle workers
    child.proc.wait(timeout=10)
    engine.dispose()


# --- the pages in a real browser engine (headless Chromium) ------------------------------------


@pytest.fixture(scope="module")
def browser(chromium: Any) -> Any:
    return chromium


def in_browser(browser: Any, html: str) -> Any:
    """The page as Chromium lays it out and runs its script (nothing fetched)."""
    page = browser.new_page()
    page.route("**/*", lambda route: route.abort())
    page.set_content(html, wait_until="load")
    return page


def test_an_invalid_field_is_red_and_the_summary_has_focus(client, settings, browser) -> None:
    r = signup(client, settings, email="not-an-address")
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    nonce = re.search(r"'nonce-([^']+)'", r.headers["Content-Security-Policy"])
    assert nonce and f'<script nonce="{nonce.group(1)}">document.getElementById("errors")' in html
    page = in_browser(browser, html)
    red = page.evaluate("getComputedStyle(document.querySelector('.errors')).borderTopColor")
    email = page.evaluate("getComputedStyle(document.getElementById('email')).borderTopColor")
    name = page.evaluate("getComputedStyle(document.getElementById('name')).borderTopColor")
    assert email == red and name != red  # only the field in error
    assert page.evaluate("document.activeElement.id") == "errors"
    page.close()


def test_the_web_version_is_a_page_of_its_own(client, settings, session, browser) -> None:
    add_sample_articles(session)
    ben = add_reader(session, "ben@example.com", name="Ben")
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER_CUT)
    html = client.get(view_path(settings, plan.edition_id, ben.id)).get_data(as_text=True)
    assert html.count("<main>") == 1 and "#digest-web-view" not in html
    page = in_browser(browser, html)
    assert page.get_by_role("main").count() == 1
    assert page.get_by_role("link", name=re.compile("browser", re.I)).count() == 0
    for title in ("Ferry timetable changes", "Netball final"):
        more = page.get_by_role("link", name=f"Read the full story: {title}", exact=True)
        assert more.count() == 1 and more.inner_text() == "Read the full story"
    assert page.get_by_role("link", name="Read the full story", exact=True).count() == 0
    page.close()
