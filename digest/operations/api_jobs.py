"""Bulk jobs started through the API: a reader import (CSV or JSON lines) run apart
from the request, with its report (counts, and each row not imported with its line and
reason) kept on the job's row for the client to read."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from digest.errors import DigestError, InvalidInput
from digest.models import ApiJob
from digest.readers.subscribers import import_rows, read_rows
from digest.store import api as store_api
from digest.store.operators import add_audit
from digest.words import counted

log = logging.getLogger(__name__)
FORMATS = ("csv", "jsonl")
_COLUMNS = ("email", "name", "timezone", "editions", "sections")


def jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Each JSON line as import columns, or why it cannot be read (the rest go on)."""
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            yield line, "this line is not a JSON object"
            continue
        if not isinstance(record, dict):
            yield line, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield line, _columns(record) if _plain(record) else _what_is_wrong(record)


def _plain(record: dict[str, Any]) -> bool:
    return all(
        record.get(key) is None
        or isinstance(record[key], str)
        or (key == "sections" and isinstance(record[key], list))
        for key in _COLUMNS
    )


def _what_is_wrong(record: dict[str, Any]) -> str:
    for key in _COLUMNS:
        value = record.get(key)
        if value is not None and not isinstance(value, str | list):
            return f"{key} must be text, not {type(value).__name__}"
    return "sections must be text or a list of text"


def _columns(record: dict[str, Any]) -> dict[str, str] | str:
    sections = record.get("sections") or ""
    if isinstance(sections, list):
        if not all(isinstance(s, str) for s in sections):
            return "sections must be text or a list of text"
        sections = ",".join(sections)
    out = {key: record.get(key) or "" for key in _COLUMNS}
    out["sections"] = sections
    return out


def rows_of(fmt: str, text: str) -> Iterator[tuple[int, dict[str, str] | str]]:
    if fmt == "jsonl":
        return jsonl_rows(text)
    return read_rows(io.StringIO(text, newline=None))


def start_import(session: Session, token_name: str, now: datetime) -> ApiJob:
    """A queued import job; the caller commits it, then runs `run_import`."""
    return store_api.add_job(session, "reader import", token_name, now)


def run_import(
    sessions: Callable[[], Session],
    job_id: int,
    fmt: str,
    text: str,
    *,
    confirmed: bool,
    clock: Callable[[], datetime],
    audit_as: str,
) -> None:
    """Import the rows and keep the report on the job; never raises (a thread runs it)."""
    now = clock()
    with sessions() as session:
        job = store_api.get_job(session, job_id)
        job.status = "running"
        session.commit()
        try:
            report = import_rows(
                session, rows_of(fmt, text), now, confirmed=confirmed, source="api import"
            )
            body = {
                "added": report.added,
                "existing": report.existing,
                "suppressed": report.suppressed,
                "errors": [{"line": line, "error": error} for line, error in report.errors],
            }
            status = "done"
            add_audit(
                session,
                audit_as,
                "imported readers",
                f"job {job_id}: {report.added} added, {counted(len(report.errors), 'row')} refused",
                now,
            )
            session.commit()
        except (DigestError, ValueError) as exc:
            session.rollback()
            body, status = {"error": str(exc)}, "failed"
        except Exception as exc:  # a thread's error would vanish: keep it on the job
            session.rollback()
            log.exception("API import job %s stopped", job_id)
            body, status = {"error": f"the import stopped: {type(exc).__name__}"}, "failed"
        job = store_api.get_job(session, job_id)
        job.status = status
        job.report = json.dumps(body)
        job.finished_at = clock()
        session.commit()


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    return fmt
