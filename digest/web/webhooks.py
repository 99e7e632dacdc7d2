"""ESP webhooks: POST /webhooks/ses, /sendgrid, /mailgun and /postmark.

Each answers 404 until its setting is present. The readers in digest/readers/webhooks/
authenticate and parse; here a delivery already seen is refused as a replay, the events
are acted on in one transaction, and each outcome is logged as one line. An address that
is no reader is acknowledged (200) and logged. No session cookie, CSRF or same-origin
check applies: the providers authenticate by signature or credentials instead.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from digest import store
from digest.readers.returned import clean
from digest.readers.webhooks import KEEP_SEEN, Event, Refused, act_on_events, mailgun, postmark
from digest.readers.webhooks import sendgrid as sendgrid_reader
from digest.readers.webhooks import ses as ses_reader
from digest.web.base import db, runtime

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger("digest.webhooks")
MAX_BODY = 1_000_000  # SendGrid batches many events in one POST


@bp.before_request
def _bigger_bodies() -> None:
    request.max_content_length = MAX_BODY


def sns_verifier() -> ses_reader.SnsVerifier:
    """The app's SNS verifier (tests put one with a local certificate fetcher here)."""
    found = current_app.extensions.get("digest-sns")
    if found is None:
        found = current_app.extensions["digest-sns"] = ses_reader.SnsVerifier()
    verifier: ses_reader.SnsVerifier = found
    return verifier


def _refused(source: str, exc: Refused) -> tuple[str, int, dict[str, str]]:
    log.warning("webhook %s refused (%d): %s", source, exc.status, clean(exc))
    headers = {"WWW-Authenticate": 'Basic realm="digest webhooks"'} if exc.status == 401 else {}
    status = exc.status if exc.status != 500 else 503
    return f"refused: {exc}\n", status, headers


def _act(source: str, events: list[Event], key: str, note: str = "") -> Any:
    rt = runtime()
    now = rt.clock()
    session = db()
    try:
        if key and not store.first_time(session, key, now, KEEP_SEEN):
            session.rollback()
            return _refused(source, Refused(403, "this delivery was seen before (a replay)"))
        lines = act_on_events(session, rt.settings, events, source, now)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        log.error("webhook %s: database unavailable: %s", source, clean(first))
        return "database unavailable, try again\n", 503
    for line in ([note] if note else []) + lines:
        log.info("webhook %s: %s", source, clean(line))
    return "ok\n", 200


@bp.post("/ses")
def ses() -> Any:
    settings = runtime().settings
    if not settings.ses_topic_arns:
        abort(404)
    try:
        events, key, note = ses_reader.read(
            request.get_data(), settings.ses_topic_arns, sns_verifier(), runtime().clock()
        )
    except Refused as exc:
        return _refused("ses", exc)
    return _act("ses", events, key, note)


@bp.post("/sendgrid")
def sendgrid() -> Any:
    settings = runtime().settings
    if not settings.sendgrid_webhook_key:
        abort(404)
    try:
        events, key = sendgrid_reader.read(
            request.get_data(),
            request.headers.get(sendgrid_reader.SIGNATURE, ""),
            request.headers.get(sendgrid_reader.TIMESTAMP, ""),
            settings.sendgrid_webhook_key,
            runtime().clock(),
        )
    except Refused as exc:
        return _refused("sendgrid", exc)
    return _act("sendgrid", events, key)


@bp.post("/mailgun")
def mailgun_events() -> Any:
    settings = runtime().settings
    if not settings.mailgun_signing_key:
        abort(404)
    try:
        events, key = mailgun.read(
            request.get_data(), settings.mailgun_signing_key, runtime().clock()
        )
    except Refused as exc:
        return _refused("mailgun", exc)
    return _act("mailgun", events, key)


@bp.post("/postmark")
def postmark_events() -> Any:
    settings = runtime().settings
    if not settings.postmark_webhook_auth:
        abort(404)
    try:
        events, key = postmark.read(
            request.get_data(),
            request.headers.get("Authorization", ""),
            settings.postmark_webhook_auth,
        )
    except Refused as exc:
        return _refused("postmark", exc)
    return _act("postmark", events, key)
