"""The web app: readers' pages (readers.py), the operator console (console/), the ESP
webhooks (webhooks.py), the JSON API (api/) and Prometheus metrics (metrics.py), on what
base.py shares. `create_app()` is the factory gunicorn runs:

    gunicorn --config python:digest.gunicorn_conf 'digest.web:create_app()'

May import: anything in digest; nothing in digest imports it (but the gunicorn settings).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_limiter import Limiter
from jinja2 import StrictUndefined
from werkzeug.middleware.proxy_fix import ProxyFix

from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker
from digest.readers.signup_limits import SignupGuard, parse_limits, storage_uri
from digest.web import api, clicks, metrics, readers, webhooks
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
from digest.web.signin_limits import SigninLimits
from digest.words import noun

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
        sender_name=settings.from_name, postal_address=settings.postal_address, noun=noun
    )
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    guard = SignupGuard(settings)
    signin = SigninLimits(guard.storage)
    app.extensions["digest"] = Runtime(settings, engine, sessions, clock or utcnow, guard, signin)
    app.register_blueprint(common)
    app.register_blueprint(readers.bp)
    clicks.install(app, app.extensions["digest"])
    configure_sessions(app, settings)
    app.register_blueprint(console)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(metrics.bp)  # /metrics, only with DIGEST_METRICS_TOKEN
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

    # One count per client for the form and the API's sign-ups alike.
    def signup_limit(key_func: Any) -> Any:
        return limiter.shared_limit(
            settings.signup_client_limit,
            scope="signup-client",
            methods=["POST"],
            key_func=key_func,
            override_defaults=False,  # the API's per-token limit stays
        )

    _limit(app, "digest.subscribe", signup_limit(client_key))
    parse_limits("DIGEST_API_RATE_LIMIT", settings.api_rate_limit)
    api.install(app, limiter, settings, signup_limit)
    return app


def _limit(app: Flask, endpoint: str, decorator: Any) -> None:
    app.view_functions[endpoint] = decorator(app.view_functions[endpoint])


def run_dev_server(
    settings: Settings, host: str, port: int, *, debug: bool = False, clock: Clock | None = None
) -> None:
    """Flask's development server (not for production: use gunicorn)."""
    app = create_app(settings, clock=clock)
    handler = RedactingRequestHandler
    app.run(host=host, port=port, debug=debug, load_dotenv=False, request_handler=handler)
