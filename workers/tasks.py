"""Thin tasks: ids and ISO strings in, digest's functions called, batches fanned out.

Arguments never carry rows, addresses or secrets; each task re-reads what it needs.
`now` (ISO 8601 with offset) pins the clock for tests and operators; beat omits it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import OperationalError

from digest.editions import control, dispatch, guard, sending
from digest.errors import ConfigError, DigestError
from digest.feeds.ingest import ingest_all
from digest.mail.relays import make_transport
from digest.operations import alerts, monitor
from digest.readers import sunset as upkeep
from workers.app import app, runtime
from workers.client import BrokerUnavailable, queue_lengths
from workers.config import outage_backoff_max, outage_retries, send_options

settings = runtime.settings

# The database being unreachable (restarting, failing over, SQLite busy past its
# timeout) is retried with capped exponential backoff for DIGEST_OUTAGE_SECONDS; digest's
# own errors are not. A send batch's retries for deferred rows come on top: how often a
# delivery is tried is its own DIGEST_MAX_ATTEMPTS, counted on the row.
BACKOFF_MAX = outage_backoff_max(settings)
OPTIONS = {
    "max_redeliveries": settings.task_max_redeliveries,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": BACKOFF_MAX,
    # No jitter: it would shorten the total wait below the outage it must outlast.
    "retry_jitter": False,
    "max_retries": outage_retries(settings.outage_seconds, BACKOFF_MAX) + settings.max_attempts,
}


def fan_out(batches: Iterable[list[int]], now: str | None, *, first: bool = False) -> list[str]:
    """One send_batch task per batch of delivery ids, over one broker connection;
    returns their task ids. `first`: ahead of the backlog (re-queued rows)."""
    options = send_options(first=first)
    with app.producer_or_acquire() as producer:
        return [
            send_batch.apply_async((batch,), {"now": now}, producer=producer, **options).id
            for batch in batches
        ]


def _redelivered(task: Any) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered")) or bool(task.request.retries)


@app.task(name="digest.dispatch_due", **OPTIONS)
def dispatch_due(now: str | None = None) -> dict[str, Any]:
    """Plan every cohort whose send time has passed, then fan out its sends."""
    try:
        at = dispatch.task_now(now)
    except DigestError as exc:
        return {"refused": str(exc), "editions": [], "batches": []}
    with runtime.session() as session:
        fanouts = dispatch.dispatch_due(session, settings, at)
        # Enqueued as the ids stream from the database (the session must stay open).
        batches = [tid for f in fanouts for tid in fan_out(f.stream(), now)]
        return {"editions": [f.summary() for f in fanouts], "batches": batches}


@app.task(bind=True, name="digest.plan_edition", **OPTIONS)
def plan_edition(
    self: Any,
    slot: str,
    day: str | None = None,
    timezone: str | None = None,
    now: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Create the slot's edition (one timezone, or all) and fan out its sends, once,
    as the guard allows: a refusal is the task's result (`refused`, with the reason),
    never a traceback. No Celery client may force a day that is still ahead."""
    who = f"{requested_by[:40]} via celery" if requested_by else ""
    try:
        with runtime.session() as session:
            fanouts = dispatch.plan_slot(
                session,
                settings,
                slot,
                dispatch.task_now(now),
                day=dispatch.parse_day(day),
                timezone=timezone,
                resume=_redelivered(self),
                origin=guard.CELERY,
                who=who,
                chunked=True,
            )
            # Enqueued as they are queued: workers send the first readers' batches
            # while this task queues the rest.
            batches = [tid for f in fanouts for tid in fan_out(f.stream(), now)]
            # Inside the session: a summary counts rows, and a session used after it
            # closed would hold a transaction (on SQLite, the write lock) until collected.
            summaries = [f.summary() for f in fanouts]
    except (DigestError, ConfigError) as exc:
        return {"refused": str(exc), "editions": [], "batches": []}
    refused = [f"{s['cohort']}: {s['reason']}" for s in summaries if s.get("refused")]
    result: dict[str, Any] = {"editions": summaries, "batches": batches}
    if refused:
        result["refused"] = "; ".join(refused)
    return result


CONTROLS = ("pause", "resume", "cancel", "replan")


@app.task(name="digest.control_edition", **OPTIONS)
def control_edition(
    edition_id: int, action: str, now: str | None = None, requested_by: str | None = None
) -> dict[str, Any]:
    """Pause, resume, cancel or re-plan (a cancelled one, for the readers it did not
    reach) an edition; resume and re-plan fan out its queued rows. A refusal is the
    result, never a traceback."""
    who = f"{requested_by[:40]} via celery" if requested_by else ""
    if action not in CONTROLS:
        return {"refused": f"action must be one of {', '.join(CONTROLS)}, not {action!r}"}
    try:
        at = dispatch.task_now(now)
        with runtime.session() as session:
            batches: list[str] = []
            if action == "pause":
                done = control.pause(session, int(edition_id), at, origin=guard.CELERY, who=who)
            elif action == "cancel":
                done = control.cancel(session, int(edition_id), at, origin=guard.CELERY, who=who)
            elif action == "resume":
                done, queued = dispatch.resume_edition(
                    session, int(edition_id), at, settings.batch_size, origin=guard.CELERY, who=who
                )
                batches = fan_out(queued, now)
            else:
                done, _ = control.replan(
                    session, settings, int(edition_id), at, origin=guard.CELERY, who=who
                )
                batches = fan_out(
                    dispatch.queued_batches(session, int(edition_id), settings.batch_size), now
                )
    except (DigestError, ConfigError, ValueError) as exc:
        return {"refused": str(exc)}
    return {"edition": done.edition_id, "standing": done.describe(), "batches": batches}


def progress_fields(done: int, total: int) -> dict[str, Any]:
    """A progress event's fields. Flower copies every field onto its task and shows the
    standard ones: `result` carries "done of total" (the success event replaces it),
    and nothing may be called `sent`, Flower's time the task was sent."""
    return {"result": f"{done} of {total} messages done", "done": done, "total": total}


@app.task(bind=True, name="digest.send_batch", **OPTIONS)
def send_batch(self: Any, delivery_ids: list[int], now: str | None = None) -> dict[str, Any]:
    """Claim and send these deliveries over reused SMTP connections; retry deferred ones."""
    at = dispatch.parse_now(now)

    def progress(done: int, total: int) -> None:
        # The result backend answers Flower's API and AsyncResult; the event updates
        # Flower's live task list, which is built from events alone.
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})
        self.send_event("task-progress", **progress_fields(done, total))

    progress(0, len(delivery_ids))
    with runtime.session() as session:
        report = sending.send_batch(
            session, settings, make_transport(settings), delivery_ids, at, progress
        )
        again = dispatch.next_retry(session, delivery_ids, at, report)
    if again or report.handed_back:
        # Deferred rows go again when the first is due (each row counts its own
        # attempts); rows the lanes handed back unsent go again at once.
        ids, countdown = again or ([], 0.0)
        if report.handed_back:
            # At once if the batch got somewhere; after a pause if it sent nothing (its
            # relays are all down, say), so that it does not spin.
            pause = 0.0 if report.done else float(min(30, settings.claim_seconds))
            if report.retry_after:  # no relay takes mail: again when the first is back
                pause = report.retry_after
            ids, countdown = sorted(set(ids) | set(report.handed_back)), pause
        # A pinned clock moves on by the delay, so the retry finds its rows due.
        later = None if now is None else (at + timedelta(seconds=countdown)).isoformat()
        # Ahead of the backlog: these rows were due already (or held by this batch).
        raise self.retry(
            args=(ids,), kwargs={"now": later}, countdown=countdown, **send_options(first=True)
        )
    return dispatch.counts(report)


# Polling is bounded per feed (timeout, size cap), not by the send lease: many slow
# feeds may take longer than a batch may.
@app.task(name="digest.ingest_feeds", soft_time_limit=1800, time_limit=1860, **OPTIONS)
def ingest_feeds(now: str | None = None) -> dict[str, int]:
    """Poll every feed once."""
    with runtime.session() as session:
        reports = ingest_all(session, settings, dispatch.parse_now(now))
    return {
        "feeds": len(reports),
        "new": sum(r.new for r in reports),
        "failed": sum(1 for r in reports if r.error),
    }


@app.task(name="digest.sweep", **OPTIONS)
def sweep(now: str | None = None) -> dict[str, Any]:
    """Re-queue deliveries no worker is carrying and send them again."""
    try:
        backlog = sum(queue_lengths(settings).values())
    except BrokerUnavailable:
        backlog = 0
    with runtime.session() as session:
        # Tasks still waiting in Redis carry the queued rows; only when none wait are
        # old queued rows taken as lost (Redis was flushed or restarted empty).
        batches = dispatch.sweep(
            session, settings, dispatch.parse_now(now), queued_too=backlog == 0
        )
    return {
        "requeued": sum(len(b) for b in batches),
        "batches": fan_out(batches, now, first=True),
    }


@app.task(name="digest.read_bounce_mailbox", soft_time_limit=600, time_limit=660, **OPTIONS)
def read_bounce_mailbox(now: str | None = None) -> dict[str, int]:
    """Read the bounce mailbox (DIGEST_INBOUND_IMAP_URL) once."""
    from digest.operations.bounce_mailbox import read_bounce_mailbox as read

    tally = read(settings, runtime.session, settings.inbound_imap_url, dispatch.parse_now(now))
    return {"read": tally.seen, "processed": tally.processed, "left": tally.left}


@app.task(name="digest.watch", **OPTIONS)
def watch(now: str | None = None) -> dict[str, Any]:
    """The monitoring check; mails DIGEST_ALERT_TO the CRITICAL conditions that appeared
    or cleared (beat runs it every minute when DIGEST_ALERT_TO is set)."""
    try:
        queues, broker_error = queue_lengths(settings), ""
    except BrokerUnavailable as exc:
        queues, broker_error = None, str(exc)
    at = dispatch.parse_now(now)
    with runtime.session() as session:
        health = monitor.check(session, settings, at, queues, broker_error)
        said = alerts.alert(session, settings, make_transport(settings), health, at)
    return {"level": health.name, "problems": len(health.problems), "mails": len(said)}


@app.task(name="digest.click_upkeep", **OPTIONS)
def click_upkeep(now: str | None = None) -> dict[str, Any]:
    """Reader mode: delete reader clicks past DIGEST_CLICK_RETENTION_DAYS, run the sunset."""
    with runtime.session() as session:
        report = upkeep.click_upkeep(
            session, settings, make_transport(settings), dispatch.parse_now(now)
        )
    return report
