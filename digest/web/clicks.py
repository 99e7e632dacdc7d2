"""The click counter's pages: /r/<token> (an article link), /o/<token>.gif (the optional
tracking pixel) and /keep/<token> (the sunset's "still want this?" answer).

/r/ answers from memory: the token is checked by its HMAC, the target is the article's
stored URL (read once per edition and process), and the click is appended to a buffer
that a background thread writes in batches (digest/editions/clicks.py). Nothing in a
token can choose where a link goes.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template, request

from digest.config import Settings
from digest.editions.clicks import Click, ClickBuffer, LinkTargets, is_scanner_agent
from digest.errors import InvalidToken, NotFound
from digest.mail.tokens import read_click, read_open, read_token
from digest.readers import sunset
from digest.web.base import Runtime, client_key, db, message_page, runtime
from digest.web.forms import same_origin

log = logging.getLogger(__name__)
bp = Blueprint("clicks", __name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class ClickRuntime:
    """The web process's buffer of clicks and its cache of link targets."""

    def __init__(self, rt: Runtime) -> None:
        self.buffer = ClickBuffer(rt.settings, rt.sessions, rt.clock)
        self.targets = LinkTargets(rt.sessions, rt.settings.redis_url)


def install(app: Flask, rt: Runtime) -> None:
    app.extensions["digest.clicks"] = ClickRuntime(rt)
    app.register_blueprint(bp)


def clicks_runtime() -> ClickRuntime:
    found: ClickRuntime = current_app.extensions["digest.clicks"]
    return found


def _count(settings: Settings, click: Click) -> None:
    if settings.click_tracking == "off":
        return
    state = clicks_runtime()
    if not current_app.testing:
        state.buffer.start()  # tests flush by hand, at the times they choose
    state.buffer.add(click)


@bp.route("/r/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Any:
    """Redirect to the article's stored URL; count the click off the request path."""
    rt = runtime()
    edition_id, article_id, reader = read_click(rt.settings.secret_key, token)
    try:
        found = clicks_runtime().targets.get(edition_id)
    except LookupError as exc:
        log.warning("click link not resolved: %s", exc)
        return message_page(
            "Please try again shortly", "This link cannot be followed just now.", 503
        )
    url = found[1].get(article_id) if found else None
    if found is None or url is None:
        raise NotFound("no such article in this edition")
    now = rt.clock()
    _count(
        rt.settings,
        Click(
            at=now,
            edition_id=edition_id,
            article_id=article_id,
            client=client_key(),
            first_sent=found[0],
            subscriber_id=reader,
            head=request.method == "HEAD",
            scanner_agent=is_scanner_agent(request.headers.get("User-Agent")),
        ),
    )
    response = Response(status=302)
    response.headers["Location"] = url
    return response


@bp.route("/o/<token>.gif", methods=["GET", "HEAD"])
def pixel(token: str) -> Any:
    """The tracking pixel (DIGEST_OPEN_TRACKING): an edition's opens, nobody's."""
    rt = runtime()
    edition_id = read_open(rt.settings.secret_key, token)
    if rt.settings.open_tracking:
        try:
            found = clicks_runtime().targets.get(edition_id)
        except LookupError:
            found = None
        if found is not None:
            clicks_runtime().buffer.add(
                Click(
                    at=rt.clock(),
                    edition_id=edition_id,
                    article_id=0,
                    client=client_key(),
                    first_sent=found[0],
                    head=request.method == "HEAD",
                    scanner_agent=is_scanner_agent(request.headers.get("User-Agent")),
                )
            )
            if not current_app.testing:
                clicks_runtime().buffer.start()
    return Response(PIXEL, mimetype="image/gif")


@bp.route("/keep/<token>", methods=["GET", "POST"])
def keep(token: str) -> Any:
    """The sunset email's one-click answer. A request that looks like a link scanner
    (HEAD, a scanner's agent) gets a page with a button instead, so a mail filter
    cannot answer for the reader; anyone else is kept by the click itself."""
    rt = runtime()
    now = rt.clock()
    subscriber_id = read_token(rt.settings.secret_key, "keep", token, now)
    session = db()
    asked = sunset.asked_at(session, subscriber_id)
    window = timedelta(seconds=rt.settings.scanner_window_seconds)
    machine = (
        request.method == "HEAD"
        or is_scanner_agent(request.headers.get("User-Agent"))
        or (asked is not None and now - asked < window)
    )
    if request.method == "POST":
        if not same_origin():
            return message_page("Nothing changed", "This form was sent from another site.", 403)
    elif machine:
        return render_template("web/keep.html", token=token), 200
    try:
        kept = sunset.keep(session, subscriber_id, now)
    except NotFound:
        raise InvalidToken("this link is no longer valid") from None
    session.commit()
    if not kept:
        return message_page(
            "Nothing to do", "There is no open question about your subscription.", 200
        )
    return message_page(
        "You are staying with us",
        f"Thank you. You will keep getting the editions of {rt.settings.from_name}.",
        200,
    )
