"""The reader's lifecycle without the web: sign up, confirm, preferences, leave."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest
from sqlalchemy import select

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.editions import pipeline
from digest.editions.schedule import Cohort
from digest.errors import InvalidInput, InvalidToken, NotFound
from digest.mail.tokens import unseal
from digest.mail.transport import OutboxTransport, SMTPTransport
from digest.models import Delivery, Subscriber, Suppression
from digest.readers import accounts
from digest.readers.subscribers import import_csv, subscriber_fields
from tests.conftest import NOW, add_articles

SECRET = "test-secret-key"
TZ = "Australia/Sydney"
SECTIONS = ["business", "news", "sport"]


def fields(email: str = "reader@example.com", **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"name": "Reader", "timezone": TZ, "editions": "both"}
    values.update(changes)
    return subscriber_fields(email, **values)


def add_active(session, email: str = "reader@example.com", **kw: Any) -> Subscriber:
    s = store.add_subscriber(session, email, NOW, timezone=TZ, status="active", **kw)
    session.commit()
    return s


@pytest.mark.parametrize(
    ("form", "bad"),
    [
        (accounts.Form(email="a@example.com"), set()),
        (accounts.Form(email="a@example.com", sections=["sport", "NEWS"]), set()),
        (accounts.Form(email=""), {"email"}),
        (accounts.Form(email="not-an-address"), {"email"}),
        (accounts.Form(email="a@example.com\r\nBcc: x@evil.test"), {"email"}),
        (accounts.Form(email="a@example.com", editions="weekly"), {"editions"}),
        (accounts.Form(email="a@example.com", timezone="Mars/Olympus"), {"timezone"}),
        (accounts.Form(email="a@example.com", sections=["gossip"]), {"sections"}),
        (
            accounts.Form(email="x", editions="x", timezone="x", sections=["x"]),
            {"email", "editions", "timezone", "sections"},
        ),
    ],
)
def test_validate_names_every_bad_field(form: accounts.Form, bad: set[str]) -> None:
    values, errors = accounts.validate(form, SECTIONS)
    assert set(errors) == bad
    assert bool(values) == (not bad)
    if not bad:
        assert values["email"] == "a@example.com"
        assert values["sections"] in ("", "news,sport")


def test_validate_preferences_keeps_the_known_address() -> None:
    values, errors = accounts.validate(
        accounts.Form(editions="evening", timezone="Europe/London", name="Ana\r\nX"),
        SECTIONS,
        email="ana@example.com",
    )
    assert errors == {}
    assert values["email"] == "ana@example.com"
    assert (values["morning"], values["evening"]) == (False, True)
    assert values["name"] == "Ana X"  # one line: names reach the To header


@pytest.mark.parametrize(
    ("issued", "secret", "ok"),
    [
        (NOW, SECRET, True),
        (NOW - timedelta(hours=11), SECRET, True),
        (NOW - timedelta(hours=13), SECRET, False),  # open too long
        (NOW + timedelta(hours=1), SECRET, False),  # from the future
        (NOW, "another-secret", False),  # not ours
    ],
)
def test_form_token(issued: datetime, secret: str, ok: bool) -> None:
    token = accounts.form_token(secret, issued)
    if ok:
        accounts.check_form_token(SECRET, token, NOW)
    else:
        with pytest.raises(InvalidInput):
            accounts.check_form_token(SECRET, token, NOW)


@pytest.mark.parametrize("token", ["", ".", "zz.abc", "1.", "x" * 500, "g1.AAAA", "1.2.3"])
def test_mangled_form_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidInput):
        accounts.check_form_token(SECRET, token, NOW)


def test_timezone_choices_and_masking() -> None:
    zones = accounts.timezone_choices()
    assert "Australia/Sydney" in zones and "UTC" in zones and "Europe/London" in zones
    assert not any(z.startswith(("Etc/", "US/", "posix")) for z in zones)
    assert accounts.timezone_choices("Etc/GMT+5")[0] == "Etc/GMT+5"
    assert accounts.mask_address("someone@example.com") == "s***@example.com"


def test_offered_sections_come_from_feeds_recent_articles_and_the_readers_own(session) -> None:
    store.add_feed(session, "https://feeds.example.com/biz.xml", "business")
    add_articles(session, NOW, [("Goal", "sport")])
    store.insert_articles(
        session,
        [
            {
                "guid": "old",
                "url": "https://news.example.com/old",
                "title": "Old",
                "section": "archive",
                "published_at": NOW - timedelta(days=400),
                "seen_at": NOW - timedelta(days=400),
            }
        ],
    )
    session.commit()
    assert accounts.offered_sections(session, NOW) == ["business", "sport"]
    assert accounts.offered_sections(session, NOW, "science,sport") == [
        "business",
        "science",
        "sport",
    ]


# --- lifecycle ---------------------------------------------------------------------------


def test_new_sign_up_is_pending_until_confirmed(session, settings: Settings) -> None:
    notice = accounts.request_subscription(
        session, settings, fields(name="Ana", sections="sport"), NOW
    )
    session.commit()
    assert notice.kind == "confirm"
    s = store.get_subscriber(session, notice.subscriber_id)
    # Nothing the request asked for is stored before it is confirmed.
    assert (s.status, s.name, s.sections, s.confirmed_at) == ("pending", "", "", None)

    later = NOW + timedelta(hours=1)
    accounts.confirm(session, s.id, notice.request, later)
    session.commit()
    assert (s.status, s.confirmed_at, s.name, s.sections) == ("active", later, "Ana", "sport")
    assert s.consent == "web form, requested 2026-11-29T10:00Z, confirmed 2026-11-29T11:00Z"
    # Confirming again (a second click, a link scanner) changes nothing.
    accounts.confirm(session, s.id, notice.request, later + timedelta(hours=1))
    assert s.confirmed_at == later


def test_sign_up_of_an_active_reader_changes_nothing(session, settings: Settings) -> None:
    s = add_active(session, name="Ana", sections="news")
    notice = accounts.request_subscription(
        session, settings, fields(name="Mallory", sections="sport", editions="morning"), NOW
    )
    session.commit()
    assert (notice.kind, notice.subscriber_id) == ("already", s.id)
    accounts.confirm(session, s.id, notice.request, NOW)  # even with a sealed request
    session.refresh(s)
    assert (s.name, s.sections, s.evening, s.status) == ("Ana", "news", True, "active")


def test_a_second_sign_up_never_changes_the_first(session, settings: Settings) -> None:
    """Issue 7.3: each request takes effect only through its own confirmation link."""
    first = accounts.request_subscription(
        session, settings, fields(name="Ana", sections="news"), NOW
    )
    second = accounts.request_subscription(
        session,
        settings,
        fields(name="Visit https://evil.example now", sections="sport", editions="morning"),
        NOW + timedelta(minutes=1),
    )
    session.commit()
    assert first.subscriber_id == second.subscriber_id and first.kind == "confirm"
    assert second.kind == "none"  # within minutes of the first: no second email
    assert accounts.send_notice(settings, OutboxTransport(settings.outbox_dir), second, NOW) == ""
    s = store.get_subscriber(session, first.subscriber_id)
    assert (s.name, s.sections) == ("", "")
    accounts.confirm(session, s.id, first.request, NOW + timedelta(hours=1))
    session.commit()
    assert (s.name, s.sections, s.morning, s.evening) == ("Ana", "news", True, True)
    later = NOW + accounts.NOTICE_INTERVAL + timedelta(seconds=1)
    assert accounts.request_subscription(session, settings, fields(), later).kind == "already"


def test_resubscribe_after_unsubscribe_needs_fresh_confirmation(
    session, settings: Settings
) -> None:
    s = add_active(session)
    accounts.unsubscribe(session, s.id, NOW)
    session.commit()
    assert store.is_suppressed(session, s.email)

    later = NOW + timedelta(minutes=1)
    notice = accounts.request_subscription(session, settings, fields(), later)
    session.commit()
    # A confirmation is sent, but the reader stays unsubscribed until they confirm.
    assert notice.kind == "confirm" and s.status == "unsubscribed"
    assert store.is_suppressed(session, s.email)
    report = import_csv(session, io.StringIO("email\nreader@example.com\n"), NOW, confirmed=True)
    session.commit()
    assert (report.added, report.suppressed) == (0, 1)

    accounts.confirm(session, s.id, notice.request, later)
    session.commit()
    assert s.status == "active" and not store.is_suppressed(session, s.email)


@pytest.mark.parametrize("reason", ["bounced", "complained"])
def test_bounced_or_complained_addresses_get_no_sign_up_mail(
    session, settings: Settings, reason: str
) -> None:
    store.suppress(session, "gone@example.com", reason, NOW)
    kept = add_active(session, "kept@example.com")
    store.set_status(session, kept, reason, NOW)
    session.commit()
    for email in ("gone@example.com", "kept@example.com"):
        notice = accounts.request_subscription(session, settings, fields(email), NOW)
        assert notice.kind == "none"
        asked = {"at": str(int(NOW.timestamp() * 1000))}
        with pytest.raises(InvalidToken):
            accounts.confirm(session, notice.subscriber_id, asked, NOW)
    session.commit()
    assert store.is_suppressed(session, "gone@example.com")


def test_an_unsubscribe_address_without_a_row_can_sign_up_again(
    session, settings: Settings
) -> None:
    store.suppress(session, "gone@example.com", "unsubscribed", NOW)
    session.commit()
    notice = accounts.request_subscription(session, settings, fields("gone@example.com"), NOW)
    session.commit()
    assert notice.kind == "confirm"
    report = import_csv(session, io.StringIO("email\ngone@example.com\n"), NOW)
    assert report.suppressed == 1
    accounts.confirm(session, notice.subscriber_id, notice.request, NOW)
    session.commit()
    assert not store.is_suppressed(session, "gone@example.com")


def test_confirm_after_unsubscribing_is_refused(session, settings: Settings) -> None:
    notice = accounts.request_subscription(session, settings, fields(), NOW)
    # "I did not ask for this", a moment after the link was sent
    accounts.unsubscribe(session, notice.subscriber_id, NOW + timedelta(milliseconds=5))
    session.commit()
    with pytest.raises(InvalidToken):
        accounts.confirm(session, notice.subscriber_id, notice.request, NOW)
    assert store.get_subscriber(session, notice.subscriber_id).status == "unsubscribed"
    with pytest.raises(NotFound):
        accounts.confirm(session, 999_999, notice.request, NOW)


def test_unsubscribe_suppresses_address_and_open_deliveries(session, settings: Settings) -> None:
    day = date(2026, 11, 30)
    add_articles(session, datetime(2026, 11, 29, 18, 0, tzinfo=UTC), [("Ferry news", "news")])
    ana = add_active(session, "ana@example.com")
    ben = add_active(session, "ben@example.com")
    plan = pipeline.plan_edition(
        session, settings, Cohort("morning", day, TZ), datetime(2026, 11, 29, 19, 1, tzinfo=UTC)
    )
    assert plan.queued == 2

    accounts.unsubscribe(session, ana.id, NOW)
    session.commit()
    rows = {d.subscriber_id: d for d in session.scalars(select(Delivery))}
    assert rows[ana.id].status == "suppressed"
    assert rows[ana.id].last_error == "subscriber is unsubscribed"
    assert rows[ben.id].status == "queued"
    assert (ana.status, ana.unsubscribed_at) == ("unsubscribed", NOW)
    assert session.get(Suppression, store.address_hash(ana.email)).reason == "unsubscribed"

    # Twice is fine, and the last open row going leaves the edition done.
    accounts.unsubscribe(session, ana.id, NOW + timedelta(hours=1))
    accounts.unsubscribe(session, ben.id, NOW)
    session.commit()
    assert ana.unsubscribed_at == NOW
    assert store.get_edition(session, plan.edition_id).status == "done"


def test_unsubscribe_keeps_a_bounce_a_bounce(session) -> None:
    s = add_active(session)
    store.set_status(session, s, "bounced", NOW)
    accounts.unsubscribe(session, s.id, NOW)
    session.commit()
    assert s.status == "bounced" and store.is_suppressed(session, s.email)


def test_update_preferences(session) -> None:
    s = add_active(session)
    accounts.update_preferences(
        session,
        s.id,
        fields(name="R", timezone="Europe/London", editions="evening", sections="news"),
    )
    session.commit()
    session.refresh(s)
    assert (s.name, s.timezone, s.morning, s.evening, s.sections) == (
        "R",
        "Europe/London",
        False,
        True,
        "news",
    )
    assert accounts.form_of(s) == accounts.Form(
        email=s.email, name="R", timezone="Europe/London", editions="evening", sections=["news"]
    )
    accounts.unsubscribe(session, s.id, NOW)
    with pytest.raises(InvalidInput):
        accounts.update_preferences(session, s.id, fields())


@pytest.mark.parametrize(
    ("now", "morning", "evening", "expected"),
    [
        # 10:00 UTC is 21:00 in Sydney: the next morning edition is tomorrow at 06:00.
        (NOW, True, True, ("morning", "2026-11-30 06:00")),
        (NOW, False, True, ("evening", "2026-11-30 17:00")),
        (datetime(2026, 11, 29, 20, 0, tzinfo=UTC), True, True, ("evening", "2026-11-30 17:00")),
    ],
)
def test_first_edition(
    settings: Settings, now: datetime, morning: bool, evening: bool, expected: tuple[str, str]
) -> None:
    s = Subscriber(email="a@example.com", timezone=TZ, morning=morning, evening=evening)
    slot, at = accounts.first_edition(settings, s, now) or ("", now)
    assert (slot, at.strftime("%Y-%m-%d %H:%M")) == expected


def test_edition_html_is_the_readers_own_variant(session, settings: Settings) -> None:
    add_articles(
        session,
        datetime(2026, 11, 29, 18, 0, tzinfo=UTC),
        [("Ferry news", "news"), ("Netball final", "sport")],
    )
    ana = add_active(session, "ana@example.com", name="Ana")
    ben = add_active(session, "ben@example.com", name="Ben", sections="sport")
    plan = pipeline.plan_edition(
        session,
        settings,
        Cohort("morning", date(2026, 11, 30), TZ),
        datetime(2026, 11, 29, 19, 1, tzinfo=UTC),
    )
    at = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    html = accounts.edition_html(session, settings, plan.edition_id, ben.id, at)
    assert "Good morning," in html and "Netball final" in html
    assert "Ferry news" not in html  # Ben reads only sport
    assert "DGST" not in html and "Ben" not in html  # every slot filled, nothing personal
    assert 'href="https://news.example.com/unsubscribe"' in html
    assert "Ferry news" in accounts.edition_html(session, settings, plan.edition_id, ana.id, at)
    stranger = add_active(session, "late@example.com")
    with pytest.raises(NotFound):
        accounts.edition_html(session, settings, plan.edition_id, stranger.id, at)


# --- the sign-up email -------------------------------------------------------------------


def test_confirmation_email_identifies_the_sender_and_links_back(
    session, settings: Settings
) -> None:
    name = "Visit https://evil.example/login now"
    notice = accounts.request_subscription(session, settings, fields(name=name), NOW)
    session.commit()
    raw, message_id = accounts.compose_notice(settings, notice, NOW)
    # Nothing the requester typed is in the email, the To: header included (issue 7.4).
    assert b"evil.example" not in raw and b"Visit" not in raw
    msg: Any = message_from_bytes(raw, policy=policy.default)
    assert msg["Message-ID"] == message_id and message_id.endswith("@example.com>")
    assert msg["From"] == f"{settings.from_name} <{settings.from_address}>"
    assert msg["To"].addresses[0].addr_spec == "reader@example.com"
    assert msg["Subject"] == f"Confirm your subscription to {settings.from_name}"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for body in (text, html):
        assert settings.from_name in body and settings.postal_address in body
    confirm = text.split("https://news.example.com/confirm/")[1].split()[0]
    assert unseal(SECRET, "confirm", confirm, NOW) == (notice.subscriber_id, notice.request)
    with pytest.raises(InvalidToken, match="expired"):
        unseal(SECRET, "confirm", confirm, NOW + timedelta(hours=73))
    assert msg["To"] == "reader@example.com"


def test_already_subscribed_email_points_at_preferences(session, settings: Settings) -> None:
    add_active(session)
    notice = accounts.request_subscription(session, settings, fields(), NOW)
    raw, _ = accounts.compose_notice(settings, notice, NOW)
    msg: Any = message_from_bytes(raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()
    assert "already subscribed" in text and "/confirm/" not in text
    assert "https://news.example.com/preferences/" in text


def test_send_notice_uses_the_transport(session, settings: Settings, smtp_server, tmp_path) -> None:
    sink, url = smtp_server
    notice = accounts.request_subscription(session, settings, fields(), NOW)
    config = parse_smtp_url(url)
    smtp = settings.with_(smtp=config)
    mid = accounts.send_notice(smtp, SMTPTransport(config), notice, NOW)
    assert [m["Message-ID"] for m in sink.to("reader@example.com")] == [mid]
    outbox = OutboxTransport(tmp_path / "outbox")
    mid = accounts.send_notice(settings, outbox, notice, NOW)
    assert outbox.path_for(mid).exists()


def test_sign_up_mail_goes_out_from_the_bounce_address(session, settings, smtp_server) -> None:
    """A confirmation that bounces must come back to digest (VERP), not to From."""
    from digest.mail.returns import read_verp

    sink, url = smtp_server
    notice = accounts.request_subscription(session, settings, fields(), NOW)
    smtp = settings.with_(smtp=parse_smtp_url(url), bounce_address="bounces@news.example.com")
    accounts.send_notice(smtp, SMTPTransport(smtp.smtp), notice, NOW)
    (mail_from, _, _) = sink.messages[0]
    assert mail_from.startswith("bounces+") and mail_from.endswith("@news.example.com")
    assert read_verp(mail_from, settings.secret_key) == (0, notice.subscriber_id)
