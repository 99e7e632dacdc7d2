"""A sent edition as a web page with nothing personal in it: the "view in browser" page,
a test copy's preview and the public archive show the rendering a reader got, cut at its
slots and filled with values that are nobody's."""

from __future__ import annotations

import re
from datetime import date, datetime

from sqlalchemy.orm import Session

from digest.config import Settings
from digest.editions import pipeline, ranking, sending
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort
from digest.errors import NotFound
from digest.models import EditionVariant

WEB_VIEW_SELF = "#digest-web-view"
_SELF_LINK = re.compile(r'<a\b[^>]*href="' + WEB_VIEW_SELF + r'"[^>]*>.*?</a>', re.S)


# The template's own <body> tag: it comes before any feed text, which is escaped or
# sanitised anyway, so the first one is always the template's.
_BODY = re.compile(r"<body\b[^>]*>", re.I)


def public_html(
    settings: Settings,
    variant: EditionVariant,
    banner: str = "",
    *,
    session: Session | None = None,
    now: datetime | None = None,
) -> str:
    """A sent rendering as a web page with nothing personal in it (the web version, the
    public archive): no name, account links to pages that ask for the reader's own
    email's links, no link to itself, the content in a main landmark. `banner` is
    trusted markup shown above it. With DIGEST_RANK_BY_CLICKS (and a session), each
    section's articles come in the order of their recent clicks."""
    if settings.rank_by_clicks and session is not None and now is not None:
        return public_page(
            settings, ranking.ranked_rendering(session, settings, variant, now), banner
        )
    return public_page(settings, sending.prepare_variant(variant), banner)


def preview_html(
    session: Session, settings: Settings, slot: str, day: date, timezone: str, now: datetime
) -> str:
    """The edition a test copy showed, as a page (rendered now if it is not planned)."""
    found = pipeline.preview(session, settings, Cohort(slot, day, timezone), now)
    if found is None:
        raise NotFound("this edition has no articles to show")
    return public_page(settings, found[1])


def public_page(settings: Settings, prepared: sending.PreparedVariant, banner: str = "") -> str:
    """A rendering cut at its slots, filled with nothing personal (see public_html)."""
    values = slot_values(name="", for_html=True, **sending.public_links(settings, WEB_VIEW_SELF))
    html = _SELF_LINK.sub("", prepared.html.fill(values))
    if "/o/" in html:  # the tracking pixel: a web page read is no email opened
        html = re.sub(r'<img src="' + re.escape(settings.base_url) + r'/o/[^"]*"[^>]*>', "", html)
    return as_page(html, banner)


def as_page(html: str, banner: str = "") -> str:
    """An email's HTML as a web page: its content in a main landmark, `banner`
    (trusted markup) above it."""
    body = _BODY.search(html)
    end = html.rfind("</body>")
    if body is None or end < body.end():
        return html
    return f"{html[: body.end()]}{banner}<main>{html[body.end() : end]}</main>{html[end:]}"
