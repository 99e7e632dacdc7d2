"""The console's returned-mail page (/admin/returned): recent bounces, complaints and
unsubscribes by any path, each reader's soft-bounce count, filters by kind and date,
and un-suppress (audited). On the console blueprint, behind its sign-in and CSRF check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for

from digest import store
from digest.errors import InvalidInput, NotFound
from digest.operations import operators
from digest.readers import accounts
from digest.readers.returned import unsuppress
from digest.store.base import MAX_ID
from digest.web.auth import console, operator_name
from digest.web.base import db, runtime

KINDS = ("hard", "soft", "complaint", "unsubscribe", "unsuppressed")


def _day(name: str) -> datetime | None:
    value = request.args.get(name, "").strip()[:10]
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


@console.get("/returned")
def returned() -> Any:
    settings = runtime().settings
    now = runtime().clock()
    kind = request.args.get("kind", "")
    kind = kind if kind in KINDS else ""
    since, until = _day("since"), _day("until")
    rows = store.returned_page(
        db(),
        kind=kind or None,
        since=since,
        until=until + timedelta(days=1) if until else None,
    )
    window = now - timedelta(days=settings.soft_bounce_days)
    soft = store.count_soft(db(), sorted({r.subscriber_id for r in rows}), window)
    return render_template(
        "admin/returned.html",
        rows=rows,
        soft=soft,
        kinds=KINDS,
        kind=kind,
        since=since.date().isoformat() if since else "",
        until=until.date().isoformat() if until else "",
        limit=settings.soft_bounce_limit,
        days=settings.soft_bounce_days,
    )


@console.post("/returned/<int:subscriber_id>/unsuppress")
def returned_unsuppress(subscriber_id: int) -> Any:
    if not 0 < subscriber_id <= MAX_ID:
        abort(404)
    session = db()
    try:
        subscriber = unsuppress(session, subscriber_id, runtime().clock())
    except (InvalidInput, NotFound) as exc:
        session.rollback()
        flash(f"Not un-suppressed: {exc}")
        return redirect(url_for("console.returned"))
    masked = accounts.mask_address(subscriber.email)
    operators.record(
        session,
        operator_name(),
        "un-suppressed",
        f"reader {subscriber_id} ({masked})",
        runtime().clock(),
    )
    session.commit()
    flash(f"Reader {subscriber_id} is active again.")
    return redirect(url_for("console.returned"))
