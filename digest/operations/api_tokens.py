"""API tokens: made by operators (CLI or console), stored only as hashes, each with one
scope. What a scope allows is decided here and nowhere else.

    subscribe  may only start double opt-in sign-ups (a site's forms, server to server)
    read       may read everything the API shows
    write      may read, sign up and change (every change is in the audit log)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from sqlalchemy.orm import Session

from digest.errors import InvalidInput, NotFound
from digest.models import ApiToken
from digest.store import api as store_api
from digest.store.operators import add_audit

SCOPES = ("read", "write", "subscribe")
# What each scope may do; an operation needs exactly one of these.
ALLOWS: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"signup"}),
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write", "signup"}),
}
PREFIX = "dgt_"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,55}")


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            "an API token name is 2 to 56 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return name


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(f"scope {scope!r} must be one of {', '.join(SCOPES)}")
    return scope


def allows(scope: str, need: str) -> bool:
    """Whether a token of `scope` may do what an operation `need`s."""
    return need in ALLOWS.get(scope, frozenset())


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough (nothing to guess from it).
    return hashlib.sha256(raw.encode()).hexdigest()


def audit_name(token_name: str) -> str:
    """How a token's actions appear in the audit log, next to operators' names."""
    return f"api:{token_name}"


def add(session: Session, name: str, scope: str, now: datetime, by: str) -> tuple[ApiToken, str]:
    """A new token; returns the row and the token itself (shown once, never stored)."""
    name, scope = check_name(name), check_scope(scope)
    raw = PREFIX + secrets.token_urlsafe(32)
    token = store_api.add_token(session, name, scope, hash_token(raw), raw[:10], now)
    add_audit(session, by, "api token added", f"{name} ({scope})", now)
    return token, raw


def revoke(session: Session, name: str, now: datetime, by: str) -> ApiToken:
    """Revoke a token: refused from the next request on."""
    token = store_api.find_token(session, name.strip().lower())
    if token is None:
        raise NotFound(f"no API token called {name!r}")
    if token.revoked_at is None:
        token.revoked_at = now
        add_audit(session, by, "api token revoked", token.name, now)
    return token


def authenticate(session: Session, raw: str, now: datetime) -> ApiToken | None:
    """The live token this is, or None (unknown, malformed or revoked)."""
    if not raw.startswith(PREFIX) or len(raw) > 100:
        return None
    token = store_api.token_by_hash(session, hash_token(raw))
    if token is None or token.revoked_at is not None:
        return None
    # Written at most once a minute: not a write per request on a busy token.
    last = token.last_used_at
    if last is None or (now - last).total_seconds() >= 60:
        token.last_used_at = now
    return token


def tokens(session: Session) -> list[ApiToken]:
    return store_api.list_tokens(session)
