"""The public archive (DIGEST_PUBLIC_ARCHIVE): past editions with no personal part."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from digest import store
from digest.config import Settings
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.relays import make_transport
from digest.web import EDITION_CSP
from tests.conftest import NOW, add_articles, make_settings

TZ = "Australia/Sydney"


def cohort(slot: str, day: int) -> Cohort:
    return Cohort(slot, date(2026, 11, day), TZ)


@pytest.fixture
def archive_settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, DIGEST_PUBLIC_ARCHIVE="1")


def publish(session, settings: Settings) -> dict[str, Any]:
    """Two mornings sent (29 and 30 November, Sydney) and an evening planned, not sent."""
    add_articles(session, datetime(2026, 11, 28, 17, 0, tzinfo=UTC), [("Old pier", "news")], "p")
    add_articles(
        session,
        datetime(2026, 11, 29, 18, 0, tzinfo=UTC),
        [("Ferry timetable changes", "news"), ("Netball final", "sport")],
    )
    add_articles(session, datetime(2026, 11, 30, 5, 0, tzinfo=UTC), [("Late storm", "news")], "e")
    ben = store.add_subscriber(
        session, "ben@example.com", NOW, name="Ben Secretname", status="active", timezone=TZ
    )
    sport = store.add_subscriber(
        session, "sp@example.com", NOW, status="active", timezone=TZ, sections="sport"
    )
    session.commit()
    editions = {}
    for name, c, at in (
        ("first", cohort("morning", 29), datetime(2026, 11, 28, 19, 1, tzinfo=UTC)),
        ("second", cohort("morning", 30), datetime(2026, 11, 29, 19, 1, tzinfo=UTC)),
    ):
        plan = pipeline.plan_edition(session, settings, c, at)
        report = sending.run_edition(
            session, settings, make_transport(settings), plan.edition_id, at
        )
        assert report.sent >= 1
        editions[name] = plan.edition_id
    at = datetime(2026, 11, 30, 6, 1, tzinfo=UTC)
    editions["unsent"] = pipeline.plan_edition(
        session, settings, cohort("evening", 30), at
    ).edition_id
    session.commit()
    return {"ids": editions, "ben": ben.id, "sport": sport.id}


def test_off_by_default(client, settings: Settings, session) -> None:
    assert not settings.public_archive
    world = publish(session, settings)
    assert client.get("/archive").status_code == 404
    assert client.get(f"/archive/{world['ids']['first']}").status_code == 404


def test_the_archive_lists_sent_editions_by_day_newest_first(
    make_app, archive_settings: Settings, session, clock
) -> None:
    world = publish(session, archive_settings)
    clock.now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    client = make_app(archive_settings, clock=clock).test_client()
    r = client.get("/archive")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert '<meta name="robots" content="index, follow">' in page
    days = re.findall(r"<h2 id=\"day-[^\"]+\">([^<]+)</h2>", page)
    assert days == ["Monday 30 November 2026", "Sunday 29 November 2026"]
    links = re.findall(r'href="/archive/(\d+)"', page)
    assert links == [str(world["ids"]["second"]), str(world["ids"]["first"])]
    assert "Morning Edition" in page and 'href="/subscribe"' in page
    assert "Secretname" not in page and "@example.com" not in page


def test_an_archived_edition_has_no_personal_part(
    make_app, archive_settings: Settings, session, clock
) -> None:
    world = publish(session, archive_settings)
    clock.now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    client = make_app(archive_settings, clock=clock).test_client()
    edition_id = world["ids"]["second"]
    r = client.get(f"/archive/{edition_id}")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["Content-Security-Policy"] == EDITION_CSP
    page = r.get_data(as_text=True)
    # The rendering with every section, not the sport-only reader's.
    assert "Ferry timetable changes" in page and "Netball final" in page
    assert "Good morning," in page and "Secretname" not in page and "@example.com" not in page
    for reader in (world["ben"], world["sport"]):
        links = sending.reader_links(archive_settings, reader, edition_id)
        for key in ("unsubscribe_url", "preferences_url", "view_url", "unsubscribe_token"):
            assert links[key] not in page
    assert "DGST" not in page and "#digest-web-view" not in page
    assert page.count("<main>") == 1 and page.index("<header") < page.index("<main>")
    assert 'href="/subscribe"' in page and 'href="/archive"' in page
    # Planned but sent to nobody yet, not there at all, or beyond the id range: not found.
    for missing in (world["ids"]["unsent"], 999_999, 2**40):
        assert client.get(f"/archive/{missing}").status_code == 404


def test_an_edition_is_archived_only_once_someone_was_sent_it(
    make_app, archive_settings: Settings, session, clock
) -> None:
    add_articles(session, datetime(2026, 11, 29, 18, 0, tzinfo=UTC), [("Ferry", "news")])
    store.add_subscriber(session, "ann@example.com", NOW, status="active", timezone=TZ)
    session.commit()
    at = datetime(2026, 11, 29, 19, 1, tzinfo=UTC)
    plan = pipeline.plan_edition(session, archive_settings, cohort("morning", 30), at)
    session.commit()
    clock.now = at
    client = make_app(archive_settings, clock=clock).test_client()
    assert client.get(f"/archive/{plan.edition_id}").status_code == 404
    assert "No editions yet" in client.get("/archive").get_data(as_text=True)
    sending.run_edition(
        session, archive_settings, make_transport(archive_settings), plan.edition_id, at
    )
    session.commit()
    assert client.get(f"/archive/{plan.edition_id}").status_code == 200
    assert f'href="/archive/{plan.edition_id}"' in client.get("/archive").get_data(as_text=True)
    assert client.get("/archive?page=abc").status_code == 200
    assert "No editions yet" in client.get("/archive?page=3").get_data(as_text=True)
