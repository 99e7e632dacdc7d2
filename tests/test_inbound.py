"""Mail that comes back: real DSN and ARF reports, and mailto unsubscribes, built the
way receiving systems build them, against an edition actually sent over SMTP."""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.transport import SMTPTransport
from digest.readers import inbound
from tests.conftest import NOW, add_articles

TZ = "Australia/Sydney"
MORNING = Cohort("morning", NOW.date() + timedelta(days=1), TZ)
AFTER = NOW + timedelta(hours=9, minutes=1)  # just past 06:00 in Sydney on the 30th


@pytest.fixture
def sent(session, settings: Settings, smtp_server) -> tuple[Settings, list[EmailMessage]]:
    """An edition really sent to two readers; returns the messages as received."""
    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url))
    add_articles(session, AFTER - timedelta(hours=2), [("Ferry news", "news")])
    for email in ("ana@example.com", "ben@example.com"):
        store.add_subscriber(session, email, NOW, timezone=TZ, status="active")
    session.commit()
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    sending.run_edition(session, settings, SMTPTransport(settings.smtp), plan.edition_id, AFTER)
    return settings, sink.parsed()


def to(messages: list[EmailMessage], address: str) -> EmailMessage:
    return next(m for m in messages if m["To"].addresses[0].addr_spec == address)


def dsn(original: EmailMessage, status: str = "5.1.1", action: str = "failed") -> bytes:
    """A delivery status notification (RFC 3464) quoting the original's headers."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.attach(MIMEText("This is the mail system at host mx.example.net.\n"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient["Final-Recipient"] = f"rfc822; {original['To'].addresses[0].addr_spec}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    headers = original.as_bytes().split(b"\r\n\r\n", 1)[0].decode()
    report.attach(MIMEText(headers, "rfc822-headers"))
    return report.as_bytes()


def arf(original: EmailMessage) -> bytes:
    """An abuse report (RFC 5965) with the original message attached."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "fbl@isp.example.net"
    report["Subject"] = "Abuse report"
    report.attach(MIMEText("This is an email abuse report.\n"))
    feedback = Message()
    feedback["Feedback-Type"] = "abuse"
    feedback["User-Agent"] = "ExampleFBL/1.0"
    feedback["Version"] = "1"
    part = MIMEBase("message", "feedback-report")
    part.set_payload([feedback])
    report.attach(part)
    report.attach(MIMEMessage(original))
    return report.as_bytes()


def status_of(session, email: str) -> str:
    subscriber = store.find_subscriber(session, email)
    assert subscriber is not None
    session.refresh(subscriber)
    return subscriber.status


def test_mailto_unsubscribe_from_the_header(session, sent) -> None:
    settings, messages = sent
    header = str(to(messages, "ana@example.com")["List-Unsubscribe"])
    mailto = re.search(r"<mailto:([^?]+)\?subject=([^>]+)>", header)
    assert mailto is not None and mailto.group(1) == settings.unsubscribe_mailto
    request = EmailMessage()
    request["From"] = "ana@example.com"
    request["To"] = mailto.group(1)
    request["Subject"] = mailto.group(2).replace("%20", " ")
    found = inbound.classify(request.as_bytes(), settings.secret_key, AFTER)
    assert found.kind == "unsubscribe"
    assert "is now unsubscribed" in inbound.apply(session, found, AFTER)
    session.commit()
    assert status_of(session, "ana@example.com") == "unsubscribed"
    assert status_of(session, "ben@example.com") == "active"


def test_hard_bounce_marks_the_reader_and_the_delivery(session, sent) -> None:
    settings, messages = sent
    found = inbound.classify(dsn(to(messages, "ben@example.com")), settings.secret_key, AFTER)
    assert found.kind == "hard" and "5.1.1" in found.detail
    assert "is now bounced" in inbound.apply(session, found, AFTER)
    session.commit()
    assert status_of(session, "ben@example.com") == "bounced"
    assert store.is_suppressed(session, "ben@example.com")
    assert found.edition_id is not None
    assert store.edition_counts(session, found.edition_id) == {"sent": 1, "failed": 1}


def test_delayed_delivery_report_changes_nothing(session, sent) -> None:
    settings, messages = sent
    raw = dsn(to(messages, "ben@example.com"), status="4.4.1", action="delayed")
    found = inbound.classify(raw, settings.secret_key, AFTER)
    assert found.kind == "warning"
    assert inbound.apply(session, found, AFTER).startswith("ignored")
    assert status_of(session, "ben@example.com") == "active"


def test_complaint_suppresses_the_reader(session, sent) -> None:
    settings, messages = sent
    found = inbound.classify(arf(to(messages, "ana@example.com")), settings.secret_key, AFTER)
    assert found.kind == "complaint"
    inbound.apply(session, found, AFTER)
    session.commit()
    assert status_of(session, "ana@example.com") == "complained"
    assert store.is_suppressed(session, "ana@example.com")


def test_forged_reports_change_nothing(session, sent) -> None:
    settings, messages = sent
    original = to(messages, "ana@example.com")
    forged = EmailMessage()
    for name in ("From", "To", "Subject"):
        forged[name] = str(original[name])
    # A report about another reader's id, with a tag the forger had to guess.
    ben = store.find_subscriber(session, "ben@example.com")
    assert ben is not None
    other = ben.id
    forged["Message-ID"] = re.sub(
        r"\.(\d+)\.(\w+)\.(\w+)@", rf".{other}.AAAAAAAAAA.\3@", str(original["Message-ID"])
    )
    assert forged["Message-ID"] != original["Message-ID"]
    forged.set_content("x")
    for raw in (dsn(forged), arf(forged)):
        found = inbound.classify(raw, settings.secret_key, AFTER)
        assert found.kind == "ignored" and "does not quote a message of ours" in found.detail
    request = EmailMessage()
    request["Subject"] = "unsubscribe 2..AAAAAAAAAAAAAAAAAAAAAA"
    assert inbound.classify(request.as_bytes(), settings.secret_key, AFTER).kind == "ignored"
    assert status_of(session, "ana@example.com") == "active"
    assert status_of(session, "ben@example.com") == "active"


def test_policy_rejection_fails_the_message_but_keeps_the_reader(session, sent) -> None:
    settings, messages = sent
    raw = dsn(to(messages, "ben@example.com"), status="5.7.1")
    found = inbound.classify(raw, settings.secret_key, AFTER)
    assert found.kind == "soft"
    assert "stays" in inbound.apply(session, found, AFTER)
    session.commit()
    assert status_of(session, "ben@example.com") == "active"
    assert found.edition_id is not None
    assert store.edition_counts(session, found.edition_id) == {"sent": 1, "failed": 1}


def test_feedback_that_is_not_a_complaint_is_ignored(session, sent) -> None:
    settings, messages = sent
    raw = arf(to(messages, "ana@example.com")).replace(
        b"Feedback-Type: abuse", b"Feedback-Type: not-spam"
    )
    assert inbound.classify(raw, settings.secret_key, AFTER).kind == "ignored"


def test_report_naming_another_recipient_changes_nothing(session, sent) -> None:
    settings, messages = sent
    raw = dsn(to(messages, "ben@example.com")).replace(
        b"rfc822; ben@example.com", b"rfc822; someone@example.org"
    )
    found = inbound.classify(raw, settings.secret_key, AFTER)
    assert found.kind == "hard"
    assert "another or an unnamed recipient" in inbound.apply(session, found, AFTER)
    assert status_of(session, "ben@example.com") == "active"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff garbage",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n",
        b"Subject: unsubscribe " + b"9" * 5000 + b".." + b"A" * 22 + b"\r\n\r\n",
    ],
)
def test_malformed_mail_is_ignored_not_raised(raw: bytes, settings: Settings) -> None:
    assert inbound.classify(raw, settings.secret_key, AFTER).kind == "ignored"


def test_malformed_quoted_message_ids_are_ignored(session, sent) -> None:
    settings, messages = sent
    original = to(messages, "ben@example.com")
    for bad in ("<>", "<", "<@>", "<<a@b>>", "<a@[b>", "<digest." + "9" * 5000 + ".1.x@y>"):
        raw = dsn(original).replace(str(original["Message-ID"]).encode(), bad.encode())
        assert inbound.classify(raw, settings.secret_key, AFTER).kind == "ignored"


# --- real bounces and complaints, from fixtures -------------------------------------------
#
# tests/fixtures/postfix/: what Postfix 3.7 wrote when an edition (edition 1, readers 1
# and 2, signed with the test secret) went to an unknown user and to a full mailbox
# (tests/test_postfix.py makes them again). tests/fixtures/arf/: complaints in the forms
# Yahoo, AOL (redacted, headers only) and Microsoft JMRP send, around the same message.

FIXTURES = Path(__file__).parent / "fixtures"
UNKNOWN, FULL = "nosuchuser@digest.test", "fullbox@digest.test"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def fixture_readers(session) -> list[int]:
    """The two readers the fixtures were made for, with the ids they had there."""
    ids = [store.add_subscriber(session, e, NOW, status="active").id for e in (UNKNOWN, FULL)]
    session.commit()
    assert ids == [1, 2]
    return ids


def without_delivery_headers(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^(Delivered-To|X-Original-To): .*\n", b"", raw)


def without_part(raw: bytes, content_type: bytes) -> bytes:
    """The report with one of its top-level parts cut out (as MTAs that quote nothing)."""
    boundary = re.search(rb'boundary="([^"]+)"', raw)
    assert boundary is not None
    marker = b"\n--" + boundary.group(1)
    pieces = raw.split(marker)
    return marker.join(p for p in pieces if b"Content-Type: " + content_type not in p[:200])


def test_postfix_unknown_user_bounce_matches_by_verp(session, settings, fixture_readers) -> None:
    raw = fixture("postfix/postfix-unknown-user.eml")
    found = inbound.classify(raw, settings.secret_key, AFTER)  # Delivered-To carries the tag
    assert (found.kind, found.subscriber_id, found.edition_id) == ("hard", 1, 1)
    assert found.by_envelope and found.recipient == UNKNOWN
    outcome = inbound.apply(session, found, AFTER)
    assert (
        outcome
        == 'bounced: status 5.1.1 (X-Postfix; unknown user: "nosuchuser") (matched by its VERP'
        " address): n***@digest.test is now bounced"
    )
    session.commit()
    assert status_of(session, UNKNOWN) == "bounced" and status_of(session, FULL) == "active"


def test_postfix_full_mailbox_fails_the_message_only(session, settings, fixture_readers) -> None:
    recipient = "digest-bounces+1.2.bknrb3of4jdptkzh@digest.test"
    raw = without_delivery_headers(fixture("postfix/postfix-mailbox-full.eml"))
    found = inbound.classify(raw, settings.secret_key, AFTER, recipient)
    assert (found.kind, found.subscriber_id, found.detail[:22]) == (
        "soft",
        2,
        "bounced: status 5.2.2 ",
    )
    assert "stays" in inbound.apply(session, found, AFTER)
    assert status_of(session, FULL) == "active"


def test_a_bounce_quoting_nothing_is_matched_by_its_address(
    session, settings, fixture_readers
) -> None:
    raw = without_part(fixture("postfix/postfix-unknown-user.eml"), b"message/rfc822")
    assert b"Message-ID: <digest." not in raw
    recipient = "digest-bounces+1.1.vd5caqjh5iqppiwx@digest.test"
    found = inbound.classify(without_delivery_headers(raw), settings.secret_key, AFTER, recipient)
    assert found.kind == "hard" and found.subscriber_id == 1
    # Final-Recipient dropped too (some MTAs name nobody): the signed address still decides.
    bare = re.sub(rb"(?m)^(Final|Original)-Recipient: .*\n", b"", raw)
    found = inbound.classify(bare, settings.secret_key, AFTER)
    assert found.kind == "hard" and found.recipient is None
    assert "is now bounced" in inbound.apply(session, found, AFTER)


def test_without_its_address_a_bounce_is_matched_by_message_id(settings, fixture_readers) -> None:
    raw = without_delivery_headers(fixture("postfix/postfix-unknown-user.eml"))
    found = inbound.classify(raw, settings.secret_key, AFTER)
    assert found.kind == "hard" and not found.by_envelope
    assert "matched by its Message-ID" in found.detail and found.subscriber_id == 1


@pytest.mark.parametrize(
    "recipient",
    [
        "digest-bounces+1.1.vd5caqjh5iqppiwy@digest.test",  # one character off
        "digest-bounces+1.2.vd5caqjh5iqppiwx@digest.test",  # another reader, same tag
        "digest-bounces+2.1.vd5caqjh5iqppiwx@digest.test",
        "digest-bounces@digest.test",
    ],
)
def test_forged_bounce_addresses_change_nothing(settings, fixture_readers, recipient) -> None:
    raw = without_part(
        without_delivery_headers(fixture("postfix/postfix-unknown-user.eml")), b"message/rfc822"
    )
    found = inbound.classify(raw, settings.secret_key, AFTER, recipient)
    assert found.kind == "ignored" and "does not quote a message of ours" in found.detail


@pytest.mark.parametrize(
    ("name", "kind", "how"),
    [
        ("arf/arf-yahoo.eml", "complaint", "VERP Return-Path"),
        ("arf/arf-redacted-headers-only.eml", "complaint", "VERP Return-Path"),
        ("arf/arf-microsoft-jmrp.eml", "complaint", "Message-ID"),
        ("arf/arf-not-spam.eml", "ignored", ""),
    ],
)
def test_provider_complaints(session, settings, fixture_readers, name, kind, how) -> None:
    found = inbound.classify(fixture(name), settings.secret_key, AFTER)
    assert found.kind == kind, found
    if kind == "complaint":
        assert how in found.detail and found.subscriber_id == 1
        assert "is now complained" in inbound.apply(session, found, AFTER)
        session.commit()
        assert status_of(session, UNKNOWN) == "complained"
        assert store.is_suppressed(session, UNKNOWN)


def test_a_redacted_complaint_without_our_address_is_not_trusted(settings, fixture_readers) -> None:
    """Message-ID alone, reader unnamed: it may be a forward reported by someone else."""
    raw = re.sub(
        rb"Return-Path: <digest-bounces[^>]*>\n", b"", fixture("arf/arf-redacted-headers-only.eml")
    )
    found = inbound.classify(raw, settings.secret_key, AFTER)
    assert found.kind == "complaint" and not found.by_envelope
    assert found.recipient == "redacted@digest.test"


def test_replies_are_kept(settings) -> None:
    reply = EmailMessage()
    reply["From"] = "Ana <ana@example.com>"
    reply["To"] = "letters@news.example.com"
    reply["Subject"] = "Re: The Morning Edition"
    reply.set_content("Loved the ferry story.")
    found = inbound.classify(reply.as_bytes(), settings.secret_key, AFTER)
    assert found.kind == "reply"
    path = inbound.keep(reply.as_bytes(), settings.data_dir, AFTER)
    assert path.read_bytes() == reply.as_bytes() and path.is_relative_to(settings.data_dir)
    assert inbound.keep(reply.as_bytes(), settings.data_dir, AFTER) == path  # once only
    assert inbound.count_kept(settings.data_dir) == 1
