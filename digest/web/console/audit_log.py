"""The console's audit log."""

from __future__ import annotations

from typing import Any

from flask import render_template

from digest.operations import operators
from digest.web.auth import console
from digest.web.base import db

# --- audit log ---------------------------------------------------------------------------------


@console.get("/audit")
def audit() -> Any:
    return render_template("admin/audit.html", entries=operators.recent(db(), 200))
