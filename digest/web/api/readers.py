"""/api/v1/readers and /api/v1/signups: the readers' list, one reader, bulk imports,
and double opt-in sign-ups under the same rules and limits as the sign-up form."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from flask import request
from sqlalchemy.orm import Session

from digest import store
from digest.errors import Duplicate, InvalidInput, SendError
from digest.mail.relays import make_transport
from digest.models import Subscriber
from digest.operations import api_jobs
from digest.operations.problems import Problem, bad_field, field_errors
from digest.readers import accounts, reader_admin
from digest.readers.subscribers import editions_label
from digest.store import api as store_api
from digest.store import readers_query
from digest.store.readers_query import ReaderFilter
from digest.web.api import schemas as s
from digest.web.api.auth import audit, token_name
from digest.web.api.spec import operation
from digest.web.base import db, runtime

log = logging.getLogger(__name__)
IMPORT_MAX_BYTES = 20 * 1024 * 1024
_READER = {"reader_id": "$response.body#/id"}
_LINKS = {
    "GetReader": {"operationId": "get_reader", "parameters": _READER},
    "UpdateReader": {"operationId": "update_reader", "parameters": _READER},
    "UnsubscribeReader": {"operationId": "unsubscribe_reader", "parameters": _READER},
    "ExportReader": {"operationId": "export_reader", "parameters": _READER},
}


def reader_out(r: Subscriber) -> s.Reader:
    return s.Reader(
        id=r.id,
        email=r.email,
        name=r.name,
        status=r.status,
        editions=editions_label(r),
        sections=[x for x in r.sections.split(",") if x],
        timezone=r.timezone,
        consent=r.consent,
        created_at=r.created_at,
        confirmed_at=r.confirmed_at,
        unsubscribed_at=r.unsubscribed_at,
    )


def _filter(query: s.ReaderQuery) -> ReaderFilter:
    """The console's filter from the API's query: the same names, read by the same
    parse_filter; a bad value is a 400 naming its parameter."""
    if query.edition and query.editions and query.edition != query.editions:
        raise bad_field("edition", "give `editions` (or the older `edition`), not both")
    values = {
        "status": query.status,
        "email": query.email,
        "q": query.q,
        "timezone": query.timezone,
        "editions": query.editions or query.edition,
        "section": query.section,
        "source": query.source,
        "signed_up_from": query.signed_up_from,
        "signed_up_to": query.signed_up_to,
        "last_delivery": query.last_delivery,
        "min_failures": None if query.min_failures is None else str(query.min_failures),
        "sort": query.sort,
        "order": query.order,
    }
    try:
        return readers_query.parse_filter(values)
    except readers_query.BadFilter as exc:
        raise Problem(400, str(exc), [{"field": exc.field, "message": str(exc)}]) from None


@operation(
    "GET",
    "/readers",
    need="read",
    tag="readers",
    summary="List readers",
    query=s.ReaderQuery,
    responses={200: s.ReaderPage},
)
def list_readers(query: s.ReaderQuery) -> Any:
    """Readers matching every filter given, a page at a time (by default in id order),
    with how many match in all. Pages are keyed, not counted: ask for the next one with
    `after` = this page's `next_after` and the same filters and order; readers who sign
    up meanwhile do not shift it."""
    session = db()
    flt = _filter(query)
    after = query.after or None
    if after is not None and flt.sort != "id" and session.get(Subscriber, after) is None:
        raise bad_field("after", f"no reader {after}: pass the `next_after` of a page")
    page = readers_query.list_readers(
        session, flt, after=after, limit=query.limit, now=runtime().clock(), locate=False
    )
    found = {r.id: r for r in readers_query.readers_by_id(session, [r.id for r in page.rows])}
    return s.ReaderPage(
        items=[reader_out(found[r.id]) for r in page.rows if r.id in found],
        total=page.total,
        next_after=page.next_after,
    )


@operation(
    "GET",
    "/readers/{reader_id}",
    need="read",
    tag="readers",
    summary="One reader",
    responses={200: s.Reader},
)
def get_reader(reader_id: int) -> Any:
    return reader_out(store.get_subscriber(db(), reader_id))


def _form(body: Any) -> accounts.Form:
    return accounts.Form(
        email=body.email,
        name=body.name,
        timezone=body.timezone or "",
        editions=body.editions,
        sections=list(body.sections),
    )


def _checked(form: accounts.Form, *, email: str | None = None) -> dict[str, Any]:
    """The form's column values, or 400 naming each bad field (as the form would)."""
    offered = accounts.offered_sections(db(), runtime().clock())
    fields, errors = accounts.validate(form, offered, email=email)
    if errors:
        raise field_errors(errors)
    return fields


@operation(
    "POST",
    "/readers",
    need="write",
    tag="readers",
    summary="Add a reader",
    body=s.ReaderCreate,
    responses={201: s.Reader, 202: s.Accepted},
    errors=(409, 503),
    links={201: _LINKS},
)
def create_reader(body: s.ReaderCreate) -> Any:
    """With `confirmed`, an active reader at once (201). Without, a pending reader who
    gets the opt-in email, exactly as after the sign-up form (202)."""
    rt = runtime()
    now = rt.clock()
    session = db()
    fields = _checked(_form(body))
    if not body.confirmed:
        notice = accounts.request_subscription(
            session, rt.settings, fields, now, source=body.source or "api"
        )
        audit("asked reader to confirm", f"reader {notice.subscriber_id}")
        session.commit()
        _send_notice(session, notice)
        return s.Accepted(
            status="accepted",
            detail="the reader is pending until they confirm from the email",
            reader_id=notice.subscriber_id,
        ), 202
    if store.find_subscriber(session, fields["email"]) is not None:
        raise Duplicate(f"{fields['email']} is already a reader")
    try:
        reader = store.add_subscriber(
            session,
            fields["email"],
            now,
            name=fields["name"],
            timezone=fields["timezone"],
            morning=fields["morning"],
            evening=fields["evening"],
            sections=fields["sections"],
            status="active",
            consent=f"{body.source or 'api'} via {token_name()}, {now:%Y-%m-%dT%H:%MZ}",
        )
    except InvalidInput as exc:
        raise Problem(409, str(exc)) from None
    audit("added reader", f"reader {reader.id} (active)")
    session.commit()
    return reader_out(reader), 201


def _send_notice(session: Session, notice: accounts.Notice) -> None:
    rt = runtime()
    try:
        accounts.send_notice(rt.settings, make_transport(rt.settings), notice, rt.clock())
    except SendError as exc:
        log.warning("sign-up email not sent (%s): %s", notice.kind, type(exc).__name__)
        accounts.forget_notice(session, notice)
        session.commit()
        raise Problem(503, "the opt-in email could not be sent just now; try again") from None


@operation(
    "PATCH",
    "/readers/{reader_id}",
    need="write",
    tag="readers",
    summary="Change a reader's settings",
    body=s.ReaderUpdate,
    responses={200: s.Reader},
)
def update_reader(reader_id: int, body: s.ReaderUpdate) -> Any:
    """Only the fields sent change; checked like the preferences form."""
    session = db()
    reader = accounts.reader(session, reader_id)
    form = accounts.form_of(reader)
    if body.name is not None:
        form.name = body.name
    if body.timezone is not None:
        form.timezone = body.timezone
    if body.editions is not None:
        form.editions = body.editions
    if body.sections is not None:
        form.sections = list(body.sections)
    fields = _checked(form, email=reader.email)
    if reader.status in accounts.LEFT:
        raise Problem(422, f"reader {reader_id} is {reader.status}; they must sign up again")
    accounts.update_preferences(session, reader_id, fields)
    audit("changed reader", f"reader {reader_id}: settings")
    session.commit()
    return reader_out(reader)


def _act(reader_id: int, act: Any, word: str) -> Any:
    session = db()
    reader = accounts.reader(session, reader_id)  # erased readers are gone for the API
    act(session, reader_id, runtime().clock())
    audit(word, f"reader {reader_id}")
    session.commit()
    return reader_out(reader)


@operation(
    "POST",
    "/readers/{reader_id}/unsubscribe",
    need="write",
    tag="readers",
    summary="Unsubscribe a reader",
    responses={200: s.Reader},
)
def unsubscribe_reader(reader_id: int) -> Any:
    """As their own unsubscribe link would: no more mail, an edition being sent included."""
    return _act(reader_id, reader_admin.unsubscribe, "unsubscribed")


@operation(
    "POST",
    "/readers/{reader_id}/suppress",
    need="write",
    tag="readers",
    summary="Suppress a reader for good",
    responses={200: s.Reader},
)
def suppress_reader(reader_id: int) -> Any:
    """No more mail, and no sign-up may mail the address again."""
    return _act(reader_id, reader_admin.suppress, "suppressed")


@operation(
    "POST",
    "/readers/{reader_id}/erase",
    need="write",
    tag="readers",
    summary="Erase a reader's data",
    responses={200: s.Reader},
)
def erase_reader(reader_id: int) -> Any:
    """GDPR erasure: the address is kept only as a hash, so it is never mailed again."""
    return _act(reader_id, reader_admin.erase, "erased")


@operation(
    "GET",
    "/readers/{reader_id}/export",
    need="read",
    tag="readers",
    summary="Everything kept about a reader",
    responses={200: s.ReaderExport},
)
def export_reader(reader_id: int) -> Any:
    """A data-subject access request's answer (written to the audit log)."""
    rt = runtime()
    accounts.reader(db(), reader_id)
    data = reader_admin.export_person(db(), reader_id, rt.settings.default_timezone)
    audit("exported", f"reader {reader_id}")
    db().commit()
    return data


# --- bulk import ------------------------------------------------------------------------

_FORMATS = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}


def job_out(job: Any) -> s.Job:
    import json

    return s.Job(
        id=job.id,
        kind=job.kind,
        status=job.status,
        created_at=job.created_at,
        finished_at=job.finished_at,
        report=json.loads(job.report or "{}"),
    )


@operation(
    "POST",
    "/readers/imports",
    need="write",
    tag="readers",
    summary="Import readers (CSV or JSON lines)",
    query=s.ImportQuery,
    raw_body=tuple(_FORMATS),
    responses={202: s.Job},
    max_bytes=IMPORT_MAX_BYTES,
    links={
        202: {
            "GetImport": {
                "operationId": "get_import",
                "parameters": {"job_id": "$response.body#/id"},
            }
        }
    },
)
def import_readers(query: s.ImportQuery) -> Any:
    """The columns of `digest subscribers import`: email, name, timezone, editions,
    sections (CSV with a header row, or one JSON object a line). Returns a job at once;
    its report names every row not imported, by line."""
    fmt = _FORMATS.get(request.mimetype)
    if fmt is None:
        raise Problem(415, f"send text/csv or application/x-ndjson, not {request.mimetype!r}")
    try:
        text = request.get_data().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad_field("body", f"not UTF-8 text (byte {exc.start})") from None
    rt = runtime()
    session = db()
    job = api_jobs.start_import(session, token_name(), rt.clock())
    audit("started import", f"job {job.id} ({fmt}, {len(text)} characters)")
    session.commit()
    worker = threading.Thread(
        target=api_jobs.run_import,
        args=(rt.sessions, job.id, fmt, text),
        kwargs={"confirmed": query.confirmed, "clock": rt.clock, "audit_as": token_name()},
        daemon=True,
    )
    worker.start()
    return job_out(job), 202


@operation(
    "GET",
    "/readers/imports/{job_id}",
    need="read",
    tag="readers",
    summary="An import job and its report",
    responses={200: s.Job},
)
def get_import(job_id: int) -> Any:
    return job_out(store_api.get_job(db(), job_id))


# --- sign-ups ----------------------------------------------------------------------------


@operation(
    "POST",
    "/signups",
    need="signup",
    tag="signups",
    summary="Start a double opt-in sign-up",
    body=s.Signup,
    responses={202: s.Accepted},
    errors=(503,),
)
def create_signup(body: s.Signup) -> Any:
    """What the sign-up form does: the address gets a confirmation email, and nothing
    changes until it is confirmed. The answer is the same whatever the address's state.
    Limited like the form: per end client, per mailbox, and an hourly budget of emails."""
    rt = runtime()
    now = rt.clock()
    session = db()
    fields = _checked(_form(body))
    if not rt.guard.budget_left():
        raise Problem(429, "too many sign-ups just now; try again in an hour")
    started = time.monotonic()
    notice = accounts.request_subscription(
        session, rt.settings, fields, now, source=body.source or "api sign-up"
    )
    if notice.kind != "none" and not rt.guard.take_mail(notice.email):
        notice = replace(notice, kind="none")  # this mailbox had its share today
    session.commit()
    if notice.kind == "none":
        rt.pacer.pad(started)
    else:
        _send_notice(session, notice)
        rt.pacer.record(time.monotonic() - started)
    return s.Accepted(
        status="accepted", detail="if the address can be mailed, a confirmation email is on its way"
    ), 202
