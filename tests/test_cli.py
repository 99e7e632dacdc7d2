"""The operator CLI, driven through Click's runner on an embedded database."""

from __future__ import annotations

import email
import email.policy
import json
import os
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

import digest.cli
import digest.db
from digest import store
from digest.cli import cli
from digest.editions import pipeline
from digest.editions.schedule import Cohort
from digest.models import AuditEntry
from tests.conftest import NOW, add_articles


@pytest.fixture
def run(tmp_path: Path):
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": "",
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "cli-test-secret",
        "DIGEST_NOW": "2026-11-29T12:00:00+00:00",  # 23:00 in Sydney
    }

    def invoke(*args: str, ok: bool = True):
        result = CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.env = env  # type: ignore[attr-defined]
    return invoke


def test_demo_sends_the_morning_edition_to_the_outbox(run, tmp_path: Path) -> None:
    out = run("demo").output
    assert "4 added" in out and "4 sent" in out
    files = sorted((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(files) == 4
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Morning Edition" in str(msg["Subject"])
    html = msg.get_body(("html",)).get_content()
    assert "sanitised away" not in html  # the sample feed's <script> did not survive
    again = run("demo").output  # idempotent: nothing is sent twice
    assert "exists" in again and len(list((tmp_path / "data" / "outbox").glob("*.eml"))) == 4
    status = run("status").output
    assert "sent: 4" in status


def test_subscribers_commands(run, tmp_path: Path) -> None:
    run("init")
    assert (
        "added"
        in run(
            "subscribers",
            "add",
            "Ana@Example.com",
            "--name",
            "Ana",
            "--timezone",
            "Europe/London",
            "--confirmed",
        ).output
    )
    bad = run("subscribers", "add", "not-an-address", ok=False)
    assert bad.exit_code == 1 and "Error:" in bad.output and "Traceback" not in bad.output
    dup = run("subscribers", "add", "ana@example.com", ok=False)
    assert dup.exit_code == 1 and "already" in dup.output
    tz = run("subscribers", "add", "b@example.com", "--timezone", "Nowhere/Land", ok=False)
    assert tz.exit_code == 1 and "Nowhere/Land" in tz.output
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("email,name\nc@example.com,C\nbroken,X\n")
    imported = run("subscribers", "import", str(csv_file))
    assert "1 added" in imported.output and "line 3:" in imported.output
    listing = run("subscribers", "list").output
    assert "ana@example.com" in listing and "active: 1" in listing and "pending: 1" in listing
    out_file = tmp_path / "out.csv"
    run("subscribers", "export", str(out_file))
    assert out_file.read_text().count("@example.com") == 2


def test_send_dry_run_preview_and_test_send(run, tmp_path: Path) -> None:
    run("demo")
    dry = run("send", "evening", "--dry-run").output
    assert "evening" in dry and "window" in dry
    page = tmp_path / "preview.html"
    assert (
        "written to" in run("preview", "morning", "--out", str(page), "--day", "2026-11-30").output
    )
    html = page.read_text()
    assert "Reader" in html and "DGSTx" not in html and 'style="' in html
    sent = run("send", "morning", "--day", "2026-11-30", "--to", "editor@example.com").output
    assert "test copy" in sent
    test_copies = [
        p
        for p in (tmp_path / "data" / "outbox").glob("*.eml")
        if b"editor@example.com" in p.read_bytes()
    ]
    assert len(test_copies) == 1 and b"[TEST]" in test_copies[0].read_bytes()


def test_errors_are_one_line(run, tmp_path: Path) -> None:
    missing = run("subscribers", "import", str(tmp_path / "nope.csv"), ok=False)
    assert missing.exit_code == 1 and "cannot read" in missing.output
    assert "Traceback" not in missing.output
    no_db = run("status", ok=False)
    assert no_db.exit_code == 1 and "digest init" in no_db.output
    bad_day = run("send", "morning", "--day", "yesterday", ok=False)
    assert bad_day.exit_code == 2 and "yesterday" in bad_day.output
    run("init")
    bad_json = tmp_path / "a.json"
    bad_json.write_text("{not json")
    broken = run("articles", "import", str(bad_json), ok=False)
    assert broken.exit_code == 1 and "not valid JSON" in broken.output


def test_inbound_reads_standard_input_and_never_fails_on_stray_mail(run) -> None:
    run("init")
    result = CliRunner(env=run.env).invoke(
        cli, ["inbound"], input=b"From: a@example.com\r\nSubject: hello\r\n\r\nhi\r\n"
    )
    assert result.exit_code == 0 and result.output.startswith("kept")  # a reply: kept


# --- one reader from the CLI (SQLite and PostgreSQL) -------------------------------------------


@pytest.fixture
def run_db(tmp_path: Path, database_url: str, settings, sessions, monkeypatch):
    """The CLI on a migrated database, run by the OS user "night-editor"; the engine
    each command makes is disposed after it (no PostgreSQL connection left open)."""
    engines: list[Engine] = []

    def make_engine(url: str, **kwargs: Any) -> Engine:
        engines.append(digest.db.make_engine(url, **kwargs))
        return engines[-1]

    monkeypatch.setattr(digest.cli, "make_engine", make_engine)
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": database_url,
        "DIGEST_SMTP_URL": "",
        "DIGEST_REDIS_URL": "",
        "DIGEST_SECRET_KEY": "cli-test-secret",
        "DIGEST_NOW": "2026-11-29T19:30:00+00:00",
        "LOGNAME": "night-editor",
        "USER": "night-editor",
    }

    def invoke(*args: str, code: int = 0, input: str | None = None):
        try:
            result = CliRunner(env=env).invoke(cli, list(args), input=input, catch_exceptions=False)
        finally:
            while engines:
                engines.pop().dispose()
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    invoke.sessions = sessions  # type: ignore[attr-defined]
    invoke.settings = settings  # type: ignore[attr-defined]
    return invoke


def _reader_with_an_edition(run_db) -> tuple[int, int]:
    """Ana and Ben, active in Sydney, both in the planned morning edition of 30 November."""
    tz = "Australia/Sydney"
    with run_db.sessions() as session:
        add_articles(session, datetime(2026, 11, 29, 18, 0, tzinfo=UTC), [("Ferry", "news")])
        ana = store.add_subscriber(
            session, "ana@example.com", NOW, name="Ana", status="active", timezone=tz
        )
        store.add_subscriber(session, "ben@example.com", NOW, status="active", timezone=tz)
        session.commit()
        cohort = Cohort("morning", date(2026, 11, 30), tz)
        plan = pipeline.plan_edition(
            session, run_db.settings, cohort, datetime(2026, 11, 29, 19, 1, tzinfo=UTC)
        )
        return ana.id, plan.edition_id


def _audit(sessions) -> list[tuple[str, str, str]]:
    with sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(a.operator, a.action, a.detail) for a in rows]


def test_show_and_export_one_reader_by_address_or_id(run_db, tmp_path: Path) -> None:
    ana_id, edition_id = _reader_with_an_edition(run_db)
    shown = run_db("subscribers", "show", "Ana@Example.com").output
    assert "ana@example.com" in shown and "active" in shown and "Australia/Sydney" in shown
    assert f"edition {edition_id:>6}" in shown and "2026-11-30" in shown
    assert run_db("subscribers", "show", str(ana_id)).output == shown
    exported = json.loads(run_db("subscribers", "export-one", str(ana_id)).stdout)
    assert exported["email"] == "ana@example.com" and exported["name"] == "Ana"
    assert exported["deliveries"][0]["edition_id"] == edition_id
    out = tmp_path / "ana.json"
    run_db("subscribers", "export-one", "ana@example.com", "--out", str(out))
    assert json.loads(out.read_text()) == exported
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert _audit(run_db.sessions) == [("night-editor", "exported", f"reader {ana_id}")] * 2
    missing = run_db("subscribers", "show", "nobody@example.com", code=1)
    assert missing.output == "Error: no subscriber with address 'nobody@example.com'\n"
    nowhere = run_db(
        "subscribers", "export-one", "ana@example.com", "--out", "/no/such/x.json", code=1
    )
    assert nowhere.output.startswith("Error: cannot write /no/such/x.json")


def test_unsubscribe_suppress_and_update_are_audited(run_db) -> None:
    ana_id, _ = _reader_with_an_edition(run_db)
    with run_db.sessions() as session:
        store.add_feed(session, "https://news.example.com/sport.xml", "sport")
        session.commit()
    changed = run_db(
        "subscribers", "update", "ana@example.com", "--editions", "evening", "--sections", "sport"
    )
    assert "editions, sections" in changed.output
    unknown = run_db("subscribers", "update", str(ana_id), "--sections", "knitting", code=1)
    assert "knitting" in unknown.output and "news, sport" in unknown.output
    run_db("subscribers", "update", str(ana_id), code=2)  # nothing to change
    run_db("subscribers", "unsubscribe", "ana@example.com")
    run_db("subscribers", "suppress", "ben@example.com")
    with run_db.sessions() as session:
        ana = store.get_subscriber(session, ana_id)
        assert (ana.status, ana.morning, ana.evening, ana.sections) == (
            "unsubscribed",
            False,
            True,
            "sport",
        )
        assert store.suppression_reason(session, "ben@example.com") == "operator"
    ben_id = ana_id + 1
    assert _audit(run_db.sessions) == [
        ("night-editor", "changed reader", f"reader {ana_id}: editions: evening; sections: sport"),
        ("night-editor", "unsubscribed", f"reader {ana_id} (was active)"),
        ("night-editor", "suppressed", f"reader {ben_id} (was active)"),
    ]


def test_erase_asks_first(run_db) -> None:
    ana_id, _ = _reader_with_an_edition(run_db)
    declined = run_db("subscribers", "erase", "ana@example.com", input="n\n", code=1)
    assert "Erase subscriber" in declined.output and "Aborted" in declined.output
    with run_db.sessions() as session:
        assert store.get_subscriber(session, ana_id).status == "active"
    assert _audit(run_db.sessions) == []
    run_db("subscribers", "erase", "ana@example.com", input="y\n")
    with run_db.sessions() as session:
        assert store.find_subscriber(session, "ana@example.com") is None
        assert store.get_subscriber(session, ana_id).status == "erased"
    assert _audit(run_db.sessions) == [("night-editor", "erased", f"reader {ana_id} (was active)")]
    again = run_db("subscribers", "unsubscribe", str(ana_id), code=1)
    assert "erased" in again.output
    run_db("subscribers", "erase", "ben@example.com", "--yes")
    assert len(_audit(run_db.sessions)) == 2


def test_what_was_a_traceback_is_one_line(run, tmp_path: Path) -> None:
    run("init")
    bad_status = run("subscribers", "list", "--status", "nonsense", ok=False)
    assert bad_status.exit_code == 2
    assert "'nonsense' is not one of 'pending', 'active', 'unsubscribed'" in bad_status.output
    assert "bounced" in bad_status.output and "erased" in bad_status.output
    sections = run("subscribers", "add", "z@example.com", "--sections", "nonsense", ok=False)
    assert sections.exit_code == 1
    assert sections.output == (
        "Error: unknown section 'nonsense'; the feeds' sections: none yet (add a feed first)\n"
    )
    run("feeds", "add", "https://news.example.com/feed.xml", "--section", "sport")
    run("subscribers", "add", "z@example.com", "--sections", "Sport")
    csv_file = tmp_path / "quote.csv"
    csv_file.write_text('email,name\nann@example.com,"Ann\nbob@example.com,Bob\n')
    imported = run("subscribers", "import", str(csv_file))
    assert "line 2: a quote" in imported.output and "1 added" in imported.output
    assert "1 bad rows" in imported.output


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DIGEST_SMTP_URL", "smtp://relay.example.com:25?timeout=abc", "timeout= must be a number"),
        ("DIGEST_DATABASE_URL", "mysql://digest:secret@db/digest", "'mysql' databases are not"),
        ("DIGEST_DATABASE_URL", "mysql+pymysql://db/digest", "sqlite:///"),
    ],
)
def test_unusable_settings_are_one_line(run, name: str, value: str, says: str) -> None:
    result = CliRunner(env={**run.env, name: value}).invoke(cli, ["subscribers", "list"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and says in result.output
    assert len(result.output.splitlines()) == 1 and "secret" not in result.output
