"""When each cohort's edition is due: pure functions of `now`, computed with zoneinfo."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from digest.config import SLOTS
from digest.models import Cohort


def local_day(now: datetime, timezone: str) -> date:
    """The calendar day it is in `timezone` at the instant `now`."""
    return now.astimezone(ZoneInfo(timezone)).date()


def send_at(slot_time: time, day: date, timezone: str) -> datetime:
    """The UTC instant of `slot_time` on `day` in `timezone`.

    A wall time skipped by a daylight-saving jump resolves as if the clocks had not
    moved yet (02:30 on a spring-forward night becomes 03:30 new time); a repeated
    wall time resolves to its first occurrence. Either way the day has one instant.
    """
    local = datetime.combine(day, slot_time, tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC)


@dataclass(frozen=True)
class DueCohort:
    cohort: Cohort
    send_at: datetime
    missed: bool  # past its catch-up window: record it, do not send it late


def due_cohorts(
    now: datetime,
    timezones: list[str] | set[str],
    send_times: dict[str, time],
    catchup: timedelta,
) -> list[DueCohort]:
    """Every (slot, local day, timezone) whose send time has passed, today or yesterday."""
    due: list[DueCohort] = []
    for timezone in sorted(timezones):
        today = local_day(now, timezone)
        for day in (today - timedelta(days=1), today):
            for slot in SLOTS:
                at = send_at(send_times[slot], day, timezone)
                if at <= now:
                    due.append(DueCohort(Cohort(slot, day, timezone), at, now - at > catchup))
    return due


def next_day_of(now: datetime, timezone: str, slot_time: time) -> date:
    """The local day of the next `slot_time` at or after `now`: today's if still ahead."""
    today = local_day(now, timezone)
    return today if send_at(slot_time, today, timezone) >= now else today + timedelta(days=1)
