"""Who is calling the API: the bearer token, checked against its stored hash on every
request (a revoked token is refused at once), and what its scope allows."""

from __future__ import annotations

import hashlib

from flask import g, request

from digest.models import ApiToken
from digest.operations import api_tokens, operators
from digest.operations.problems import Problem
from digest.web.base import client_key, db, runtime

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="digest"'}


def bearer() -> str:
    """The token in `Authorization: Bearer ...`, or ""."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def require(need: str) -> ApiToken:
    """The caller's token if it may do what the operation needs; else 401 or 403."""
    raw = bearer()
    if not raw:
        raise Problem(401, "send an API token as 'Authorization: Bearer <token>'", [], _CHALLENGE)
    token = api_tokens.authenticate(db(), raw, runtime().clock())
    if token is None:
        raise Problem(401, "this API token is unknown or revoked", [], _CHALLENGE)
    if db().dirty:
        db().commit()  # last_used_at
    if not api_tokens.allows(token.scope, need):
        wanted = "write" if need == "write" else f"{need} or write"
        raise Problem(403, f"a {token.scope} token may not do this: it needs a {wanted} token")
    return token


def token_name() -> str:
    """The calling token's name, as the audit log shows it."""
    token: ApiToken = g.api_token
    return api_tokens.audit_name(token.name)


def audit(action: str, detail: str) -> None:
    """Write one API change to the audit log under the calling token's name."""
    operators.record(db(), token_name(), action, detail, runtime().clock())


def rate_key() -> str:
    """Rate limits count per token (a hash of it: no token in Redis keys), else per client."""
    raw = bearer()
    if raw:
        return "token:" + hashlib.sha256(raw.encode()).hexdigest()[:24]
    return "client:" + client_key()
