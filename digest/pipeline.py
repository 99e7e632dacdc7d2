"""The send path, top to bottom: plan an edition, then send its deliveries in batches.

Functions here own their transactions (they commit): planning is one transaction, and
each delivery is recorded in its own commit right after the server accepted it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import Candidate, pick_for_sections, select_articles
from digest.errors import HeaderInjection, NothingToSend, PermanentSendError, TransientSendError
from digest.message import Envelope, MessageTemplate, Reader, Sender, build_message
from digest.models import Article, Edition, EditionVariant
from digest.render import ArticleView, EditionView, Rendered, Splicer, render_edition, slot_values
from digest.sanitize import html_to_text
from digest.schedule import Cohort, due_cohorts, local_day, send_at
from digest.tokens import make_token, message_id
from digest.transport import Transport

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass
class PlanResult:
    edition_id: int
    cohort: Cohort
    created: bool
    status: str
    queued: int = 0
    note: str = ""


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suppressed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.sent + self.deferred + self.failed + self.suppressed

    def count(self, outcome: str, email: str, error: str | None = None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if error and len(self.errors) < 100:
            self.errors.append(f"{email}: {error}")

    def add(self, other: BatchReport) -> None:
        for name in ("claimed", "sent", "deferred", "failed", "suppressed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors[:20])


# --- selection -------------------------------------------------------------------


def cohort_send_at(settings: Settings, cohort: Cohort) -> datetime:
    return send_at(settings.send_time(cohort.slot), cohort.local_day, cohort.timezone)


def select_snapshot(
    session: Session, settings: Settings, cohort: Cohort, cut: datetime
) -> tuple[datetime, list[Candidate]]:
    """The window start and the ranked articles an edition of `cohort` cut at `cut` gets."""
    previous = store.previous_edition(session, cohort.timezone, cut)
    if previous is None:
        window_start = cut - timedelta(hours=settings.first_lookback_hours)
        exclude: set[int] = set()
    else:
        window_start = previous.window_end
        exclude = set(store.edition_article_ids(session, previous.id))
    late_grace = timedelta(hours=settings.late_grace_hours)
    candidates = store.candidate_articles(session, window_start - late_grace, cut)
    snapshot = select_articles(
        candidates, window_start, cut, exclude, settings.max_articles, late_grace
    )
    return window_start, snapshot


def article_views(session: Session, picked: Sequence[Candidate]) -> list[ArticleView]:
    rows: dict[int, Article] = store.articles_by_id(session, [c.id for c in picked])
    return [
        ArticleView(
            title=rows[c.id].title,
            url=rows[c.id].url,
            section=rows[c.id].section,
            summary_html=rows[c.id].summary_html,
            summary_text=html_to_text(rows[c.id].summary_html),
            image_url=rows[c.id].image_url,
            published_at=rows[c.id].published_at,
        )
        for c in picked
    ]


def render_variant(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    snapshot: Sequence[Candidate],
    sections: str,
) -> tuple[Rendered, int] | None:
    """Render what readers with this section choice get; None if nothing is in it."""
    picked = pick_for_sections(snapshot, sections, settings.max_articles)
    if not picked:
        return None
    view = EditionView(
        slot=cohort.slot,
        local_day=cohort.local_day,
        timezone=cohort.timezone,
        articles=article_views(session, picked),
        sender_name=settings.from_name,
        postal_address=settings.postal_address,
        editions_label=f"{cohort.slot} edition",
    )
    return render_edition(view, settings.templates_dir), len(picked)


# --- planning ----------------------------------------------------------------------


def plan_edition(
    session: Session, settings: Settings, cohort: Cohort, now: datetime, *, missed: bool = False
) -> PlanResult:
    """Create the cohort's edition, its snapshot, renderings and delivery rows, once.

    Calling it again for the same cohort (a second beat tick, an operator, a retried
    task) finds the edition and creates nothing.
    """
    existing = store.find_edition(session, cohort)
    if existing is not None:
        return _existing(session, existing, cohort)
    # An operator may send before the scheduled time: then the edition covers up to now,
    # and the next one starts from now, so nothing published in between is skipped.
    cut = min(cohort_send_at(settings, cohort), now)
    if missed:
        edition = store.create_edition(
            session,
            cohort,
            send_at=cut,
            window_start=cut,
            now=now,
            status="missed",
            note=f"not sent: its send time {cut.isoformat()} passed more than "
            f"{settings.catchup_minutes} minutes before it was planned",
        )
        session.commit()
        found = edition or store.find_edition(session, cohort)
        assert found is not None
        return PlanResult(found.id, cohort, edition is not None, found.status, note=found.note)

    window_start, snapshot = select_snapshot(session, settings, cohort, cut)
    edition = store.create_edition(session, cohort, send_at=cut, window_start=window_start, now=now)
    if edition is None:  # another planner won the race between our lookup and insert
        session.rollback()
        found = store.find_edition(session, cohort)
        assert found is not None
        return _existing(session, found, cohort)
    if not snapshot:
        edition.status = "empty"
        edition.note = (
            f"no articles published between {window_start.isoformat()} and {cut.isoformat()}"
        )
        session.commit()
        return PlanResult(edition.id, cohort, True, edition.status, note=edition.note)

    store.add_edition_articles(session, edition.id, [c.id for c in snapshot])
    empty_choices = []
    for sections in store.cohort_section_choices(session, cohort, settings.default_timezone):
        rendered = render_variant(session, settings, cohort, snapshot, sections)
        if rendered is None:
            empty_choices.append(sections)
            continue
        page, count = rendered
        store.add_variant(
            session,
            edition.id,
            sections,
            subject=page.subject,
            html=page.html,
            text=page.text,
            article_count=count,
        )
    queued = store.queue_deliveries(session, edition, settings.default_timezone, now)
    edition.status = "sending" if queued else "done"
    edition.note = f"{len(snapshot)} articles, {queued} readers"
    if empty_choices:
        edition.note += "; nothing new for readers of " + " | ".join(empty_choices)
    session.commit()
    return PlanResult(edition.id, cohort, True, edition.status, queued, edition.note)


def _existing(session: Session, edition: Edition, cohort: Cohort) -> PlanResult:
    counts = store.edition_counts(session, edition.id)
    return PlanResult(
        edition.id, cohort, False, edition.status, counts.get("queued", 0), edition.note
    )


# --- sending -----------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedVariant:
    html: Splicer
    text: Splicer
    subject: str


@lru_cache(maxsize=64)
def _splicers(variant_id: int, html: str, text: str, subject: str) -> PreparedVariant:
    return PreparedVariant(Splicer.of(html), Splicer.of(text), subject)


def prepare_variant(variant: EditionVariant) -> PreparedVariant:
    """Cut a stored rendering at its slots (cached: variants never change)."""
    return _splicers(variant.id, variant.html, variant.text, variant.subject)


def sender_of(settings: Settings) -> Sender:
    return Sender(
        from_address=settings.from_address,
        from_name=settings.from_name,
        list_id=settings.list_id,
        list_name=settings.from_name,
        unsubscribe_mailto=settings.unsubscribe_mailto,
    )


def reader_links(settings: Settings, subscriber_id: int, edition_id: int) -> dict[str, str]:
    """The personal links of one reader: each token signed for its own purpose."""
    secret, base = settings.secret_key, settings.base_url
    unsubscribe = make_token(secret, "unsubscribe", subscriber_id)
    return {
        "unsubscribe_token": unsubscribe,
        "unsubscribe_url": f"{base}/unsubscribe/{unsubscribe}",
        "preferences_url": f"{base}/preferences/{make_token(secret, 'preferences', subscriber_id)}",
        "view_url": f"{base}/editions/{edition_id}/{make_token(secret, 'view', subscriber_id)}",
    }


def address_reader(
    settings: Settings, edition_id: int, subscriber_id: int, email: str, name: str
) -> Reader:
    """One reader's slot values and ids, for the pre-encoded message template."""
    links = reader_links(settings, subscriber_id, edition_id)
    shared = {k: links[k] for k in ("unsubscribe_url", "preferences_url", "view_url")}
    return Reader(
        to_address=email,
        to_name=name,
        message_id=message_id(
            settings.secret_key, edition_id, subscriber_id, settings.sender_domain
        ),
        unsubscribe_url=links["unsubscribe_url"],
        unsubscribe_token=links["unsubscribe_token"],
        html_values=slot_values(name=name, for_html=True, **shared),
        text_values=slot_values(name=name, for_html=False, **shared),
    )


def personalise(
    settings: Settings,
    prepared: PreparedVariant,
    edition_id: int,
    subscriber_id: int,
    email: str,
    name: str,
) -> Envelope:
    """Fill one reader's slots into the pre-inlined HTML and the text (no re-inlining)."""
    reader = address_reader(settings, edition_id, subscriber_id, email, name)
    return Envelope(
        to_address=email,
        to_name=name,
        message_id=reader.message_id,
        unsubscribe_url=reader.unsubscribe_url,
        unsubscribe_token=reader.unsubscribe_token,
        html=prepared.html.fill(reader.html_values),
        text=prepared.text.fill(reader.text_values),
    )


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Exponential: base, 2x base, 4x base ... capped."""
    seconds = settings.retry_base_seconds * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.retry_max_seconds))


def send_batch(
    session: Session,
    settings: Settings,
    transport: Transport,
    delivery_ids: Sequence[int],
    now: datetime,
    on_progress: Progress | None = None,
) -> BatchReport:
    """Claim the given deliveries and send them, recording each right after its reply.

    The rows are split over `settings.smtp_connections` connections (threads): a
    relay answers each command after a round trip, and overlapping those waits is
    where a sender's throughput comes from. Each connection is reused for its share.
    """
    report = BatchReport()
    claimed = store.claim_deliveries(
        session, delivery_ids, now, timedelta(seconds=settings.lease_seconds)
    )
    session.commit()
    if not claimed:
        return report
    report.claimed = len(claimed)
    rows = store.sending_rows(session, claimed)
    templates = {
        vid: message_template(settings, store.get_variant(session, vid), now)
        for vid in {r.variant_id for r in rows}
    }
    session.commit()  # the lanes below use their own connections
    lanes = max(1, min(settings.smtp_connections, len(rows) // 20))
    shares = [rows[i::lanes] for i in range(lanes)]
    transports = [transport] + [transport.fresh() for _ in range(lanes - 1)]
    lane = Lane(session, settings, templates, now, report)
    if lanes == 1:
        lane.run(transport, shares[0])
    else:
        with ThreadPoolExecutor(lanes, thread_name_prefix="digest-send") as pool:
            futures = [
                pool.submit(lane.run, t, share) for t, share in zip(transports, shares, strict=True)
            ]
            try:
                while wait(futures, timeout=0.5).not_done:
                    if on_progress:
                        on_progress(report.done, len(rows))
            except BaseException:
                # A time limit or shutdown reached this thread: the lanes stop after
                # their current message and hand the rest back to the queue.
                lane.stop.set()
                raise
            for future in futures:
                future.result()  # re-raise a lane's unexpected error, after all have stopped
    if on_progress:
        on_progress(report.done, len(rows))
    for edition_id in {row.edition_id for row in rows}:
        store.update_edition_status(session, edition_id)
    session.commit()
    return report


def message_template(settings: Settings, variant: EditionVariant, now: datetime) -> MessageTemplate:
    prepared = prepare_variant(variant)
    key = f"{variant.edition_id}:{variant.sections}"
    return MessageTemplate(
        sender_of(settings), variant.subject, now, key, prepared.html, prepared.text
    )


@dataclass
class Lane:
    """What the parallel lanes of one batch share; `run` sends one lane's rows."""

    session: Session
    settings: Settings
    templates: dict[int, MessageTemplate]
    now: datetime
    report: BatchReport
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, transport: Transport, rows: Sequence[Any]) -> None:
        """Send rows over one connection; rows left unsent go back to the queue."""
        pending = {row.id for row in rows}
        with store.Recorder(self.session) as record:
            try:
                with transport:
                    for i, row in enumerate(rows):
                        if self.stop.is_set():
                            break
                        if i % 100 == 0:
                            # Re-read statuses as we go: an unsubscribe during the edition wins.
                            statuses = record.statuses([r.subscriber_id for r in rows[i : i + 100]])
                        outcome, error = _send_one(
                            self.settings,
                            transport,
                            record,
                            row,
                            statuses,
                            self.templates,
                            self.now,
                        )
                        pending.discard(row.id)
                        with self.lock:
                            self.report.count(outcome, row.email, error)
            finally:
                if pending:
                    record.release(sorted(pending))


def _send_one(
    settings: Settings,
    transport: Transport,
    record: store.Recorder,
    r: Any,
    statuses: dict[int, str],
    templates: dict[int, MessageTemplate],
    now: datetime,
) -> tuple[str, str | None]:
    """Send one message and record the outcome; returns (outcome, error)."""
    status = statuses.get(r.subscriber_id, r.status)
    if status != "active":
        record.suppressed(r.id, f"subscriber is {status}")
        return "suppressed", None
    reader = address_reader(settings, r.edition_id, r.subscriber_id, r.email, r.name)
    try:
        message = templates[r.variant_id].render(reader)
        transport.send(settings.from_address, r.email, message, reader.message_id)
    except TransientSendError as exc:
        if r.attempts >= settings.max_attempts:
            record.failed(r.id, f"gave up after {r.attempts} attempts: {exc}")
            return "failed", str(exc)
        record.deferred(r.id, str(exc), now + backoff(settings, r.attempts))
        return "deferred", str(exc)
    except (PermanentSendError, HeaderInjection) as exc:
        record.failed(r.id, str(exc))
        if getattr(exc, "unknown_mailbox", False):
            record.bounce(r.subscriber_id, r.email, now)
        return "failed", str(exc)
    record.sent(r.id, reader.message_id, now)
    return "sent", None


def chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


def run_edition(
    session: Session,
    settings: Settings,
    transport: Transport,
    edition_id: int,
    now: datetime,
    on_progress: Progress | None = None,
) -> BatchReport:
    """Send every queued delivery of an edition in this process, batch by batch."""
    report = BatchReport()
    last = 0
    started = time.monotonic()
    while batch := store.delivery_page(session, edition_id, last, settings.batch_size):
        # `now` moves on with the time spent: leases, retry times and sent_at of a long
        # run must not lie in the past (the sweep would take rows still being sent).
        batch_now = now + timedelta(seconds=time.monotonic() - started)
        report.add(send_batch(session, settings, transport, batch, batch_now, on_progress))
        last = batch[-1]
    session.commit()  # end the last page's read: on SQLite it holds the write lock
    return report


def cohorts_for(
    session: Session,
    settings: Settings,
    slot: str,
    now: datetime,
    day: date | None = None,
    timezone: str | None = None,
) -> list[Cohort]:
    """The cohorts an operator's `send SLOT` means: one timezone, or every one with readers."""
    zones = (
        [timezone]
        if timezone
        else sorted(
            store.active_timezones(session, settings.default_timezone) | {settings.default_timezone}
        )
    )
    return [Cohort(slot, day or local_day(now, tz), tz) for tz in zones]


def test_send(
    session: Session,
    settings: Settings,
    transport: Transport,
    cohort: Cohort,
    to: str,
    now: datetime,
) -> str:
    """Send one copy of the cohort's edition (all sections) to `to`; no delivery row."""
    rendered = preview(session, settings, cohort, now)
    if rendered is None:
        raise NothingToSend(f"the {cohort} edition has no articles to show")
    page, prepared = rendered
    env = personalise(settings, prepared, 0, 0, to, "")
    msg = build_message(sender_of(settings), "[TEST] " + page.subject, now, env)
    with transport:
        transport.send(settings.from_address, to, msg.as_bytes(), env.message_id)
    return env.message_id


def preview(
    session: Session, settings: Settings, cohort: Cohort, now: datetime, sections: str = ""
) -> tuple[Rendered, PreparedVariant] | None:
    """The rendering of a cohort's edition: the stored one if planned, else a dry run."""
    edition = store.find_edition(session, cohort)
    if edition is not None:
        for variant in store.variants(session, edition.id):
            if variant.sections == sections:
                page = Rendered(variant.subject, variant.html, variant.text)
                return page, prepare_variant(variant)
    cut = min(cohort_send_at(settings, cohort), now)
    _, snapshot = select_snapshot(session, settings, cohort, cut)
    rendered = render_variant(session, settings, cohort, snapshot, sections)
    if rendered is None:
        return None
    page = rendered[0]
    return page, PreparedVariant(Splicer.of(page.html), Splicer.of(page.text), page.subject)


# --- schedule and repair -----------------------------------------------------------------


def dispatch_due(session: Session, settings: Settings, now: datetime) -> list[PlanResult]:
    """Plan every cohort whose send time has passed and that has no edition yet.

    Within the catch-up window the edition is planned (and sent late); past it, it is
    recorded as missed so that it is never sent hours late.
    """
    zones = store.active_timezones(session, settings.default_timezone) | {settings.default_timezone}
    catchup = timedelta(minutes=settings.catchup_minutes)
    results = []
    for due in due_cohorts(now, zones, settings.send_times, catchup):
        if store.find_edition(session, due.cohort) is None:
            results.append(plan_edition(session, settings, due.cohort, now, missed=due.missed))
    return results


def sweep(
    session: Session, settings: Settings, now: datetime, *, queued_too: bool = True
) -> dict[int, list[int]]:
    """Find deliveries no worker is carrying and put them back in the queue.

    Rows stuck in `sending` past their lease (a worker died), deferred rows whose retry
    time has come, and queued rows older than a lease (their task was lost with Redis).
    A caller that knows tasks are still waiting in the broker passes `queued_too=False`:
    those queued rows are a backlog, not lost, and re-sending them would only pile up
    duplicate tasks. Returns the delivery ids by edition, for the caller to send or enqueue.
    """
    lease = timedelta(seconds=settings.lease_seconds)
    found = store.stale_deliveries(session, now, now - lease if queued_too else None)
    store.requeue(session, [d for _, d in found], now)
    session.commit()
    by_edition: dict[int, list[int]] = {}
    for edition_id, delivery_id in found:
        by_edition.setdefault(edition_id, []).append(delivery_id)
    return by_edition
