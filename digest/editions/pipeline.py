"""Editions, top to bottom: select a cohort's articles, plan the edition once, and the
operator's views of it (preview, test send); the schedule's dispatch and the sweep.

Sending the planned deliveries lives in digest/editions/sending.py. Functions here own their
transactions (they commit): planning an edition is one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import clicks, guard, queueing
from digest.editions.render import (
    ArticleView,
    EditionView,
    Rendered,
    html_escaped,
    render_edition,
    slot_values,
)
from digest.editions.schedule import Cohort, due_cohorts, local_day, send_at
from digest.editions.selection import Candidate, pick_for_sections, select_articles
from digest.editions.sending import (
    PreparedVariant,
    prepare_rendering,
    prepare_variant,
    public_links,
    sender_of,
)
from digest.errors import NothingToSend
from digest.feeds.sanitize import html_to_text
from digest.mail.message import Envelope, build_message
from digest.mail.returns import envelope_sender
from digest.mail.tokens import seal, single_message_id
from digest.mail.transport import Transport
from digest.models import Article, Edition
from digest.store.overview import readers_per_cohort
from digest.store.subscribers import cohort_readers_confirmed_by
from digest.words import counted

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
    queuing: bool = False  # readers remain to be queued (queueing.queue_more)


# --- selection -------------------------------------------------------------------


def cohort_send_at(settings: Settings, cohort: Cohort) -> datetime:
    return send_at(settings.send_time(cohort.slot), cohort.local_day, cohort.timezone)


def select_snapshot(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    cut: datetime,
    *,
    window_start: datetime | None = None,
    except_edition: int | None = None,
) -> tuple[datetime, list[Candidate]]:
    """The window start and the ranked articles an edition of `cohort` cut at `cut` gets.

    Nothing an edition of the same timezone carries already is chosen again, whatever
    its slot or day and in whatever order the editions were planned (early sends,
    catch-up, a forced day, a first edition after sign-up). `window_start` and
    `except_edition` plan an existing edition again (a cancelled one, corrected).
    """
    if window_start is None:
        previous = store.previous_edition(session, cohort.timezone, cut)
        if previous is None:
            window_start = cut - timedelta(hours=settings.first_lookback_hours)
        else:
            window_start = previous.window_end
    late_grace = timedelta(hours=settings.late_grace_hours)
    since = window_start - late_grace
    exclude = store.sent_article_ids(session, cohort.timezone, since, except_edition)
    candidates = store.candidate_articles(session, since, cut)
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
    edition_id: int | None = None,
) -> tuple[Rendered, int] | None:
    """Render what readers with this section choice get; None if nothing is in it.
    A planned edition's article links go through the click counter when it is on."""
    picked = pick_for_sections(snapshot, sections, settings.max_articles)
    if not picked:
        return None
    articles = article_views(session, picked)
    if edition_id is not None:
        articles = clicks.wrap_articles(settings, edition_id, [c.id for c in picked], articles)
    pixel = clicks.pixel_url(settings, edition_id) if edition_id is not None else ""
    view = edition_view(settings, cohort, articles, pixel)
    return render_edition(view, settings.templates_dir), len(picked)


def edition_view(
    settings: Settings, cohort: Cohort, articles: list[ArticleView], pixel_url: str = ""
) -> EditionView:
    return EditionView(
        slot=cohort.slot,
        local_day=cohort.local_day,
        timezone=cohort.timezone,
        articles=articles,
        sender_name=settings.from_name,
        postal_address=settings.postal_address,
        editions_label=f"{cohort.slot} edition",
        pixel_url=pixel_url,
    )


# --- planning ----------------------------------------------------------------------


def plan_edition(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    now: datetime,
    *,
    missed: bool = False,
    record: str = "",
    note: str = "",
    keep_empty: bool = True,
    chunk: int | None = None,
) -> PlanResult:
    """Create the cohort's edition, its snapshot, renderings and delivery rows, once.

    Calling it again for the same cohort (a second beat tick, an operator, a retried
    task) finds the edition and creates nothing. `record` ("missed", "superseded")
    records an edition that sends no mail, with `note` saying why. Without
    `keep_empty`, a plan that would send nothing (no articles, or no reader) records
    nothing: an early send must not use up the cohort's edition for the day. With
    `chunk`, only the first `chunk` readers (in subscriber id order) are queued here,
    and the plan says it is `queuing`: the caller sends them while queueing.queue_more
    queues the rest. Entry points call `plan_cohort`, which asks the guard first.
    """
    existing = store.find_edition(session, cohort)
    if existing is not None:
        return _existing(session, existing, cohort)
    # An operator may send before the scheduled time: then the edition covers up to now,
    # and the next one starts from now, so nothing published in between is skipped.
    cut = min(cohort_send_at(settings, cohort), now)
    if missed and not record:
        record = "missed"
        note = (
            f"not sent: its send time {cut.isoformat()} passed more than "
            f"{counted(settings.catchup_minutes, 'minute')} before it was planned"
        )
    if record:
        edition = store.create_edition(
            session, cohort, send_at=cut, window_start=cut, now=now, status=record, note=note
        )
        session.commit()
        found = edition or store.find_edition(session, cohort)
        assert found is not None
        return PlanResult(found.id, cohort, edition is not None, found.status, note=found.note)

    window_start, snapshot = select_snapshot(session, settings, cohort, cut)
    if not snapshot and not keep_empty:
        return PlanResult(
            0,
            cohort,
            False,
            NOTHING,
            note=f"no articles published between {window_start.isoformat()} and "
            f"{cut.isoformat()}: nothing sent, no edition recorded",
        )
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
    empty_choices = render_variants(session, settings, cohort, edition.id, snapshot)
    # With `chunk`, the first readers are queued in this transaction (more chunks while
    # none of them has a row, so that an empty plan is still seen here) and the rest
    # by queueing.queue_more, while the first are being sent.
    after = None
    while True:
        after = store.queue_deliveries(
            session, edition, settings.default_timezone, now, after=after, limit=chunk
        )
        queued = store.count_deliveries(session, edition.id)
        if queued or after is None:
            break
    if not queued and not keep_empty:
        session.rollback()
        return PlanResult(
            0, cohort, False, NOTHING, note="no reader would get it: no edition recorded"
        )
    edition.status = "sending" if queued else "done"
    edition.queue_after = after
    readers = queueing.QUEUING if after else counted(queued, "reader")
    edition.note = f"{counted(len(snapshot), 'article')}, {readers}"
    if empty_choices:
        edition.note += "; nothing new for readers of " + " | ".join(empty_choices)
    session.commit()
    return PlanResult(
        edition.id, cohort, True, edition.status, queued, edition.note, queuing=after is not None
    )


def render_variants(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    edition_id: int,
    snapshot: Sequence[Candidate],
) -> list[str]:
    """Render and store one variant per section choice of the cohort's readers (an
    existing variant is rewritten); returns the choices with nothing to show."""
    empty_choices = []
    stored = {v.sections: v for v in store.variants(session, edition_id)}
    for sections in store.cohort_section_choices(session, cohort, settings.default_timezone):
        rendered = render_variant(session, settings, cohort, snapshot, sections, edition_id)
        if rendered is None:
            empty_choices.append(sections)
            continue
        page, count = rendered
        fields = {
            "subject": page.subject,
            "html": page.html,
            "text": page.text,
            "slot_nonce": page.slot_nonce,
            "article_count": count,
            "click_tracking": settings.click_tracking,
        }
        if sections in stored:
            for name, value in fields.items():
                setattr(stored[sections], name, value)
        else:
            store.add_variant(session, edition_id, sections, **fields)
    return empty_choices


NOTHING = "nothing"  # PlanResult.status of a plan that recorded nothing (edition_id 0)


def plan_cohort(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    now: datetime,
    *,
    origin: str,
    who: str = "",
    force: bool = False,
    early: bool = True,
    chunk: int | None = None,
) -> tuple[guard.Decision, PlanResult | None]:
    """Ask the guard, act on its decision and write it to the audit log with its
    origin: what every entry point calls. Returns the decision and, unless it was
    refused (or not due), the plan (its first `chunk` readers queued, see
    plan_edition)."""
    decision = guard.may_plan(
        session, settings, cohort, now, origin=origin, force=force, early=early
    )
    by = who or origin
    if decision.action == guard.EXISTS:
        existing = store.find_edition(session, cohort)
        assert existing is not None
        return decision, _existing(session, existing, cohort)
    if decision.action in (guard.REFUSE, guard.WAIT):
        if decision.action == guard.REFUSE:
            store.audit(session, by, "plan refused", f"[{origin}] {cohort}: {decision.reason}", now)
            session.commit()
        return decision, None
    if decision.action == guard.RECORD:
        plan = plan_edition(
            session, settings, cohort, now, record=decision.status, note=decision.reason
        )
    else:
        plan = plan_edition(
            session, settings, cohort, now, keep_empty=not decision.early, chunk=chunk
        )
    if plan.created or plan.status == NOTHING:
        what = f"edition {plan.edition_id} {plan.status}" if plan.edition_id else plan.status
        extra = "; forced: a day still ahead" if decision.forced else ""
        queued = f"{plan.queued} queued" + (", the rest being queued" if plan.queuing else "")
        detail = f"[{origin}] {cohort}: {what}, {queued} ({decision.reason}){extra}"
        store.audit(session, by, "planned", detail, now)
        session.commit()
    return decision, plan


def _existing(session: Session, edition: Edition, cohort: Cohort) -> PlanResult:
    counts = store.edition_counts(session, edition.id)
    return PlanResult(
        edition.id,
        cohort,
        False,
        edition.status,
        counts.get("queued", 0),
        edition.note,
        queuing=edition.queue_after is not None,
    )


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
    """Send one copy of the cohort's edition (all sections) to `to`; no delivery row.

    Each copy has a Message-ID of its own; its "view in browser" link opens the same
    rendering on the web, and its account links the pages that ask for a reader's own.
    """
    rendered = preview(session, settings, cohort, now)
    if rendered is None:
        raise NothingToSend(f"the {cohort} edition has no articles to show")
    page, prepared = rendered
    expires = now + timedelta(days=settings.view_ttl_days)
    asked = {"slot": cohort.slot, "day": cohort.local_day.isoformat(), "tz": cohort.timezone}
    view = seal(settings.secret_key, "view", 0, expires, asked)
    links = public_links(settings, f"{settings.base_url}/editions/preview/{view}")
    text = slot_values(name="", for_html=False, **links)
    env = Envelope(
        to_address=to,
        to_name="",
        message_id=single_message_id(
            "test", store.installation_id(session), settings.sender_domain
        ),
        unsubscribe_url=links["unsubscribe_url"],
        unsubscribe_token="test-copy",
        html=prepared.html.fill(html_escaped(text)),
        text=prepared.text.fill(text),
    )
    msg = build_message(sender_of(settings), "[TEST] " + page.subject, now, env, campaign="test")
    with transport:
        transport.send(envelope_sender(settings, 0, 0), to, msg, env.message_id)
    return env.message_id


def preview(
    session: Session, settings: Settings, cohort: Cohort, now: datetime, sections: str = ""
) -> tuple[Rendered, PreparedVariant] | None:
    """The rendering of a cohort's edition: the stored one if planned, else a dry run."""
    edition = store.find_edition(session, cohort)
    if edition is not None:
        for variant in store.variants(session, edition.id):
            if variant.sections == sections:
                page = Rendered(variant.subject, variant.html, variant.text, variant.slot_nonce)
                return page, prepare_variant(variant)
    cut = min(cohort_send_at(settings, cohort), now)
    _, snapshot = select_snapshot(session, settings, cohort, cut)
    rendered = render_variant(session, settings, cohort, snapshot, sections)
    if rendered is None:
        return None
    return rendered[0], prepare_rendering(rendered[0])


def edition_articles(session: Session, edition_id: int) -> list[tuple[Candidate, bool]]:
    """The articles an edition was planned with, in its order, each with whether an
    operator has hidden it since."""
    ids = store.edition_article_ids(session, edition_id)
    rows = store.articles_by_id(session, ids)
    return [
        (Candidate(a.id, a.section, a.priority, a.published_at, a.seen_at), a.hidden)
        for a in (rows.get(i) for i in ids)
        if a is not None
    ]


def rendering_without_hidden(
    session: Session, settings: Settings, edition: Edition
) -> PreparedVariant | None:
    """The edition with every section, rendered again without the articles an operator
    has hidden since it went out (the public archive's takedown); None if none is left."""
    kept = [c for c, hidden in edition_articles(session, edition.id) if not hidden]
    cohort = Cohort(edition.slot, edition.local_day, edition.timezone)
    rendered = render_variant(session, settings, cohort, kept, "", edition.id)
    if rendered is None:
        return None
    return prepare_rendering(rendered[0])


# --- schedule and repair -----------------------------------------------------------------


def dispatch_due(
    session: Session, settings: Settings, now: datetime, *, chunk: int | None = None
) -> list[PlanResult]:
    """Plan every cohort whose send time has passed and that has no edition yet.

    Each plan queues its first `chunk` readers when given (see plan_edition).
    Within the catch-up window the edition is planned (and sent late); past it, it is
    recorded as missed so that it is never sent hours late. A cohort nobody reads (before
    the first reader, or a slot nobody chose there) gets no edition at all: nothing was
    missed, and nothing is recorded.
    """
    readers = readers_per_cohort(session, settings.default_timezone)
    zones = {zone for zone, _ in readers} | {settings.default_timezone}
    catchup = timedelta(minutes=settings.catchup_minutes)
    results = []
    for due in due_cohorts(now, zones, settings.send_times, catchup):
        if not readers.get((due.cohort.timezone, due.cohort.slot)):
            continue
        if due.missed and not cohort_readers_confirmed_by(
            session, due.cohort, settings.default_timezone, cohort_send_at(settings, due.cohort)
        ):
            continue  # its send time came before any of its readers: nothing was missed
        if store.find_edition(session, due.cohort) is None:
            _, plan = plan_cohort(
                session, settings, due.cohort, now, origin=guard.BEAT, chunk=chunk
            )
            if plan is not None:
                results.append(plan)
    return results


def sweep(
    session: Session, settings: Settings, now: datetime, *, queued_too: bool = True
) -> dict[int, list[int]]:
    """Find deliveries no worker is carrying and put them back in the queue.

    Rows whose claim ended (their worker stopped renewing it), deferred rows whose retry
    time has come, and queued rows older than a claim (their task was lost with Redis,
    or a batch handed them back and its task gave up). A caller that knows tasks are
    still waiting in the broker passes `queued_too=False`: those queued rows are a
    backlog, not lost, and re-sending them would only pile up duplicate tasks (one more
    task for rows a task already carries is harmless: claims let only one send them);
    with them goes the rest of an edition whose planner stopped while queueing.
    Returns the delivery ids by edition, for the caller to send or enqueue.
    """
    orphan = now - timedelta(seconds=settings.claim_seconds)
    # (Found before the requeue below dates their first rows afresh.)
    stalled = store.stalled_plans(session, orphan) if queued_too else []
    found = store.stale_deliveries(session, now, orphan if queued_too else None)
    store.requeue(session, [d for _, d in found], now)
    session.commit()
    by_edition: dict[int, list[int]] = {}
    for edition_id, delivery_id in found:
        by_edition.setdefault(edition_id, []).append(delivery_id)
    # An edition planned a chunk at a time whose planner stopped (and whose task did
    # not come back) gets the rest of its readers queued here, and sent.
    for edition_id in stalled:
        queueing.queue_rest(session, settings, edition_id, now)
        known = set(by_edition.get(edition_id, []))
        fresh = [d for d in store.delivery_ids(session, edition_id) if d not in known]
        by_edition.setdefault(edition_id, []).extend(fresh)
    return by_edition
