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
from dataclasses import replace
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template, request
from werkzeug.urls import iri_to_uri

from digest.editions.clicks import Click, ClickBuffer, LinkTargets, is_scanner_agent
from digest.errors import InvalidToken, NotFound
from digest.mail.tokens import read_click, read_open, read_token
from digest.readers import sunset
from digest.web.base import Runtime, address_key, client_key, db, message_page, runtime
from digest.web.forms import same_origin

log = logging.getLogger(__name__)
bp = Blueprint("clicks", __name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class ClickRuntime:
    """The web process's buffer of clicks and its cache of link targets."""

    def __init__(self, app: Flask, rt: Runtime) -> None:
        self.app = app
        self.settings = rt.settings
        self.clock = rt.clock
        self.buffer = ClickBuffer(rt.settings, rt.sessions, rt.clock)
        self.targets = LinkTargets(rt.sessions, rt.settings.redis_url)

    def resolve(self, token: str) -> tuple[str, Click] | None:
        """Where a valid link goes and its click (not yet counted); None when it does
        not resolve (InvalidToken, LookupError and NotFound are the view's to show)."""
        try:
            edition_id, article_id, reader = read_click(self.settings.secret_key, token)
            found = self.targets.get(edition_id)
        except (InvalidToken, LookupError):
            return None
        url = found[1].get(article_id) if found else None
        if found is None or url is None:
            return None
        click = Click(
            at=self.clock(),
            edition_id=edition_id,
            article_id=article_id,
            client="",
            first_sent=found[0],
            subscriber_id=reader,
        )
        return location(url), click

    def count(self, click: Click) -> None:
        if self.settings.click_tracking == "off":
            return
        if not self.app.testing:
            self.buffer.start()  # tests flush by hand, at the times they choose
        self.buffer.add(click)


def location(url: str) -> str:
    """A stored URL as a Location header value (non-ASCII percent-encoded)."""
    safe = url if url.isascii() and url.isprintable() else iri_to_uri(url)
    if not safe.isprintable():
        raise NotFound("this article's address cannot be used")
    return safe


class FastClicks:
    """/r/<token> answered before Flask: verify, look up, append, 302. Anything that
    does not resolve goes on to the Flask view, which says why in a page."""

    HEADERS = [
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "same-origin"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Length", "0"),
    ]

    def __init__(self, wsgi_app: Any, state: ClickRuntime) -> None:
        self.wsgi_app = wsgi_app
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path: str = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if not path.startswith("/r/") or method not in ("GET", "HEAD"):
            return self.wsgi_app(environ, start_response)
        try:
            found = self.state.resolve(path[3:])
        except NotFound:
            found = None
        if found is None:
            return self.wsgi_app(environ, start_response)
        url, click = found
        self.state.count(
            replace(
                click,
                client=address_key(environ.get("REMOTE_ADDR") or ""),
                head=method == "HEAD",
                scanner_agent=is_scanner_agent(environ.get("HTTP_USER_AGENT")),
            )
        )
        start_response("302 Found", [("Location", url), *self.HEADERS])
        return [b""]


def install(app: Flask, rt: Runtime) -> None:
    state = ClickRuntime(app, rt)
    app.extensions["digest.clicks"] = state
    app.register_blueprint(bp)
    app.wsgi_app = FastClicks(app.wsgi_app, state)  # type: ignore[method-assign]


def clicks_runtime() -> ClickRuntime:
    found: ClickRuntime = current_app.extensions["digest.clicks"]
    return found


@bp.route("/r/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Any:
    """What FastClicks passed on: a bad token (400), an article not in the edition
    (404), or links that cannot be read just now (503). Otherwise as FastClicks."""
    rt = runtime()
    edition_id, article_id, _ = read_click(rt.settings.secret_key, token)
    try:
        found = clicks_runtime().targets.get(edition_id)
    except LookupError as exc:
        log.warning("click link not resolved: %s", exc)
        return message_page(
            "Please try again shortly", "This link cannot be followed just now.", 503
        )
    if found is None or article_id not in found[1]:
        raise NotFound("no such article in this edition")
    resolved = clicks_runtime().resolve(token)
    if resolved is None:
        raise NotFound("no such article in this edition")
    url, counted = resolved
    clicks_runtime().count(
        replace(
            counted,
            client=client_key(),
            head=request.method == "HEAD",
            scanner_agent=is_scanner_agent(request.headers.get("User-Agent")),
        )
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
