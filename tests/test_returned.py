"""The one place that decides what returned mail does: soft bounces counted per reader
within a window and reset by a successful delivery; hard bounces, complaints and
unsubscribes acted on; unknown and erased readers acknowledged."""

from __future__ import annotations

from datetime import timedelta

from digest import store
from digest.models import Cohort, Delivery
from digest.readers import reader_admin
from digest.readers.returned import SoftRule, act, act_on_address, clean
from tests.conftest import NOW

RULE = SoftRule(limit=3, days=14)


def reader(session, email: str = "sam@example.org") -> int:
    found = store.add_subscriber(session, email, NOW, status="active")
    session.flush()
    return found.id


def status(session, subscriber_id: int) -> str:
    session.expire_all()
    return store.get_subscriber(session, subscriber_id).status


def delivered(session, subscriber_id: int, day: int, sent_at) -> int:
    cohort = Cohort("morning", (NOW + timedelta(days=day)).date(), "UTC")
    edition = store.create_edition(
        session, cohort, send_at=sent_at, window_start=sent_at, now=sent_at
    )
    assert edition is not None
    session.add(
        Delivery(
            edition_id=edition.id,
            subscriber_id=subscriber_id,
            status="sent",
            queued_at=sent_at,
            sent_at=sent_at,
        )
    )
    session.flush()
    return edition.id


def test_three_soft_bounces_within_the_window_suppress(session) -> None:
    sid = reader(session)
    for day in range(2):
        outcome = act(session, sid, "soft", "mailbox full", "pipe", NOW + timedelta(days=day), RULE)
        assert f"soft bounce {day + 1} of 3" in outcome and "stays" in outcome
    outcome = act(session, sid, "soft", "mailbox full", "ses", NOW + timedelta(days=2), RULE)
    assert "is now bounced" in outcome
    assert status(session, sid) == "bounced"
    assert store.suppression_reason(session, "sam@example.org") == "bounced"


def test_soft_bounces_older_than_the_window_do_not_count(session) -> None:
    sid = reader(session)
    act(session, sid, "soft", "full", "pipe", NOW, RULE)
    act(session, sid, "soft", "full", "pipe", NOW + timedelta(days=1), RULE)
    outcome = act(session, sid, "soft", "full", "pipe", NOW + timedelta(days=15), RULE)
    assert "soft bounce 2 of 3" in outcome
    assert status(session, sid) == "active"


def test_a_successful_delivery_after_them_resets_the_count(session) -> None:
    sid = reader(session)
    act(session, sid, "soft", "full", "pipe", NOW, RULE)
    act(session, sid, "soft", "full", "pipe", NOW + timedelta(hours=1), RULE)
    delivered(session, sid, 1, NOW + timedelta(hours=12))  # nothing came back for it
    outcome = act(session, sid, "soft", "full", "pipe", NOW + timedelta(days=1), RULE)
    assert "soft bounce 1 of 3" in outcome
    assert status(session, sid) == "active"
    # A delivery that itself bounced is no success.
    edition_id = delivered(session, sid, 2, NOW + timedelta(days=1, hours=1))
    act(session, sid, "soft", "full", "pipe", NOW + timedelta(days=1, hours=2), RULE, edition_id)
    outcome = act(session, sid, "soft", "full", "pipe", NOW + timedelta(days=1, hours=3), RULE)
    assert "is now bounced" in outcome


def test_each_outcome_and_the_console_page(session) -> None:
    hard, complaint, leaves = (reader(session, f"{n}@example.org") for n in ("h", "c", "u"))
    assert "is now bounced" in act(session, hard, "hard", "5.1.1", "pipe", NOW, RULE)
    assert "is now complained" in act(session, complaint, "complaint", "abuse", "ses", NOW, RULE)
    assert "is now unsubscribed" in act(
        session, leaves, "unsubscribe", "list-unsub", "pipe", NOW, RULE
    )
    # A complaint covers the mailbox's variants; a bounce only its own address.
    assert store.suppression_reason(session, "c@example.org") == "complained"
    rows = store.returned_page(session)
    assert [r.kind for r in rows] == ["unsubscribe", "complaint", "hard"]
    assert [r.kind for r in store.returned_page(session, kind="complaint")] == ["complaint"]
    assert store.returned_page(session, since=NOW + timedelta(seconds=1)) == []


def test_unknown_and_erased_readers_are_acknowledged(session) -> None:
    assert act_on_address(session, "nobody@example.org", "hard", "x", "ses", NOW, RULE).startswith(
        "ignored"
    )
    sid = reader(session)
    act(session, sid, "soft", "full", "pipe", NOW, RULE)
    reader_admin.erase(session, sid, NOW)
    assert act(session, sid, "hard", "5.1.1", "pipe", NOW, RULE).startswith("ignored")
    assert store.returned_page(session) == []  # erased with the reader


def test_an_address_is_matched_exactly_never_by_variant(session) -> None:
    sid = reader(session, "vic@example.org")
    assert act_on_address(session, "vic+x@example.org", "hard", "x", "ses", NOW, RULE).startswith(
        "ignored"
    )
    assert "is now bounced" in act_on_address(
        session, "VIC@Example.org", "hard", "x", "ses", NOW, RULE
    )
    assert status(session, sid) == "bounced"


def test_report_text_loses_its_control_characters() -> None:
    assert clean("5.1.1\r\nInjected: yes\x1b[31m red\x00") == "5.1.1 Injected: yes [31m red"
