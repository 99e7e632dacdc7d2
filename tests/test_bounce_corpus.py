"""The Mailman project's bounce corpus (flufl.bounce 6.0.0's 117 test messages) through
digest's reading of returned mail, each arriving at its reader's VERP address; and the
RFC 3464 cases flufl.bounce is not asked about (digest's own reading decides them)."""

from __future__ import annotations

from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from bench.bounces import NOW, SECRET, run_corpus, table
from digest import store
from digest.mail.returns import verp_address
from digest.readers import accounts, inbound
from digest.readers.returned import SoftRule

BASE = "bounces@news.example.com"


def test_the_corpus_suppresses_the_right_readers_and_nobody_else(sessions) -> None:
    results = run_corpus(sessions)
    assert len(results) == 117
    permanent = [r for r in results if r.expected == "permanent"]
    others = [r for r in results if r.expected != "permanent"]
    assert (len(permanent), len(others)) == (100, 17)
    right = [r for r in permanent if r.right]
    assert len(right) >= 95, table(results)
    assert [r.file for r in others if not r.right] == [], table(results)
    # No suppression ever reaches an address the bounce did not name.
    assert all(set(r.suppressed) <= {r.reader} for r in results)


def dsn(
    recipient: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "",
    original: str = "",
) -> bytes:
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText("This is the mail system at host mx.example.net.\n"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    if original:
        per_recipient["Original-Recipient"] = f"rfc822; {original}"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    if diagnostic:
        per_recipient["Diagnostic-Code"] = diagnostic
    part = MIMEBase("message", "delivery-status")
    part.set_payload([per_message, per_recipient])
    report.attach(part)
    return report.as_bytes()


@pytest.fixture
def reader(session):
    def make(email: str) -> tuple[int, str]:
        found = store.add_subscriber(session, email, NOW, status="active")
        session.commit()
        return found.id, verp_address(BASE, SECRET, 0, found.id)

    return make


def status(session, subscriber_id: int) -> str:
    session.expire_all()
    return store.get_subscriber(session, subscriber_id).status


@pytest.mark.parametrize(
    ("status_", "diagnostic", "kind"),
    [
        ("5.0.0", "smtp; 550 User unknown", "hard"),  # a remote 550 relayed by Postfix
        ("5.0.0", "smtp; 550 5.1.1 <x@example.org>: Recipient address rejected", "hard"),
        ("5.0.0", "", "hard"),
        ("5.0.0", "smtp; 552 Mailbox full", "soft"),
        ("5.7.1", "smtp; 550 5.7.1 Message rejected as spam", "soft"),
        ("5.2.2", "", "soft"),
        ("4.4.7", "delivery time expired", "soft"),
        ("5.1.1", "", "hard"),
    ],
)
def test_dsn_status_and_wording_decide_hard_or_soft(status_, diagnostic, kind) -> None:
    raw = dsn("ana@example.org", status=status_, diagnostic=diagnostic)
    recipient = verp_address(BASE, SECRET, 0, 7)
    assert inbound.classify(raw, SECRET, NOW, recipient).kind == kind


def test_a_comment_in_action_does_not_hide_the_failure(session, reader) -> None:
    subscriber_id, recipient = reader("bea@example.org")
    raw = dsn("bea@example.org", action="failed (bad destination mailbox address)")
    found = inbound.classify(raw, SECRET, NOW, recipient)
    assert found.kind == "hard"
    assert "is now bounced" in inbound.apply(session, found, NOW)
    session.commit()
    assert status(session, subscriber_id) == "bounced"


def test_original_recipient_is_read_before_final_recipient(session, reader) -> None:
    subscriber_id, recipient = reader("cas@example.org")
    raw = dsn("cas.forwarded@elsewhere.example", original="cas@example.org")
    found = inbound.classify(raw, SECRET, NOW, recipient)
    assert found.recipient == "cas@example.org"
    inbound.apply(session, found, NOW)
    session.commit()
    assert status(session, subscriber_id) == "bounced"


def test_a_bounce_for_a_forward_target_counts_as_soft(session, reader) -> None:
    subscriber_id, recipient = reader("dee@example.org")
    found = inbound.classify(dsn("dee@elsewhere.example"), SECRET, NOW, recipient)
    outcome = inbound.apply(session, found, NOW)
    assert "soft bounce 1 of 3" in outcome and "another address" in outcome
    session.commit()
    assert status(session, subscriber_id) == "active"


def test_a_bounce_suppresses_only_the_exact_address(session, settings, reader) -> None:
    tagged, recipient = reader("vic+news@example.org")
    found = inbound.classify(dsn("vic+news@example.org"), SECRET, NOW, recipient)
    inbound.apply(session, found, NOW)
    session.commit()
    assert status(session, tagged) == "bounced"
    assert store.suppression_reason(session, "vic+news@example.org") == "bounced"
    assert store.suppression_reason(session, "vic@example.org") is None
    form = accounts.Form(email="vic@example.org", timezone="Europe/Paris")
    fields, errors = accounts.validate(form, set())
    assert not errors
    notice = accounts.request_subscription(session, settings, fields, NOW)
    assert notice.kind == "confirm"  # vic's own sign-up still gets its email


def test_auto_replies_and_delay_warnings_never_suppress(session, reader) -> None:
    subscriber_id, recipient = reader("eve@example.org")
    vacation = MIMEText("I am away until Monday.\n")
    vacation["From"] = "eve@example.org"
    vacation["Subject"] = "Out of Office: Morning edition"
    vacation["Auto-Submitted"] = "auto-replied"
    delayed = dsn("eve@example.org", status="4.4.1", action="delayed")
    for raw in (vacation.as_bytes(), delayed):
        found = inbound.classify(raw, SECRET, NOW, recipient)
        assert found.kind in ("reply", "warning")
        inbound.apply(session, found, NOW, SoftRule(limit=1))
    session.commit()
    assert status(session, subscriber_id) == "active"
