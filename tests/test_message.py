"""One message builder for every message digest sends, checked on the raw bytes.

The per-reader template parses to the same headers and parts as a reference built with
the stdlib `EmailMessage` (kept here, as the test's oracle); and editions, sign-up mail
and test copies, sent through a real SMTP server, are checked byte by byte as they
arrived: header syntax per RFC 5322, 2369 and 8058, quoted-printable lines of at most
76 characters, and no encoded-word where a client would read it raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.errors import HeaderInjection
from digest.mail.addresses import check_header_value, fold_header_text
from digest.mail.message import (
    Envelope,
    MessageTemplate,
    Reader,
    Sender,
    build_message,
    list_unsubscribe,
)
from digest.mail.transport import SMTPTransport
from digest.readers import accounts
from tests.conftest import NOW, add_articles

SENDER = Sender(
    "news@example.com",
    "Gazette Désk",
    "daily.example.com",
    "Gazette Désk",
    "unsubscribe@example.com",
    reply_to="letters@example.com",
)
DATE = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)
HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Reply-To",
    "MIME-Version",
)
SLOT_NAMES = ("name_suffix", "unsubscribe_url", "preferences_url", "view_url")


@dataclass
class Cut:
    """A body cut at its slots, as render.Splicer is (whatever its markers look like)."""

    parts: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)

    def fill(self, values: dict[str, str]) -> str:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out += (values[slot], part)
        return "".join(out)


def reference(sender: Sender, subject: str, date: datetime, env: Envelope) -> bytes:
    """The oracle: the same message written by the stdlib (slow, and it folds
    List-Unsubscribe into an encoded-word, which is why digest does not send it)."""

    def address(name: str, addr: str) -> Address:
        local, _, domain = check_header_value(addr).rpartition("@")
        return Address(display_name=fold_header_text(name, 80), username=local, domain=domain)

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = address(sender.from_name, sender.from_address)
    msg["To"] = address(env.to_name, env.to_address)
    if sender.reply_to:
        msg["Reply-To"] = address("", sender.reply_to)
    msg["Subject"] = fold_header_text(subject, limit=300)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = check_header_value(env.message_id)
    msg["List-Unsubscribe"] = list_unsubscribe(
        env.unsubscribe_url, sender.unsubscribe_mailto, env.unsubscribe_token
    ).replace("\r\n", "")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(env.text, cte="quoted-printable")
    msg.add_alternative(env.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def reader(
    name: str = "Ana Souza",
    values: dict[str, str] | None = None,
    message_id: str = "<digest.1.2.abc@example.com>",
) -> Reader:
    values = values or {
        "name_suffix": " Ana",
        "unsubscribe_url": "https://x/u?a=1&b=2",
        "preferences_url": "https://x/p",
        "view_url": "https://x/v",
    }
    return Reader(
        "ana@example.com",
        name,
        message_id,
        "https://news.example.com/unsubscribe/tok.en",
        "tok.en",
        values,
        values,
    )


def bodies(text: str, html: str) -> tuple[Cut, Cut]:
    """Bodies with every slot in them, at the start, the middle and the end."""
    n = SLOT_NAMES
    return (
        Cut(["", text, text, ""], [n[0], n[1], n[2]]),
        Cut([html, html, "", html, ""], [n[3], n[0], n[1], n[2]]),
    )


def both_ways(name: str, subject: str, text: str, html: str, values: dict[str, str] | None = None):
    text_s, html_s = bodies(text, html)
    r = reader(name, values)
    fast = MessageTemplate(SENDER, subject, DATE, "1:", html_s, text_s).render(r)
    env = Envelope(
        r.to_address,
        r.to_name,
        r.message_id,
        r.unsubscribe_url,
        r.unsubscribe_token,
        text_s.fill(r.text_values),
        html_s.fill(r.html_values),
    )
    slow = reference(SENDER, subject, DATE, env)
    return (
        message_from_bytes(fast, policy=policy.default),
        message_from_bytes(slow, policy=policy.default),
        fast,
    )


# --- the wire format, checked on bytes ----------------------------------------------------

# RFC 5322 2.2: a field name is printable ASCII without a colon
_FIELD = re.compile(rb"^([!-9;-~]+):[ \t]?(.*)$", re.S)
_ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
_ADDR_SPEC = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"


def header_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The header block as (name, unfolded value) pairs, failing on any broken line."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no blank line between header and body"
    lines = head.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "bare CR or LF"
    assert all(len(line) <= 998 for line in lines), "header line over 998 octets (RFC 5322 2.1.1)"
    assert all(line.isascii() for line in lines), "8-bit header without SMTPUTF8"
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            assert fields and line.strip(), "continuation line without a field or empty"
            name, value = fields[-1]
            fields[-1] = (name, value + line)  # unfolding: remove the CRLF only (RFC 5322 2.2.3)
            continue
        match = _FIELD.match(line)
        assert match, f"not a header field: {line[:60]!r}"
        fields.append((match.group(1), match.group(2)))
    return fields


def check_wire(raw: bytes) -> dict[str, bytes]:
    """Assert what a strict receiver checks; returns the header fields by lower-case name."""
    fields = header_fields(raw)
    by_name: dict[str, bytes] = {}
    for name, value in fields:
        key = name.decode().lower()
        assert key not in by_name, f"{name!r} appears twice"
        by_name[key] = value
    for required in ("from", "to", "subject", "date", "message-id", "mime-version"):
        assert required in by_name, required
    # RFC 2369: a list of <URL> separated by commas; RFC 8058: https first, and the POST key.
    unsub = by_name["list-unsubscribe"]
    assert not _ENCODED_WORD.search(unsub), unsub
    assert re.fullmatch(rb"\s*<https://[^<>\s]+>\s*,\s*<mailto:[^<>\s]+>\s*", unsub), unsub
    if by_name.get("feedback-id", b"").startswith(b"test:"):
        # A test copy links the generic unsubscribe page, which takes no one-click POST.
        assert "list-unsubscribe-post" not in by_name
    else:
        assert by_name["list-unsubscribe-post"] == b"List-Unsubscribe=One-Click"
    if "list-id" in by_name:  # RFC 2919: [phrase] <list-label.domain>
        assert not _ENCODED_WORD.search(by_name["list-id"])
        assert re.fullmatch(rb"[^<>]*<[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+>", by_name["list-id"])
    for name in ("from", "to", "reply-to"):
        if name in by_name:
            spec = re.search(
                rb"<(" + _ADDR_SPEC + rb")>\s*$|^(" + _ADDR_SPEC + rb")$", by_name[name]
            )
            assert spec, f"{name}: {by_name[name]!r}"
            # encoded-words may only be in the display name, never in the address
            tail = by_name[name][by_name[name].rfind(b"<") :]
            assert not _ENCODED_WORD.search(tail)
    assert re.fullmatch(rb"<[^<>@\s]+@[^<>@\s]+>", by_name["message-id"])
    assert parsedate_to_datetime(by_name["date"].decode()).tzinfo is not None
    for word in _ENCODED_WORD.findall(b"".join(by_name.values())):
        assert len(word) <= 75, word  # RFC 2047 2
    body = raw.partition(b"\r\n\r\n")[2]
    assert b"\r" not in body.replace(b"\r\n", b""), "bare CR in the body"
    assert b"\n" not in body.replace(b"\r\n", b""), "bare LF in the body"
    assert max(len(line) for line in body.split(b"\r\n")) <= 76, "QP line over 76 (RFC 2045 6.7)"
    assert not message_from_bytes(raw, policy=policy.default).defects
    return by_name


# --- the template against the oracle ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "subject", "text", "html", "values"),
    [
        ("Ana Souza", "Morning: news", "plain\n", "<p>x</p>", None),
        ("Chloé Ø'Brien", "Matin: café ☕", "ünïcode ☕\n" * 50, "<p>ü</p>" * 400, None),
        ("", "A" * 140, "x" * 2000, "<td>" + "y" * 3000 + "</td>", None),
        (
            "Ana\r\nBcc: evil@example.org",
            "Hi\r\nBcc: evil@example.org",
            "t\r\n.\r\n",
            "<p>.</p>",
            None,
        ),
        ('"Quoted" <name>', "trailing space ", "line with trailing space \n", "=3D =\n", None),
        ("Ÿ" * 80, "Ünïcode subject " * 12, "x" * 76, "=" * 76 + "é" * 30, None),
        ("José (Ana)", "s", "x" * 74 + " \n" + "y" * 75 + "\t\n", "=" * 25 + " \n", None),
        ("( é", "s", "t", "h", None),
        (
            "a",
            "s",
            "bare\rCR and\r\nCRLF",
            "y" * 75,
            {
                "name_suffix": "z" * 76,
                "unsubscribe_url": "=" * 75,
                "preferences_url": "é" * 40,
                "view_url": " ",
            },
        ),
        (
            "Zoë",
            "s",
            "ends without newline ",
            " starts with space",
            {
                "name_suffix": " Zoë  ",
                "unsubscribe_url": "",
                "preferences_url": "=\n.",
                "view_url": "x" * 300,
            },
        ),
    ],
)
def test_template_matches_the_stdlib_and_the_rfcs(name, subject, text, html, values) -> None:
    fast, slow, raw = both_ways(name, subject, text, html, values)
    for header in HEADERS:
        if header in ("From", "To"):
            # CPython's address parser shows a space between adjacent encoded-words of a
            # display name (RFC 2047 says to drop it), and the two paths fold at
            # different points; compare the names without that whitespace.
            assert "".join(str(fast[header]).split()) == "".join(str(slow[header]).split())
            assert fast[header].addresses[0].addr_spec == slow[header].addresses[0].addr_spec
            continue
        assert " ".join(str(fast[header]).split()) == " ".join(str(slow[header]).split()), header
    assert fast.get_content_type() == slow.get_content_type() == "multipart/alternative"
    fast_parts = [(p.get_content_type(), p.get_content()) for p in fast.iter_parts()]
    slow_parts = [(p.get_content_type(), p.get_content()) for p in slow.iter_parts()]
    assert fast_parts == slow_parts
    assert [t for t, _ in fast_parts] == ["text/plain", "text/html"]
    check_wire(raw)
    assert not any(p.defects for p in fast.iter_parts())


def test_the_stdlib_would_have_broken_list_unsubscribe() -> None:
    """Why the oracle is not the builder: at 78+ characters EmailMessage encodes the
    header into an RFC 2047 word, which no client uses as a list of URLs."""
    env = Envelope("a@example.com", "", "<m@example.com>", "https://x/" + "u" * 80, "t", "t", "h")
    head = reference(SENDER, "s", DATE, env).split(b"\r\n\r\n")[0]
    unsub = head[head.index(b"List-Unsubscribe:") :].split(b"\r\nList-Unsubscribe-Post")[0]
    assert b"=?utf-8?q?" in unsub
    ours = build_message(SENDER, "s", DATE, env)
    check_wire(ours)


def test_hostile_names_and_subjects_never_make_a_header() -> None:
    _, _, raw = both_ways(
        "Ana\r\nBcc: evil@example.org\r\n", "News\nBcc: evil@example.org", "t", "h"
    )
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert "evil@example.org" in str(parsed["To"])  # kept as harmless display text
    assert parsed["To"].addresses[0].addr_spec == "ana@example.com"
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] not in b" \t" or line.strip() for line in head.split(b"\r\n"))
    assert b"\nBcc:" not in head


def test_encoded_newlines_are_defused() -> None:
    parsed, _, _ = both_ways("=?utf-8?q?x=0D=0ABcc:_evil@example.org?=", "s", "t", "h")
    assert "\n" not in str(parsed["To"]) and parsed["Bcc"] is None


def test_header_values_with_breaks_are_refused() -> None:
    text_s, html_s = bodies("t", "h")
    with pytest.raises(HeaderInjection):
        MessageTemplate(SENDER, "s", DATE, "k", html_s, text_s).render(
            reader(message_id="<id@x>\r\nBcc: x")
        )


def test_required_headers() -> None:
    parsed, _, raw = both_ways("Ana", "s", "t", "h")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = str(parsed["List-Unsubscribe"])
    assert unsub.startswith("<https://news.example.com/unsubscribe/tok.en>")
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe%20tok.en>" in unsub
    assert parsed["Message-ID"] == "<digest.1.2.abc@example.com>"
    # A non-ASCII list name is written without its accents, never as an encoded-word.
    assert check_wire(raw)["list-id"] == b"Gazette Desk <daily.example.com>"
    assert parsed["Reply-To"] == "letters@example.com"
    assert parsed["Feedback-ID"] == "edition:1:daily.example.com:digest"


@pytest.mark.parametrize(
    ("list_name", "expected"),
    [
        ("Daily News", b"Daily News <daily.example.com>"),
        ("Élan, Co.", b'"Elan, Co." <daily.example.com>'),
        ("☕☕", b"<daily.example.com>"),
        ('Say "hi"', b'"Say \\"hi\\"" <daily.example.com>'),
    ],
)
def test_list_id_is_plain_ascii(list_name: str, expected: bytes) -> None:
    sender = Sender("n@example.com", "N", "daily.example.com", list_name, "u@example.com")
    env = Envelope("a@example.com", "", "<m@example.com>", "https://x/u", "t", "t", "h")
    assert check_wire(build_message(sender, "s", DATE, env))["list-id"] == expected


# --- every kind of message, as it arrives over SMTP --------------------------------------

TZ = "Australia/Sydney"
AFTER = NOW + timedelta(hours=9, minutes=1)


def smtp_settings(settings: Settings, url: str) -> Settings:
    return settings.with_(
        smtp=parse_smtp_url(url),
        from_name="Gazette Désk",
        reply_to="letters@news.example.com",
        bounce_address="bounces@news.example.com",
        from_address="news@news.example.com",
        dkim_selector="d2026",
        dkim_key_file=Path(__file__).parent / "fixtures" / "dkim" / "test.key",
    )


def dkim_dns(name: bytes, timeout: int = 5) -> bytes | None:
    """The record of the test key, as `openssl rsa -pubout` wrote it."""
    if name != b"d2026._domainkey.news.example.com.":
        return None
    pem = (Path(__file__).parent / "fixtures" / "dkim" / "test.pub.pem").read_text()
    return ("v=DKIM1; k=rsa; p=" + "".join(pem.splitlines()[1:-1])).encode()


def test_edition_sign_up_and_test_copy_on_the_wire(session, settings, smtp_server) -> None:
    sink, url = smtp_server
    settings = smtp_settings(settings, url)
    long_title = "A headline with ünïcode and a very long tail " * 4
    add_articles(session, AFTER - timedelta(hours=2), [(long_title, "news"), ("Two", "sport")])
    subscriber = store.add_subscriber(
        session, "ana@example.com", NOW, name="Ana Ünïcode Souza", timezone=TZ, status="active"
    )
    session.commit()
    cohort = Cohort("morning", NOW.date() + timedelta(days=1), TZ)
    plan = pipeline.plan_edition(session, settings, cohort, AFTER)
    sending.run_edition(session, settings, SMTPTransport(settings.smtp), plan.edition_id, AFTER)
    notice = accounts.Notice("confirm", subscriber.id, "ana@example.com", "Ana Ünïcode Souza")
    accounts.send_notice(settings, SMTPTransport(settings.smtp), notice, AFTER)
    pipeline.test_send(
        session, settings, SMTPTransport(settings.smtp), cohort, "editor@example.com", AFTER
    )
    assert len(sink.messages) == 3
    kinds = []
    for mail_from, _rcpts, raw in sink.messages:
        fields = check_wire(raw)
        assert fields["reply-to"] == b"letters@news.example.com"
        assert fields["from"].endswith(b"<news@news.example.com>")
        kind = fields["feedback-id"].split(b":")[0]
        if kind != b"signup":  # the sign-up email's envelope is digest/readers/accounts.py's to set
            assert mail_from.startswith("bounces+") and mail_from.endswith("@news.example.com")
        kinds.append(kind)
        assert dkim.verify(raw, dnsfunc=dkim_dns), kind  # signed, and unchanged on the way
        parsed = message_from_bytes(raw, policy=policy.default)
        assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert kinds == [b"edition", b"signup", b"test"]


@pytest.mark.parametrize(
    "subject",
    [
        "The Morning Edition, Monday 30 November: Harbour ferries halted as a…",
        "Matin: café ☕ et croissants, et encore du café ☕ pour la route, s'il vous plaît",
    ],
)
def test_only_words_that_need_it_are_encoded(subject: str) -> None:
    env = Envelope("a@example.com", "", "<m@example.com>", "https://x/u", "t", "t", "h")
    raw = build_message(SENDER, subject, DATE, env)
    fields = check_wire(raw)
    for word in subject.split():
        if word.isascii():
            assert word.encode() in fields["subject"].split()  # readable as it stands
    parsed = message_from_bytes(raw, policy=policy.default)
    assert str(parsed["Subject"]) == subject
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert max(len(line) for line in head if not line.startswith(b"DKIM")) <= 78


@given(st.text(st.characters(max_codepoint=0x2100), max_size=100))
def test_a_slot_value_encodes_as_the_encoder_would(value: str) -> None:
    """The short way for plain values gives the same bytes as qp + soft_break."""
    from digest.mail.message import encode_value, qp, soft_break

    assert encode_value(value) == soft_break(qp(value, final=False))


@pytest.mark.parametrize("value", ["https://x.example/u/3f.0.Ab-_c", ".", "a=b", "end ", "x" * 76])
def test_a_slot_value_encodes_as_the_encoder_would_at_the_edges(value: str) -> None:
    from digest.mail.message import encode_value, qp, soft_break

    assert encode_value(value) == soft_break(qp(value, final=False))


@pytest.mark.parametrize("token", ["3f.0.Ab-_c9", "a b", "é", ""])
def test_the_mailto_subject_is_quoted_as_urllib_would(token: str) -> None:
    from urllib.parse import quote

    from digest.mail.message import list_unsubscribe

    header = list_unsubscribe("https://x.example/u", "u@x.example", token)
    assert header.endswith(f"?subject={quote('unsubscribe ' + token)}>")
