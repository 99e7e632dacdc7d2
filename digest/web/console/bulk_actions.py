"""The console's bulk actions on readers: a change to the ticked readers or every reader
the list's filter matches, confirmed with the count, audited as one entry; large ones
run on a thread with a progress page."""

from __future__ import annotations

import logging
import re
import secrets
import threading
from typing import Any

from flask import (
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from digest.errors import InvalidInput, SendError
from digest.mail.relays import make_transport
from digest.operations import operators
from digest.readers import accounts, bulk
from digest.store import readers_query
from digest.store.readers_query import ReaderFilter
from digest.web.auth import console, operator_name
from digest.web.base import DIGITS, db, runtime
from digest.web.console.common import done, record_action

log = logging.getLogger(__name__)


@console.post("/readers/bulk")
def readers_bulk() -> Any:
    """A change to the ticked readers or every reader matching the filter: first a page
    that says what and how many, then (confirmed) the change, audited as one entry."""
    rt = runtime()
    session = db()
    now = rt.clock()
    form = request.form
    try:
        flt = readers_query.parse_filter(form)
    except InvalidInput as exc:
        return done(f"Nothing changed: {exc}.", "console.readers")
    query: dict[str, Any] = dict(readers_query.to_query(flt))
    action, scope = form.get("action", ""), form.get("scope", "selected")
    try:
        value = bulk.check_value(action, form.get("value", "")[:500].strip(), _offered())
    except InvalidInput as exc:
        return done(f"Nothing changed: {exc}.", "console.readers", **query)
    ticked = [int(i) for i in form.getlist("id")[:1000] if DIGITS.fullmatch(i)]
    if scope == "all":
        count = readers_query.count_readers(session, flt, now)
    else:
        count = len(ticked)
    if not count:
        return done(
            "Nothing changed: tick some readers first, or choose all matching readers.",
            "console.readers",
            **query,
        )
    label = bulk.ACTIONS[action]
    shown_value = value or "the default" if action == "timezone" else value or "all"
    value_label = shown_value if action in bulk.NEEDS_VALUE else ""
    if form.get("confirmed") != "yes" or (
        action == "erase" and form.get("typed", "").strip() != f"erase {count}"
    ):
        if form.get("confirmed") == "yes":
            flash(f"Not erased: type erase {count} to confirm.")
        fields = [
            (k, v) for k, v in form.items(multi=True) if k not in ("csrf", "confirmed", "typed")
        ]
        return render_template(
            "admin/bulk_confirm.html",
            action=action,
            action_label=label,
            value_label=value_label,
            count=count,
            scope=scope,
            describe=readers_query.describe(flt),
            fields=fields,
            back=url_for("console.readers", **query),
        )
    which = f"matching {readers_query.describe(flt)}" if scope == "all" else "ticked"
    what = f"{label} {value_label}".strip()
    if scope == "all" and count > BULK_INLINE_MAX:
        job = _start_job(flt, action, value, count, what, which)
        return redirect(url_for("console.readers_bulk_progress", job=job))
    chunks = readers_query.matching_ids(session, flt, now) if scope == "all" else [ticked]
    result = bulk.BulkResult()
    for chunk in chunks:
        done_here = bulk.apply(session, rt.settings, action, value, chunk, now)
        result.changed += done_here.changed
        result.skipped += done_here.skipped
        result.notices += done_here.notices
    record_action(
        f"bulk {action}",
        f"{what}: {result.changed} of {count} readers {which}; {result.skipped} left as they were",
    )
    session.commit()
    sent = _send_notices(result.notices)
    extra = f"; {sent} confirmation emails sent" if action == "resend" else ""
    return done(
        f"{what[:1].upper()}{what[1:]}: {result.changed:,} readers changed, "
        f"{result.skipped:,} left as they were{extra}.",
        "console.readers",
        **query,
    )


# Past this many readers a bulk action runs on a thread of the web process, in chunks
# that commit one by one, and the operator watches its progress.
BULK_INLINE_MAX = 2000
_JOB_SECONDS = 86400


def _job_key(job: str, part: str) -> str:
    return f"digest-bulk:{job}:{part}"


def _start_job(
    flt: ReaderFilter, action: str, value: str, count: int, what: str, which: str
) -> str:
    rt = runtime()
    job = secrets.token_urlsafe(9)
    storage: Any = rt.guard.storage
    storage.incr(_job_key(job, "total"), _JOB_SECONDS, amount=count)
    args = (rt, operator_name(), job, flt, action, value, count, what, which)
    threading.Thread(target=_run_job, args=args, daemon=True).start()
    return job


def _run_job(
    rt: Any,
    operator: str,
    job: str,
    flt: ReaderFilter,
    action: str,
    value: str,
    count: int,
    what: str,
    which: str,
) -> None:
    """A large bulk action, chunk by chunk (each committed), then its one audit entry."""
    storage: Any = rt.guard.storage
    result = bulk.BulkResult()
    try:
        with rt.sessions() as session:
            now = rt.clock()
            for chunk in readers_query.matching_ids(session, flt, now):
                done_here = bulk.apply(session, rt.settings, action, value, chunk, now)
                session.commit()
                result.changed += done_here.changed
                result.skipped += done_here.skipped
                result.notices += done_here.notices
                storage.incr(_job_key(job, "done"), _JOB_SECONDS, amount=len(chunk))
            operators.record(
                session,
                operator,
                f"bulk {action}",
                f"{what}: {result.changed} of {count} readers {which}; "
                f"{result.skipped} left as they were",
                rt.clock(),
            )
            session.commit()
            if result.notices:
                transport = make_transport(rt.settings)
                for notice in result.notices:
                    try:
                        accounts.send_notice(rt.settings, transport, notice, rt.clock())
                    except SendError:
                        accounts.forget_notice(session, notice)
                session.commit()
        storage.incr(_job_key(job, "changed"), _JOB_SECONDS, amount=max(result.changed, 0) + 1)
    except Exception:  # a thread's error would vanish: log it and say so on the page
        log.exception("bulk %s stopped after %d readers", action, result.changed)
        storage.incr(_job_key(job, "failed"), _JOB_SECONDS)


@console.get("/readers/bulk/<job>")
def readers_bulk_progress(job: str) -> Any:
    """How far a large bulk action has got; `?format=json` gives the same numbers and
    status line to the page's script, which updates them in place until it is done."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,20}", job):
        abort(404)
    storage: Any = runtime().guard.storage
    total = storage.get(_job_key(job, "total"))
    if not total:
        abort(404)
    changed = storage.get(_job_key(job, "changed"))
    numbers = {
        "total": total,
        "done": min(storage.get(_job_key(job, "done")), total),
        "finished": bool(changed),
        "changed": max(changed - 1, 0),
        "failed": bool(storage.get(_job_key(job, "failed"))),
    }
    if request.args.get("format") == "json":
        return jsonify(numbers | {"status": render_template("admin/_bulk_status.html", **numbers)})
    return render_template("admin/bulk_progress.html", **numbers)


def _offered() -> list[str]:
    return accounts.offered_sections(db(), runtime().clock())


def _send_notices(notices: list[accounts.Notice]) -> int:
    """Send confirmation emails after the change is committed; count what went."""
    if not notices:
        return 0
    rt = runtime()
    transport = make_transport(rt.settings)
    sent = 0
    for notice in notices:
        try:
            accounts.send_notice(rt.settings, transport, notice, rt.clock())
            sent += 1
        except SendError:
            accounts.forget_notice(db(), notice)
    db().commit()
    return sent
