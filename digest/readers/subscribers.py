"""Subscriber input and output: one address, a CSV import, a CSV export."""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

from sqlalchemy.orm import Session

from digest import store
from digest.config import check_timezone, open_private
from digest.editions.selection import normalise_sections
from digest.errors import ConfigError, InvalidAddress, InvalidInput
from digest.mail.addresses import fold_header_text, normalise_address
from digest.models import Subscriber

EDITION_CHOICES = {
    "": (True, True),
    "both": (True, True),
    "morning": (True, False),
    "evening": (False, True),
    "morning,evening": (True, True),
}
EXPORT_FIELDS = ("email", "name", "timezone", "editions", "sections", "status", "created_at")
# What spreadsheets read as the start of a formula (or a DDE call), ASCII and full-width.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", ";", "|", "＝", "＋", "－", "＠")
# Letters that render as nothing (Hangul fillers, combining grapheme joiner, ...), besides
# the format, control and space characters found by their Unicode category.
_BLANK_LETTERS = "\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0"


def _first_visible(text: str) -> str:
    for ch in text:
        if ch not in _BLANK_LETTERS and unicodedata.category(ch)[0] not in "CZ":
            return ch
    return ""


def parse_editions(raw: str | None) -> tuple[bool, bool]:
    key = normalise_sections(raw or "")
    if key not in EDITION_CHOICES:
        raise InvalidInput(f"editions {raw!r} must be morning, evening or both")
    return EDITION_CHOICES[key]


def parse_timezone(raw: str | None) -> str | None:
    if not raw or not raw.strip():
        return None
    try:
        return check_timezone(raw.strip())
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None


def clean_name(raw: str | None) -> str:
    return fold_header_text(raw or "", limit=200)


def subscriber_fields(
    email: str,
    name: str | None = None,
    timezone: str | None = None,
    editions: str | None = None,
    sections: str | Iterable[str] | None = None,
) -> dict[str, Any]:
    """Validated column values for one subscriber, or InvalidInput naming the bad field."""
    morning, evening = parse_editions(editions)
    return {
        "email": normalise_address(email),
        "name": clean_name(name),
        "timezone": parse_timezone(timezone),
        "morning": morning,
        "evening": evening,
        "sections": normalise_sections(sections),
    }


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    suppressed: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    # Every row's outcome by line: (line, address or "", added | already there |
    # suppressed | bad row, why) - the console's downloadable report.
    lines: list[tuple[int, str, str, str]] = field(default_factory=list)
    added_emails: list[str] = field(default_factory=list)


IMPORT_FIELDS = ("email", "name", "timezone", "editions", "sections")
DELIMITERS = (",", ";", "\t")


def detect_delimiter(header: str) -> str:
    """The delimiter of a CSV file from its header line: comma, semicolon or tab, the
    one that splits the line (outside quotes) the most; a comma when none does."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def guess_mapping(header: list[str]) -> dict[str, str]:
    """Which import field each column of a header is, by name ("" for none)."""
    aliases = {
        "email": ("email", "e-mail", "mail", "address", "email address"),
        "name": ("name", "full name", "first name"),
        "timezone": ("timezone", "time zone", "tz"),
        "editions": ("editions", "edition"),
        "sections": ("sections", "section", "topics"),
    }
    found: dict[str, str] = {}
    for column in header:
        key = column.strip().lower()
        field_name = next((f for f, names in aliases.items() if key in names), "")
        if field_name and field_name in found.values():
            field_name = ""
        found[column] = field_name
    return found


def _parse_line(text: str, delimiter: str = ",") -> list[str]:
    """The fields of one physical line (csv.Error when it cannot be read)."""
    if not text.endswith(("\n", "\r")):
        text += "\n"  # the last line: a quote open at its end shows as at any other's
    return next(csv.reader([text], delimiter=delimiter), [])


def read_header(text: str, delimiter: str) -> list[str]:
    """A header line's column names (InvalidInput when it cannot be read)."""
    try:
        header = _parse_line(text, delimiter)
    except csv.Error as exc:
        raise InvalidInput(f"the CSV header row cannot be read: {exc}") from None
    if _unterminated(header):
        raise InvalidInput('the CSV header row has a quote (") that is never closed')
    return [f.strip() for f in header]


def read_rows(
    handle: TextIO, delimiter: str = ",", mapping: dict[str, str] | None = None
) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Each row by line number, or the reason a row could not be read (the rest go on).

    Every physical line is one row: no column of a subscriber list may hold a line
    break, so a quote left open cannot swallow the rows after it (the csv module would
    read them into one field, up to the next quote or the end of the file).
    """
    lines = enumerate(handle, start=1)
    fieldnames: list[str] = []
    for _line, text in lines:
        header = read_header(text, delimiter)
        if mapping is not None:
            fieldnames = [mapping.get(f, "") for f in header]
        else:
            fieldnames = [f.lower() for f in header]
        if header:
            break
    if "email" not in fieldnames:
        raise InvalidInput("the CSV needs a header row with an 'email' column")
    for line, text in lines:
        try:
            values = _parse_line(text, delimiter)
        except csv.Error as exc:  # a field over the csv module's size limit, a stray NUL
            yield line, f"this row cannot be read: {exc}"
            continue
        if not values:
            continue  # a blank line
        if _unterminated(values):
            yield line, 'a quote (") is never closed on this line: row skipped'
            continue
        yield line, dict(zip(fieldnames, values, strict=False))


def _unterminated(values: list[str]) -> bool:
    # Read alone, a line can only put its own line break into a field through a quote
    # that is still open at the end of the line.
    return any("\n" in v or "\r" in v for v in values)


def import_csv(
    session: Session,
    handle: TextIO,
    now: datetime,
    *,
    confirmed: bool = False,
    source: str = "csv import",
    chunk: int = 2000,
    delimiter: str = ",",
    mapping: dict[str, str] | None = None,
) -> ImportReport:
    """Import good rows in bulk; every bad row is reported with its line and reason.

    Without `confirmed` imported readers are `pending` and get no edition until they
    confirm; addresses that unsubscribed or bounced before are never re-added.
    """
    return import_rows(
        session,
        read_rows(handle, delimiter, mapping),
        now,
        confirmed=confirmed,
        source=source,
        chunk=chunk,
    )


def import_rows(
    session: Session,
    rows: Iterable[tuple[int, dict[str, str] | str]],
    now: datetime,
    *,
    confirmed: bool = False,
    source: str = "import",
    chunk: int = 2000,
) -> ImportReport:
    """Import rows given by line number (a dict of columns, or why the row could not be
    read), as import_csv does; the API's JSON lines import comes through here too."""
    report = ImportReport()
    batch: list[dict[str, Any]] = []
    seen: set[str] = set()
    status = "active" if confirmed else "pending"

    line_of: dict[str, int] = {}

    def flush() -> None:
        emails = [r["email"] for r in batch]
        blocked = store.suppressed_hashes(session, emails)
        rows = [r for r in batch if store.address_hash(r["email"]) not in blocked]
        report.suppressed += len(batch) - len(rows)
        added = set(store.insert_subscribers_returning(session, rows))
        report.added += len(added)
        report.existing += len(rows) - len(added)
        report.added_emails += [r["email"] for r in rows if r["email"] in added]
        for r in batch:
            email = r["email"]
            if email in added:
                outcome, why = "added", status
            elif store.address_hash(email) in blocked:
                outcome, why = "suppressed", "unsubscribed, bounced or suppressed before"
            else:
                outcome, why = "already there", "left as it was"
            report.lines.append((line_of[email], email, outcome, why))
        batch.clear()

    for line, row in rows:
        if isinstance(row, str):
            report.errors.append((line, row))
            report.lines.append((line, "", "bad row", row))
            continue
        try:
            fields = subscriber_fields(
                row.get("email", ""),
                row.get("name"),
                row.get("timezone"),
                row.get("editions"),
                row.get("sections"),
            )
        except (InvalidInput, InvalidAddress) as exc:
            report.errors.append((line, str(exc)))
            report.lines.append((line, row.get("email", "")[:320], "bad row", str(exc)))
            continue
        if fields["email"] in seen:
            why = f"{fields['email']} appears earlier in the file"
            report.errors.append((line, why))
            report.lines.append((line, fields["email"], "bad row", why))
            continue
        seen.add(fields["email"])
        line_of[fields["email"]] = line
        fields.update(
            status=status, consent=source, created_at=now, confirmed_at=now if confirmed else None
        )
        batch.append(fields)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    report.lines.sort()
    return report


def import_file(session: Session, path: Path, now: datetime, *, confirmed: bool) -> ImportReport:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            delimiter = detect_delimiter(handle.readline())
            handle.seek(0)
            return import_csv(
                session,
                handle,
                now,
                confirmed=confirmed,
                source=f"import {path.name}",
                delimiter=delimiter,
            )
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula, even when the formula
    character is full-width or hidden behind invisible characters."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) or _first_visible(text) in _FORMULA_START:
        return "'" + text
    return text


def editions_label(s: Subscriber) -> str:
    return (
        "both"
        if s.morning and s.evening
        else "morning"
        if s.morning
        else "evening"
        if s.evening
        else "none"
    )


def export_row(s: Subscriber) -> list[str]:
    """One reader as an export's row (EXPORT_FIELDS), every cell formula-safe."""
    values = (
        s.email,
        s.name,
        s.timezone or "",
        editions_label(s),
        s.sections,
        s.status,
        s.created_at.isoformat(),
    )
    return [safe_cell(v) for v in values]


def export_csv(session: Session, handle: IO[str]) -> int:
    """Write every subscriber as CSV; returns how many rows."""
    writer = csv.writer(handle)
    writer.writerow(EXPORT_FIELDS)
    n = 0
    for s in store.iter_subscribers(session):
        writer.writerow(export_row(s))
        n += 1
    return n


def export_private(session: Session, path: Path) -> int:
    """Export to a file only its owner can read (it holds every reader's address)."""
    try:
        handle = open_private(path, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    with handle:
        return export_csv(session, handle)
