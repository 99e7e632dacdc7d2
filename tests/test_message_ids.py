"""Message-IDs carry the database's installation id (issue 16, section 6): two databases
that share a secret key never mint the same one, a resend carries the same one, and a
bounce quoting another installation's Message-ID changes nothing here, while a bounce
quoting one minted before installation ids is still matched."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.db import make_engine, make_sessionmaker, normalise_url, upgrade
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.tokens import sign
from digest.mail.transport import SMTPTransport
from digest.models import Delivery
from digest.readers import accounts, inbound
from digest.readers.subscribers import subscriber_fields
from tests.conftest import NOW, PG_URL, _pg_schema_url, add_articles, make_settings
from tests.test_inbound import dsn

TZ = "Australia/Sydney"
MORNING = Cohort("morning", NOW.date() + timedelta(days=1), TZ)
AFTER = NOW + timedelta(hours=9, minutes=1)
OURS = re.compile(rb"(?m)^Message-ID:(?:\r\n)? (<[^>\r\n]+>)\r\n")


@pytest.fixture
def other_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second migrated database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'other.db'}"
        upgrade(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(PG_URL or ""))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = _pg_schema_url(schema)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def send_one_edition(settings: Settings) -> str:
    """Send edition 1 to subscriber 1 of this database; returns the installation id."""
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            add_articles(session, AFTER - timedelta(hours=2), [("Ferry news", "news")])
            store.add_subscriber(session, "ana@example.com", NOW, timezone=TZ, status="active")
            session.commit()
            plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
            transport = SMTPTransport(settings.smtp)
            sending.run_edition(session, settings, transport, plan.edition_id, AFTER)
            return store.installation_id(session)
    finally:
        engine.dispose()


def wire_message_id(raw: bytes) -> str:
    found = OURS.search(raw.split(b"\r\n\r\n", 1)[0])
    assert found is not None, raw[:400]
    return found.group(1).decode("ascii")


@pytest.fixture
def two(
    tmp_path: Path, database_url: str, other_database_url: str, smtp_server
) -> tuple[list[Settings], list[str], list[str]]:
    """The same edition sent to the same reader by two databases sharing a secret key:
    (settings, installation ids, Message-IDs on the wire)."""
    sink, url = smtp_server
    both, installations = [], []
    for name, db in (("a", database_url), ("b", other_database_url)):
        settings = make_settings(tmp_path / name, db).with_(smtp=parse_smtp_url(url))
        installations.append(send_one_edition(settings))
        both.append(settings)
    assert len(sink.messages) == 2
    return both, installations, [wire_message_id(m[2]) for m in sink.messages]


def test_two_databases_sharing_a_key_mint_different_message_ids(two) -> None:
    (a, b), installations, ids = two
    assert a.secret_key == b.secret_key and a.sender_domain == b.sender_domain
    assert installations[0] != installations[1]
    for installation, mid in zip(installations, ids, strict=True):
        assert re.fullmatch(r"[a-z2-7]{8}", installation)
        # Edition 1 to subscriber 1 in both: only the installation part tells them apart.
        assert mid.startswith("<digest.1.1.") and f".{installation}@" in mid
        assert len(f"Message-ID: {mid}") <= 78
    assert ids[0] != ids[1]


def test_a_resend_carries_the_same_message_id(session, settings, smtp_server) -> None:
    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url))
    installation = send_one_edition(settings)
    (row,) = session.query(Delivery).all()
    assert row.status == "sent"
    # As after a crash between the relay's 250 and the record: the row goes out again.
    session.execute(update(Delivery).values(status="queued", message_id=None))
    session.commit()
    report = sending.send_batch(session, settings, SMTPTransport(settings.smtp), [row.id], AFTER)
    assert report.sent == 1 and len(sink.messages) == 2
    first, again = (wire_message_id(m[2]) for m in sink.messages)
    assert first == again and f".{installation}@" in first
    session.refresh(row)
    assert row.message_id == first


def bounced(session: Session, email: str) -> bool:
    subscriber = store.find_subscriber(session, email)
    assert subscriber is not None
    session.refresh(subscriber)
    return subscriber.status == "bounced"


def quoting(message_id: str) -> bytes:
    """A 5.1.1 DSN for ana@example.com quoting a message with this Message-ID and no
    VERP address (matched by the Message-ID alone)."""
    original = EmailMessage()
    original["From"] = "news@news.example.com"
    original["To"] = "ana@example.com"
    original["Subject"] = "The Morning Edition"
    original["Message-ID"] = message_id
    original.set_content("text")
    return dsn(original)


def test_a_bounce_is_matched_by_the_new_message_id(session, two) -> None:
    (a, _), installations, ids = two
    found = inbound.classify(quoting(ids[0]), a.secret_key, AFTER)
    assert (found.kind, found.subscriber_id, found.edition_id) == ("hard", 1, 1)
    assert found.installation == installations[0] and not found.by_envelope
    assert "is now bounced" in inbound.apply(session, found, AFTER)
    session.commit()
    assert bounced(session, "ana@example.com")


def test_a_bounce_quoting_a_message_id_of_before_installation_ids_still_counts(
    session, two
) -> None:
    (a, _), _, _ = two
    tag = sign(a.secret_key, "msgid|1|1")[:10].replace("-", "x").replace("_", "y")
    old = f"<digest.1.1.{tag}@{a.sender_domain}>"
    found = inbound.classify(quoting(old), a.secret_key, AFTER)
    assert (found.kind, found.subscriber_id, found.installation) == ("hard", 1, "")
    assert "is now bounced" in inbound.apply(session, found, AFTER)
    session.commit()
    assert bounced(session, "ana@example.com")


def test_a_bounce_quoting_another_installations_message_id_changes_nothing(session, two) -> None:
    (a, _), installations, ids = two
    # Database b's Message-ID, with the same key, the same edition and subscriber ids and
    # the same reader address: only the installation part says it is not ours.
    found = inbound.classify(quoting(ids[1]), a.secret_key, AFTER)
    assert found.kind == "hard" and found.installation == installations[1]
    outcome = inbound.apply(session, found, AFTER)
    assert outcome.startswith("ignored") and "another installation" in outcome
    session.commit()
    assert not bounced(session, "ana@example.com")
    # A webhook event quoting it is not tied to an edition either.
    assert inbound.ours_by_message_id(a.secret_key, installations[0], ids[1]) is None
    assert inbound.ours_by_message_id(a.secret_key, installations[0], ids[0]) == (1, 1)


def test_a_forged_installation_part_does_not_match(session, two) -> None:
    (a, _), installations, ids = two
    forged = ids[1].replace(f".{installations[1]}@", f".{installations[0]}@")
    assert inbound.classify(quoting(forged), a.secret_key, AFTER).kind == "ignored"


def test_signup_mail_and_test_copies_carry_the_installation_id(
    session, settings, smtp_server
) -> None:
    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url))
    installation = send_one_edition(settings)
    fields = subscriber_fields("ben@example.com", name="Ben", timezone=TZ, editions="both")
    notice = accounts.request_subscription(session, settings, fields, NOW)
    session.commit()
    accounts.send_notice(settings, SMTPTransport(settings.smtp), notice, NOW)
    pipeline.test_send(
        session, settings, SMTPTransport(settings.smtp), MORNING, "editor@example.com", AFTER
    )
    signup, test_copy = (wire_message_id(m[2]) for m in sink.messages[1:])
    assert signup.startswith(f"<signup.{installation}.")
    assert test_copy.startswith(f"<test.{installation}.")


def test_a_long_message_id_goes_on_a_line_of_its_own() -> None:
    from email import message_from_bytes, policy

    from digest.mail.message import Envelope, Sender, build_message
    from digest.mail.tokens import message_id

    domain = "news.longer-gazette.co.uk"  # too long for "Message-ID: ", not for a line
    sender = Sender("news@gazette.example", "Gazette", "daily.gazette.example", "Gazette", "")
    for mid in (
        message_id("k", "k3x9q2ab", 1, 2, "short.example"),
        message_id("k", "k3x9q2ab", 2_000_000, 9_000_000, domain),
    ):
        env = Envelope("r@example.org", "", mid, "https://x.example/u", "t", "text", "<p>x</p>")
        raw = build_message(sender, "Subject", AFTER, env)
        head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")
        assert wire_message_id(raw) == mid
        assert all(len(line) <= 78 for line in head if not line.startswith(" <https://"))
        parsed = message_from_bytes(raw, policy=policy.default)
        assert str(parsed["Message-ID"]).strip() == mid
    assert f"Message-ID:\r\n {mid}\r\n".encode() in raw
