"""The console's gate: operator sign-in and sign-out, the session cookie, and the
checks every console request passes (signed in; POSTs from this site with the session's
CSRF token). Sign-in attempts are limited per client and per name (digest/web/__init__).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from digest.config import Settings
from digest.operations import operators
from digest.web.base import db, message_page, runtime
from digest.web.forms import csrf_ok, csrf_token, same_origin

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


def _safe_next(target: str | None) -> str:
    # Only a path inside the console: never an open redirect to another site.
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("console.overview")


@console.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = ""
    if request.method == "POST":
        if not same_origin():
            return message_page("Nothing changed", "This form was sent from another site.", 403)
        name = request.form.get("name", "")[:64]
        password = request.form.get("password", "")[:1000]
        now = runtime().clock()
        operator = operators.authenticate(db(), name, password, now)
        if operator is not None:
            session.clear()
            session.permanent = True
            session["operator"] = operator.name
            session["epoch"] = operator.session_epoch
            session["since"] = int(now.timestamp())
            operators.record(db(), operator.name, "signed in", request.remote_addr or "", now)
            db().commit()
            return redirect(_safe_next(request.args.get("next")))
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
