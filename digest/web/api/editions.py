"""/api/v1/editions and /api/v1/status: editions with their counts and errors, a
preview, planning and sending a cohort, retries; the overview and the health check."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings, check_timezone
from digest.editions import dispatch, guard
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort, local_day
from digest.editions.sending import prepare_variant
from digest.errors import ConfigError
from digest.models import Edition
from digest.operations import overview
from digest.operations.problems import Problem, bad_field
from digest.store import overview as q
from digest.web.api import schemas as s
from digest.web.api.auth import audit, token_name
from digest.web.api.content import article_out
from digest.web.api.spec import operation
from digest.web.base import EDITION_CSP, db, runtime
from digest.web.console.common import hand_off
from digest.words import noun

log = logging.getLogger(__name__)
_EDITION = {"edition_id": "$response.body#/edition_id"}


def edition_out(e: Edition, counts: dict[str, int]) -> s.Edition:
    return s.Edition(
        id=e.id,
        slot=e.slot,
        local_day=e.local_day,
        timezone=e.timezone,
        status=e.status,
        send_at=e.send_at,
        note=e.note,
        counts=counts,
    )


@operation(
    "GET",
    "/editions",
    need="read",
    tag="editions",
    summary="Editions, newest first",
    query=s.EditionQuery,
    responses={200: s.EditionList},
)
def list_editions(query: s.EditionQuery) -> Any:
    rows = q.editions_page(db(), limit=query.limit, offset=query.offset)
    counts = q.counts_by_edition(db(), [e.id for e in rows])
    return s.EditionList(items=[edition_out(e, counts.get(e.id, {})) for e in rows])


@operation(
    "GET",
    "/editions/{edition_id}",
    need="read",
    tag="editions",
    summary="One edition: articles, counts by status, errors",
    responses={200: s.EditionDetail},
)
def get_edition(edition_id: int) -> Any:
    session = db()
    found = store.get_edition(session, edition_id)
    ids = store.edition_article_ids(session, found.id)
    by_id = store.articles_by_id(session, ids)
    base = edition_out(found, store.edition_counts(session, found.id))
    return s.EditionDetail(
        **base.model_dump(),
        window_start=found.window_start,
        window_end=found.window_end,
        articles=[article_out(by_id[i]) for i in ids if i in by_id],
        errors=[
            s.DeliveryError(status=st, error=err, count=n)
            for st, err, n in q.edition_errors(session, found.id)
        ],
        variants=[
            s.Variant(sections=v.sections, subject=v.subject, article_count=v.article_count)
            for v in store.variants(session, found.id)
        ],
    )


@operation(
    "GET",
    "/editions/{edition_id}/preview",
    need="read",
    tag="editions",
    summary="An edition as a reader gets it (HTML)",
    query=s.PreviewQuery,
    responses={200: "text/html"},
)
def preview_edition(edition_id: int, query: s.PreviewQuery) -> Any:
    """One rendering (by its section choice; '' is every section) with sample values in
    the reader's slots."""
    store.get_edition(db(), edition_id)
    for variant in store.variants(db(), edition_id):
        if variant.sections == query.sections:
            values = slot_values(
                name="Reader",
                unsubscribe_url="#",
                preferences_url="#",
                view_url="#",
                for_html=True,
            )
            response = Response(prepare_variant(variant).html.fill(values), mimetype="text/html")
            response.headers["Content-Security-Policy"] = EDITION_CSP
            return response
    raise Problem(404, f"edition {edition_id} has no rendering for sections {query.sections!r}")


def _cohort(body: s.PlanIn) -> Cohort:
    settings = runtime().settings
    zone = body.timezone or settings.default_timezone
    try:
        check_timezone(zone)
    except ConfigError as exc:
        raise bad_field("timezone", str(exc)) from None
    return Cohort(body.slot, body.day or local_day(runtime().clock(), zone), zone)


def _plan_cohort(
    session: Session, settings: Settings, cohort: Cohort, force: bool
) -> dispatch.Fanout:
    """The API plans through the guard every entry point obeys (guard.may_plan, origin
    "api"), which audits the plan under the token's name. A refusal (a day still ahead:
    only the CLI and the console may force one; superseded; a bad clock) is a 422 that
    says why."""
    now = runtime().clock()
    fanout = dispatch.plan_slot(
        session,
        settings,
        cohort.slot,
        now,
        day=cohort.local_day,
        timezone=cohort.timezone,
        origin=guard.API,
        who=token_name(),
        force=force,
    )[0]
    if fanout.plan is None:
        reason = fanout.decision.reason if fanout.decision else "refused"
        raise Problem(422, reason)
    return fanout


@operation(
    "POST",
    "/editions/plan",
    need="write",
    tag="editions",
    summary="Plan and send a cohort's edition",
    body=s.PlanIn,
    responses={202: s.PlanOut},
    links={202: {"GetEdition": {"operationId": "get_edition", "parameters": _EDITION}}},
)
def plan_edition(body: s.PlanIn) -> Any:
    """One (slot, local day, timezone): planned once (a second call creates nothing and
    sends nothing), then sent by the workers, or by this process without a broker."""
    rt = runtime()
    session = db()
    cohort = _cohort(body)
    fanout = _plan_cohort(session, rt.settings, cohort, body.force)
    plan = fanout.plan
    assert plan is not None
    session.commit()
    how = hand_off(fanout.batches)
    return s.PlanOut(
        edition_id=plan.edition_id,
        cohort=str(cohort),
        status=plan.status,
        created=plan.created,
        queued=plan.queued,
        note=plan.note,
        sending=how,
    ), 202


@operation(
    "POST",
    "/editions/{edition_id}/retry",
    need="write",
    tag="editions",
    summary="Re-send failed or deferred deliveries",
    body=s.RetryIn,
    responses={202: s.RetryOut},
)
def retry_edition(edition_id: int, body: s.RetryIn) -> Any:
    rt = runtime()
    store.get_edition(db(), edition_id)
    statuses = sorted(set(body.statuses))
    count, batches = dispatch.retry_edition(db(), rt.settings, edition_id, statuses, rt.clock())
    audit(
        "retried",
        f"edition {edition_id}: {count} {'/'.join(statuses)} {noun(count, 'delivery')}",
    )
    db().commit()
    how = hand_off(batches, first=True)
    return s.RetryOut(edition_id=edition_id, requeued=count, sending=how), 202


@operation(
    "GET",
    "/status",
    need="read",
    tag="status",
    summary="The overview",
    responses={200: s.Status},
)
def status() -> Any:
    """Next sends, editions being sent, the last 24 hours, feeds and readers."""
    rt = runtime()
    data = overview.overview(db(), rt.settings, rt.clock())
    return s.Status(
        next_sends=[s.NextSend(**vars(n)) for n in data.next_sends],
        sending=[s.Progress(**vars(p)) for p in data.sending],
        last_24h=data.last_24h,
        feeds=[
            s.FeedHealth(
                id=f.id,
                url=f.url,
                paused=f.paused,
                last_ok_at=f.last_ok_at,
                last_error=f.last_error,
            )
            for f in data.feeds
        ],
        readers=data.readers,
    )


@operation(
    "GET",
    "/health",
    need="read",
    tag="status",
    summary="The health check",
    responses={200: s.Health, 503: s.Health},
)
def health() -> Any:
    """Whether the app and its database answer (503 when the database does not)."""
    try:
        store.ping(db())
    except SQLAlchemyError as exc:
        log.error("API health check: database unreachable (%s)", type(exc).__name__)
        return s.Health(status="error", database="unreachable"), 503
    return s.Health(status="ok", database="ok")
