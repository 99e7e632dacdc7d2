"""What an operator can do to one reader (console and CLI share these)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, update

from digest import store
from digest.editions import pipeline
from digest.editions.schedule import Cohort
from digest.errors import InvalidInput, NotFound
from digest.models import Delivery
from digest.readers import accounts, reader_admin
from tests.conftest import NOW, add_articles

TZ = "Australia/Sydney"
AT = datetime(2026, 11, 29, 19, 1, tzinfo=UTC)


def reader_with_an_edition(session, settings, email: str = "ana@example.com"):
    add_articles(session, datetime(2026, 11, 29, 18, 0, tzinfo=UTC), [("Ferry", "news")])
    ana = store.add_subscriber(session, email, NOW, name="Ana", status="active", timezone=TZ)
    other = store.add_subscriber(session, "ben@example.com", NOW, status="active", timezone=TZ)
    session.commit()
    plan = pipeline.plan_edition(session, settings, Cohort("morning", date(2026, 11, 30), TZ), AT)
    return ana, other, plan


def test_view_search_and_export(session, settings) -> None:
    ana, _, plan = reader_with_an_edition(session, settings)
    assert [s.id for s in reader_admin.search(session, "ANA@")] == [ana.id]
    assert reader_admin.search(session, "%") == []  # LIKE wildcards are literal
    assert reader_admin.find_reader(session, str(ana.id)).id == ana.id
    assert reader_admin.find_reader(session, "Ana@Example.com").id == ana.id
    with pytest.raises(NotFound):
        reader_admin.find_reader(session, "nobody@example.com")
    data = reader_admin.export_person(session, ana.id, settings.default_timezone)
    assert data["email"] == "ana@example.com" and data["name"] == "Ana"
    assert data["deliveries"][0]["edition_id"] == plan.edition_id
    assert data["deliveries"][0]["local_day"] == "2026-11-30"


def test_suppress_blocks_the_sign_up_form_for_good(session, settings) -> None:
    ana, _, _ = reader_with_an_edition(session, settings)
    reader_admin.suppress(session, ana.id, NOW)
    session.commit()
    assert ana.status == "unsubscribed"
    assert store.suppression_reason(session, ana.email) == "operator"
    fields = {
        "email": ana.email,
        "name": "",
        "timezone": None,
        "morning": True,
        "evening": True,
        "sections": "",
    }
    notice = accounts.request_subscription(session, settings, fields, NOW)
    assert notice.kind == "none"


def test_update_checks_like_the_form(session, settings) -> None:
    ana, _, _ = reader_with_an_edition(session, settings)
    form = accounts.Form(name="Ana B", timezone="Europe/London", editions="evening")
    reader_admin.update(session, ana.id, form)
    assert (ana.name, ana.timezone, ana.morning, ana.evening) == (
        "Ana B",
        "Europe/London",
        False,
        True,
    )
    with pytest.raises(InvalidInput, match="timezone"):
        reader_admin.update(session, ana.id, accounts.Form(timezone="Mars/Base"))


def test_erase_keeps_only_the_hash_and_anonymous_counts(session, settings) -> None:
    ana, _, plan = reader_with_an_edition(session, settings)
    before = store.edition_counts(session, plan.edition_id)
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == ana.id)
        .values(last_error="550 ana@example.com unknown")
    )
    reader_admin.erase(session, ana.id, NOW)
    session.commit()
    assert store.find_subscriber(session, "ana@example.com") is None
    erased = store.get_subscriber(session, ana.id)
    assert (erased.status, erased.name, erased.timezone) == ("erased", "", None)
    assert "ana" not in erased.email
    assert store.is_suppressed(session, "ana@example.com")  # never mailed by mistake
    assert store.edition_counts(session, plan.edition_id) == {
        **before,
        "suppressed": before.get("suppressed", 0) + 1,
        "queued": before["queued"] - 1,
    }
    errors = session.scalars(
        select(Delivery.last_error).where(Delivery.subscriber_id == ana.id)
    ).all()
    assert errors == [None]  # the delivery row stays, anonymous
    # Erasing twice changes nothing; the person may sign up again later.
    reader_admin.erase(session, ana.id, NOW)
    fields = {
        "email": "ana@example.com",
        "name": "",
        "timezone": None,
        "morning": True,
        "evening": True,
        "sections": "",
    }
    assert accounts.request_subscription(session, settings, fields, NOW).kind == "confirm"
