"""`digest send` sends what is due and says what is not; test copies that work (issue 10)."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from digest import store
from digest.cli import cli
from digest.db import make_engine, make_sessionmaker, upgrade
from tests.conftest import add_articles, make_settings

# 09:00 UTC on 29 November: 20:00 in Sydney and 09:00 in London (their mornings of the
# 29th have passed), 04:00 in New York (its morning, 06:00, is two hours away).
NOW = "2026-11-29T09:00:00+00:00"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    upgrade(url)
    from datetime import UTC, datetime

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        add_articles(session, datetime(2026, 11, 28, 12, 0, tzinfo=UTC), [("Harbour news", "news")])
        add_articles(
            session, datetime(2026, 11, 29, 3, 0, tzinfo=UTC), [("Match report", "sport")], "b"
        )
        for zone in ("America/New_York", "Australia/Sydney", "Europe/London"):
            store.add_subscriber(
                session,
                f"{zone.split('/')[1].lower()}@example.com",
                datetime(2026, 11, 1, tzinfo=UTC),
                status="active",
                timezone=zone,
            )
        session.commit()
    engine.dispose()
    return {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": url,
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "cli-test-secret",
        "DIGEST_NOW": NOW,
        "DIGEST_BASE_URL": "https://news.example.com",
    }


def digest(env: dict[str, str], *args: str) -> Any:
    return CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)


def outbox(env: dict[str, str]) -> list[Any]:
    folder = Path(env["DIGEST_DATA_DIR"]) / "outbox"
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(folder.glob("*.eml"))
    ]


def test_send_without_a_timezone_sends_only_the_cohorts_that_are_due(env) -> None:
    r = digest(env, "send", "morning")
    assert r.exit_code == 0, r.output
    assert "morning 2026-11-29 America/New_York: not due until 06:00 local time" in r.output
    sent_to = sorted(str(m["To"]) for m in outbox(env))
    assert sent_to == ["london@example.com", "sydney@example.com"]
    # --all-timezones sends the rest now.
    r = digest(env, "send", "morning", "--all-timezones")
    assert r.exit_code == 0, r.output
    assert "new_york@example.com" in [str(m["To"]) for m in outbox(env)]


def test_a_future_day_needs_force(env) -> None:
    r = digest(env, "send", "morning", "--day", "2026-12-05", "--timezone", "Europe/London")
    assert r.exit_code == 2 and "still ahead" in r.output and "--force" in r.output
    assert outbox(env) == []
    dry = digest(env, "send", "morning", "--day", "2026-12-05", "--dry-run")
    assert dry.exit_code == 0
    r = digest(
        env, "send", "morning", "--day", "2026-12-05", "--timezone", "Europe/London", "--force"
    )
    assert r.exit_code == 0, r.output


def test_test_copies_use_their_timezones_day_a_fresh_message_id_and_a_working_link(
    env, make_app, tmp_path
) -> None:
    r = digest(env, "send", "morning", "--to", "editor@example.com")
    assert r.exit_code == 0, r.output
    # The default timezone is Sydney's, and its day (not the first timezone's).
    assert "test copy of the morning 2026-11-29 Australia/Sydney edition" in r.output
    r = digest(
        env, "send", "morning", "--to", "editor@example.com", "--timezone", "America/New_York"
    )
    assert "morning 2026-11-29 America/New_York" in r.output
    first, second = outbox(env)
    assert first["Message-ID"] != second["Message-ID"]
    assert first["Subject"].startswith("[TEST]")
    text = first.get_body(("plain",)).get_content()
    link = re.search(r"https://news\.example\.com/editions/preview/\S+", text)
    assert link, text
    settings = make_settings(
        tmp_path, env["DIGEST_DATABASE_URL"], DIGEST_SECRET_KEY="cli-test-secret"
    )
    from datetime import UTC, datetime

    client = make_app(settings, clock=lambda: datetime(2026, 11, 29, 9, tzinfo=UTC)).test_client()
    page = client.get(urlsplit(link.group(0)).path)
    assert page.status_code == 200 and "Harbour news" in page.get_data(as_text=True)
    assert "editor@example.com" not in page.get_data(as_text=True)
    forged = client.get(urlsplit(link.group(0)).path[:-3] + "abc")
    assert forged.status_code == 400


def test_status_shows_the_overview_and_keeps_current_editions_on_the_list(env) -> None:
    from datetime import UTC, date, datetime

    from digest.editions.schedule import Cohort

    r = digest(env, "send", "morning")  # London's and Sydney's mornings go out
    assert r.exit_code == 0, r.output
    # Forty old editions planned after them (a backfill) must not push them off the list.
    engine = make_engine(env["DIGEST_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        for i in range(40):
            cohort = Cohort("evening", date(2026, 10, 1 + i % 28), f"Etc/GMT-{i // 28}")
            store.create_edition(
                session,
                cohort,
                send_at=datetime(2026, 10, 1, tzinfo=UTC),
                window_start=datetime(2026, 9, 30, tzinfo=UTC),
                now=datetime(2026, 11, 29, 8, tzinfo=UTC),
                status="missed",
            )
        sending = store.create_edition(
            session,
            Cohort("morning", date(2026, 11, 29), "Asia/Tokyo"),
            send_at=datetime(2026, 11, 28, 21, tzinfo=UTC),
            window_start=datetime(2026, 11, 27, 21, tzinfo=UTC),
            now=datetime(2026, 11, 29, 8, tzinfo=UTC),
            status="sending",
        )
        session.commit()
        sending_id = sending.id
    engine.dispose()
    out = digest(env, "status").output
    for heading in ("Next sends", "Sending now", "Last 24 hours", "Feeds", "Readers: active: 3"):
        assert heading in out, out
    # New York's morning is two hours ahead: listed as the next send there.
    assert re.search(r"morning\s+America/New_York\s+Sun 29 Nov 06:00 local \(11:00 UTC\)", out)
    assert f"edition {sending_id}  morning 2026-11-29 Asia/Tokyo  [sending]" in out
    assert "morning 2026-11-29 Europe/London  [done]" in out  # the latest by send time
    assert out.count("[missed]") < 40
    every = digest(env, "status", "--all").output
    assert every.count("[missed]") == 40
