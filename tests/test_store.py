"""Store rules that hold on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from digest import store
from digest.editions import pipeline
from digest.editions.schedule import Cohort
from digest.models import Delivery, Edition

NOW = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
COHORT = Cohort("morning", date(2026, 11, 30), "Australia/Sydney")


def test_edition_is_unique_per_cohort(session) -> None:
    first = store.create_edition(session, COHORT, send_at=NOW, window_start=NOW, now=NOW)
    second = store.create_edition(session, COHORT, send_at=NOW, window_start=NOW, now=NOW)
    session.commit()
    assert first is not None and second is None
    assert session.scalar(select(func.count()).select_from(Edition)) == 1


def test_delivery_is_unique_per_edition_and_subscriber(session) -> None:
    edition = store.create_edition(session, COHORT, send_at=NOW, window_start=NOW, now=NOW)
    sub = store.add_subscriber(session, "ana@example.com", NOW, status="active")
    assert edition is not None
    session.add(Delivery(edition_id=edition.id, subscriber_id=sub.id, queued_at=NOW))
    session.commit()
    session.add(Delivery(edition_id=edition.id, subscriber_id=sub.id, queued_at=NOW))
    with pytest.raises(IntegrityError):
        session.commit()


def test_articles_are_stored_once_by_guid_then_url(session) -> None:
    base = {
        "title": "T",
        "summary_html": "",
        "section": "news",
        "priority": 0,
        "image_url": None,
        "feed_id": None,
        "published_at": NOW,
        "seen_at": NOW,
    }
    assert (
        store.insert_articles(
            session,
            [
                {**base, "guid": "g1", "url": "https://x.example/1"},
                {**base, "guid": "g1", "url": "https://x.example/other"},  # same guid
                {**base, "guid": None, "url": "https://x.example/1"},  # same URL
                {**base, "guid": "g2", "url": "https://x.example/2"},
            ],
        )
        == 2
    )
    assert (
        store.insert_articles(session, [{**base, "guid": "g3", "url": "https://x.example/2"}]) == 0
    )


def test_concurrent_planners_make_one_edition(settings, sessions) -> None:
    """Five planners at once (threads, separate connections): one edition, one row each."""
    with sessions() as session:
        for i in range(30):
            store.add_subscriber(
                session, f"r{i}@example.com", NOW, status="active", timezone="Australia/Sydney"
            )
        store.insert_articles(
            session,
            [
                {
                    "guid": "a",
                    "url": "https://x.example/a",
                    "title": "A",
                    "summary_html": "",
                    "section": "news",
                    "priority": 0,
                    "image_url": None,
                    "feed_id": None,
                    "published_at": NOW - timedelta(hours=3),
                    "seen_at": NOW - timedelta(hours=3),
                }
            ],
        )
        session.commit()
    results, errors = [], []
    barrier = threading.Barrier(5)

    def plan() -> None:
        try:
            with sessions() as s:
                barrier.wait()
                results.append(pipeline.plan_edition(s, settings, COHORT, NOW))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=plan) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({r.edition_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Edition)) == 1
        assert session.scalar(select(func.count()).select_from(Delivery)) == 30


def test_migrations_match_the_models(database_url) -> None:
    """`digest init` builds exactly the schema the models describe, on either database."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from digest.db import make_engine
    from digest.models import Base

    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
