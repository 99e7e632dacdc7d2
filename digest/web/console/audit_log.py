"""The console's audit log."""

from __future__ import annotations

from typing import Any

from flask import render_template, request

from digest.operations import operators
from digest.web.auth import console
from digest.web.base import DIGITS, db

# --- audit log ---------------------------------------------------------------------------------


AUDIT_PAGE = 100


@console.get("/audit")
def audit() -> Any:
    """The audit log, newest first, a hundred entries a page."""
    raw = request.args.get("before", "")
    before = int(raw) if DIGITS.fullmatch(raw) else None
    entries = operators.recent(db(), AUDIT_PAGE + 1, before)
    older = entries[AUDIT_PAGE - 1].id if len(entries) > AUDIT_PAGE else None
    return render_template(
        "admin/audit.html", entries=entries[:AUDIT_PAGE], older=older, newer=before is not None
    )
