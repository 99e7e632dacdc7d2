"""The readers' pages: subscribe, confirm, unsubscribe, preferences, the web version,
and the public archive when DIGEST_PUBLIC_ARCHIVE is on.

Views are thin: they read the request, call digest.readers.accounts, commit, and render a page
from templates/web/. The token in a link is the only credential: no page needs or sets
a cookie, so a mail provider's one-click POST (RFC 8058) works like the page's button.

Sign-ups are limited (digest/readers/signup_limits.py): per client, per mailbox and by a global
hourly budget of confirmation emails, with counters shared through Redis.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import date
from typing import Any

from flask import Blueprint, Response, abort, render_template, request, url_for
from sqlalchemy.exc import SQLAlchemyError

from digest import store
from digest.editions import archive, pages
from digest.errors import InvalidInput, InvalidToken, NotFound, SendError
from digest.mail.relays import make_transport
from digest.mail.tokens import make_token, read_token, unseal
from digest.readers import accounts
from digest.readers.signup_challenge import POW_BITS, make_challenge, solution_ok
from digest.store.base import MAX_ID
from digest.web.base import DIGITS, EDITION_CSP, db, message_page, runtime
from digest.web.forms import cross_site, read_form, same_origin

log = logging.getLogger(__name__)
bp = Blueprint("digest", __name__)


def _send_times() -> dict[str, str]:
    return {slot: t.strftime("%H:%M") for slot, t in runtime().settings.send_times.items()}


# --- sign up and confirm -----------------------------------------------------------------


@bp.get("/")
def index() -> Any:
    return subscribe_form()


@bp.get("/subscribe")
def subscribe_form() -> Any:
    return _subscribe_page(accounts.Form(), {}, 200, reader=request.args.get("reader", "")[:200])


def _subscribe_page(
    form: accounts.Form,
    errors: dict[str, str],
    status: int,
    *,
    reader: str = "",
    challenge: str = "",
) -> tuple[str, int]:
    """The sign-up form; `reader` is a link token from the reader's own email (it lifts
    the per-mailbox limit), `challenge` the slower path's proof of work to do."""
    rt = runtime()
    now = rt.clock()
    page = render_template(
        "web/subscribe.html",
        form=form,
        errors=errors,
        sections=accounts.offered_sections(db(), now),
        timezones=accounts.timezone_choices(form.timezone),
        timezone=form.timezone or rt.settings.default_timezone,
        auto_timezone=not form.timezone,
        send_times=_send_times(),
        form_token=accounts.form_token(rt.settings.secret_key, now),
        reader=reader if _reader_of(reader) else "",
        challenge=challenge,
        challenge_bits=POW_BITS,
    )
    return page, status


def _reader_of(token: str) -> int | None:
    """The reader a link token from their own email names, if it is good."""
    if not token:
        return None
    try:
        rt = runtime()
        return read_token(rt.settings.secret_key, "preferences", token, rt.clock())
    except InvalidToken:
        return None


def _proof_of_work() -> bool:
    """Whether the form carries a solved, unused proof-of-work challenge."""
    rt = runtime()
    challenge = request.form.get("pow_challenge", "")[:200]
    nonce = request.form.get("pow_nonce", "")[:20]
    if not (challenge and solution_ok(rt.settings.secret_key, challenge, nonce, rt.clock())):
        return False
    return rt.guard.claim_form_token("pow:" + challenge)


@bp.post("/subscribe")
def subscribe() -> Any:
    if not same_origin():
        return cross_site()
    rt = runtime()
    now = rt.clock()
    session = db()
    form = read_form(with_email=True)
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
    reader = request.form.get("reader", "")[:200]
    if errors:
        return _subscribe_page(form, errors, 422, reader=reader)
    proven = False
    if not rt.guard.budget_left():
        # Not a refusal for everyone: the slower path (a proof of work in the browser).
        proven = _proof_of_work()
        if not proven:
            challenge = make_challenge(rt.settings.secret_key, now)
            return _subscribe_page(form, {}, 429, reader=reader, challenge=challenge)
    started = time.monotonic()
    notice = accounts.request_subscription(session, rt.settings, fields, now)
    # Through a link from this mailbox's own email: strangers cannot have used up its share.
    owner = _reader_of(reader) == notice.subscriber_id
    if notice.kind != "none" and not rt.guard.take_mail(notice.email, owner=owner, proven=proven):
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
        return message_page(
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
        "web/check_inbox.html", email=email, ttl_hours=runtime().settings.confirm_ttl_hours
    )


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Any:
    """A page with one button: mail scanners open confirmation links too, and must not
    subscribe anyone (or lift a suppression) by doing so. Bad links say so here."""
    rt = runtime()
    subscriber_id, request_ = unseal(rt.settings.secret_key, "confirm", token, rt.clock())
    subscriber = accounts.check_confirmable(db(), subscriber_id, request_)
    asked = accounts.requested_fields(subscriber, request_)
    return render_template(
        "web/confirm.html",
        address=accounts.mask_address(subscriber.email),
        active=subscriber.status == "active",
        editions=accounts.editions_label(asked),
        sections=asked["sections"].replace(",", ", ") or "all sections",
        timezone=asked["timezone"] or rt.settings.default_timezone,
        name=asked["name"],
    )


@bp.post("/confirm/<token>")
def confirm(token: str) -> Any:
    rt = runtime()
    now = rt.clock()
    subscriber_id, request_ = unseal(rt.settings.secret_key, "confirm", token, now)
    if not same_origin():
        return message_page("Nothing changed", "This form was sent from another site.", 403)
    session = db()
    if "name" in request.form:
        # Whoever filled in the sign-up form chose the name; the reader, who sees it on
        # this page, has the last word before it goes into every greeting.
        request_ = {**request_, "name": accounts.cap_name(request.form.get("name", ""))}
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
    return message_page(
        "Use the link in your email",
        "To unsubscribe or change your preferences, use the link at the bottom of any "
        "edition we sent you: each one is made for its reader alone.",
        200,
    )


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Any:
    """One button, nothing else: link scanners fetch this page, and must change nothing."""
    rt = runtime()
    subscriber_id = read_token(rt.settings.secret_key, "unsubscribe", token, rt.clock())
    subscriber = accounts.reader(db(), subscriber_id)
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
    rt = runtime()
    now = rt.clock()
    subscriber_id = read_token(rt.settings.secret_key, "unsubscribe", token, now)
    if not _one_click():
        return message_page(
            "Nothing changed",
            "To unsubscribe, use the button on the unsubscribe page.",
            400,
            link=(url_for("digest.unsubscribe_page", token=token), "Go to the unsubscribe page"),
        )
    session = db()
    subscriber = accounts.unsubscribe(session, subscriber_id, now)
    session.commit()
    return render_template(
        "web/unsubscribed.html",
        address=accounts.mask_address(subscriber.email),
        reader=make_token(rt.settings.secret_key, "preferences", subscriber_id),
    )


# --- preferences ---------------------------------------------------------------------------


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str) -> Any:
    rt = runtime()
    now = rt.clock()
    subscriber_id = read_token(rt.settings.secret_key, "preferences", token, now)
    session = db()
    subscriber = accounts.reader(session, subscriber_id)
    if subscriber.status in accounts.LEFT:
        return message_page(
            "You are unsubscribed",
            f"{accounts.mask_address(subscriber.email)} gets no emails from "
            f"{rt.settings.from_name}. To get the editions again, subscribe again.",
            200 if request.method == "GET" else 409,
            link=(url_for("digest.subscribe_form", reader=token), "Subscribe again"),
        )
    offered = accounts.offered_sections(session, now, subscriber.sections)
    form, saved, status = accounts.form_of(subscriber), False, 200
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not same_origin():
            return cross_site()
        form = read_form(with_email=False)
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
    rt = runtime()
    now = rt.clock()
    if edition_id > MAX_ID:  # beyond the id column's range: no such edition
        raise NotFound("no such edition")
    scope = str(edition_id)
    subscriber_id = read_token(rt.settings.secret_key, "view", token, now, scope=scope)
    html = accounts.edition_html(db(), rt.settings, edition_id, subscriber_id, now)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EDITION_CSP
    return response


# --- the public archive (DIGEST_PUBLIC_ARCHIVE) ----------------------------------------------


def _archive_on() -> None:
    if not runtime().settings.public_archive:
        abort(404)  # off by default: a publisher may not want its editions public


@bp.get("/archive")
def archive_index() -> Any:
    """Past editions by day, newest first, each a link to its page; a sign-up link."""
    _archive_on()
    rt = runtime()
    page = request.args.get("page", "0")
    number = int(page) if DIGITS.fullmatch(page) and len(page) < 6 else 0
    days, more = archive.days(db(), rt.clock(), number)
    return render_template(
        "web/archive.html",
        days=days,
        page=number,
        more=more,
        default_timezone=rt.settings.default_timezone,
    )


@bp.get("/archive/<int:edition_id>")
def archive_edition(edition_id: int) -> Any:
    _archive_on()
    rt = runtime()
    if edition_id > MAX_ID:
        raise NotFound("no such edition")
    banner = render_template("web/archive_banner.html")
    html = archive.edition_page(db(), rt.settings, edition_id, rt.clock(), banner)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EDITION_CSP
    return response


@bp.get("/editions/preview/<token>")
def edition_preview(token: str) -> Any:
    """The edition a test copy showed: its "view in browser" link (nothing personal)."""
    rt = runtime()
    now = rt.clock()
    _, asked = unseal(rt.settings.secret_key, "view", token, now)
    try:
        day = date.fromisoformat(asked.get("day", ""))
        slot, zone = asked["slot"], asked["tz"]
    except (KeyError, ValueError):
        raise InvalidToken("this link is malformed") from None
    html = pages.preview_html(db(), rt.settings, slot, day, zone, now)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EDITION_CSP
    return response


@bp.get("/healthz")
def healthz() -> Any:
    """For the compose healthcheck: the app answers and the database does too."""
    try:
        store.ping(db())
    except SQLAlchemyError as exc:
        log.error("health check: database unreachable (%s)", type(exc).__name__)
        return {"status": "error", "database": "unreachable"}, 503
    return {"status": "ok", "database": "ok"}
