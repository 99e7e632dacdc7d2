"""The monitoring check's facts, gathered from the store (and from the broker by the
caller, which may reach it), judged by digest.operations.health.assess."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions.schedule import due_cohorts
from digest.operations.health import Facts, FeedTrouble, Health, Heart, LateCohort, assess
from digest.store import health as facts_q
from digest.store import heartbeats
from digest.store.overview import delivery_counts_since, readers_per_cohort
from digest.store.subscribers import cohort_readers_confirmed_by

HEART_MEMORY = timedelta(days=1)  # older heartbeats are not shown (beat drops them at 7 days)


def unplanned_cohorts(session: Session, settings: Settings, now: datetime) -> list[LateCohort]:
    """Cohorts with readers whose send time has passed (today or yesterday) and that
    have no edition: what beat's dispatch would plan, or record as missed, right now."""
    readers = readers_per_cohort(session, settings.default_timezone)
    zones = {zone for zone, _ in readers} | {settings.default_timezone}
    catchup = timedelta(minutes=settings.catchup_minutes)
    due = due_cohorts(now, zones, settings.send_times, catchup)
    if not due:
        return []
    planned = facts_q.cohorts_from(session, min(d.cohort.local_day for d in due))
    found = []
    for d in due:
        count = readers.get((d.cohort.timezone, d.cohort.slot), 0)
        if not count or (d.cohort.slot, d.cohort.local_day, d.cohort.timezone) in planned:
            continue
        if d.missed and not cohort_readers_confirmed_by(
            session, d.cohort, settings.default_timezone, d.send_at
        ):
            continue  # its send time came before any of its readers: nothing to plan
        cohort = d.cohort
        found.append(
            LateCohort(cohort.slot, cohort.local_day.isoformat(), cohort.timezone, d.send_at, count)
        )
    return found


def gather(
    session: Session,
    settings: Settings,
    now: datetime,
    queues: dict[str, int] | None = None,
    broker_error: str = "",
) -> Facts:
    """Everything the check judges, from the database; `queues` are the broker's
    waiting tasks per queue when the caller could ask it."""
    hearts = tuple(
        Heart(h.kind, h.name, h.seen_at, h.stopped_at)
        for h in heartbeats.heartbeats(session, now - HEART_MEMORY)
    )
    day = now - timedelta(hours=24)
    feeds = tuple(
        FeedTrouble(f.url, f.last_ok_at, (f.last_error or "").splitlines()[0][:200])
        for f in store.list_feeds(session)
        if f.last_error and not f.paused
    )
    return Facts(
        broker=bool(settings.redis_url),
        hearts=hearts,
        queues=queues,
        broker_error=broker_error,
        waiting=facts_q.waiting_counts(session),
        editions=tuple(facts_q.recent_editions(session, day)),
        unplanned=tuple(unplanned_cohorts(session, settings, now)),
        last_24h=delivery_counts_since(session, day),
        feeds=feeds,
    )


def check(
    session: Session,
    settings: Settings,
    now: datetime,
    queues: dict[str, int] | None = None,
    broker_error: str = "",
) -> Health:
    """The monitoring check's verdict now."""
    return assess(gather(session, settings, now, queues, broker_error), settings, now)
