"""The console's readers: the list (filters, sort, keyset pages), its CSV export, and
one reader (settings, unsubscribe, suppress, export, erase). Bulk actions are in
bulk_actions.py, the CSV import in imports.py."""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

from flask import (
    Response,
    abort,
    flash,
    jsonify,
    render_template,
    request,
    stream_with_context,
)

from digest import store
from digest.errors import InvalidInput
from digest.readers import accounts, bulk, reader_admin
from digest.readers.subscribers import EXPORT_FIELDS, export_row
from digest.store import readers_query
from digest.store.readers_query import ReaderFilter
from digest.web.auth import console
from digest.web.base import DIGITS, db, runtime
from digest.web.console.common import checked_id, done, record_action
from digest.words import counted

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


@console.get("/readers/export.csv")
def readers_export() -> Any:
    """Every reader the filter matches as CSV (formula-safe cells), audited."""
    rt = runtime()
    session = db()
    flt = _filter()
    now = rt.clock()
    count = readers_query.count_readers(session, flt, now)
    record_action(
        "exported readers", f"{counted(count, 'reader')} matching {readers_query.describe(flt)}"
    )
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
