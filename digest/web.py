"""The reader-facing web app: subscribe, confirm, unsubscribe, preferences, web version.

Views are thin: they read the request, call digest.accounts, commit, and render a page
from templates/web/. The token in a link is the only credential: no page needs or sets
a cookie, so a mail provider's one-click POST (RFC 8058) works like the page's button.

Sign-ups are limited here (digest/signup_limits.py): per client, per mailbox and by a
global hourly budget of confirmation emails, with counters shared through Redis.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Flask, Response, current_app, g, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from jinja2 import StrictUndefined
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import WSGIRequestHandler

from digest import accounts, store
from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker
from digest.errors import InvalidInput, InvalidToken, NotFound, SendError
from digest.signup_limits import SendPacer, SignupGuard, parse_limits, storage_uri
from digest.store.base import MAX_ID
from digest.tokens import make_token, read_token, unseal
from digest.transport import make_transport

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The web version shows feed images from anywhere but runs nothing and posts nowhere.
EDITION_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_TOKEN_PATH = re.compile(
    r"(/(?:unsubscribe|confirm|preferences|editions/[^/?#\s]+)/)[^/?#\s]+", re.IGNORECASE
)

bp = Blueprint("digest", __name__)


@dataclass
class Runtime:
    """What the views share: one engine and sessionmaker per app, and the clock."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock
    guard: SignupGuard
    pacer: SendPacer = field(default_factory=SendPacer)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def redact_path(text: str) -> str:
    """A path or request line with its token cut out, fit for a log.

    The path is read percent-decoded first, as the app routes it: `/%70references/...`
    reaches the preferences page, so its token must not reach the log either.
    """
    decoded = text
    for _ in range(3):  # %2570 decodes to %70, then to p
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    return _TOKEN_PATH.sub(r"\1<token>", decoded)


class DigestFlask(Flask):
    """Flask whose error log never shows a reader's token."""

    def log_exception(
        self,
        exc_info: ExcInfo,
    ) -> None:
        self.logger.error(
            "Exception on %s [%s]", redact_path(request.path), request.method, exc_info=exc_info
        )


class RedactingRequestHandler(WSGIRequestHandler):
    """The dev server's access log, without tokens."""

    def log(self, type: str, message: str, *args: Any) -> None:
        clean = [redact_path(a) if isinstance(a, str) else a for a in args]
        super().log(type, redact_path(message), *clean)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> Flask:
    """The web app; settings come from DIGEST_* variables when not given (gunicorn:
    `digest.web:create_app()`)."""
    settings = settings or load_settings()
    app = DigestFlask(__name__, template_folder=str(settings.templates_dir), static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)
    app.jinja_env.undefined = StrictUndefined
    app.jinja_env.globals.update(
        sender_name=settings.from_name, postal_address=settings.postal_address
    )
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    guard = SignupGuard(settings)
    app.extensions["digest"] = Runtime(settings, engine, sessions, clock or _utcnow, guard)
    app.register_blueprint(bp)
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=storage_uri(settings),
        strategy="moving-window",
        key_prefix="digest-web",
    )
    parse_limits("DIGEST_SIGNUP_CLIENT_LIMIT", settings.signup_client_limit)  # fail early
    view = "digest.subscribe"
    limit = limiter.limit(settings.signup_client_limit, methods=["POST"])
    app.view_functions[view] = limit(app.view_functions[view])  # type: ignore[assignment]
    return app


def run_dev_server(
    settings: Settings, host: str, port: int, *, debug: bool = False, clock: Clock | None = None
) -> None:
    """Flask's development server (not for production: use gunicorn)."""
    app = create_app(settings, clock=clock)
    handler = RedactingRequestHandler
    app.run(host=host, port=port, debug=debug, load_dotenv=False, request_handler=handler)


# --- per request ---------------------------------------------------------------------------


def _rt() -> Runtime:
    runtime: Runtime = current_app.extensions["digest"]
    return runtime


def _session() -> Session:
    """This request's session, opened on first use (a forged token never opens one)."""
    if "db" not in g:
        g.db = _rt().sessions()
    session: Session = g.db
    return session


@bp.teardown_app_request
def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


@bp.before_app_request
def _nonce() -> None:
    g.nonce = secrets.token_urlsafe(16)


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"csp_nonce": g.get("nonce", "")}


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PAGE_CSP.format(nonce=g.get("nonce", "")))
    # Tokens live in URLs: never hand them to another site in a Referer.
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Cache-Control"] = "no-store"
    return response


def _page(
    title: str,
    message: str,
    status: int,
    *,
    link: tuple[str, str] | None = None,
) -> tuple[str, int]:
    return render_template("web/message.html", title=title, message=message, link=link), status


@bp.app_errorhandler(InvalidToken)
def _invalid_token(exc: InvalidToken) -> tuple[str, int]:
    message = str(exc)
    return _page(
        "This link does not work",
        message[:1].upper() + message[1:] + ". Nothing has been changed.",
        400,
        link=(url_for("digest.subscribe_form"), "Go to the sign-up page"),
    )


@bp.app_errorhandler(NotFound)
def _not_found(exc: NotFound) -> tuple[str, int]:
    return _page(
        "Not found",
        "We could not find that subscription or edition. Nothing has been changed.",
        404,
    )


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    if exc.code is None or exc.code < 400:
        return exc
    return _page(exc.name, exc.description or exc.name, exc.code)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_origin() -> bool:
    """A browser's form POST names the page it came from; refuse other sites' forms.

    The origin must be DIGEST_BASE_URL's: the request's own Host is the client's to
    choose. Clients that send no Origin (scripts, old browsers) are let through: this
    check stops cross-site forms, the token checks stop everything else.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.lower() == _origin(_rt().settings.base_url)


def _cross_site() -> tuple[str, int]:
    return _page(
        "Form sent from another site",
        "This form was sent from another website, so we ignored it. "
        "Please use the form on this site.",
        403,
    )


def _read_form(*, with_email: bool) -> accounts.Form:
    f = request.form
    return accounts.Form(
        email=f.get("email", "")[:400] if with_email else "",
        name=f.get("name", "")[:400],
        timezone=f.get("timezone", "")[:100],
        editions=f.get("editions", "both")[:40],
        sections=[s[:100] for s in f.getlist("sections")[:100]],
    )


def _send_times() -> dict[str, str]:
    return {slot: t.strftime("%H:%M") for slot, t in _rt().settings.send_times.items()}


# --- sign up and confirm -----------------------------------------------------------------


@bp.get("/")
def index() -> Any:
    return subscribe_form()


@bp.get("/subscribe")
def subscribe_form() -> Any:
    return _subscribe_page(accounts.Form(), {}, 200)


def _subscribe_page(form: accounts.Form, errors: dict[str, str], status: int) -> tuple[str, int]:
    rt = _rt()
    now = rt.clock()
    page = render_template(
        "web/subscribe.html",
        form=form,
        errors=errors,
        sections=accounts.offered_sections(_session(), now),
        timezones=accounts.timezone_choices(form.timezone),
        timezone=form.timezone or rt.settings.default_timezone,
        auto_timezone=not form.timezone,
        send_times=_send_times(),
        form_token=accounts.form_token(rt.settings.secret_key, now),
    )
    return page, status


@bp.post("/subscribe")
def subscribe() -> Any:
    if not _same_origin():
        return _cross_site()
    rt = _rt()
    now = rt.clock()
    session = _session()
    form = _read_form(with_email=True)
    errors: dict[str, str] = {}
    form_token = request.form.get("form_token", "")
    try:
        accounts.check_form_token(rt.settings.secret_key, form_token, now)
        if not rt.guard.claim_form_token(form_token):
            raise InvalidInput("This form was sent already. Please check it and send it again.")
    except InvalidInput as exc:
        errors["form"] = str(exc)
    fields, field_errors = accounts.validate(form, accounts.offered_sections(session, now))
    errors.update(field_errors)
    if errors:
        return _subscribe_page(form, errors, 422)
    if not rt.guard.budget_left():
        return _try_later()
    started = time.monotonic()
    notice = accounts.request_subscription(session, rt.settings, fields, now)
    if notice.kind != "none" and not rt.guard.take_mail(notice.email):
        notice = replace(notice, kind="none")  # this mailbox had its share today
    session.commit()
    if notice.kind == "none":
        rt.pacer.pad(started)  # answer no faster than a real send would
        return _check_inbox(fields["email"])
    try:
        accounts.send_notice(rt.settings, make_transport(rt.settings), notice, now)
    except SendError as exc:
        log.warning("sign-up email not sent (%s): %s", notice.kind, type(exc).__name__)
        accounts.forget_notice(session, notice)  # so that trying again sends one
        session.commit()
        return _page(
            "Please try again shortly",
            "We could not send you the confirmation email just now. "
            "Please try again in a few minutes.",
            503,
            link=(url_for("digest.subscribe_form"), "Back to the sign-up page"),
        )
    rt.pacer.record(time.monotonic() - started)
    return _check_inbox(fields["email"])


def _check_inbox(email: str) -> str:
    return render_template(
        "web/check_inbox.html", email=email, ttl_hours=_rt().settings.confirm_ttl_hours
    )


def _try_later() -> tuple[str, int]:
    return _page(
        "Please try again later",
        "We are getting more sign-ups than usual and cannot send more confirmation "
        "emails just now. Please try again in an hour.",
        429,
        link=(url_for("digest.subscribe_form"), "Back to the sign-up page"),
    )


@bp.app_errorhandler(429)
def _too_many(exc: HTTPException) -> tuple[str, int]:
    return _page(
        "Please try again later",
        "Too many sign-ups came from your network. Please try again later.",
        429,
    )


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Any:
    """A page with one button: mail scanners open confirmation links too, and must not
    subscribe anyone (or lift a suppression) by doing so. Bad links say so here."""
    rt = _rt()
    subscriber_id, request_ = unseal(rt.settings.secret_key, "confirm", token, rt.clock())
    subscriber = accounts.check_confirmable(_session(), subscriber_id, request_)
    asked = accounts.requested_fields(subscriber, request_)
    return render_template(
        "web/confirm.html",
        address=accounts.mask_address(subscriber.email),
        active=subscriber.status == "active",
        editions=accounts.editions_label(asked),
        sections=asked["sections"].replace(",", ", ") or "all sections",
        timezone=asked["timezone"] or rt.settings.default_timezone,
    )


@bp.post("/confirm/<token>")
def confirm(token: str) -> Any:
    rt = _rt()
    now = rt.clock()
    subscriber_id, request_ = unseal(rt.settings.secret_key, "confirm", token, now)
    if not _same_origin():
        return _page("Nothing changed", "This form was sent from another site.", 403)
    session = _session()
    subscriber = accounts.confirm(session, subscriber_id, request_, now)
    session.commit()
    first = accounts.first_edition(rt.settings, subscriber, now)
    return render_template(
        "web/confirmed.html",
        first_slot=first[0] if first else "",
        first_at=first[1].strftime("%A at %H:%M") if first else "",
        timezone=subscriber.timezone or rt.settings.default_timezone,
    )


# --- unsubscribe ---------------------------------------------------------------------------


@bp.get("/unsubscribe")
@bp.get("/preferences")
def links_in_email() -> Any:
    """Where the web version of an edition sends readers: it has no personal links."""
    return _page(
        "Use the link in your email",
        "To unsubscribe or change your preferences, use the link at the bottom of any "
        "edition we sent you: each one is made for its reader alone.",
        200,
    )


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Any:
    """One button, nothing else: link scanners fetch this page, and must change nothing."""
    rt = _rt()
    subscriber_id = read_token(rt.settings.secret_key, "unsubscribe", token, rt.clock())
    subscriber = store.get_subscriber(_session(), subscriber_id)
    return render_template(
        "web/unsubscribe.html",
        address=accounts.mask_address(subscriber.email),
        left=subscriber.status in accounts.LEFT,
    )


def _one_click() -> bool:
    if request.form.get("List-Unsubscribe") == "One-Click":
        return True
    # A provider that posts the RFC 8058 body without a form Content-Type.
    return b"List-Unsubscribe=One-Click" in request.get_data(cache=True)[:1000]


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Any:
    """RFC 8058 one-click, and the page's button: 200, no redirect, no cookie."""
    rt = _rt()
    now = rt.clock()
    subscriber_id = read_token(rt.settings.secret_key, "unsubscribe", token, now)
    if not _one_click():
        return _page(
            "Nothing changed",
            "To unsubscribe, use the button on the unsubscribe page.",
            400,
            link=(url_for("digest.unsubscribe_page", token=token), "Go to the unsubscribe page"),
        )
    session = _session()
    subscriber = accounts.unsubscribe(session, subscriber_id, now)
    session.commit()
    return render_template("web/unsubscribed.html", address=accounts.mask_address(subscriber.email))


# --- preferences ---------------------------------------------------------------------------


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str) -> Any:
    rt = _rt()
    now = rt.clock()
    subscriber_id = read_token(rt.settings.secret_key, "preferences", token, now)
    session = _session()
    subscriber = store.get_subscriber(session, subscriber_id)
    if subscriber.status in accounts.LEFT:
        return _page(
            "You are unsubscribed",
            f"{accounts.mask_address(subscriber.email)} gets no emails from "
            f"{rt.settings.from_name}. To get the editions again, subscribe again.",
            200 if request.method == "GET" else 409,
            link=(url_for("digest.subscribe_form"), "Subscribe again"),
        )
    offered = accounts.offered_sections(session, now, subscriber.sections)
    form, saved, status = accounts.form_of(subscriber), False, 200
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not _same_origin():
            return _cross_site()
        form = _read_form(with_email=False)
        form.email = subscriber.email
        fields, errors = accounts.validate(form, offered, email=subscriber.email)
        if errors:
            status = 422
        else:
            accounts.update_preferences(session, subscriber_id, fields)
            session.commit()
            form, saved = accounts.form_of(subscriber), True
    unsubscribe_token = make_token(rt.settings.secret_key, "unsubscribe", subscriber_id)
    page = render_template(
        "web/preferences.html",
        address=accounts.mask_address(subscriber.email),
        form=form,
        errors=errors,
        saved=saved,
        pending=subscriber.status == "pending",
        sections=offered,
        timezones=accounts.timezone_choices(form.timezone),
        timezone=form.timezone or rt.settings.default_timezone,
        send_times=_send_times(),
        unsubscribe_url=url_for("digest.unsubscribe_page", token=unsubscribe_token),
    )
    return page, status


# --- web version and health ------------------------------------------------------------------


@bp.get("/editions/<int:edition_id>/<token>")
def edition(edition_id: int, token: str) -> Any:
    rt = _rt()
    now = rt.clock()
    if edition_id > MAX_ID:  # beyond the id column's range: no such edition
        raise NotFound("no such edition")
    scope = str(edition_id)
    subscriber_id = read_token(rt.settings.secret_key, "view", token, now, scope=scope)
    html = accounts.edition_html(_session(), rt.settings, edition_id, subscriber_id, now)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EDITION_CSP
    return response


@bp.get("/healthz")
def healthz() -> Any:
    """For the compose healthcheck: the app answers and the database does too."""
    try:
        store.ping(_session())
    except SQLAlchemyError as exc:
        log.error("health check: database unreachable (%s)", type(exc).__name__)
        return {"status": "error", "database": "unreachable"}, 503
    return {"status": "ok", "database": "ok"}
