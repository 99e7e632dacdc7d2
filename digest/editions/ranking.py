"""DIGEST_RANK_BY_CLICKS: the web version and the archive show each section's articles
ordered by recent clicks (every reader's, never one reader's own history)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import clicks, pipeline
from digest.editions.render import render_edition
from digest.editions.selection import pick_for_sections
from digest.editions.sending import PreparedVariant, prepare_rendering
from digest.models import Candidate, Cohort, EditionVariant
from digest.store.clicks import recent_clicks

RANK_HOURS = 48  # "recent": the clicks of the last two days, every edition's
_RANKED: dict[tuple[int, tuple[int, ...]], PreparedVariant] = {}


def rank_within_sections(picked: Sequence[Candidate], counts: dict[int, int]) -> list[Candidate]:
    """The same articles, sections where they were, each section's articles ordered by
    clicks (most first; ties keep the edition's order)."""
    runs: list[list[Candidate]] = []
    for c in picked:
        if runs and runs[-1][0].section == c.section:
            runs[-1].append(c)
        else:
            runs.append([c])
    return [c for run in runs for c in sorted(run, key=lambda c: -counts.get(c.id, 0))]


def ranked_rendering(
    session: Session, settings: Settings, variant: EditionVariant, now: datetime
) -> PreparedVariant:
    """A rendering for the web version and the archive with each section's articles
    ordered by recent clicks (every reader's, never one reader's own). Rendered again
    only when the order changes (kept per process)."""
    edition = store.get_edition(session, variant.edition_id)
    snapshot = [c for c, _ in pipeline.edition_articles(session, edition.id)]
    picked = pick_for_sections(snapshot, variant.sections, settings.max_articles)
    since = now - timedelta(hours=RANK_HOURS)
    order = rank_within_sections(picked, recent_clicks(session, since, [c.id for c in picked]))
    key = (variant.id, tuple(c.id for c in order))
    if key in _RANKED:
        return _RANKED[key]
    as_sent = settings.with_(click_tracking=variant.click_tracking)
    articles = clicks.wrap_articles(
        as_sent, edition.id, [c.id for c in order], pipeline.article_views(session, order)
    )
    cohort = Cohort(edition.slot, edition.local_day, edition.timezone)
    view = pipeline.edition_view(settings, cohort, articles)
    prepared = prepare_rendering(render_edition(view, settings.templates_dir))
    if len(_RANKED) > 64:
        _RANKED.clear()
    _RANKED[key] = prepared
    return prepared
