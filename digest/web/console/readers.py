"""The console's readers: search and one reader (settings, unsubscribe, suppress,
export, erase)."""

from __future__ import annotations

import csv
import io
import logging
import re
import secrets
import threading
from typing import Any

from flask import (
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from digest import store
from digest.errors import InvalidInput, SendError
from digest.mail.relays import make_transport
from digest.operations import operators
from digest.readers import accounts, bulk, reader_admin
from digest.readers.subscribers import EXPORT_FIELDS, export_row
from digest.store import readers_query
from digest.store.readers_query import ReaderFilter
from digest.web.auth import console, operator_name
from digest.web.base import DIGITS, db, runtime
from digest.web.console.common import checked_id, done, record_action

log = logging.getLogger(__name__)
PAGE_SIZE = 50


def _filter() -> ReaderFilter:
    """The list's filter from the query string (or a bulk form's hidden fields)."""
    values = request.values
    try:
        return readers_query.parse_filter(values)
    except InvalidInput as exc:
        flash(f"Filter not applied: {exc}.")
        return ReaderFilter()


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if DIGITS.fullmatch(value) else None


def _choices() -> dict[str, Any]:
    rt = runtime()
    session = db()
    return {
        "statuses": readers_query.STATUSES,
        "timezones": sorted(store.active_timezones(session, rt.settings.default_timezone)),
        "sections": accounts.offered_sections(session, rt.clock()),
        "sources": readers_query.SOURCES,
        "last_deliveries": {
            "never": "never sent anything",
            "7d": "sent something in the last 7 days",
            "30d": "sent something in the last 30 days",
            "over30d": "nothing sent for 30 days",
        },
        "actions": bulk.ACTIONS,
    }


@console.get("/readers")
def readers() -> Any:
    """Every reader, a page at a time, filtered, sorted; bulk actions on the result."""
    rt = runtime()
    flt = _filter()
    page = readers_query.list_readers(
        db(),
        flt,
        after=_int_arg("after"),
        before=_int_arg("before"),
        limit=PAGE_SIZE,
        now=rt.clock(),
        start=_int_arg("start"),
    )
    return render_template(
        "admin/readers.html",
        flt=flt,
        query=readers_query.to_query(flt),
        page=page,
        page_size=PAGE_SIZE,
        counts=store.count_subscribers(db()),
        describe=readers_query.describe(flt),
        **_choices(),
    )


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
    """How far a large bulk action has got (the page reloads itself until it is done)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,20}", job):
        abort(404)
    storage: Any = runtime().guard.storage
    total = storage.get(_job_key(job, "total"))
    if not total:
        abort(404)
    changed = storage.get(_job_key(job, "changed"))
    return render_template(
        "admin/bulk_progress.html",
        total=total,
        done=min(storage.get(_job_key(job, "done")), total),
        finished=bool(changed),
        changed=max(changed - 1, 0),
        failed=bool(storage.get(_job_key(job, "failed"))),
    )


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


@console.get("/readers/export.csv")
def readers_export() -> Any:
    """Every reader the filter matches as CSV (formula-safe cells), audited."""
    rt = runtime()
    session = db()
    flt = _filter()
    now = rt.clock()
    count = readers_query.count_readers(session, flt, now)
    record_action("exported readers", f"{count} readers matching {readers_query.describe(flt)}")
    session.commit()

    def rows() -> Any:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_FIELDS)
        with rt.sessions() as reading:
            for chunk in readers_query.matching_ids(reading, flt, now):
                for s in readers_query.readers_by_id(reading, chunk):
                    writer.writerow(export_row(s))
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    response = Response(stream_with_context(rows()), mimetype="text/csv")
    stamp = now.strftime("%Y%m%d-%H%M")
    response.headers["Content-Disposition"] = f'attachment; filename="readers-{stamp}.csv"'
    return response


@console.get("/readers/<int:subscriber_id>")
def reader(subscriber_id: int) -> Any:
    rt = runtime()
    shown = reader_admin.view(db(), checked_id(subscriber_id), rt.settings.default_timezone)
    subscriber = store.get_subscriber(db(), subscriber_id)
    return render_template(
        "admin/reader.html",
        reader=shown,
        form=accounts.form_of(subscriber),
        timezones=accounts.timezone_choices(subscriber.timezone or ""),
    )


@console.get("/readers/<int:subscriber_id>/export.json")
def reader_export(subscriber_id: int) -> Any:
    rt = runtime()
    data = reader_admin.export_person(db(), checked_id(subscriber_id), rt.settings.default_timezone)
    record_action("exported", f"reader {subscriber_id}")
    db().commit()
    response = jsonify(data)
    response.headers["Content-Disposition"] = f'attachment; filename="reader-{subscriber_id}.json"'
    return response


_READER_ACTIONS = {
    "unsubscribe": (reader_admin.unsubscribe, "unsubscribed"),
    "suppress": (reader_admin.suppress, "suppressed"),
    "erase": (reader_admin.erase, "erased"),
}


@console.post("/readers/<int:subscriber_id>/<action>")
def reader_action(subscriber_id: int, action: str) -> Any:
    rt = runtime()
    session = db()
    checked_id(subscriber_id)
    if action == "settings":
        subscriber = store.get_subscriber(session, subscriber_id)
        before = accounts.form_of(subscriber)
        form = accounts.Form(
            name=request.form.get("name", "")[:400],
            timezone=request.form.get("timezone", "")[:100],
            editions=request.form.get("editions", "both")[:40],
            sections=[s for s in request.form.get("sections", "").split(",") if s.strip()][:100],
        )
        try:
            changed = reader_admin.update(session, subscriber_id, form, rt.clock())
        except InvalidInput as exc:
            session.rollback()
            return done(f"Not saved: {exc}", "console.reader", subscriber_id=subscriber_id)
        what = reader_admin.describe_change(before, accounts.form_of(changed))
        record_action("changed reader", f"reader {subscriber_id}: {what}")
        message = f"Reader {subscriber_id}: settings changed ({what})."
    elif action in _READER_ACTIONS:
        if action == "erase" and request.form.get("confirm") != "erase":
            return done("Type erase to confirm.", "console.reader", subscriber_id=subscriber_id)
        if action != "erase" and request.form.get("confirm") != "yes":
            return done(
                f"Nothing changed: tick “I mean it” to {action}.",
                "console.reader",
                subscriber_id=subscriber_id,
            )
        act, word = _READER_ACTIONS[action]
        before_status = store.get_subscriber(session, subscriber_id).status
        act(session, subscriber_id, rt.clock())
        record_action(word, f"reader {subscriber_id} (was {before_status})")
        message = f"Reader {subscriber_id}: {word}."
    else:
        abort(404)
    session.commit()
    return done(message, "console.reader", subscriber_id=subscriber_id)
