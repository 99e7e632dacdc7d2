"""The fast per-reader MIME build parses to the same headers and parts as the stdlib way."""

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from digest.errors import HeaderInjection
from digest.message import Envelope, MessageTemplate, Reader, Sender, build_message
from digest.render import SLOTS, Splicer

SENDER = Sender(
    "news@example.com",
    "Gazette Désk",
    "daily.example.com",
    "Gazette Désk",
    "unsubscribe@example.com",
)
DATE = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)
HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
)


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


def bodies(text: str, html: str) -> tuple[Splicer, Splicer]:
    """Bodies with every slot in them, at the start, the middle and the end."""
    marks = list(SLOTS.values())
    return (
        Splicer.of(marks[0] + text + marks[1] + text + marks[2]),
        Splicer.of(html + marks[3] + html + marks[0] + marks[1] + html + marks[2]),
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
    slow = build_message(SENDER, subject, DATE, env).as_bytes()
    return (
        message_from_bytes(fast, policy=policy.default),
        message_from_bytes(slow, policy=policy.default),
        fast,
    )


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
def test_fast_build_matches_stdlib(name, subject, text, html, values) -> None:
    fast, slow, raw = both_ways(name, subject, text, html, values)
    for header in HEADERS:
        if header in ("From", "To"):
            # CPython's address parser shows a space between adjacent encoded-words of a
            # display name (RFC 2047 says to drop it), and the two paths fold at
            # different points; compare the names without that whitespace.
            assert "".join(str(fast[header]).split()) == "".join(str(slow[header]).split())
            assert fast[header].addresses[0].addr_spec == slow[header].addresses[0].addr_spec
            continue
        assert str(fast[header]) == str(slow[header]), header
    assert fast.get_content_type() == slow.get_content_type() == "multipart/alternative"
    fast_parts = [(p.get_content_type(), p.get_content()) for p in fast.iter_parts()]
    slow_parts = [(p.get_content_type(), p.get_content()) for p in slow.iter_parts()]
    assert fast_parts == slow_parts
    assert [t for t, _ in fast_parts] == ["text/plain", "text/html"]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # RFC 2045 6.7
    assert b"\r" not in body.replace(b"\r\n", b"")  # no bare CR on the wire
    assert max(len(line) for line in head.split(b"\r\n")) <= 998  # RFC 5322
    assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?]+\?[qQbB]\?[^?]*\?=", head))
    assert not fast.defects and not any(p.defects for p in fast.iter_parts())


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
    parsed, _, _ = both_ways("Ana", "s", "t", "h")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = str(parsed["List-Unsubscribe"])
    assert unsub.startswith("<https://news.example.com/unsubscribe/tok.en>")
    assert "<mailto:unsubscribe@example.com?subject=unsubscribe%20tok.en>" in unsub
    assert parsed["Message-ID"] == "<digest.1.2.abc@example.com>"
    assert parsed["List-Id"] == "Gazette Désk <daily.example.com>"
