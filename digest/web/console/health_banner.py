"""The health banner on every console page: the monitoring check's problems, with what
to do (templates/admin/_health.html)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from flask import current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from digest.operations import monitor
from digest.web.auth import console
from digest.web.base import db, runtime

log = logging.getLogger(__name__)

BANNER_SECONDS = 10.0  # how long one check serves the banner of every page in a process


@console.app_context_processor
def _health_banner() -> dict[str, Any]:
    """The monitoring check's problems, for the banner: from the database alone (a page
    never waits on the broker), and at most one check per BANNER_SECONDS per process (it
    counts deliveries; a page should not wait on it)."""
    if request.blueprint != "console" or not g.get("operator"):
        return {}
    rt = runtime()
    now = rt.clock()
    cached = current_app.extensions.get("digest_health")
    if cached is not None:
        at, clock_at, health = cached
        fresh = time.monotonic() - at < BANNER_SECONDS
        if fresh and timedelta(0) <= now - clock_at < timedelta(seconds=BANNER_SECONDS):
            return {"health": health}
    try:
        health = monitor.check(db(), rt.settings, now)
    except SQLAlchemyError:
        log.exception("health banner: the check could not read the database")
        return {"health": None}
    current_app.extensions["digest_health"] = (time.monotonic(), now, health)
    return {"health": health}


@console.before_request
def _fresh_banner_after_a_change() -> None:
    # What the operator just did (Send now, retry, pause a feed) shows on the next page.
    if request.method == "POST":
        current_app.extensions.pop("digest_health", None)
