"""The web app: readers' pages (readers.py) and the operator console (console.py), on
what base.py shares. `create_app()` is the factory gunicorn runs:

    gunicorn --config python:digest.gunicorn_conf 'digest.web:create_app()'

May import: anything in digest; nothing in digest imports it (but the gunicorn settings).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from jinja2 import StrictUndefined
from werkzeug.middleware.proxy_fix import ProxyFix

from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker
from digest.readers.signup_limits import SignupGuard, parse_limits, storage_uri
from digest.web import clicks, readers
from digest.web import console as _console_views  # noqa: F401 - registers the console pages
from digest.web.auth import configure_sessions, console
from digest.web.base import (
    EDITION_CSP,
    PAGE_CSP,
    Clock,
    DigestFlask,
    RedactingRequestHandler,
    Runtime,
    client_key,
    common,
    redact_path,
    utcnow,
)

LOGIN_LIMIT = "5 per minute;30 per hour"
NAME_LOGIN_LIMIT = "10 per minute;60 per hour"

__all__ = [
    "EDITION_CSP",
    "PAGE_CSP",
    "RedactingRequestHandler",
    "create_app",
    "redact_path",
    "run_dev_server",
]


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
    app.extensions["digest"] = Runtime(settings, engine, sessions, clock or utcnow, guard)
    app.register_blueprint(common)
    app.register_blueprint(readers.bp)
    clicks.install(app, app.extensions["digest"])
    configure_sessions(app, settings)
    app.register_blueprint(console)
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    limiter = Limiter(
        client_key,
        app=app,
        storage_uri=storage_uri(settings),
        strategy="moving-window",
        key_prefix="digest-web",
    )
    parse_limits("DIGEST_SIGNUP_CLIENT_LIMIT", settings.signup_client_limit)  # fail early
    _limit(app, "digest.subscribe", limiter.limit(settings.signup_client_limit, methods=["POST"]))
    # Failed sign-ins: per client address, and per operator name from anywhere (with a
    # higher ceiling, so that strangers guessing cannot easily lock the operator out).
    per_client = limiter.limit(LOGIN_LIMIT, methods=["POST"], deduct_when=_failed)
    per_name = limiter.limit(
        NAME_LOGIN_LIMIT, methods=["POST"], deduct_when=_failed, key_func=_login_name
    )
    _limit(app, "console.login", per_client)
    _limit(app, "console.login", per_name)
    return app


def _limit(app: Flask, endpoint: str, decorator: Any) -> None:
    app.view_functions[endpoint] = decorator(app.view_functions[endpoint])


def _failed(response: Any) -> bool:
    return bool(response.status_code == 401)


def _login_name() -> str:
    return "operator:" + request.form.get("name", "").strip().lower()[:64]


def run_dev_server(
    settings: Settings, host: str, port: int, *, debug: bool = False, clock: Clock | None = None
) -> None:
    """Flask's development server (not for production: use gunicorn)."""
    app = create_app(settings, clock=clock)
    handler = RedactingRequestHandler
    app.run(host=host, port=port, debug=debug, load_dotenv=False, request_handler=handler)
