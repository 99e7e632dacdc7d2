"""Celery settings built from digest's Settings: one source of truth for every process
that talks to the broker (worker, beat, Flower, and the CLI when it enqueues)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu import Queue

from digest.config import Settings
from digest.errors import ConfigError


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings; raises ConfigError if it is unsafe."""
    if not settings.redis_url:
        raise ConfigError(
            "DIGEST_REDIS_URL is not set: workers, beat and Flower need a Redis broker "
            "(e.g. redis://localhost:6379/0), or run `digest dev` to get an embedded one"
        )
    # A send task may run for up to its time limit and a retry may be scheduled up to
    # retry_max_seconds ahead; Redis must not hand either to a second worker meanwhile.
    longest = settings.lease_seconds + settings.retry_max_seconds
    if settings.visibility_timeout <= longest:
        raise ConfigError(
            f"DIGEST_VISIBILITY_TIMEOUT ({settings.visibility_timeout}s) must exceed the "
            f"longest task plus the longest retry delay ({longest}s)"
        )
    from digest.editions.sending import check_claim

    check_claim(settings)  # a worker refuses to start with claims shorter than a message
    visibility = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # Celery reads the visibility timeout in three places; they must agree, or the
        # shortest wins and long-delayed retries are redelivered while still waiting.
        # Priority 0 (retried and re-queued rows) is read before the backlog (6).
        "broker_transport_options": {**visibility, "priority_steps": [FIRST, 3, BACKLOG, 9]},
        "result_backend_transport_options": {**visibility, "retry_policy": {"timeout": 5.0}},
        "visibility_timeout": settings.visibility_timeout,
        # Ack only after the task finished, and hold no more than one unstarted message
        # per process: a worker that dies loses nothing, and one slow batch of 500 sends
        # does not keep other batches waiting behind it in a busy worker's buffer.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # A child process killed mid-task (OOM, SIGKILL) puts its message back in the
        # queue instead of acking it; DigestTask bounds how often that may happen.
        "task_reject_on_worker_lost": True,
        # With late acks, a broker connection loss means Redis will hand the running
        # tasks to another worker; cancel ours rather than run each twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # A task that finished but whose ack was lost is not run a second time.
        "worker_deduplicate_successful_tasks": True,
        # A batch that outlives its delivery lease would race the sweep for its rows:
        # stop it first (the soft limit lets send_batch hand back unsent rows).
        "task_soft_time_limit": max(1, settings.lease_seconds - 30),
        "task_time_limit": settings.lease_seconds,
        # Flower builds its live view from events; STARTED and PROGRESS show in it too.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": timedelta(days=1),
        # Storing a result must survive a Redis blip: the mail has gone out by then.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        "broker_connection_retry_on_startup": True,
        # Task arguments are ids and ISO strings; nothing needs pickle.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Send batches get a queue of their own: a backlog of thousands of them must
        # not hold up the next dispatch tick or sweep, which a worker takes in turn.
        "task_default_queue": settings.task_queue,
        "task_queues": [Queue(q) for q in queues(settings)],
        "task_routes": {"digest.send_batch": {"queue": send_queue(settings)}},
        # Beat's own clock is UTC; each cohort's local send time is computed by digest
        # with zoneinfo, so daylight-saving changes never move the schedule.
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": beat_schedule(settings),
        # Beat's scheduler leaves a heartbeat on every tick (workers/heartbeat.py).
        "beat_scheduler": "workers.heartbeat:HeartbeatScheduler",
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
    }


def outage_backoff_max(settings: Settings) -> int:
    """The longest wait between two retries through a database outage: a tenth of the
    outage to outlast, between 1 s and 30 s (a database back is noticed that soon)."""
    return max(1, min(30, settings.outage_seconds // 10))


def outage_retries(outage_seconds: int, backoff_max: int) -> int:
    """How many retries, waiting 1, 2, 4 ... s capped at `backoff_max`, add up to at
    least `outage_seconds`."""
    waited, retries = 0, 0
    while waited < outage_seconds:
        waited += min(backoff_max, 2**retries)
        retries += 1
    return retries


# Send batches carry a priority (Redis lists per priority, read highest first by every
# worker): an edition's first fan-out goes in behind whatever is there, while rows a
# stopped worker held (the sweep), retried and handed-back rows go ahead of that
# backlog instead of waiting behind thousands of fresh batches. kombu's Redis
# transport reads priority 0 first.
FIRST = 0  # sweeps, retries, hand-backs
BACKLOG = 6  # an edition's first fan-out


def send_options(*, first: bool) -> dict[str, Any]:
    """apply_async options for a send batch: ahead of the backlog, or in it."""
    return {"priority": FIRST if first else BACKLOG}


def send_queue(settings: Settings) -> str:
    return f"{settings.task_queue}.send"


def queues(settings: Settings) -> list[str]:
    """Every queue digest's tasks go through; a worker consumes all of them by default."""
    return [settings.task_queue, send_queue(settings)]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The periodic tasks. Each tick expires before the next: if workers are down, a
    backlog of stale ticks is dropped rather than run all at once when they return."""

    def every(task: str, seconds: int) -> dict[str, Any]:
        return {"task": task, "schedule": float(seconds), "options": {"expires": seconds}}

    schedule = {
        "dispatch-due": every("digest.dispatch_due", settings.dispatch_every_seconds),
        "ingest-feeds": every("digest.ingest_feeds", settings.ingest_every_seconds),
        "sweep": every("digest.sweep", settings.sweep_every_seconds),
    }
    if settings.inbound_imap_url:
        schedule["bounce-mailbox"] = every(
            "digest.read_bounce_mailbox", settings.inbound_imap_every_seconds
        )
    if settings.alert_to:  # the check every minute, mailing what appeared or cleared
        schedule["watch"] = every("digest.watch", 60)
    if settings.click_tracking == "reader":
        # Reader clicks past their retention go, and the sunset asks or ends, hourly.
        schedule["click-upkeep"] = every("digest.click_upkeep", 3600)
    return schedule
