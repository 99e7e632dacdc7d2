"""The console's main journeys in a real browser (headless Chromium): sign-in, a form
whose CSRF token was tampered with, a triggered send whose progress updates live, and
erasing a reader. Screenshots of the overview at 390 and 1280 px go to DIGEST_SCREENSHOTS
(the README's come from there) or the test's folder."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from digest import store
from digest.operations import operators
from tests.conftest import add_articles, free_port, make_settings

TZ = "Australia/Sydney"
AT = datetime(2026, 11, 29, 19, 5, tzinfo=UTC)  # just after Sydney's morning send time
PASSWORD = "correct horse battery"


@pytest.fixture
def site(make_app, live_server, sqlite_url, tmp_path, smtp_server) -> Any:
    """The web app on a real HTTP server, 40 readers, an operator, a slow SMTP sink."""
    sink, url = smtp_server
    sink.delay = 0.08  # each message takes a moment, so progress can be seen moving
    port = free_port()
    # The app checks a form's Origin against DIGEST_BASE_URL: serve at exactly that.
    settings = make_settings(
        tmp_path, sqlite_url, DIGEST_BASE_URL=f"http://127.0.0.1:{port}", DIGEST_SMTP_URL=url
    )
    from digest.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        add_articles(
            session,
            datetime(2026, 11, 29, 18, 0, tzinfo=UTC),
            [("Harbour ferry timetable changes", "news"), ("Netball final", "sport")],
        )
        for i in range(40):
            store.add_subscriber(
                session, f"reader{i}@example.com", AT, status="active", timezone=TZ
            )
        store.add_feed(session, "https://feeds.example.com/news.xml", "news")
        operators.add(session, "ed", PASSWORD, AT)
        session.commit()
    engine.dispose()
    base = live_server(make_app(settings, clock=lambda: AT), port=port)
    return base, sink


def signed_in(chromium: Any, base: str, width: int = 1280) -> Any:
    context = chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/admin/")
    assert "/admin/login" in page.url
    page.fill("#name", "ed")
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Overview')")
    return page


def shots() -> Path | None:
    folder = os.environ.get("DIGEST_SCREENSHOTS")
    return Path(folder) if folder else None


def test_sign_in_wrong_password_then_right(chromium, site) -> None:
    base, _ = site
    page = chromium.new_context().new_page()
    page.goto(f"{base}/admin/login")
    page.fill("#name", "ed")
    page.fill("#password", "not the password")
    page.click("button:has-text('Sign in')")
    assert "do not match" in page.inner_text("#login-error")
    page.fill("#name", "ed")
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Overview')")
    assert "Sign out ed" in page.inner_text("header")


def test_a_tampered_csrf_token_changes_nothing(chromium, site) -> None:
    base, _ = site
    page = signed_in(chromium, base)
    page.goto(f"{base}/admin/readers?q=reader0@")
    page.click("text=reader0@example.com")
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'x')")
    page.check("form:has(button:has-text('Unsubscribe')) >> input[name=confirm]")
    page.click("button:has-text('Unsubscribe')")
    assert "Nothing changed" in page.inner_text("main")
    page.go_back()
    page.reload()
    assert page.inner_text("#reader-status") == "active"


def test_a_triggered_send_shows_its_progress_live(chromium, site, tmp_path) -> None:
    base, sink = site
    page = signed_in(chromium, base)
    page.click("nav >> text=Send now")
    page.select_option("#slot", "morning")
    page.select_option("#timezone", TZ)
    page.click("text=Check who will get it")
    assert "40 readers" in page.inner_text("main")
    page.click("text=Send to 40 readers now")
    page.wait_for_selector("h1:has-text('Edition')")
    page.evaluate("window.stillTheSamePage = true")  # a reload would drop this
    first = int(page.get_attribute("progress", "value") or 0)
    assert first < 40
    # Poll from here: the page's CSP (rightly) forbids the eval wait_for_function uses.
    deadline = time.monotonic() + 30
    while not (
        page.get_attribute("progress", "value") == "40" and page.inner_text("[data-k=sent]") == "40"
    ):
        assert time.monotonic() < deadline, page.inner_text("main")
        page.wait_for_timeout(200)
    assert page.evaluate("window.stillTheSamePage") is True
    assert len(sink.messages) == 40
    page.click("nav >> text=Audit log")
    assert "[console] morning" in page.inner_text("main")  # the plan, with its origin
    folder = shots() or tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for width in (390, 1280):
        view = signed_in(chromium, base, width)
        view.screenshot(path=str(folder / f"console-overview-{width}.png"), full_page=True)
        overflow = view.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"the overview is {overflow} px wide at {width} px"


def test_a_finished_edition_leaves_sending_now_without_a_reload(chromium, site) -> None:
    base, sink = site
    sink.delay = 0.25  # long enough to open the overview while it sends
    page = signed_in(chromium, base)
    page.goto(f"{base}/admin/trigger?slot=morning&timezone={TZ}")
    page.click("text=Send to 40 readers now")
    page.wait_for_selector("h1:has-text('Edition')")
    page.goto(f"{base}/admin/")
    assert "No edition is being sent" not in page.inner_text("#sending")
    page.evaluate("window.stillTheSamePage = true")
    deadline = time.monotonic() + 40
    while "No edition is being sent" not in page.inner_text("#sending"):
        assert time.monotonic() < deadline, page.inner_text("#sending")
        page.wait_for_timeout(250)
    assert page.evaluate("window.stillTheSamePage") is True
    assert len(sink.messages) == 40


def test_erasing_a_reader_in_the_browser(chromium, site) -> None:
    base, _ = site
    page = signed_in(chromium, base, width=390)
    page.goto(f"{base}/admin/readers?q=reader7@")
    page.click("text=reader7@example.com")
    page.click("text=Erase personal data")  # without the word typed: refused
    assert page.inner_text("#reader-status") == "active"
    assert "Type erase" in page.inner_text("main")
    page.fill("#confirm-erase", "erase")
    page.click("text=Erase personal data")
    assert page.inner_text("#reader-status") == "erased"
    assert "reader7@example.com" not in page.inner_text("main")
    page.goto(f"{base}/admin/readers?q=reader7@")
    assert "No reader" in page.inner_text("main")
