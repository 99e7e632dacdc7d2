"""Subscriber import and export: every bad row named, nothing else lost."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from digest import store
from digest.errors import InvalidInput
from digest.readers.subscribers import export_csv, import_csv, safe_cell, subscriber_fields

NOW = datetime(2026, 11, 29, tzinfo=UTC)

CSV = """email,name,timezone,editions,sections
ana@example.com,Ana,Europe/London,morning,
not-an-address,Bad,,,
ben@example.com,Ben,Mars/Olympus,,
cy@example.com,"Cy, Jr.",,evening,"Sport, News"
ANA@example.com,Ana again,,,
dee@example.com,Dee,,weekly,
eve@example.com,"=HYPERLINK(""http://evil"")",,,
"""


def test_import_reports_each_bad_row_and_keeps_the_good(session) -> None:
    report = import_csv(session, io.StringIO(CSV), NOW)
    session.commit()
    assert report.added == 3
    errors = dict(report.errors)
    assert set(errors) == {3, 4, 6, 7}
    assert "not-an-address" in errors[3] and "@" in errors[3]
    assert "Mars/Olympus" in errors[4]
    assert "earlier in the file" in errors[6]
    assert "weekly" in errors[7]
    cy = store.find_subscriber(session, "cy@example.com")
    assert cy is not None and cy.sections == "news,sport" and not cy.morning and cy.evening
    assert cy.status == "pending"  # no proof of consent: double opt-in still needed


def test_import_twice_adds_nothing_and_respects_suppression(session) -> None:
    import_csv(session, io.StringIO(CSV), NOW, confirmed=True)
    ana = store.find_subscriber(session, "ana@example.com")
    assert ana is not None and ana.status == "active"
    store.set_status(session, ana, "unsubscribed", NOW)
    session.delete(ana)  # even with the row gone, the hashed suppression remains
    session.commit()
    report = import_csv(session, io.StringIO(CSV), NOW, confirmed=True)
    session.commit()
    assert report.added == 0 and report.suppressed == 1 and report.existing == 2
    assert store.find_subscriber(session, "ana@example.com") is None


def test_import_needs_an_email_column(session) -> None:
    with pytest.raises(InvalidInput, match="email"):
        import_csv(session, io.StringIO("name,address\nx,y\n"), NOW)


def test_large_import_is_bulk(session) -> None:
    rows = "email,name\n" + "".join(f"r{i}@example.com,Reader {i}\n" for i in range(20_000))
    report = import_csv(session, io.StringIO(rows), NOW, confirmed=True)
    session.commit()
    assert report.added == 20_000 and not report.errors
    assert store.count_subscribers(session) == {"active": 20_000}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+61 400", "'+61 400"),
        ("-x", "'-x"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=x", "'\t=x"),
        ("plain", "plain"),
        ("", ""),
        (None, ""),
    ],
)
def test_safe_cell(value: object, expected: str) -> None:
    assert safe_cell(value) == expected


def test_export_never_starts_a_cell_with_a_formula(session) -> None:
    store.add_subscriber(
        session, "eve@example.com", NOW, name='=HYPERLINK("http://evil")', sections="-news"
    )
    store.add_subscriber(session, "ok@example.com", NOW, name="Ok")
    session.commit()
    out = io.StringIO()
    assert export_csv(session, out) == 2
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0][0] == "email"
    for row in rows[1:]:
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in row)
    assert rows[1][1] == '\'=HYPERLINK("http://evil")'


def test_subscriber_fields_folds_hostile_names() -> None:
    fields = subscriber_fields("ana@example.com", "Ana\r\nBcc: x@example.org")
    assert fields["name"] == "Ana Bcc: x@example.org"


def test_duplicate_subscriber_is_refused(session) -> None:
    from digest.errors import Duplicate

    store.add_subscriber(session, "ana@example.com", NOW)
    with pytest.raises(Duplicate, match="already"):
        store.add_subscriber(session, "ana@example.com", NOW)


@pytest.mark.parametrize(
    "rows",
    [
        'ann@example.com,"Ann\nbob@example.com,Bob\ncy@example.com,Cy\n',
        # The open quote on the last line, with no line break after it.
        'bob@example.com,Bob\ncy@example.com,Cy\nann@example.com,"Ann',
        # A second quote further down would close the first for the csv module.
        'ann@example.com,"Ann\nbob@example.com,Bob\ncy@example.com,"Cy"\n',
    ],
)
def test_an_unterminated_quote_skips_its_row_and_no_other(session, rows: str) -> None:
    report = import_csv(session, io.StringIO("email,name\n" + rows), NOW)
    session.commit()
    assert [reason for _, reason in report.errors] == [
        'a quote (") is never closed on this line: row skipped'
    ]
    assert report.added == 2
    assert store.find_subscriber(session, "ann@example.com") is None
    names = {s.email: s.name for s in store.iter_subscribers(session)}
    assert names == {"bob@example.com": "Bob", "cy@example.com": "Cy"}


def test_the_row_numbers_are_the_file_lines(session) -> None:
    text = '\nemail,name\nann@example.com,"Ann\n\nbad\nbob@example.com,"Bob, Jr."\r\n'
    report = import_csv(session, io.StringIO(text, newline=""), NOW)
    assert [line for line, _ in report.errors] == [3, 5] and report.added == 1
    assert store.find_subscriber(session, "bob@example.com").name == "Bob, Jr."


def test_a_header_with_an_open_quote_is_one_line(session) -> None:
    with pytest.raises(InvalidInput, match="header row has a quote"):
        import_csv(session, io.StringIO('"email,name\nann@example.com,Ann\n'), NOW)
