"""The readers pages in a real browser (headless Chromium): the list, its filters and
pages, a bulk change on a filtered selection, export, console import with its report;
and axe-core (tests/fixtures/axe) finds no violation on any console page."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from digest import store
from digest.operations import operators
from tests.conftest import add_articles, free_port, make_settings

AT = datetime(2026, 11, 29, 19, 5, tzinfo=UTC)
PASSWORD = "correct horse battery"
AXE = Path(__file__).parent / "fixtures" / "axe" / "axe.min.js"


@pytest.fixture
def site(make_app, live_server, sqlite_url, tmp_path) -> Any:
    """The web app on a real HTTP server with 130 readers and an operator."""
    port = free_port()
    settings = make_settings(tmp_path, sqlite_url, DIGEST_BASE_URL=f"http://127.0.0.1:{port}")
    from digest.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        add_articles(
            session,
            datetime(2026, 11, 29, 18, 0, tzinfo=UTC),
            [("Harbour ferry timetable changes", "news"), ("Netball final", "sport")],
        )
        store.add_feed(session, "https://feeds.example.com/news.xml", "news")
        store.add_feed(session, "https://feeds.example.com/sport.xml", "sport")
        for i in range(130):
            store.add_subscriber(
                session,
                f"reader{i:03d}@example.com",
                datetime(2026, 11, 1 + i % 20, tzinfo=UTC),
                name=f"Reader {i}",
                status="active" if i % 4 else "pending",
                timezone="Europe/London" if i % 2 else "Australia/Sydney",
            )
        operators.add(session, "ed", PASSWORD, AT)
        session.commit()
        from datetime import date

        from digest.editions import pipeline
        from digest.editions.schedule import Cohort

        cohort = Cohort("morning", date(2026, 11, 30), "Australia/Sydney")
        pipeline.plan_edition(session, settings, cohort, AT)
        session.commit()
    engine.dispose()
    base = live_server(make_app(settings, clock=lambda: AT), port=port)
    return base, settings


def signed_in(chromium: Any, base: str, width: int = 1280, **context: Any) -> Any:
    page = chromium.new_context(
        viewport={"width": width, "height": 900}, accept_downloads=True, **context
    ).new_page()
    page.goto(f"{base}/admin/login")
    page.fill("#name", "ed")
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Overview')")
    return page


def count(page: Any) -> str:
    return page.inner_text("#count strong")


def test_filter_page_bulk_change_and_export(chromium, site, tmp_path) -> None:
    base, _ = site
    page = signed_in(chromium, base)
    page.click("nav >> text=Readers")
    assert count(page) == "1–50 of 130"
    page.click("summary")
    page.check("input[name=status][value=active]")
    page.select_option("#f-timezone", "Europe/London")
    page.click("button:has-text('Show readers')")
    assert count(page) == "1–50 of 65"
    page.click("text=Next 50")
    assert count(page) == "51–65 of 65"
    page.click("text=Previous 50")
    assert count(page) == "1–50 of 65"
    # A bulk change on every reader the filter matches.
    page.check("input[name=scope][value=all]")
    page.select_option("#bulk-action", "editions")
    page.fill("#bulk-value", "evening")
    page.click("button:has-text('Review the change')")
    assert "65 readers?" in page.inner_text("h1")
    page.click("button:has-text('Yes')")
    assert "65 readers changed" in page.inner_text(".flash")
    assert count(page) == "1–50 of 65"  # back on the same filter
    # Two ticked readers to another timezone.
    page.check("input[name=id] >> nth=0")
    page.check("input[name=id] >> nth=1")
    page.select_option("#bulk-action", "timezone")
    page.fill("#bulk-value", "Europe/Paris")
    page.click("button:has-text('Review the change')")
    assert "2 readers?" in page.inner_text("h1")
    page.click("button:has-text('Yes')")
    assert "2 readers changed" in page.inner_text(".flash")
    assert count(page) == "1–50 of 63"
    with page.expect_download() as got:
        page.click("text=Export these")
    rows = list(csv.reader(io.StringIO(Path(got.value.path()).read_text())))
    assert rows[0][:2] == ["email", "name"] and len(rows) == 64
    assert {r[3] for r in rows[1:]} == {"evening"}
    page.click("nav >> text=Audit log")
    main = page.inner_text("main")
    assert "bulk editions" in main and "bulk timezone" in main and "exported readers" in main


def test_console_import_with_its_report(chromium, site, tmp_path) -> None:
    base, settings = site
    page = signed_in(chromium, base, width=390)
    page.goto(f"{base}/admin/readers")
    page.click("text=Import readers")
    upload = tmp_path / "people.csv"
    upload.write_text(
        "Address;Full name;Zone\nnew1@example.com;New One;Europe/London\n"
        "reader001@example.com;Old;\nbroken;X;\nnew2@example.com;New Two;Mars/Base\n"
    )
    page.set_input_files("#file", str(upload))
    page.click("button:has-text('Show a preview')")
    main = page.inner_text("main")
    assert "semicolons" in main and "new1@example.com" in main
    assert page.input_value("#map-0") == "email" and page.input_value("#map-1") == "name"
    page.select_option("#map-2", "timezone")
    page.check("input[name=consent][value=confirmed]")
    page.click("button:has-text('Import')")
    status = page.inner_text("[role=status]")
    assert "1 added" in status and "1 already there" in status and "2 bad rows" in status
    with page.expect_download() as got:
        page.click("text=Download the report")
    report = Path(got.value.path()).read_text().splitlines()
    assert report[0] == "line,email,outcome,detail" and len(report) == 5
    assert report[1] == "2,new1@example.com,added,active"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def _violations(page: Any) -> list[str]:
    page.add_script_tag(content=AXE.read_text())
    found = page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
        "v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', ')))"
    )
    return list(found)


def test_axe_finds_nothing_on_any_console_page(chromium, site, tmp_path, monkeypatch) -> None:
    base, _ = site
    page = signed_in(chromium, base, bypass_csp=True)  # to load axe into each page
    pages = [
        "/admin/",
        "/admin/editions",
        "/admin/editions/1",
        "/admin/editions/1/preview?sections=",
        "/admin/trigger",
        "/admin/trigger?slot=morning&timezone=Europe/London",
        "/admin/test-send",
        "/admin/readers",
        "/admin/readers?status=active&timezone=Europe/London",
        "/admin/readers/3",
        "/admin/readers/import",
        "/admin/feeds",
        "/admin/articles",
        "/admin/audit",
        "/admin/no-such-page",
    ]
    failures = {}
    for path in pages:
        page.goto(base + path)
        found = _violations(page)
        if found:
            failures[path] = found
    # The bulk confirmation and an import preview: pages reached by a POST.
    page.goto(base + "/admin/readers")
    page.check("input[name=id] >> nth=0")
    page.click("button:has-text('Review the change')")
    if found := _violations(page):
        failures["bulk confirmation"] = found
    from digest.web.console import bulk_actions as reader_pages

    monkeypatch.setattr(reader_pages, "BULK_INLINE_MAX", 10)
    page.goto(base + "/admin/readers")
    page.check("input[name=scope][value=all]")
    page.select_option("#bulk-action", "timezone")
    page.fill("#bulk-value", "Europe/Paris")
    page.click("button:has-text('Review the change')")
    page.click("button:has-text('Yes')")
    page.wait_for_selector("h1:has-text('A change to')")
    if found := _violations(page):
        failures["bulk progress"] = found
    # Its script brings the status line to the end in place (CSP and all), no reload.
    page.wait_for_selector("#bulk-status:has-text('Done:')", timeout=20000)
    page.goto(base + "/admin/readers/import")
    upload = tmp_path / "axe.csv"
    upload.write_text("email\tname\naxe@example.com\tAxe\n")
    page.set_input_files("#file", str(upload))
    page.click("button:has-text('Show a preview')")
    if found := _violations(page):
        failures["import preview"] = found
    page.click("button:has-text('Import')")
    if found := _violations(page):
        failures["import report"] = found
    anonymous = chromium.new_context(bypass_csp=True).new_page()
    anonymous.goto(base + "/admin/login")
    if found := _violations(anonymous):
        failures["/admin/login"] = found
    for _ in range(6):  # the wait page
        anonymous.fill("#name", "ed")
        anonymous.fill("#password", "wrong password")
        anonymous.click("button:has-text('Sign in')")
    assert "Please wait" in anonymous.inner_text("main")
    if found := _violations(anonymous):
        failures["sign-in wait page"] = found
    assert not failures, failures


def test_pages_fit_a_phone(chromium, site) -> None:
    base, _ = site
    page = signed_in(chromium, base, width=390)
    for path in (
        "/admin/readers",
        "/admin/editions",
        "/admin/editions/1",
        "/admin/feeds",
        "/admin/audit",
        "/admin/",
        "/admin/readers/import",
    ):
        page.goto(base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide at 390 px"


def test_the_sign_up_forms_proof_of_work_runs_in_the_browser(
    chromium, make_app, live_server, sqlite_url, tmp_path
) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path,
        sqlite_url,
        DIGEST_BASE_URL=f"http://127.0.0.1:{port}",
        DIGEST_SIGNUP_MAILS_PER_HOUR="1",
    )
    base = live_server(make_app(settings), port=port)
    page = chromium.new_context().new_page()
    for n, email in enumerate(("first@example.com", "second@example.com")):
        page.goto(f"{base}/subscribe")
        page.fill("#email", email)
        page.click("button:has-text('Subscribe')")
        if n == 0:
            assert "inbox" in page.inner_text("main").lower()
    assert page.query_selector("#pow") is not None  # the slower path, not a refusal
    page.wait_for_selector("#subscribe-button:not([disabled])", timeout=60_000)
    assert "Done" in page.inner_text("#pow-status")
    page.click("#subscribe-button")
    assert "inbox" in page.inner_text("main").lower()
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 2
