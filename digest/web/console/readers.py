"""The console's readers: search and one reader (settings, unsubscribe, suppress,
export, erase)."""

from __future__ import annotations

from typing import Any

from flask import abort, jsonify, render_template, request

from digest import store
from digest.errors import InvalidInput
from digest.readers import accounts, reader_admin
from digest.web.auth import console
from digest.web.base import db, runtime
from digest.web.console.common import checked_id, done, record_action

# --- readers -----------------------------------------------------------------------------------


@console.get("/readers")
def readers() -> Any:
    query = request.args.get("q", "")[:320]
    found = reader_admin.search(db(), query) if query.strip() else []
    counts = store.count_subscribers(db())
    return render_template("admin/readers.html", query=query, found=found, counts=counts)


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
            return done(
                "Type erase to confirm.", "console.reader", subscriber_id=subscriber_id
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
