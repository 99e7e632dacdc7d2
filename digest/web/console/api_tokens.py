"""The console's API tokens page (/admin/api-tokens): list, make (the token is shown
once) and revoke, like `digest api-tokens`. One page family of the console."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for

from digest.errors import DigestError
from digest.operations import api_tokens
from digest.web.auth import console, operator_name
from digest.web.base import db, runtime


@console.get("/api-tokens")
def api_tokens_page() -> Any:
    return render_template(
        "admin/api_tokens.html", tokens=api_tokens.tokens(db()), scopes=api_tokens.SCOPES, new=None
    )


@console.post("/api-tokens")
def api_token_add() -> Any:
    name = request.form.get("name", "")[:100]
    scope = request.form.get("scope", "")[:20]
    try:
        token, raw = api_tokens.add(db(), name, scope, runtime().clock(), operator_name())
    except DigestError as exc:
        db().rollback()
        flash(f"No token made: {exc}")
        return redirect(url_for("console.api_tokens_page"))
    db().commit()
    # Shown on this answer only: it is stored as a hash, and never shown again.
    return render_template(
        "admin/api_tokens.html",
        tokens=api_tokens.tokens(db()),
        scopes=api_tokens.SCOPES,
        new={"name": token.name, "scope": token.scope, "token": raw},
    )


@console.post("/api-tokens/<name>/revoke")
def api_token_revoke(name: str) -> Any:
    try:
        api_tokens.revoke(db(), name[:100], runtime().clock(), operator_name())
    except DigestError as exc:
        flash(f"Not revoked: {exc}")
        return redirect(url_for("console.api_tokens_page"))
    db().commit()
    flash(f"API token {name} revoked: it is refused from now on.")
    return redirect(url_for("console.api_tokens_page"))
