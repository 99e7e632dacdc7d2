"""The console's gate: operator sign-in and sign-out, the session cookie, and the
checks every console request passes (signed in; POSTs from this site with the session's
CSRF token). Failed sign-ins are limited per client and slowed per name
(digest/web/signin_limits.py), and audited.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from digest.config import Settings
from digest.errors import InvalidInput, NotFound
from digest.operations import operators
from digest.web.base import client_key, db, message_page, runtime
from digest.web.forms import csrf_ok, csrf_token, same_origin
from digest.web.signin_limits import login_name
from digest.words import counted

console = Blueprint("console", __name__, url_prefix="/admin")
SESSION_HOURS = 12
OPEN_ENDPOINTS = ("console.login",)


def configure_sessions(app: Flask, settings: Settings) -> None:
    """A signed session cookie for /admin only: HttpOnly, SameSite=Strict, Secure on https.

    Its key is derived from DIGEST_SECRET_KEY, so it differs from every link token's.
    """
    app.secret_key = hmac.new(
        settings.secret_key.encode(), b"digest console session", hashlib.sha256
    ).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME="digest_console",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )


def operator_name() -> str:
    """The signed-in operator (the gate has made sure there is one)."""
    return str(g.operator)


def _session_operator() -> str | None:
    """The operator this cookie signs in, if the session is still good: the operator
    exists, nothing ended their sessions since (sign-out, new password, removal), and
    it was signed in less than SESSION_HOURS ago (a fixed limit, not a sliding one)."""
    name, epoch, since = session.get("operator"), session.get("epoch"), session.get("since")
    if not name or not isinstance(epoch, int) or not isinstance(since, int | float):
        return None
    if runtime().clock().timestamp() - since > SESSION_HOURS * 3600:
        return None
    return str(name) if operators.session_valid(db(), str(name), epoch) else None


@console.before_request
def _gate() -> Any:
    if request.endpoint in OPEN_ENDPOINTS:
        g.operator = None
        return None
    g.operator = _session_operator()
    if not g.operator:
        session.clear()
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    if request.method == "POST" and not (same_origin() and csrf_ok()):
        return message_page(
            "Nothing changed",
            "This form could not be checked (it was sent from another site, or the page "
            "was open too long). Load the page again and retry.",
            403,
        )
    return None


@console.app_context_processor
def _console_globals() -> dict[str, Any]:
    if request.blueprint != "console":
        return {}
    return {"csrf_token": csrf_token, "operator": g.get("operator")}


@console.app_errorhandler(404)
def _not_found(exc: Exception) -> Any:
    """A missing console page in the console's layout, with a way back; elsewhere the
    readers' pages' own answer."""
    if not request.path.startswith("/admin"):
        return message_page(
            "Not found", "We could not find that page. Nothing has been changed.", 404
        )
    page = render_template(
        "admin/not_found.html",
        message="There is no such page or record in the console.",
        operator=g.get("operator"),
        csrf_token=csrf_token,
    )
    return page, 404


@console.errorhandler(NotFound)
def _record_not_found(exc: NotFound) -> Any:
    # A reader, edition or feed that is not there: the same console page.
    return _not_found(exc)


def _safe_next(target: str | None) -> str:
    # Only a path inside the console: never an open redirect to another site.
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("console.overview")


def _wait_text(seconds: int) -> str:
    if seconds < 90:
        return counted(seconds, "second")
    return f"{(seconds + 59) // 60} minutes"


def _audit_name(name: str) -> str:
    # Failed sign-ins are filed under the name they were for when it could be one.
    try:
        return operators.check_name(name)
    except InvalidInput:
        return "(no such name)"


@console.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = ""
    if request.method == "POST":
        if not same_origin():
            return message_page("Nothing changed", "This form was sent from another site.", 403)
        rt = runtime()
        name = login_name(request.form.get("name", ""))
        password = request.form.get("password", "")[:1000]
        client = client_key()
        now = rt.clock()
        refusal = rt.signin.refused(client, name, time.time())
        if refusal is not None:
            if refusal.first_in_window:
                operators.record(
                    db(),
                    _audit_name(name),
                    "sign-in refused",
                    f"too many failed sign-ins from {client}; told to wait "
                    f"{_wait_text(refusal.retry_after)}",
                    now,
                )
                db().commit()
            page = render_template("admin/locked.html", wait_text=_wait_text(refusal.retry_after))
            return page, 429, {"Retry-After": str(refusal.retry_after)}
        rt.sleep(rt.signin.delay(name))  # slows guessing at one name; never locks it
        operator = operators.authenticate(db(), name, password, now)
        if operator is not None:
            session.clear()
            session.permanent = True
            session["operator"] = operator.name
            session["epoch"] = operator.session_epoch
            session["since"] = int(now.timestamp())
            operators.record(db(), operator.name, "signed in", f"from {client}", now)
            db().commit()
            return redirect(_safe_next(request.args.get("next")))
        rt.signin.failed(client, name)
        operators.record(db(), _audit_name(name), "sign-in failed", f"from {client}", now)
        db().commit()
        error = "That name and password do not match an operator."
    status = 401 if error else 200
    return render_template("admin/login.html", error=error, csrf_token=csrf_token), status


@console.post("/logout")
def logout() -> Response:
    # Every session of this operator ends, copies of this cookie included.
    operators.end_sessions(db(), operator_name())
    operators.record(db(), operator_name(), "signed out", "", runtime().clock())
    db().commit()
    session.clear()
    return redirect(url_for("console.login"))
