"""Issue 15, parts 1 and 2: no reader gets an article twice, in whatever order a
cohort's editions are planned, and every way of starting a send obeys one guard
(digest/editions/guard.py), audited with its origin. In-process: CLI through Click's
runner, the console through Flask's client, beat's task body; the Celery task with a
real worker is in test_pause.py."""

from __future__ import annotations

import email
import email.policy
import re
import zoneinfo
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from digest import store
from digest.cli import cli
from digest.config import SLOTS, Settings
from digest.db import make_engine, make_sessionmaker, upgrade
from digest.editions import dispatch, guard, pipeline
from digest.editions.schedule import Cohort
from digest.feeds.sanitize import clean_summary
from digest.models import AuditEntry, Delivery, Edition, EditionArticle
from digest.operations import operators, overview
from tests.conftest import make_settings, wait_for

DENVER = "America/Denver"
# 29 November 2026: Denver is UTC-7; its morning (06:00) is 13:00 UTC, its evening
# (17:00) is 00:00 UTC on the 30th.
EARLY_EVENING = datetime(2026, 11, 29, 14, 50, tzinfo=UTC)


def articles(session: Any, start: datetime, count: int, every: timedelta, prefix: str) -> None:
    store.insert_articles(
        session,
        [
            {
                "guid": f"{prefix}{i}",
                "url": f"https://news.example.com/{prefix}/{i}",
                "title": f"{prefix} story {i}",
                "summary_html": clean_summary(f"<p>{prefix} {i}</p>"),
                "section": "news",
                "priority": 0,
                "published_at": start + i * every,
                "seen_at": start + i * every,
                "image_url": None,
                "feed_id": None,
            }
            for i in range(count)
        ],
    )


def snapshots(session: Any, timezone: str) -> dict[int, set[int]]:
    rows = session.execute(
        select(EditionArticle.edition_id, EditionArticle.article_id)
        .join(Edition, Edition.id == EditionArticle.edition_id)
        .where(Edition.timezone == timezone)
    )
    found: dict[int, set[int]] = {}
    for edition_id, article_id in rows:
        found.setdefault(edition_id, set()).add(article_id)
    return found


# --- part 1: never an article twice -------------------------------------------------------

# A timezone of its own for each example (the database is shared between them).
ZONES = iter(sorted(z for z in zoneinfo.available_timezones() if "/" in z and "Etc" not in z))
START = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
PLANS = st.lists(
    st.tuples(
        st.integers(0, 4 * 24 * 60),  # when, in minutes after START (sorted: time goes on)
        st.sampled_from(["beat", "cli", "console", "celery"]),
        st.sampled_from(SLOTS),
        st.integers(-1, 3),  # the cohort's local day, relative to today there
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture
def property_world(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'prop.db'}"
    upgrade(url)
    settings = make_settings(tmp_path, url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        # An article every 50 minutes over five days, some seen late.
        articles(session, START - timedelta(days=1), 150, timedelta(minutes=50), "p")
        session.commit()
    yield settings, sessions
    engine.dispose()


@hsettings(
    max_examples=35,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=PLANS)
def test_any_order_of_plans_never_repeats_an_article_to_a_reader(
    property_world: Any, plans: list[tuple[int, str, str, int]]
) -> None:
    settings, sessions = property_world
    zone = next(ZONES)
    with sessions() as session:
        reader = store.add_subscriber(
            session,
            f"r-{zone}@example.com",
            START - timedelta(days=3),
            timezone=zone,
            status="active",
        )
        session.commit()
        for minutes, origin, slot, offset in sorted(plans):
            now = START + timedelta(minutes=minutes)
            if origin == "beat":
                pipeline.dispatch_due(session, settings, now)
                continue
            today = now.astimezone(zoneinfo.ZoneInfo(zone)).date()
            cohort = Cohort(slot, today + timedelta(days=offset), zone)
            pipeline.plan_cohort(session, settings, cohort, now, origin=origin, force=True)
        got = snapshots(session, zone)
        # What the reader was given: every edition that has a delivery row for them.
        theirs = set(
            session.scalars(select(Delivery.edition_id).where(Delivery.subscriber_id == reader.id))
        )
        seen: Counter[int] = Counter()
        for edition_id in theirs:
            seen.update(got.get(edition_id, set()))
        assert not [a for a, n in seen.items() if n > 1], (plans, got)
        # No edition carries what another of the timezone carries, sent or not.
        every = [a for ids in got.values() for a in ids]
        assert len(every) == len(set(every))
        for edition in session.scalars(select(Edition).where(Edition.timezone == zone)):
            if edition.status in ("missed", "superseded"):
                assert edition.id not in got and edition.id not in theirs


@pytest.fixture
def denver(tmp_path: Path) -> dict[str, str]:
    """4,000 readers in Denver in the issue; 40 here, and four articles of the morning."""
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        articles(session, datetime(2026, 11, 29, 10, 0, tzinfo=UTC), 4, timedelta(minutes=40), "d")
        for i in range(40):
            store.add_subscriber(
                session,
                f"d{i:02}@example.com",
                datetime(2026, 11, 1, tzinfo=UTC),
                status="active",
                timezone=DENVER,
            )
        session.commit()
    engine.dispose()
    return {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": url,
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "guard-test-secret",
        "DIGEST_BASE_URL": "https://news.example.com",
        "DIGEST_TIMEZONE": DENVER,
    }


def digest(env: dict[str, str], now: datetime, *args: str) -> Any:
    return CliRunner(env={**env, "DIGEST_NOW": now.isoformat()}).invoke(
        cli, list(args), catch_exceptions=False
    )


def outbox(env: dict[str, str]) -> list[Any]:
    folder = Path(env["DIGEST_DATA_DIR"]) / "outbox"
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(folder.glob("*.eml"))
    ]


def test_seen_evening_sent_early_then_beats_morning_is_superseded(denver) -> None:
    """Seen: Denver's evening sent early at 14:50 UTC (`--all-timezones`); a minute
    later beat sent that day's morning, whose four articles were all in the evening."""
    r = digest(denver, EARLY_EVENING, "send", "evening", "--all-timezones")
    assert r.exit_code == 0, r.output
    assert len(outbox(denver)) == 40
    settings = make_settings(
        Path(denver["DIGEST_DATA_DIR"]).parent,
        denver["DIGEST_DATABASE_URL"],
        DIGEST_TIMEZONE=DENVER,
    )
    engine = make_engine(denver["DIGEST_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        beat = dispatch.dispatch_due(session, settings, EARLY_EVENING + timedelta(minutes=1))
        today = Cohort("morning", date(2026, 11, 29), DENVER)
        [morning] = [f.plan for f in beat if f.plan and f.plan.cohort == today]
        assert morning.status == "superseded" and "evening" in morning.note
        assert store.edition_counts(session, morning.edition_id) == {}
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        origins = [(e.operator, e.action, e.detail.split("]")[0]) for e in entries]
        assert ("beat", "planned", "[beat") in origins
        assert any(o[2] == "[cli" for o in origins)  # the early evening, by the CLI user
    engine.dispose()
    # Nothing more went out, and nobody got an article twice.
    sent = outbox(denver)
    assert len(sent) == 40
    per_reader: dict[str, Counter[str]] = {}
    for msg in sent:
        text = msg.get_body(("plain",)).get_content()
        per_reader.setdefault(str(msg["To"]), Counter()).update(re.findall(r"d story \d", text))
    assert all(max(c.values()) == 1 for c in per_reader.values())
    # `digest send evening` now says the edition exists, not "not due ... sends it now",
    # and `digest status` lists tomorrow's evening as Denver's next, not today's.
    again = digest(denver, EARLY_EVENING + timedelta(minutes=2), "send", "evening")
    assert "exists" in again.output and "not due" not in again.output, again.output
    status = digest(denver, EARLY_EVENING + timedelta(minutes=2), "status").output
    assert re.search(r"evening\s+America/Denver\s+Mon 30 Nov 17:00 local", status), status


def test_the_same_plans_in_the_other_order_give_every_article_once(denver) -> None:
    """Catch-up order: the morning planned late but within the catch-up window, then
    the evening; and a forced day ahead in between takes nothing of either."""
    at = datetime(2026, 11, 29, 13, 30, tzinfo=UTC)  # morning due at 13:00 UTC
    assert digest(denver, at, "send", "morning").exit_code == 0
    later = at + timedelta(minutes=5)
    assert digest(denver, later, "send", "evening", "--day", "2026-12-02", "--force").exit_code == 0
    articles_late = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
    engine = make_engine(denver["DIGEST_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        articles(session, articles_late, 2, timedelta(minutes=30), "late")
        session.commit()
    evening = datetime(2026, 11, 30, 0, 1, tzinfo=UTC)
    assert digest(denver, evening, "send", "evening").exit_code == 0
    with make_sessionmaker(engine)() as session:
        got = snapshots(session, DENVER)
        every = [a for ids in got.values() for a in ids]
        assert len(every) == len(set(every)) == 6
    engine.dispose()


# --- part 2: one guard for every entry point -------------------------------------------------


def test_the_guard_decides_in_one_place(session, settings: Settings) -> None:
    now = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)  # 07:00 in Denver
    today = date(2026, 11, 29)
    ahead = Cohort("morning", today + timedelta(days=2), DENVER)

    def decide(cohort: Cohort, origin: str, **kw: Any) -> guard.Decision:
        return guard.may_plan(session, settings, cohort, now, origin=origin, **kw)

    assert decide(ahead, guard.CLI).action == guard.REFUSE
    assert decide(ahead, guard.CLI, force=True).action == guard.PLAN
    assert decide(ahead, guard.CONSOLE, force=True).forced
    for origin in (guard.CELERY, guard.API, guard.BEAT):
        refused = decide(ahead, origin, force=True)
        assert (
            refused.action == guard.REFUSE and "only from the CLI or the console" in refused.reason
        )
    evening = Cohort("evening", today, DENVER)
    assert decide(evening, guard.CLI, early=False).action == guard.WAIT
    assert decide(evening, guard.CELERY).early
    assert decide(Cohort("morning", today, DENVER), guard.BEAT).reason == "due"
    # Past the catch-up window: beat records it missed, an operator sends it late.
    old = Cohort("evening", today - timedelta(days=1), DENVER)
    assert decide(old, guard.BEAT).status == "missed"
    assert decide(old, guard.CLI).action == guard.PLAN and "late" in decide(old, guard.CLI).reason


def test_dry_run_says_what_the_command_would_do_and_test_copies_stay_home(denver) -> None:
    at = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)  # Denver's morning due, evening ahead
    dry = digest(denver, at, "send", "evening", "--dry-run")
    real_would = "evening 2026-11-29 America/Denver: not due until 17:00 local time"
    assert dry.exit_code == 0 and real_would in dry.output, dry.output
    assert "window" not in dry.output  # the real command plans nothing here
    dry = digest(denver, at, "send", "morning", "--dry-run")
    assert "would send to 40 readers" in dry.output, dry.output
    copy = digest(denver, at, "send", "morning", "--to", "ed@example.com", "--dry-run")
    assert copy.exit_code == 0 and "nothing sent" in copy.output
    assert outbox(denver) == []
    real = digest(denver, at, "send", "evening")
    assert real_would in real.output and outbox(denver) == []
    # After it went out, the dry run says it exists, as the real command would.
    assert digest(denver, at, "send", "morning").exit_code == 0
    dry = digest(denver, at, "send", "morning", "--dry-run")
    assert "exists (done); nothing to plan" in dry.output, dry.output


def test_send_now_never_offers_to_send_nothing_and_records_no_empty_edition(
    make_app, tmp_path, denver
) -> None:
    settings = make_settings(tmp_path, denver["DIGEST_DATABASE_URL"], DIGEST_TIMEZONE=DENVER)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        operators.add(session, "ed", "correct horse battery", EARLY_EVENING)
        session.commit()
    clock = type("Clock", (), {"now": EARLY_EVENING, "__call__": lambda self: self.now})()
    client = make_app(settings, clock=clock).test_client()
    client.post("/admin/login", data={"name": "ed", "password": "correct horse battery"})

    def csrf() -> str:
        page = client.get("/admin/").get_data(as_text=True)
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    page = client.get(f"/admin/trigger?slot=evening&timezone={DENVER}").get_data(as_text=True)
    assert "Send to 40 readers now" in page
    client.post("/admin/trigger", data={"slot": "evening", "timezone": DENVER, "csrf": csrf()})
    # It exists now: no button, whatever the readers.
    page = client.get(f"/admin/trigger?slot=evening&timezone={DENVER}").get_data(as_text=True)
    assert "exists already" in page and "Send to" not in page
    # Nothing published since: the morning of tomorrow forced early would be empty.
    page = client.get(f"/admin/trigger?slot=morning&timezone={DENVER}&day=2026-11-30").get_data(
        as_text=True
    )
    assert "still ahead" in page and "Send to" not in page and "Force it" in page
    page = client.get(
        f"/admin/trigger?slot=morning&timezone={DENVER}&day=2026-11-30&force=1"
    ).get_data(as_text=True)
    assert "nothing would be sent" in page and "Send to" not in page, page
    r = client.post(
        "/admin/trigger",
        data={
            "slot": "morning",
            "timezone": DENVER,
            "day": "2026-11-30",
            "force": "1",
            "csrf": csrf(),
        },
    )
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/trigger")
    with make_sessionmaker(engine)() as session:
        assert store.find_edition(session, Cohort("morning", date(2026, 11, 30), DENVER)) is None
        # The overview shows the evening sent early as past: the next is tomorrow's.
        nexts = overview.next_sends(session, settings, EARLY_EVENING)
        [evening] = [n for n in nexts if n.slot == "evening" and n.timezone == DENVER]
        assert evening.local.date() == date(2026, 11, 30)
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "planned")).all()
        assert [e.operator for e in entries] == ["ed", "ed"]
        assert all(e.detail.startswith("[console]") for e in entries)
        assert "forced" in entries[-1].detail
    engine.dispose()

    def finished() -> bool:
        live = client.get("/admin/live.json?edition=1").get_json()
        return live["editions"][0]["status"] == "done"  # the page drops it from Sending now

    wait_for(finished, 20, "the evening edition to finish")
