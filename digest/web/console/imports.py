"""The console's CSV import of readers: upload, a preview of the first rows with what
each column maps to (delimiter detected: comma, semicolon or tab), confirmed or opt-in,
then a per-row report that can be downloaded. The same rules as `digest subscribers
import`. The uploaded file waits in the data folder (0600) between preview and run."""

from __future__ import annotations

import csv
import io
import re
import secrets
from pathlib import Path
from typing import Any

from flask import Response, abort, render_template, request

from digest import store
from digest.config import open_private, private_folder
from digest.errors import InvalidInput, SendError
from digest.mail.relays import make_transport
from digest.readers import accounts, bulk
from digest.readers.subscribers import (
    IMPORT_FIELDS,
    detect_delimiter,
    guess_mapping,
    import_csv,
    read_header,
    safe_cell,
)
from digest.web.auth import console
from digest.web.base import UPLOAD_LIMITS, db, runtime
from digest.web.console.common import done, record_action

MAX_UPLOAD = 20 * 1024 * 1024
PREVIEW_ROWS = 5
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
UPLOAD_LIMITS["console.readers_import"] = MAX_UPLOAD


def _folder() -> Path:
    folder = runtime().settings.data_dir / "imports"
    private_folder(folder)
    return folder


def _upload_path(token: str, suffix: str = ".csv") -> Path:
    if not _TOKEN.fullmatch(token):
        abort(404)
    return _folder() / f"{token}{suffix}"


def _preview(text: str, delimiter: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    header = read_header(lines[0] if lines else "", delimiter)
    rows = []
    for line in lines[1 : PREVIEW_ROWS + 1]:
        try:
            rows.append(next(csv.reader([line], delimiter=delimiter), []))
        except csv.Error:
            rows.append(["(this row cannot be read)"])
    return header, rows


@console.route("/readers/import", methods=["GET", "POST"])
def readers_import() -> Any:
    """Upload (GET: the form; POST with a file: the preview; POST with a token: run)."""
    if request.method == "GET":
        return render_template("admin/import.html", step="upload")
    if "token" in request.form:
        return _run(request.form["token"])
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return done("Choose a CSV file to import.", "console.readers_import")
    raw = upload.read(MAX_UPLOAD + 1)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return done("Not imported: the file is not UTF-8 text.", "console.readers_import")
    first = text.split("\n", 1)[0]
    delimiter = detect_delimiter(first)
    try:
        header, rows = _preview(text, delimiter)
    except InvalidInput as exc:
        return done(f"Not imported: {exc}.", "console.readers_import")
    if not any(header):
        return done("Not imported: the file has no header row.", "console.readers_import")
    token = secrets.token_urlsafe(18)
    with open_private(_upload_path(token), "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return render_template(
        "admin/import.html",
        step="preview",
        token=token,
        filename=upload.filename[:200],
        delimiter={",": "comma", ";": "semicolon", "\t": "tab"}[delimiter],
        delimiter_value=delimiter,
        header=header,
        mapping=guess_mapping(header),
        rows=rows,
        fields=IMPORT_FIELDS,
        lines=text.count("\n") + (0 if text.endswith("\n") else 1) - 1,
    )


def _run(token: str) -> Any:
    rt = runtime()
    session = db()
    now = rt.clock()
    path = _upload_path(token)
    if not path.exists():
        return done("That upload is gone: upload the file again.", "console.readers_import")
    delimiter = {"comma": ",", "semicolon": ";", "tab": "\t"}.get(
        request.form.get("delimiter", ""), ","
    )
    text = path.read_text(encoding="utf-8")
    header = read_header(text.splitlines()[0] if text else "", delimiter)
    mapping = {}
    for index, column in enumerate(header):
        chosen = request.form.get(f"map-{index}", "")
        mapping[column] = chosen if chosen in IMPORT_FIELDS else ""
    if "email" not in mapping.values():
        return done(
            "Not imported: choose which column holds the email address.", "console.readers_import"
        )
    confirmed = request.form.get("consent") == "confirmed"
    name = request.form.get("filename", "")[:200] or "upload.csv"
    try:
        report = import_csv(
            session,
            io.StringIO(text, newline=""),
            now,
            confirmed=confirmed,
            source=f"console import {name}"[:60],
            delimiter=delimiter,
            mapping=mapping,
        )
    except InvalidInput as exc:
        session.rollback()
        return done(f"Not imported: {exc}.", "console.readers_import")
    notices = []
    if not confirmed:
        for email in report.added_emails:
            subscriber = store.find_subscriber(session, email)
            if subscriber is not None:
                notice = bulk.resend_confirmation(
                    session, rt.settings, subscriber.id, now, source="console import"
                )
                if notice is not None:
                    notices.append(notice)
    record_action(
        "imported readers",
        f"{name}: {report.added} added ({'active' if confirmed else 'pending, opt-in email'}), "
        f"{report.existing} already there, {report.suppressed} suppressed, "
        f"{len(report.errors)} bad rows",
    )
    session.commit()
    sent = 0
    if notices:
        transport = make_transport(rt.settings)
        for notice in notices:
            try:
                accounts.send_notice(rt.settings, transport, notice, now)
                sent += 1
            except SendError:
                accounts.forget_notice(session, notice)
        session.commit()
    with open_private(
        _upload_path(token, ".report.csv"), "w", encoding="utf-8", newline=""
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(("line", "email", "outcome", "detail"))
        for line, email, outcome, why in report.lines:
            writer.writerow([str(line), safe_cell(email), outcome, safe_cell(why)])
    path.unlink(missing_ok=True)
    return render_template(
        "admin/import.html",
        step="report",
        token=token,
        report=report,
        confirmed=confirmed,
        sent=sent,
        filename=name,
    )


@console.get("/readers/import/<token>/report.csv")
def readers_import_report(token: str) -> Any:
    """An import's per-row report (line, address, outcome, why), as CSV."""
    path = _upload_path(token, ".report.csv")
    if not path.exists():
        abort(404)
    response = Response(path.read_text(encoding="utf-8"), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="import-report.csv"'
    return response
