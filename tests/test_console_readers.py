"""The console's readers pages through Flask's test client (SQLite and PostgreSQL): the
list with filters and keyset pages, bulk actions, export and import; the CLI's
--send-confirmation. Browser journeys are in test_console_browser."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from digest import store
from digest.operations import operators
from tests.test_console import audit, csrf

PASSWORD = "correct horse battery"
AT = datetime(2026, 11, 29, 19, 5, tzinfo=UTC)


@pytest.fixture
def signed_in(make_app, settings, session) -> Any:
    operators.add(session, "ed", PASSWORD, AT)
    for i in range(120):
        store.add_subscriber(
            session,
            f"r{i:03d}@example.com",
            datetime(2026, 11, 1, tzinfo=UTC),
            name=f"Reader {i}",
            status="active" if i % 2 else "pending",
            timezone="Europe/London" if i % 3 == 0 else None,
        )
    session.commit()
    client = make_app(settings, clock=lambda: AT).test_client()
    assert client.post("/admin/login", data={"name": "ed", "password": PASSWORD}).status_code == 302
    return client


def strong(page: str) -> str:
    found = re.search(r'id="count"><strong>([^<]*)</strong>', page)
    assert found, page[:500]
    return found.group(1)


def test_the_list_filters_pages_and_counts(signed_in) -> None:
    page = signed_in.get("/admin/readers?status=active&timezone=Europe/London").get_data(
        as_text=True
    )
    assert strong(page) == "1–20 of 20"
    page = signed_in.get("/admin/readers?status=active").get_data(as_text=True)
    assert strong(page) == "1–50 of 60"
    later = re.search(r'rel="next" href="([^"]+)"', page)
    assert later
    page2 = signed_in.get(later.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert strong(page2) == "51–60 of 60" and 'rel="prev"' in page2
    first_ids = set(re.findall(r'name="id" value="(\d+)"', page))
    assert not first_ids & set(re.findall(r'name="id" value="(\d+)"', page2))
    bad = signed_in.get("/admin/readers?signed_up_from=yesterday")
    assert bad.status_code == 200 and "Filter not applied" in bad.get_data(as_text=True)


def test_a_bulk_change_confirms_the_count_then_is_one_audit_entry(signed_in, session) -> None:
    token = csrf(signed_in, "/admin/readers")
    data = {
        "csrf": token,
        "status": "active",
        "timezone": "Europe/London",
        "scope": "all",
        "action": "editions",
        "value": "evening",
    }
    page = signed_in.post("/admin/readers/bulk", data=data).get_data(as_text=True)
    assert "20 readers?" in page
    r = signed_in.post("/admin/readers/bulk", data={**data, "confirmed": "yes"})
    assert r.status_code == 302
    entries = [e for e in audit(session) if e[1] == "bulk editions"]
    assert len(entries) == 1 and "20 of 20" in entries[0][2] and "Europe/London" in entries[0][2]
    # Erase asks for the count typed out.
    erase = {**data, "action": "erase", "value": "", "confirmed": "yes", "typed": "erase"}
    page = signed_in.post("/admin/readers/bulk", data=erase).get_data(as_text=True)
    assert "type erase 20" in page.lower()
    assert not [e for e in audit(session) if e[1] == "bulk erase"]


def test_one_reader_is_one_reader_on_the_page_and_in_the_log(signed_in, session) -> None:
    token = csrf(signed_in, "/admin/readers")
    data = {"csrf": token, "q": "r001", "scope": "all", "action": "editions", "value": "evening"}
    page = signed_in.post("/admin/readers/bulk", data=data).get_data(as_text=True)
    assert "1 reader?" in page and "1 readers" not in page
    assert signed_in.get("/admin/readers/export.csv?q=r001").status_code == 200
    exported = [e[2] for e in audit(session) if e[1] == "exported readers"]
    assert exported and exported[-1].startswith("1 reader matching"), exported


def test_export_is_the_filtered_readers_formula_safe_and_audited(signed_in, session) -> None:
    r = signed_in.get("/admin/readers/export.csv?status=pending&q=r00")
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert body.splitlines()[0].startswith("email,name") and len(body.splitlines()) == 6
    assert ("ed", "exported readers", "5 readers matching status pending, a text search") in [
        tuple(e) for e in audit(session)
    ]


def test_import_detects_tabs_previews_maps_and_reports_each_row(signed_in, settings) -> None:
    token = csrf(signed_in, "/admin/readers/import")
    csv = b"Mail\tWho\nnew@example.com\tNew\nnot-an-address\tX\nr001@example.com\tOld\n"
    page = signed_in.post(
        "/admin/readers/import",
        data={"csrf": token, "file": (io.BytesIO(csv), "people.tsv")},
        content_type="multipart/form-data",
    ).get_data(as_text=True)
    assert "tabs" in page and "new@example.com" in page
    upload = re.search(r'name="token" value="([^"]+)"', page)
    assert upload
    assert re.search(r'<option value="email" selected>', page)  # "Mail" guessed as email
    r = signed_in.post(
        "/admin/readers/import",
        data={
            "csrf": token,
            "token": upload.group(1),
            "filename": "people.tsv",
            "delimiter": "tab",
            "map-0": "email",
            "map-1": "name",
            "consent": "optin",
        },
    )
    page = r.get_data(as_text=True)
    assert "1 added" in page and "1 opt-in emails sent" in page and "1 bad rows" in page
    report = signed_in.get(f"/admin/readers/import/{upload.group(1)}/report.csv")
    lines = report.get_data(as_text=True).splitlines()
    assert lines[1:] == [
        "2,new@example.com,added,pending",
        "3,not-an-address,bad row,address 'not-an-address' must contain exactly one @",
        "4,r001@example.com,already there,left as it was",
    ]
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 1


def test_cli_add_and_import_send_the_opt_in_only_when_asked(tmp_path, sqlite_url) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "k",
    }
    runner = CliRunner(env=env)
    quiet = runner.invoke(cli(), ["subscribers", "add", "a@example.com"])
    assert quiet.exit_code == 0 and "no confirmation email sent" in quiet.output
    sent = runner.invoke(cli(), ["subscribers", "add", "b@example.com", "--send-confirmation"])
    assert sent.exit_code == 0 and "1 confirmation emails sent" in sent.output
    people = tmp_path / "people.csv"
    people.write_text("email;name\nc@example.com;C\nd@example.com;D\n")
    done = runner.invoke(cli(), ["subscribers", "import", str(people), "--send-confirmation"])
    assert done.exit_code == 0 and "2 added" in done.output, done.output
    assert "2 confirmation emails sent" in done.output
    outbox = list((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(outbox) == 3
    both = runner.invoke(
        cli(), ["subscribers", "add", "e@example.com", "--confirmed", "--send-confirmation"]
    )
    assert both.exit_code == 2


def cli() -> Any:
    from digest.cli import cli as command

    return command


def test_one_click_actions_ask_first_and_suppressed_shows_as_such(signed_in, session) -> None:
    token = csrf(signed_in, "/admin/readers/2")
    r = signed_in.post("/admin/readers/2/suppress", data={"csrf": token}, follow_redirects=True)
    assert "tick “I mean it”" in r.get_data(as_text=True)
    r = signed_in.post(
        "/admin/readers/2/suppress", data={"csrf": token, "confirm": "yes"}, follow_redirects=True
    )
    page = r.get_data(as_text=True)
    assert "Reader 2: suppressed." in page
    assert re.search(r'id="reader-status">suppressed \(by an operator\)<', page)
    listed = signed_in.get("/admin/readers?q=r001@").get_data(as_text=True)
    assert "suppressed (operator)" in listed


def test_the_reader_form_takes_only_the_feeds_sections(signed_in, session) -> None:
    store.add_feed(session, "https://n.example.com/world.xml", "world")
    store.add_feed(session, "https://n.example.com/tech.xml", "tech")
    session.commit()
    token = csrf(signed_in, "/admin/readers/2")
    data = {"csrf": token, "editions": "evening", "timezone": "", "name": "Reader 1"}
    r = signed_in.post(
        "/admin/readers/2/settings", data={**data, "sections": "sprot"}, follow_redirects=True
    )
    assert "Not saved" in r.get_data(as_text=True) and "sprot" in r.get_data(as_text=True)
    r = signed_in.post(
        "/admin/readers/2/settings", data={**data, "sections": "world, tech"}, follow_redirects=True
    )
    page = r.get_data(as_text=True)
    assert "Reader 2: settings changed (editions: evening; sections: tech, world)." in page


def test_editions_and_the_audit_log_page(signed_in, session) -> None:
    from datetime import date, timedelta

    from digest.models import AuditEntry, Edition

    for n in range(60):
        day = date(2026, 10, 1) + timedelta(days=n)
        session.add(
            Edition(
                slot="morning",
                local_day=day,
                timezone="UTC",
                status="done",
                send_at=AT,
                window_start=AT,
                window_end=AT,
                created_at=AT,
            )
        )
    for n in range(130):
        session.add(AuditEntry(at=AT, operator="ed", action="poked", detail=f"entry {n}"))
    session.commit()
    page = signed_in.get("/admin/editions").get_data(as_text=True)
    assert "1–50 of 60" in page and 'class="row-link"' in page
    older = signed_in.get("/admin/editions?page=1").get_data(as_text=True)
    assert "51–60 of 60" in older and "Newer" in older
    log = signed_in.get("/admin/audit").get_data(as_text=True)
    assert "entry 129" in log and "entry 29" not in log
    link = re.search(r'rel="next" href="([^"]+)"', log)
    assert link
    rest = signed_in.get(link.group(1)).get_data(as_text=True)
    assert "entry 29" in rest and "entry 129" not in rest


def test_feeds_are_edited_deleted_and_checked(signed_in, session, tmp_path, sqlite_url) -> None:
    from digest.models import Article

    token = csrf(signed_in, "/admin/feeds")
    bad = signed_in.post(
        "/admin/feeds", data={"csrf": token, "url": "ftp://x.example/f"}, follow_redirects=True
    )
    assert "Not added" in bad.get_data(as_text=True)
    signed_in.post(
        "/admin/feeds", data={"csrf": token, "url": "https://a.example/rss", "section": "World"}
    )
    feed_id = store.list_feeds(session)[0].id
    session.add(
        Article(
            feed_id=feed_id,
            url="https://a.example/1",
            title="Kept",
            section="world",
            published_at=AT,
            seen_at=AT,
        )
    )
    session.commit()
    r = signed_in.post(
        f"/admin/feeds/{feed_id}/edit",
        data={"csrf": token, "url": "https://b.example/rss", "section": "sport", "title": "B news"},
        follow_redirects=True,
    )
    page = r.get_data(as_text=True)
    assert "url: https://a.example/rss -&gt; https://b.example/rss" in page
    assert "section: world -&gt; sport" in page
    session.expire_all()
    assert store.list_feeds(session)[0].url == "https://b.example/rss"
    session.rollback()
    r = signed_in.post(
        f"/admin/feeds/{feed_id}/delete", data={"csrf": token}, follow_redirects=True
    )
    assert "tick “I mean it”" in r.get_data(as_text=True)
    signed_in.post(f"/admin/feeds/{feed_id}/delete", data={"csrf": token, "confirm": "yes"})
    session.expire_all()
    assert store.list_feeds(session) == []
    assert session.query(Article).filter_by(title="Kept").one().feed_id is None
    session.rollback()
    actions = [a for _, a, _ in audit(session)]
    assert "changed feed" in actions and "deleted feed" in actions
    # The CLI refuses a folder, says which feeds are paused or never polled.
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "d"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_REDIS_URL": "",
    }
    runner = CliRunner(env=env)
    folder = runner.invoke(cli(), ["feeds", "add", str(tmp_path)])
    assert folder.exit_code == 1 and "is a folder" in folder.output
    assert "Traceback" not in folder.output
    assert runner.invoke(cli(), ["feeds", "add", "https://c.example/rss"]).exit_code == 0
    listed = runner.invoke(cli(), ["feeds", "list"]).output
    assert "never polled" in listed


def test_a_large_bulk_action_runs_in_the_background_with_progress(
    signed_in, session, monkeypatch
) -> None:
    import time

    from digest.web.console import bulk_actions as pages

    monkeypatch.setattr(pages, "BULK_INLINE_MAX", 10)
    token = csrf(signed_in, "/admin/readers")
    data = {
        "csrf": token,
        "status": "pending",
        "scope": "all",
        "action": "timezone",
        "value": "Europe/Paris",
        "confirmed": "yes",
    }
    r = signed_in.post("/admin/readers/bulk", data=data)
    assert r.status_code == 302 and "/admin/readers/bulk/" in r.headers["Location"]
    deadline = time.monotonic() + 30
    while True:
        page = signed_in.get(r.headers["Location"]).get_data(as_text=True)
        progress = signed_in.get(r.headers["Location"] + "?format=json").get_json()
        if "Done:" in page:
            break
        assert time.monotonic() < deadline, page
        # Updated in place by its script (no meta refresh: axe's meta-refresh rule).
        assert 'http-equiv="refresh"' not in page and "?format=json" in page
        assert progress["total"] == 60 and 0 <= progress["done"] <= 60
        time.sleep(0.1)
    assert "60 readers changed" in page
    assert progress["finished"] or "Done:" in page
    entries = [e for e in audit(session) if e[1] == "bulk timezone"]
    assert len(entries) == 1 and "60 of 60 readers matching status pending" in entries[0][2]


def test_console_404s_use_the_console_layout(signed_in, client) -> None:
    for path in ("/admin/no-such-page", "/admin/readers/999999", "/admin/editions/424242"):
        r = signed_in.get(path)
        page = r.get_data(as_text=True)
        assert r.status_code == 404 and "console" in page and "Back to the overview" in page
        assert "Sign out ed" in page or path == "/admin/no-such-page"
    outside = client.get("/no-such-page")
    assert outside.status_code == 404 and "Back to the overview" not in outside.get_data(
        as_text=True
    )
