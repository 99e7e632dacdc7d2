"""The JSON API for the publisher's own site and systems, at /api/v1.

Operations are declared in spec.py's `operation` (route, token scope, pydantic models),
which also builds the OpenAPI 3.1 document at /api/v1/openapi.json; /api/v1/docs renders
it with the vendored Swagger UI (digest/web/static/swagger-ui, Apache-2.0). Errors under
/api/ are RFC 9457 problem details, whatever raised them. Rate limits count per token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, json, render_template, request, send_from_directory
from flask_limiter import Limiter
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, default_exceptions

from digest.config import Settings
from digest.errors import (
    ConfigError,
    DatabaseUnavailable,
    DigestError,
    Duplicate,
    InvalidAddress,
    InvalidInput,
    InvalidToken,
    NotFound,
    NothingToSend,
    SendError,
)
from digest.operations.problems import MEDIA_TYPE, Problem
from digest.web.api import content, editions, readers  # noqa: F401 - register the operations
from digest.web.api.auth import rate_key
from digest.web.api.spec import bp, document
from digest.web.base import address_key, client_key, db

log = logging.getLogger(__name__)
PREFIX = "/api/"
STATIC = Path(__file__).resolve().parent.parent / "static"
_DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_ASSETS = {
    "swagger-ui.css": STATIC / "swagger-ui",
    "swagger-ui-bundle.js": STATIC / "swagger-ui",
    "docs.js": STATIC,
}


def problem_response(problem: Problem) -> Response:
    response = current_app.response_class(
        json.dumps(problem.body(request.path)), status=problem.status, mimetype=MEDIA_TYPE
    )
    response.headers.update(problem.headers)
    return response


def _as_problem(exc: BaseException) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        headers = {}
        if code == 429:
            detail = f"too many requests: {exc.description or 'rate limit reached'}"
        elif code == 405:
            detail = f"{request.method} is not allowed here"
            headers = {"Allow": ", ".join(getattr(exc, "valid_methods", None) or [])}
        elif code == 404:
            detail = f"there is nothing at {request.path}"
        else:
            detail = exc.description or exc.name
        return Problem(code, detail, [], {k: v for k, v in headers.items() if v})
    if isinstance(exc, NotFound):
        return Problem(404, str(exc))
    if isinstance(exc, Duplicate | IntegrityError):
        return Problem(409, str(exc) if isinstance(exc, Duplicate) else "that exists already")
    if isinstance(exc, NothingToSend):
        return Problem(422, str(exc))
    if isinstance(exc, InvalidInput | InvalidAddress | InvalidToken | ConfigError):
        return Problem(400, str(exc))
    if isinstance(exc, SendError | DatabaseUnavailable):
        return Problem(503, "a service digest needs did not answer; try again shortly")
    if isinstance(exc, SQLAlchemyError):
        log.error("API: database error on %s: %s", request.path, type(exc).__name__)
        return Problem(503, "the database did not answer; try again shortly")
    if isinstance(exc, DigestError):
        return Problem(422, str(exc))
    log.error("API: unexpected error on %s", request.path, exc_info=exc)
    return Problem(500, "something went wrong on our side; it has been logged")


@bp.errorhandler(Exception)
def _api_error(exc: Exception) -> Response:
    if isinstance(exc, SQLAlchemyError | Problem) or not isinstance(exc, HTTPException):
        try:
            db().rollback()
        except SQLAlchemyError:
            pass
    return problem_response(_as_problem(exc))


# Flask looks for a handler by status code first, in every blueprint and the app, before
# it looks by class: the API answers each code itself, or the readers' pages would.
for _code in default_exceptions:
    bp.register_error_handler(_code, _api_error)


def _unrouted() -> Any:
    """/api/ URLs that match no operation (404, 405) answer as problems too; and the
    browser's CORS preflight for sign-ups from the allowed origins."""
    if not request.path.startswith(PREFIX):
        return None
    if request.method == "OPTIONS":
        return _preflight()
    if request.routing_exception is not None:
        return problem_response(_as_problem(request.routing_exception))
    return None


def _cors_origins() -> tuple[str, ...]:
    settings: Settings = current_app.extensions["digest"].settings
    return settings.api_cors_origins


def _preflight() -> Response:
    response = current_app.response_class(status=204)
    origin = request.headers.get("Origin", "")
    if request.path == "/api/v1/signups" and origin in _cors_origins():
        response.headers.update(
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            }
        )
    return response


@bp.after_request
def _cors(response: Response) -> Response:
    origin = request.headers.get("Origin", "")
    if request.endpoint == "api.create_signup" and origin in _cors_origins():
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return current_app.response_class(json.dumps(document()), mimetype="application/json")


@bp.get("/docs")
def docs() -> Any:
    response = Response(render_template("api/docs.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = _DOCS_CSP
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Any:
    folder = _ASSETS.get(name)
    if folder is None:
        raise Problem(404, f"no asset {name!r}")
    response = send_from_directory(folder, name, max_age=3600)
    response.headers["Content-Security-Policy"] = _DOCS_CSP
    return response


def _signup_client() -> str:
    """Whose sign-ups the per-client limit counts: the end client's address from the
    header the operator names (only for subscribe tokens: a site's server passes its
    visitor's address on), else the caller's own address."""
    from digest.operations import api_tokens

    settings: Settings = current_app.extensions["digest"].settings
    header = settings.api_client_header
    if header and request.headers.get(header):
        from digest.web.api.auth import bearer

        token = api_tokens.authenticate(db(), bearer(), current_app.extensions["digest"].clock())
        if token is not None and token.scope == "subscribe":
            return address_key(request.headers[header].strip()[:64])
    return client_key()


def install(app: Flask, limiter: Limiter, settings: Settings, signup_limit: Any) -> None:
    """Add the API to the web app: routes, problem details, CORS, per-token limits."""
    app.register_blueprint(bp)
    app.before_request_funcs.setdefault(None, []).insert(0, _unrouted)
    limiter.limit(settings.api_rate_limit, key_func=rate_key)(bp)
    app.view_functions["api.create_signup"] = signup_limit(_signup_client)(
        app.view_functions["api.create_signup"]
    )
