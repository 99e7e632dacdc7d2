"""Issue 16's smaller defects found on the wire: header lines within 78 characters for
test copies and sign-up mail, no one-click header on a test copy, an erased reader's
returned mail and view link, oversized inbound mail, control characters in logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from click.testing import CliRunner

from digest import store
from digest.cli import cli
from digest.db import upgrade
from digest.mail.message import Envelope, Sender, build_message, list_unsubscribe
from digest.mail.returns import verp_address
from digest.mail.tokens import single_message_id
from digest.readers import inbound, reader_admin
from tests.conftest import NOW

DATE = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
SENDER = Sender(
    "news@gazette.example.net",
    "Gazette",
    "daily.gazette.example.net",
    "Gazette",
    "unsubscribe@gazette.example.net",
)


def header_lines(message: bytes) -> list[str]:
    return message.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")


def single(campaign: str, url: str) -> bytes:
    env = Envelope(
        "reader@example.org",
        "",
        single_message_id(campaign, "k3x9q2ab", "gazette.example.net"),
        url,
        "test-copy" if campaign == "test" else "t." + "k" * 40,
        "text",
        "<p>html</p>",
    )
    return build_message(SENDER, "[TEST] The Morning Edition", DATE, env, campaign=campaign)


def test_test_copies_and_signup_mail_keep_header_lines_within_78() -> None:
    long_url = "https://news.gazette.example.net/unsubscribe/" + "t" * 12 + "." + "k" * 14
    for campaign, url in (
        ("test", "https://news.gazette.example.net/unsubscribe"),
        ("signup", long_url),
    ):
        lines = header_lines(single(campaign, url))
        too_long = [line for line in lines if len(line) > 78]
        # Only a URL on a line of its own may be longer: it is never split inside its
        # angle brackets (not every client ignores whitespace there, as RFC 2369 asks).
        assert all(re.fullmatch(r" <[^ ]+>,?", line) for line in too_long), too_long
        assert all(len(line) <= 78 for line in lines if line.startswith("Message-ID:"))
    value = list_unsubscribe(long_url, "u@x.example", "t")
    assert value.startswith("\r\n <https://") and all(len(x) <= 78 for x in value.split("\r\n"))


def test_a_test_copy_offers_no_one_click_unsubscribe() -> None:
    test_copy = single("test", "https://news.gazette.example.net/unsubscribe")
    assert b"List-Unsubscribe-Post" not in test_copy
    signup = single("signup", "https://news.gazette.example.net/unsubscribe/t.k")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in signup


def dsn(recipient: str) -> bytes:
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net"
    report["Subject"] = "Undelivered Mail"
    report.attach(MIMEText("failed\n"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.1.1"
    per_recipient["Diagnostic-Code"] = "smtp; 550 5.1.1 unknown CONTROLS"
    part = MIMEBase("message", "delivery-status")
    part.set_payload([per_message, per_recipient])
    report.attach(part)
    return report.as_bytes().replace(b"CONTROLS", b"\x1b[2J\rfake:\x07 line")


def site(tmp_path, database_url: str):
    data = tmp_path / "data"
    data.mkdir()
    env_file = tmp_path / "digest.env"
    env_file.write_text(
        f"DIGEST_DATA_DIR={data}\nDIGEST_DATABASE_URL={database_url}\n"
        "DIGEST_SECRET_KEY=test-secret-key\nDIGEST_BOUNCE_ADDRESS=bounces@digest.test\n"
    )
    upgrade(database_url)
    return data, env_file


def test_an_erased_readers_returned_mail_is_acknowledged(tmp_path, database_url, sessions) -> None:
    data, env_file = site(tmp_path, database_url)
    with sessions() as session:
        sid = store.add_subscriber(session, "gone@example.org", NOW, status="active").id
        reader_admin.erase(session, sid, NOW)
        session.commit()
    raw = dsn("gone@example.org")
    recipient = verp_address("bounces@digest.test", "test-secret-key", 1, sid)
    result = CliRunner().invoke(
        cli, ["inbound", "--env-file", str(env_file), "--recipient", recipient, "-"], input=raw
    )
    assert result.exit_code == 0, result.output
    assert "no longer exists" in result.output
    found = inbound.classify(raw, "test-secret-key", NOW, recipient)
    with sessions() as session:
        assert inbound.apply(session, found, NOW).startswith("ignored")


def test_report_text_reaches_the_log_without_control_characters(
    tmp_path, database_url, sessions
) -> None:
    data, env_file = site(tmp_path, database_url)
    with sessions() as session:
        sid = store.add_subscriber(session, "ana@example.org", NOW, status="active").id
        session.commit()
    recipient = verp_address("bounces@digest.test", "test-secret-key", 1, sid)
    result = CliRunner().invoke(
        cli,
        ["inbound", "--env-file", str(env_file), "--recipient", recipient, "-"],
        input=dsn("ana@example.org"),
    )
    assert result.exit_code == 0, result.output
    log = (data / "inbound" / "inbound.log").read_text()
    assert "is now bounced" in log and "\x1b" not in log and "\r" not in log
    assert len(log.strip().splitlines()) == 1
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output)


def test_a_message_over_10_mb_is_refused_whole(tmp_path, database_url) -> None:
    data, env_file = site(tmp_path, database_url)
    reply = b"From: someone@example.org\r\nSubject: hello\r\n\r\n" + b"x" * 10_000_100
    result = CliRunner().invoke(cli, ["inbound", "--env-file", str(env_file), "-"], input=reply)
    assert result.exit_code == 0, result.output
    assert "refused: a message over 10,000,000 bytes" in result.output
    assert not (data / "inbound" / "replies").exists()


def test_an_erased_readers_view_link_is_404(client, settings, session) -> None:
    from digest.editions import sending

    sid = store.add_subscriber(session, "viewer@example.org", NOW, status="active").id
    reader_admin.erase(session, sid, NOW)
    session.commit()
    view = sending.reader_links(settings, sid, 1)["view_url"].removeprefix(settings.base_url)
    assert client.get(view).status_code == 404
    assert NOW + timedelta(days=1) > NOW
