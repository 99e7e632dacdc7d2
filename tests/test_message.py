"""The fast per-reader MIME build parses to the same headers and parts as the stdlib way."""

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from digest.errors import HeaderInjection
from digest.message import Envelope, MessageTemplate, Sender, build_message

SENDER = Sender("news@example.com", "Gazette Désk", "daily.example.com", "Gazette Désk",
                "unsubscribe@example.com")
DATE = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)
HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
           "List-Unsubscribe-Post", "MIME-Version")


def envelope(name: str = "Ana Souza", text: str = "Hello\nworld ü\n", html: str = "<p>Hi ü</p>"
             ) -> Envelope:
    return Envelope("ana@example.com", name, "<digest.1.2.abc@example.com>",
                    "https://news.example.com/unsubscribe/tok.en", "tok.en", text, html)


@pytest.mark.parametrize(
    ("name", "subject", "text", "html"),
    [
        ("Ana Souza", "Morning: news", "plain\n", "<p>x</p>"),
        ("Chloé Ø'Brien", "Matin: café ☕", "ünïcode ☕\n" * 50, "<p>ü</p>" * 400),
        ("", "A" * 140, "x" * 2000, "<td>" + "y" * 3000 + "</td>"),
        ("Ana\r\nBcc: evil@example.org", "Hi\r\nBcc: evil@example.org", "t\r\n.\r\n", "<p>.</p>"),
        ('"Quoted" <name>', "trailing space ", "line with trailing space \n", "=3D =\n"),
    ],
)
def test_fast_build_matches_stdlib(name: str, subject: str, text: str, html: str) -> None:
    env = envelope(name, text, html)
    fast = message_from_bytes(MessageTemplate(SENDER, subject, DATE, "1:").render(env),
                              policy=policy.default)
    slow = message_from_bytes(build_message(SENDER, subject, DATE, env).as_bytes(),
                              policy=policy.default)
    for header in HEADERS:
        assert str(fast[header]) == str(slow[header]), header
    assert fast.get_content_type() == slow.get_content_type() == "multipart/alternative"
    fast_parts = [(p.get_content_type(), p.get_content()) for p in fast.iter_parts()]
    slow_parts = [(p.get_content_type(), p.get_content()) for p in slow.iter_parts()]
    assert fast_parts == slow_parts
    assert [t for t, _ in fast_parts] == ["text/plain", "text/html"]


def test_hostile_names_and_subjects_never_make_a_header() -> None:
    env = envelope("Ana\r\nBcc: evil@example.org\r\n")
    raw = MessageTemplate(SENDER, "News\nBcc: evil@example.org", DATE, "1:").render(env)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert "evil@example.org" in str(parsed["To"])  # kept as harmless display text
    assert parsed["To"].addresses[0].addr_spec == "ana@example.com"
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] not in b" \t" or line.strip() for line in head.split(b"\r\n"))
    assert b"\nBcc:" not in head


def test_encoded_newlines_are_defused() -> None:
    env = envelope("=?utf-8?q?x=0D=0ABcc:_evil@example.org?=")
    parsed = message_from_bytes(MessageTemplate(SENDER, "s", DATE, "k").render(env),
                                policy=policy.default)
    assert "\n" not in str(parsed["To"]) and parsed["Bcc"] is None


def test_header_values_with_breaks_are_refused() -> None:
    env = Envelope("ana@example.com", "", "<id@x>\r\nBcc: x", "https://x/u", "t", "t", "h")
    with pytest.raises(HeaderInjection):
        MessageTemplate(SENDER, "s", DATE, "k").render(env)


def test_required_headers() -> None:
    parsed = message_from_bytes(MessageTemplate(SENDER, "s", DATE, "k").render(envelope()),
                                policy=policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = str(parsed["List-Unsubscribe"])
    assert unsub.startswith("<https://news.example.com/unsubscribe/tok.en>")
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe%20tok.en>" in unsub
    assert parsed["Message-ID"] == "<digest.1.2.abc@example.com>"
    assert parsed["List-Id"] == "Gazette Désk <daily.example.com>"
