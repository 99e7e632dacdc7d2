"""Reading forms: what a form sent, whether it came from this site, and the console's
CSRF token (the reader forms carry signed tokens of their own)."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import request, session

from digest.readers import accounts
from digest.web.base import message_page, runtime


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin() -> bool:
    """A browser's form POST names the page it came from; refuse other sites' forms.

    The origin must be DIGEST_BASE_URL's: the request's own Host is the client's to
    choose. Clients that send no Origin (scripts, old browsers) are let through: this
    check stops cross-site forms, the token checks stop everything else.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.lower() == origin_of(runtime().settings.base_url)


def cross_site() -> tuple[str, int]:
    return message_page(
        "Form sent from another site",
        "This form was sent from another website, so we ignored it. "
        "Please use the form on this site.",
        403,
    )


def read_form(*, with_email: bool) -> accounts.Form:
    """A subscribe or preferences form as sent, each field cut to a sane length."""
    f = request.form
    return accounts.Form(
        email=f.get("email", "")[:400] if with_email else "",
        name=f.get("name", "")[:400],
        timezone=f.get("timezone", "")[:100],
        editions=f.get("editions", "both")[:40],
        sections=[s[:100] for s in f.getlist("sections")[:100]],
    )


def csrf_token() -> str:
    """The console session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def csrf_ok() -> bool:
    """Whether a console POST carries its session's CSRF token."""
    sent = request.form.get("csrf", "")
    expected = session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(str(sent), str(expected))
