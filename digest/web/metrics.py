"""`/metrics`: Prometheus text format, read from the database at scrape time.

Served only when DIGEST_METRICS_TOKEN is set (404 otherwise), to a scraper that shows
it as a Bearer token or as basic auth's password. Every figure comes from a few cheap
queries (counts by status over indexes, one index lookup per recent edition) run by a
custom collector when Prometheus asks, so nothing is counted in the web processes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterator, Sequence
from datetime import datetime

from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from digest.config import Settings
from digest.models import DELIVERY_STATUSES, SUBSCRIBER_STATUSES
from digest.operations import monitor
from digest.operations.health import WARNING, assess
from digest.store import count_subscribers
from digest.store import health as facts_q
from digest.web.base import Runtime, runtime

bp = Blueprint("metrics", __name__)


def authorised(settings: Settings, header: str) -> bool:
    """`Authorization: Bearer <token>`, or basic auth with the token as password."""
    token = settings.metrics_token.encode()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded.partition(b":")[2], token)
    return False


def _gauge(
    name: str, doc: str, value: float | None = None, labels: Sequence[str] = ()
) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)


class DigestCollector(Collector):
    """digest's figures, read from the database (and the broker) when scraped."""

    def __init__(self, rt: Runtime, now: datetime) -> None:
        self.rt, self.now = rt, now

    def _queues(self) -> tuple[dict[str, int] | None, str]:
        if not self.rt.settings.redis_url:
            return None, ""
        from workers.client import BrokerUnavailable, queue_lengths

        try:
            return queue_lengths(self.rt.settings), ""
        except BrokerUnavailable as exc:
            return None, str(exc)

    def collect(self) -> Iterator[Metric]:
        settings, now = self.rt.settings, self.now
        queues, broker_error = self._queues()
        try:
            with self.rt.sessions() as session:
                facts = monitor.gather(session, settings, now, queues, broker_error)
                editions = facts_q.edition_status_counts(session)
                readers = count_subscribers(session)
                suppressions = facts_q.suppression_counts(session)
        except SQLAlchemyError:
            yield _gauge("digest_database_up", "Whether the database answered this scrape.", 0)
            return
        yield _gauge("digest_database_up", "Whether the database answered this scrape.", 1)
        health = assess(facts, settings, now)
        yield _gauge(
            "digest_check_status",
            "The monitoring check's level: 0 OK, 1 WARNING, 2 CRITICAL (digest status --check).",
            health.level,
        )
        problems = _gauge(
            "digest_check_problems", "Problems the check found, by level.", labels=["level"]
        )
        for level, name in ((WARNING, "warning"), (WARNING + 1, "critical")):
            problems.add_metric([name], sum(1 for p in health.problems if p.level == level))
        yield problems

        deliveries = _gauge(
            "digest_deliveries",
            "Deliveries of the editions planned in the last 24 hours, by status.",
            labels=["status"],
        )
        for status in sorted(set(DELIVERY_STATUSES) | set(facts.last_24h)):
            deliveries.add_metric([status], facts.last_24h.get(status, 0))
        yield deliveries
        waiting = _gauge(
            "digest_deliveries_waiting",
            "Deliveries of any edition not yet settled: queued, sending (claimed) or deferred.",
            labels=["status"],
        )
        for status, n in sorted(facts.waiting.items()):
            waiting.add_metric([status], n)
        yield waiting
        by_status = _gauge("digest_editions", "Editions by status.", labels=["status"])
        for status, n in sorted(editions.items()):
            by_status.add_metric([status], n)
        yield by_status

        lag = _gauge(
            "digest_cohort_lag_seconds",
            "Seconds between a cohort's send time and its first message, for the latest "
            "edition of each (slot, timezone) in the last 24 hours that sent one.",
            labels=["slot", "timezone"],
        )
        latest: dict[tuple[str, str], float] = {}
        for e in facts.editions:  # ordered by send time: the latest wins
            if e.first_sent is not None:
                latest[(e.slot, e.timezone)] = (e.first_sent - e.send_at).total_seconds()
        for (slot, zone), seconds in sorted(latest.items()):
            lag.add_metric([slot, zone], max(0.0, seconds))
        yield lag
        yield _gauge(
            "digest_unplanned_cohorts",
            "Cohorts whose send time has passed without an edition (beat plans them).",
            len(facts.unplanned),
        )

        if settings.redis_url:
            yield _gauge(
                "digest_broker_up",
                "Whether the broker answered (absent without DIGEST_REDIS_URL).",
                0 if broker_error else 1,
            )
        if queues is not None:
            tasks = _gauge(
                "digest_queue_tasks", "Tasks waiting in each broker queue.", labels=["queue"]
            )
            for queue, n in sorted(queues.items()):
                tasks.add_metric([queue], n)
            yield tasks
        beats = [h for h in facts.hearts if h.kind == "beat"]
        if beats:
            yield _gauge(
                "digest_beat_last_seen_timestamp_seconds",
                "When beat last left a heartbeat (Unix time).",
                beats[0].seen_at.timestamp(),
            )
        workers = [h for h in facts.hearts if h.kind == "worker"]
        stale = settings.worker_stale_seconds
        alive = [
            h
            for h in workers
            if h.stopped_at is None and (now - h.seen_at).total_seconds() <= stale
        ]
        yield _gauge("digest_workers_alive", "Workers whose heartbeat is fresh.", len(alive))
        seen = _gauge(
            "digest_worker_last_seen_timestamp_seconds",
            "When each worker seen in the last day last left a heartbeat (Unix time).",
            labels=["worker"],
        )
        for h in workers:
            seen.add_metric([h.name], h.seen_at.timestamp())
        yield seen

        people = _gauge(
            "digest_readers",
            "Readers by status (bounced and complained readers are suppressed for good).",
            labels=["status"],
        )
        for status in sorted(set(SUBSCRIBER_STATUSES) | set(readers)):
            people.add_metric([status], readers.get(status, 0))
        yield people
        suppressed = _gauge(
            "digest_suppressions", "Suppressed addresses by reason.", labels=["reason"]
        )
        for reason, n in sorted(suppressions.items()):
            suppressed.add_metric([reason], n)
        yield suppressed
        yield _gauge("digest_feeds_failing", "Feeds whose last poll failed.", len(facts.feeds))


@bp.get("/metrics")
def metrics() -> Response:
    rt = runtime()
    if not rt.settings.metrics_token:
        abort(404)
    if not authorised(rt.settings, request.headers.get("Authorization", "")):
        return Response(
            "metrics need DIGEST_METRICS_TOKEN\n",
            401,
            {"WWW-Authenticate": 'Bearer realm="digest metrics"'},
            mimetype="text/plain",
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DigestCollector(rt, rt.clock()))
    return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST})
