"""What every page of the web app shares: the runtime, one database session per
request, security headers, error pages and log redaction.

Readers' pages (digest/web/readers.py) and the operator console (digest/web/console/)
both build on this; nothing here knows either of them.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from flask import Blueprint, Flask, Response, current_app, g, render_template, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler

from digest.config import Settings
from digest.errors import InvalidToken, NotFound
from digest.readers.signup_limits import SendPacer, SignupGuard
from digest.web.signin_limits import SigninLimits, wait

Clock = Callable[[], datetime]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
# The web version shows feed images from anywhere but runs nothing and posts nowhere.
EDITION_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Repeated slashes too: werkzeug answers //preferences//<token> (with a redirect).
# /r/<token>: in reader mode a click link names its reader.
_TOKEN_PATH = re.compile(
    r"(/+(?:unsubscribe|confirm|preferences|keep|r|editions/+[^/?#\s]+)/+)[^/?#\s]+",
    re.IGNORECASE,
)
# The console's reader search puts an address in the query string; a sign-up link from
# a reader's email carries their token there.
_SEARCH = re.compile(r"((?:^|[?&])(?:q|reader)=)[^&#\s]*")
DIGITS = re.compile(r"[0-9]{1,9}")  # str.isdigit() also takes "²", which int() refuses

common = Blueprint("common", __name__)


@dataclass
class Runtime:
    """What the views share: one engine and sessionmaker per app, and the clock."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock
    guard: SignupGuard
    signin: SigninLimits
    pacer: SendPacer = field(default_factory=SendPacer)
    sleep: Callable[[float], None] = wait


def utcnow() -> datetime:
    return datetime.now(UTC)


_PATHS = re.compile(r"(?<![^\s\"])/[^\s\"]*")
# What a terminal or a log reader would act on: C0 and C1 controls, DEL, and the
# Unicode line and paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _decoded(text: str) -> str:
    for _ in range(3):  # %2570 decodes to %70, then to p
        once = unquote(text)
        if once == text:
            break
        text = once
    return text


def remove_dot_segments(path: str) -> str:
    """A path with its '.' and '..' segments resolved (RFC 3986 5.2.4), its query kept."""
    path, mark, rest = path.partition("?")
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if path.split("/")[-1] in (".", ".."):
        out.append("")  # "/a/." names the folder /a/
    return "/".join(out) + mark + rest


def escape_controls(text: str) -> str:
    """Control characters written as \\xNN: no forged log lines, no terminal escapes."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def redact_path(text: str) -> str:
    """A path or request line fit for a log: tokens and the reader search cut out.

    Works from the raw (percent-encoded) text: it is decoded as the app would route it
    (`/%70references/...` reaches the preferences page), its dot segments resolved as a
    browser or proxy would (`/unsubscribe/./<token>`), then tokens are cut and control
    characters escaped, so a `%0a` or `%1b` cannot forge a line or drive a terminal.
    """
    decoded = _PATHS.sub(lambda m: remove_dot_segments(m.group()), _decoded(text))
    redacted = _SEARCH.sub(r"\1<redacted>", _TOKEN_PATH.sub(r"\1<token>", decoded))
    return escape_controls(redacted)


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
    """The dev server's access log, without tokens, from the raw request line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s" %s %s', getattr(self, "requestline", ""), code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        clean = [redact_path(a) if isinstance(a, str) else a for a in args]
        super().log(type, redact_path(message), *clean)


def client_key() -> str:
    """Who is asking, for rate limits: the client's address, an IPv6 client's /64 (one
    host usually holds a whole /64, and could otherwise rotate through it)."""
    return address_key(request.remote_addr or "")


def address_key(addr: str) -> str:
    """client_key of an address (also for code that runs outside a Flask request)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["digest"]
    return runtime


def db() -> Session:
    """This request's session, opened on first use (a forged token never opens one)."""
    if "db" not in g:
        g.db = runtime().sessions()
    session: Session = g.db
    return session


@common.teardown_app_request
def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


@common.before_app_request
def _nonce() -> None:
    g.nonce = secrets.token_urlsafe(16)


# Control characters no form field has a use for (tab, CR and LF are let through).
_FORM_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# Endpoints that take a file larger than the app's MAX_CONTENT_LENGTH: bytes allowed.
UPLOAD_LIMITS: dict[str, int] = {}
# The blueprints whose forms and links people fill in: the readers' pages and the
# console (machine-to-machine endpoints, such as webhooks, read their bodies their way).
FORM_BLUEPRINTS = ("digest", "console")


@common.before_app_request
def _refuse_control_characters() -> Any:
    """A NUL or other control character in any field or query value is a 400 before
    any view sees it (PostgreSQL refuses NUL in text; nothing here needs the rest)."""
    if request.endpoint in UPLOAD_LIMITS:
        request.max_content_length = UPLOAD_LIMITS[request.endpoint]
    if request.blueprint not in FORM_BLUEPRINTS and not request.path.startswith("/admin"):
        return None
    for source in (request.args, request.form):
        for key, values in source.lists():
            if _FORM_CONTROLS.search(key) or any(_FORM_CONTROLS.search(v) for v in values):
                return message_page(
                    "Nothing changed",
                    "A field held a control character (such as NUL), which no field "
                    "here accepts. Please check what you typed and try again.",
                    400,
                )
    return None


@common.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"csp_nonce": g.get("nonce", "")}


@common.after_app_request
def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PAGE_CSP.format(nonce=g.get("nonce", "")))
    # Tokens live in URLs: never hand them to another site in a Referer.
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Cache-Control"] = "no-store"
    return response


def message_page(
    title: str,
    message: str,
    status: int,
    *,
    link: tuple[str, str] | None = None,
) -> tuple[str, int]:
    """A short page that says one thing (errors, confirmations)."""
    return render_template("web/message.html", title=title, message=message, link=link), status


@common.app_errorhandler(InvalidToken)
def _invalid_token(exc: InvalidToken) -> tuple[str, int]:
    message = str(exc)
    return message_page(
        "This link does not work",
        message[:1].upper() + message[1:] + ". Nothing has been changed.",
        400,
        link=("/subscribe", "Go to the sign-up page"),
    )


@common.app_errorhandler(NotFound)
def _not_found(exc: NotFound) -> tuple[str, int]:
    return message_page(
        "Not found",
        "We could not find that subscription or edition. Nothing has been changed.",
        404,
    )


@common.app_errorhandler(429)
def _too_many(exc: HTTPException) -> tuple[str, int]:
    return message_page("Please try again later", "Too many attempts came from your network.", 429)


@common.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    if exc.code is None or exc.code < 400:
        return exc
    return message_page(exc.name, exc.description or exc.name, exc.code)
