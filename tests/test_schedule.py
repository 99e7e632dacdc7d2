"""Send times and due cohorts across daylight-saving changes: parametrized tables."""

from datetime import UTC, date, datetime, time, timedelta

import pytest

from digest.editions.schedule import Cohort, due_cohorts, local_day, next_day_of, send_at

TIMES = {"morning": time(6, 0), "evening": time(17, 0)}


@pytest.mark.parametrize(
    ("timezone", "day", "slot_time", "expected_utc"),
    [
        # Sydney: AEST (+10) until the first Sunday of October, AEDT (+11) after.
        ("Australia/Sydney", date(2026, 10, 3), time(6), datetime(2026, 10, 2, 20, 0, tzinfo=UTC)),
        ("Australia/Sydney", date(2026, 10, 4), time(6), datetime(2026, 10, 3, 19, 0, tzinfo=UTC)),
        ("Australia/Sydney", date(2026, 10, 4), time(17), datetime(2026, 10, 4, 6, 0, tzinfo=UTC)),
        # ... and back to AEST on the first Sunday of April.
        ("Australia/Sydney", date(2026, 4, 4), time(6), datetime(2026, 4, 3, 19, 0, tzinfo=UTC)),
        ("Australia/Sydney", date(2026, 4, 5), time(6), datetime(2026, 4, 4, 20, 0, tzinfo=UTC)),
        # London: GMT to BST on the last Sunday of March, back on the last Sunday of October.
        ("Europe/London", date(2026, 3, 28), time(6), datetime(2026, 3, 28, 6, 0, tzinfo=UTC)),
        ("Europe/London", date(2026, 3, 29), time(6), datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
        ("Europe/London", date(2026, 10, 25), time(6), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),
        ("Europe/London", date(2026, 10, 24), time(17), datetime(2026, 10, 24, 16, 0, tzinfo=UTC)),
        # A wall time inside the spring-forward gap lands just after the jump.
        ("Europe/London", date(2026, 3, 29), time(1, 30), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        # A repeated wall time (autumn) resolves to its first occurrence.
        (
            "Europe/London",
            date(2026, 10, 25),
            time(1, 30),
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        ),
        ("America/New_York", date(2026, 3, 8), time(6), datetime(2026, 3, 8, 10, 0, tzinfo=UTC)),
        ("Asia/Kolkata", date(2026, 6, 1), time(6), datetime(2026, 6, 1, 0, 30, tzinfo=UTC)),
    ],
)
def test_send_at(timezone: str, day: date, slot_time: time, expected_utc: datetime) -> None:
    assert send_at(slot_time, day, timezone) == expected_utc


@pytest.mark.parametrize(
    ("timezone", "start"),
    [
        ("Australia/Sydney", datetime(2026, 9, 30, tzinfo=UTC)),  # spring forward Oct 4
        ("Australia/Sydney", datetime(2026, 4, 1, tzinfo=UTC)),  # fall back Apr 5
        ("Europe/London", datetime(2026, 3, 25, tzinfo=UTC)),  # spring forward Mar 29
        ("Europe/London", datetime(2026, 10, 21, tzinfo=UTC)),  # fall back Oct 25
    ],
)
def test_ticking_clock_fires_every_edition_once_at_local_send_time(
    timezone: str, start: datetime
) -> None:
    """A beat ticking every 5 minutes for 8 days: each (slot, day) becomes due once,
    at its local 06:00 / 17:00, never skipped or doubled by the clock change."""
    first_due: dict[Cohort, datetime] = {}
    tick = start
    while tick < start + timedelta(days=8):
        for due in due_cohorts(tick, {timezone}, TIMES, timedelta(hours=2)):
            first_due.setdefault(due.cohort, tick)
        tick += timedelta(minutes=5)
    days = sorted({c.local_day for c in first_due})
    # The first two local days were already under way when the clock started.
    for day in days[2:-1]:
        for slot, wall in TIMES.items():
            fired = first_due[Cohort(slot, day, timezone)]
            expected = send_at(wall, day, timezone)
            assert expected <= fired < expected + timedelta(minutes=5), (slot, day)
            assert local_day(fired, timezone) == day
    assert len(days[2:-1]) >= 6


def test_due_cohorts_marks_late_editions_missed() -> None:
    now = datetime(2026, 11, 29, 23, 0, tzinfo=UTC)  # 10:00 in Sydney on the 30th
    due = {
        (d.cohort.slot, d.cohort.local_day): d
        for d in due_cohorts(now, {"Australia/Sydney"}, TIMES, timedelta(hours=2))
    }
    morning = due[("morning", date(2026, 11, 30))]
    assert morning.missed  # 06:00 was four hours ago, past the two-hour catch-up
    assert ("evening", date(2026, 11, 30)) not in due  # not yet
    inside = due_cohorts(now - timedelta(hours=3), {"Australia/Sydney"}, TIMES, timedelta(hours=2))
    assert not [d for d in inside if d.cohort.local_day == date(2026, 11, 30)][0].missed


def test_next_day_of() -> None:
    before = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)  # 05:00 Sydney, 30 Nov
    after = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)  # 07:00 Sydney, 30 Nov
    assert next_day_of(before, "Australia/Sydney", time(6)) == date(2026, 11, 30)
    assert next_day_of(after, "Australia/Sydney", time(6)) == date(2026, 12, 1)
