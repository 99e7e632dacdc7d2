"""What an operator sees first: the next send of each cohort, editions being sent with
their progress, the last day's deliveries, feed health, readers, sign-ups per day.

A function of the session and `now`; the console renders it, and its live part is
served as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from digest import store
from digest.config import SLOTS, Settings
from digest.editions.schedule import Cohort, local_day, send_at
from digest.models import Feed
from digest.store import clicks
from digest.store import overview as q

RATE_WINDOW = timedelta(seconds=30)


@dataclass(frozen=True)
class NextSend:
    slot: str
    timezone: str
    local: datetime
    utc: datetime
    readers: int
    due_now: bool


@dataclass(frozen=True)
class Progress:
    edition_id: int
    slot: str
    local_day: date
    timezone: str
    total: int
    done: int
    sent: int
    deferred: int
    failed: int
    suppressed: int
    waiting: int
    per_second: float
    status: str = "sending"  # or paused; the live view drops rows that finished

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["local_day"] = self.local_day.isoformat()
        return data


@dataclass(frozen=True)
class Overview:
    next_sends: list[NextSend]
    sending: list[Progress]
    last_24h: dict[str, int]
    feeds: list[Feed]
    readers: dict[str, int]
    chart: list[tuple[date, int, int]]
    # The sunset (reader mode): unsubscribed as inactive in 30 days, asked and waiting.
    sunset: tuple[int, int] | None = None


def next_sends(session: Session, settings: Settings, now: datetime) -> list[NextSend]:
    """Each cohort's next edition: the first send time ahead, or one due and not planned.
    A cohort whose edition exists (sent early, say) is past: its next one is shown."""
    readers = q.readers_per_cohort(session, settings.default_timezone)
    zones = {zone for zone, _ in readers} | {settings.default_timezone}
    catchup = timedelta(minutes=settings.catchup_minutes)
    found = []
    for zone in sorted(zones):
        today = local_day(now, zone)
        for slot in SLOTS:
            for ahead in range(3):
                day = today + timedelta(days=ahead)
                at = send_at(settings.send_time(slot), day, zone)
                if at + catchup <= now:
                    continue  # past: sent, or missed
                if store.find_edition(session, Cohort(slot, day, zone)) is not None:
                    continue  # planned already, maybe early: not upcoming
                local = at.astimezone(ZoneInfo(zone))
                count = readers.get((zone, slot), 0)
                found.append(NextSend(slot, zone, local, at, count, at <= now))
                break
    return sorted(found, key=lambda n: (n.utc, n.timezone, n.slot))


def progress(
    session: Session, now: datetime, edition_ids: list[int] | None = None
) -> list[Progress]:
    """Progress of the editions being sent (or of the given ones)."""
    editions = (
        [store.get_edition(session, i) for i in edition_ids]
        if edition_ids is not None
        else q.editions_with_status(session, "sending") + q.editions_with_status(session, "paused")
    )
    ids = [e.id for e in editions]
    counts = q.counts_by_edition(session, ids)
    recent = q.sent_since(session, ids, now - RATE_WINDOW)
    out = []
    for e in editions:
        c = counts[e.id]
        settled = sum(c.get(s, 0) for s in ("sent", "failed", "suppressed"))
        out.append(
            Progress(
                edition_id=e.id,
                slot=e.slot,
                local_day=e.local_day,
                timezone=e.timezone,
                total=sum(c.values()),
                done=settled,
                sent=c.get("sent", 0),
                deferred=c.get("deferred", 0),
                failed=c.get("failed", 0),
                suppressed=c.get("suppressed", 0),
                waiting=c.get("queued", 0) + c.get("sending", 0),
                per_second=round(recent.get(e.id, 0) / RATE_WINDOW.total_seconds(), 1),
                status=e.status,
            )
        )
    return out


def chart(session: Session, now: datetime, days: int = 30) -> list[tuple[date, int, int]]:
    """(day, sign-ups confirmed, unsubscribes) for each of the last `days` UTC days."""
    first = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    signups = q.signups_per_day(session, since)
    leaving = q.unsubscribes_per_day(session, since)
    every = [first + timedelta(days=i) for i in range(days)]
    return [(d, signups.get(d, 0), leaving.get(d, 0)) for d in every]


def overview(session: Session, settings: Settings, now: datetime) -> Overview:
    return Overview(
        next_sends=next_sends(session, settings, now),
        sending=progress(session, now),
        last_24h=q.delivery_counts_since(session, now - timedelta(hours=24)),
        feeds=store.list_feeds(session),
        readers=store.count_subscribers(session),
        chart=chart(session, now),
        sunset=sunset_counts(session, settings, now),
    )


def sunset_counts(session: Session, settings: Settings, now: datetime) -> tuple[int, int] | None:
    """(unsubscribed as inactive in the last 30 days, questions open); None when off."""
    if not settings.sunset_editions:
        return None
    since = now - timedelta(days=30)
    return clicks.inactive_unsubscribes(session, since), clicks.pending_sunsets(session)
