"""The operator CLI, driven through Click's runner on an embedded database."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import cli


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
