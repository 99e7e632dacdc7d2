"""Smaller holes an outside review found (issue 7, item 5), each closed at its root."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import cli
from digest.config import load_settings
from digest.errors import ConfigError
from digest.feeds.ingest import parse_article_records
from digest.mail.transport import OutboxTransport
from digest.readers.subscribers import import_csv, safe_cell
from tests.conftest import NOW


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- files that hold secrets, addresses and tokens -----------------------------------------


def test_secret_key_is_private_from_its_first_byte(tmp_path: Path) -> None:
    """A child process with umask 0 creates the key: no window in which it is 0644."""
    data = tmp_path / "data"
    code = (
        "import os, sys; os.umask(0); from digest.config import load_settings; "
        f"load_settings({{'DIGEST_DATA_DIR': {str(data)!r}}})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
    assert mode(data) == 0o700
    assert mode(data / "secret_key") == 0o600
    # A second process reads the same key, never writes another.
    first = (data / "secret_key").read_text()
    assert load_settings({"DIGEST_DATA_DIR": str(data)}).secret_key == first


def test_outbox_messages_and_exports_are_owner_only(tmp_path: Path, sqlite_url: str) -> None:
    old = os.umask(0)
    try:
        with OutboxTransport(tmp_path / "outbox") as outbox:
            outbox.send("a@example.com", "b@example.com", b"Subject: x\r\n\r\nhi\r\n", "<m@x>")
        export = tmp_path / "readers.csv"
        export.write_text("old")
        export.chmod(0o644)
        env = {
            "DIGEST_DATA_DIR": str(tmp_path / "data"),
            "DIGEST_DATABASE_URL": sqlite_url,
            "DIGEST_SECRET_KEY": "k",
        }
        result = CliRunner(env=env).invoke(cli, ["subscribers", "export", str(export)])
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    assert mode(tmp_path / "outbox") == 0o700
    assert [mode(p) for p in (tmp_path / "outbox").glob("*.eml")] == [0o600]
    assert mode(export) == 0o600


def test_export_to_a_missing_folder_is_one_clear_line(tmp_path: Path, sqlite_url: str) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "k",
    }
    target = tmp_path / "no" / "such" / "x.csv"
    result = CliRunner(env=env).invoke(cli, ["subscribers", "export", str(target)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"cannot write {target}" in result.output


# --- settings that reach a header -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["DIGEST_UNSUBSCRIBE_MAILTO", "DIGEST_FROM_NAME", "DIGEST_LIST_ID", "DIGEST_BASE_URL"],
)
@pytest.mark.parametrize("brk", ["\r", "\n", "\r\n", "\u2028", "\x85", "\x0b"])
def test_header_settings_with_a_line_break_are_refused(tmp_path, name: str, brk: str) -> None:
    value = {"DIGEST_BASE_URL": "https://news.example.com"}.get(name, "x@example.com")
    env = {"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k"}
    env[name] = value + brk + "Bcc: everyone@example.com"
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_cli_says_which_header_setting_is_wrong(tmp_path: Path) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path),
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_UNSUBSCRIBE_MAILTO": "u@example.com\nBcc: x@example.com",
    }
    result = CliRunner(env=env).invoke(cli, ["subscribers", "list"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "DIGEST_UNSUBSCRIBE_MAILTO must be one line" in result.output


# --- CSV export and import -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ";cmd",
        "|cmd",
        "＝1+1",
        "＋1",
        "－1",
        "＠SUM(A1)",
        "\u200b=cmd",
        "\ufeff+1",
        "\u3164@x",
        " \t=1",
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_prefixed(value: str) -> None:
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["Ana", "a=b", "Zoë", "", "1-2"])
def test_ordinary_cells_are_left_alone(value: str) -> None:
    assert safe_cell(value) == value


def test_a_csv_field_over_the_size_limit_is_one_bad_row(session) -> None:
    huge = "x" * (csv.field_size_limit() + 10)
    text = f"email,name\nok1@example.com,A\nbad@example.com,{huge}\nok2@example.com,B\n"
    report = import_csv(session, io.StringIO(text), NOW)
    session.commit()
    assert report.added == 2
    assert len(report.errors) == 1 and "cannot be read" in report.errors[0][1]


# --- JSON article import ---------------------------------------------------------------------


def test_a_date_out_of_range_is_one_bad_record() -> None:
    records = [
        {
            "title": "Old",
            "url": "https://news.example.com/1",
            "published_at": "0001-01-01T00:00:00+14:00",
        },
        {
            "title": "Fine",
            "url": "https://news.example.com/2",
            "published_at": "2026-11-29T08:00:00+00:00",
        },
    ]
    articles, errors = parse_article_records(json.loads(json.dumps(records)), NOW)
    assert [a["title"] for a in articles] == ["Fine"]
    assert errors == ["record 1: published_at '0001-01-01T00:00:00+14:00' is out of range"]


def test_an_id_beyond_the_database_range_is_not_found(session) -> None:
    """On PostgreSQL a 2**40 id used to raise 'integer out of range' (a 500 or a traceback)."""
    from digest import store
    from digest.errors import NotFound

    for bad in (2**31, 2**40, 10**30, 0, -1):
        with pytest.raises(NotFound):
            store.get_edition(session, bad)
