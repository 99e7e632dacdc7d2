"""What the tasks decide between pipeline calls (digest/editions/dispatch.py), in-process."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from digest import store
from digest.config import Settings
from digest.editions import control, dispatch, guard, sending
from digest.editions.sending import BatchReport
from digest.errors import ConfigError, InvalidInput
from digest.feeds.sanitize import clean_summary
from digest.models import AuditEntry, Delivery, Edition

LONDON = "Europe/London"
TICK = datetime(2026, 11, 29, 6, 5, tzinfo=UTC)  # 06:05 in London, 17:05 in Sydney


def seed(session, tz: str, readers: int, when: datetime = TICK) -> None:
    store.insert_articles(
        session,
        [
            {
                "guid": f"g{i}",
                "url": f"https://news.example.com/{i}",
                "title": f"Story {i}",
                "summary_html": clean_summary(f"<p>Story {i}</p>"),
                "section": "news",
                "priority": 0,
                "published_at": when - timedelta(hours=1, minutes=i),
                "seen_at": when - timedelta(hours=1, minutes=i),
                "image_url": None,
                "feed_id": None,
            }
            for i in range(3)
        ],
    )
    for i in range(readers):
        store.add_subscriber(
            session, f"r{i}@example.com", when, timezone=tz, evening=False, status="active"
        )
    session.commit()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-29T05:00:00+00:00", datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
        ("2026-03-29T06:00:00+01:00", datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
        ("2026-04-05T06:00:00+10:00", datetime(2026, 4, 4, 20, 0, tzinfo=UTC)),
    ],
)
def test_parse_now_reads_iso_instants_as_utc(text: str, expected: datetime) -> None:
    parsed = dispatch.parse_now(text)
    assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize("text", ["2026-03-29T05:00:00", "yesterday", ""])
def test_parse_now_refuses_naive_or_garbled_instants(text: str) -> None:
    with pytest.raises(InvalidInput):
        dispatch.parse_now(text)


def test_parse_now_defaults_to_the_real_clock() -> None:
    before = datetime.now(UTC)
    assert before <= dispatch.parse_now(None) <= datetime.now(UTC)


def test_plan_slot_fans_out_a_new_edition_once(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=5)
    [first] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    assert first.plan.created and first.plan.status == "sending"
    assert [len(b) for b in first.batches] == [2, 2, 1]
    ids = sorted(i for b in first.batches for i in b)
    assert ids == store.delivery_ids(session, first.plan.edition_id)

    [again] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    assert (again.plan.edition_id, again.plan.created, again.batches) == (
        first.plan.edition_id,
        False,
        [],
    )
    # A task that came back after its worker died fans out what is still queued.
    [resumed] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, resume=True)
    assert sorted(i for b in resumed.batches for i in b) == ids
    assert session.scalar(select(Edition.id).where(Edition.slot == "morning")) is not None
    assert len(store.delivery_ids(session, first.plan.edition_id)) == 5


def test_plan_slot_without_timezone_plans_every_timezone(session, settings: Settings) -> None:
    seed(session, LONDON, readers=2)
    fanouts = dispatch.plan_slot(session, settings, "morning", TICK, day=date(2026, 11, 29))
    zones = {f.plan.cohort.timezone for f in fanouts}
    assert zones == {LONDON, settings.default_timezone}
    summary = next(f.summary() for f in fanouts if f.plan.cohort.timezone == LONDON)
    assert summary["queued"] == 2 and summary["batches"] == 1
    assert "@" not in repr([f.summary() for f in fanouts])


@pytest.mark.parametrize(("slot", "timezone"), [("lunch", None), ("morning", "Mars/Olympus_Mons")])
def test_plan_slot_refuses_unknown_slots_and_zones(
    session, settings: Settings, slot: str, timezone: str | None
) -> None:
    with pytest.raises(ConfigError):
        dispatch.plan_slot(session, settings, slot, TICK, timezone=timezone)
    assert session.scalar(select(Edition.id)) is None


def test_dispatch_due_batches_due_cohorts_and_not_missed_ones(session, settings) -> None:
    seed(session, LONDON, readers=3)
    fanouts = dispatch.dispatch_due(session, settings, TICK)
    by_cohort = {str(f.plan.cohort): f for f in fanouts}
    sending = by_cohort[f"morning 2026-11-29 {LONDON}"]
    assert sending.plan.status == "sending" and sum(len(b) for b in sending.batches) == 3
    # Sydney (the default timezone) has no readers: no edition there, not even "missed".
    assert {f.plan.cohort.timezone for f in fanouts} == {LONDON}
    assert dispatch.dispatch_due(session, settings, TICK + timedelta(minutes=1)) == []


def test_a_cohort_with_readers_planned_too_late_is_recorded_missed(session, settings) -> None:
    seed(session, LONDON, readers=2, when=TICK - timedelta(days=1))
    late = TICK + timedelta(minutes=settings.catchup_minutes + 5)
    [fanout] = dispatch.dispatch_due(session, settings, late)
    assert fanout.plan.status == "missed" and fanout.batches == []


def test_sweep_batches_rows_whose_lease_ran_out(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=3)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    ids = [i for b in fanout.batches for i in b]
    store.claim_deliveries(session, ids, TICK, timedelta(seconds=settings.lease_seconds))
    session.commit()
    assert dispatch.sweep(session, settings, TICK + timedelta(seconds=10)) == []
    later = TICK + timedelta(seconds=settings.lease_seconds + 1)
    assert [len(b) for b in dispatch.sweep(session, settings, later)] == [2, 1]
    assert store.edition_counts(session, fanout.plan.edition_id) == {"queued": 3}


def test_retry_edition_requeues_the_chosen_statuses(session, settings: Settings) -> None:
    seed(session, LONDON, readers=3)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    a, b, c = fanout.batches[0]
    session.execute(update(Delivery).where(Delivery.id == a).values(status="failed"))
    session.execute(update(Delivery).where(Delivery.id == b).values(status="deferred"))
    session.execute(update(Delivery).where(Delivery.id == c).values(status="sent"))
    session.commit()
    count, batches = dispatch.retry_edition(
        session, settings, fanout.plan.edition_id, ["failed"], TICK
    )
    assert (count, batches) == (1, [[a]])
    count, batches = dispatch.retry_edition(
        session, settings, fanout.plan.edition_id, ["failed", "deferred"], TICK
    )
    assert (count, batches) == (1, [[a, b]])
    with pytest.raises(InvalidInput):
        dispatch.retry_edition(session, settings, fanout.plan.edition_id, [], TICK)


def test_next_retry_says_which_rows_and_when(session, settings: Settings) -> None:
    seed(session, LONDON, readers=3)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    a, b, c = fanout.batches[0]
    assert dispatch.next_retry(session, [a, b, c], TICK) is None
    for delivery_id, seconds in ((a, 120), (b, 60)):
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(status="deferred", next_attempt_at=TICK + timedelta(seconds=seconds))
        )
    session.commit()
    assert dispatch.next_retry(session, [a, b, c], TICK) == ([a, b], 60.0)
    assert dispatch.next_retry(session, [a, b], TICK + timedelta(hours=1)) == ([a, b], 0.0)


def test_next_retry_skips_the_query_after_a_batch_that_deferred_nothing(
    session, settings: Settings
) -> None:
    """A batch that claimed every row and deferred none cannot leave one waiting: no
    query. One that deferred a row, or could not claim one, asks the database."""
    from sqlalchemy import event

    from digest.editions.lanes import BatchReport

    seed(session, LONDON, readers=3)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON)
    ids = fanout.batches[0]
    session.execute(
        update(Delivery)
        .where(Delivery.id == ids[0])
        .values(status="deferred", next_attempt_at=TICK + timedelta(seconds=30))
    )
    session.commit()
    statements: list[str] = []
    engine = session.get_bind()

    def listener(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        clean = BatchReport(claimed=3, sent=3)
        assert dispatch.next_retry(session, ids, TICK, clean) is None
        assert statements == []
        short = BatchReport(claimed=2, sent=2)  # one row was not claimable: it is asked
        assert dispatch.next_retry(session, ids, TICK, short) == ([ids[0]], 30.0)
        assert [q for q in statements if "deferred" in q.lower() or "next_attempt_at" in q]
        deferred = BatchReport(claimed=3, sent=2, deferred=1)
        assert dispatch.next_retry(session, ids, TICK, deferred) == ([ids[0]], 30.0)
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_counts_leave_out_error_texts() -> None:
    report = BatchReport(claimed=2, sent=1, failed=1, errors=["x@example.com: 550 no"])
    assert dispatch.counts(report) == {
        "claimed": 2,
        "sent": 1,
        "deferred": 0,
        "failed": 1,
        "suppressed": 0,
    }


def test_chunks_match_the_batch_size_setting() -> None:
    assert [len(c) for c in sending.chunks(list(range(1201)), 500)] == [500, 500, 201]


def test_no_edition_is_recorded_for_a_cohort_nobody_reads(session, settings) -> None:
    """Before the first reader, beat's ticks record nothing (not dozens of 'missed')."""
    for hours in range(0, 48, 3):
        assert dispatch.dispatch_due(session, settings, TICK + timedelta(hours=hours)) == []
    assert session.scalar(select(Edition.id)) is None
    seed(session, LONDON, readers=1, when=TICK + timedelta(days=2))
    fanouts = dispatch.dispatch_due(session, settings, TICK + timedelta(days=2))
    assert [f.plan.cohort.timezone for f in fanouts] == [LONDON]
    assert all(f.plan.status != "missed" for f in fanouts)


# --- planning a chunk at a time (the tasks' plans) -----------------------------------------


def _edition(session, edition_id: int) -> Edition:
    session.expire_all()
    return session.get(Edition, edition_id)


def test_a_chunked_plan_hands_out_its_first_readers_before_the_rest_are_queued(
    session, settings: Settings
) -> None:
    settings = settings.with_(batch_size=2)  # the plan queues 4 readers, each chunk 40
    seed(session, LONDON, readers=50)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    plan = fanout.plan
    assert plan.created and plan.queuing and plan.queued == 4
    edition_id = plan.edition_id
    assert _edition(session, edition_id).queue_after is not None
    assert "readers being queued" in _edition(session, edition_id).note

    stream = fanout.stream()
    first = [next(stream), next(stream)]
    # The first workers have their batches while 46 readers have no row yet.
    assert store.count_deliveries(session, edition_id) == 4
    rest = list(stream)
    ids = [i for b in first + rest for i in b]
    assert [len(b) for b in first + rest] == [2] * 25
    assert len(set(ids)) == 50 == store.count_deliveries(session, edition_id)
    readers = session.scalars(
        select(Delivery.subscriber_id).where(Delivery.edition_id == edition_id)
    ).all()
    assert len(set(readers)) == 50  # every reader once
    edition = _edition(session, edition_id)
    assert edition.queue_after is None and edition.note == "3 articles, 50 readers"
    assert fanout.summary()["queued"] == 50
    details = session.scalars(select(AuditEntry.detail)).all()
    assert any("4 queued, the rest being queued" in d for d in details)


def test_an_edition_is_not_done_while_readers_remain_to_be_queued(
    session, settings: Settings
) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=4)  # exactly the first chunk: the plan cannot know
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    edition_id = fanout.plan.edition_id
    assert fanout.plan.queuing
    # Every row queued so far is sent before the planner looks for more readers.
    session.execute(update(Delivery).values(status="sent"))
    session.commit()
    assert store.update_edition_status(session, edition_id) == "sending"
    session.commit()
    assert fanout.batches == []  # nobody else: the last (empty) chunk ends the plan
    assert _edition(session, edition_id).status == "done"
    assert _edition(session, edition_id).note == "3 articles, 4 readers"


def test_a_resumed_plan_goes_on_where_its_lost_planner_stopped(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=50)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    # The planner's worker died after handing out the first readers' batches.
    handed = [i for b in fanout.queued for i in b]
    edition_id = fanout.plan.edition_id
    assert store.count_deliveries(session, edition_id) == 4

    [resumed] = dispatch.plan_slot(
        session, settings, "morning", TICK, timezone=LONDON, resume=True, chunked=True
    )
    assert not resumed.plan.created and resumed.plan.queuing
    ids = [i for b in resumed.stream() for i in b]
    # Every queued row again (claims keep the handed-out batch from going twice).
    assert set(handed) <= set(ids) and len(ids) == len(set(ids)) == 50
    assert _edition(session, edition_id).queue_after is None
    assert store.count_deliveries(session, edition_id) == 50


def test_a_second_plan_leaves_the_queueing_to_the_first(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=10)
    [first] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    [second] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    assert second.batches == [] and second.plan.edition_id == first.plan.edition_id
    assert store.count_deliveries(session, first.plan.edition_id) == 4
    assert len([i for b in first.batches for i in b]) == 10


def test_the_sweep_queues_the_rest_of_a_plan_whose_planner_is_gone(
    session, settings: Settings
) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=50)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    edition_id = fanout.plan.edition_id  # its stream is never read: the planner died
    # Within a claim's time the planner may still be at work: the sweep leaves it.
    assert dispatch.sweep(session, settings, TICK + timedelta(seconds=1)) == []
    assert _edition(session, edition_id).queue_after is not None
    # A sweep that knows tasks wait in the broker leaves it too.
    later = TICK + timedelta(seconds=settings.claim_seconds + 1)
    assert dispatch.sweep(session, settings, later, queued_too=False) == []

    batches = dispatch.sweep(session, settings, later)
    ids = [i for b in batches for i in b]
    assert len(ids) == len(set(ids)) == 50 == store.count_deliveries(session, edition_id)
    edition = _edition(session, edition_id)
    assert edition.queue_after is None and edition.note == "3 articles, 50 readers"


def test_the_queue_cursor_moves_only_from_where_it_stood(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=10)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    edition_id = fanout.plan.edition_id
    cursor = _edition(session, edition_id).queue_after
    # A second planner that queued the same chunk finds the cursor moved and loses.
    assert store.move_queue_cursor(session, edition_id, cursor, cursor + 5)
    assert not store.move_queue_cursor(session, edition_id, cursor, cursor + 9)
    session.commit()
    assert _edition(session, edition_id).queue_after == cursor + 5


def test_a_paused_edition_s_later_chunks_wait_for_its_resume(session, settings: Settings) -> None:
    settings = settings.with_(batch_size=2)
    seed(session, LONDON, readers=50)
    [fanout] = dispatch.plan_slot(session, settings, "morning", TICK, timezone=LONDON, chunked=True)
    edition_id = fanout.plan.edition_id
    control.pause(session, edition_id, TICK, origin=guard.CONSOLE)
    # Every reader is queued; only the rows queued before the pause are handed out.
    handed = [i for b in fanout.stream() for i in b]
    assert len(handed) == 4 and store.count_deliveries(session, edition_id) == 50
    edition = _edition(session, edition_id)
    assert (edition.status, edition.queue_after) == ("paused", None)
    assert edition.note == "3 articles, 50 readers"

    _, queued = dispatch.resume_edition(session, edition_id, TICK, 2, origin=guard.CONSOLE)
    assert len({i for b in queued for i in b}) == 50
