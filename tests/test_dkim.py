"""DKIM signing, checked by a verifier that shares none of the signing path's key
handling: dkimpy's verify, fed the public key openssl wrote (tests/fixtures/dkim/)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from digest.errors import ConfigError
from digest.mail.dkim import SIGNED_HEADERS, load_key, public_record
from digest.mail.message import Envelope, MessageTemplate, Reader, Sender, build_message

KEYS = Path(__file__).parent / "fixtures" / "dkim"
DATE = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)


def openssl_record() -> bytes:
    """The TXT record, from the PEM public key openssl derived from the test key."""
    pem = (KEYS / "test.pub.pem").read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    return f"v=DKIM1; k=rsa; p={body}".encode()


def dns(name: bytes, timeout: int = 5) -> bytes | None:
    return openssl_record() if name == b"d2026._domainkey.gazette.example.net." else None


def sender(**kw: object) -> Sender:
    key = load_key("d2026", "gazette.example.net", KEYS / "test.key")
    return Sender(
        "news@gazette.example.net",
        "Gazette Désk",
        "daily.gazette.example.net",
        "Gazette",
        "unsubscribe@gazette.example.net",
        reply_to="letters@gazette.example.net",
        dkim=key,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Cut:
    parts: list[str]
    slots: list[str]


def edition_message(name: str = "Zoë Ünïcode") -> bytes:
    body = Cut(["Hello", ", here is the news.\n" * 40], ["name_suffix"])
    reader = Reader(
        "zoe@example.org",
        name,
        "<digest.1.2.abc@gazette.example.net>",
        "https://news.example.net/unsubscribe/t.k",
        "t.k",
        {"name_suffix": " Zoë"},
        {"name_suffix": " Zoë"},
    )
    template = MessageTemplate(sender(), "The Morning Edition: ☕", DATE, "1:", body, body)
    return template.render(reader)


def signature(message: bytes) -> dict[str, str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"^DKIM-Signature: (.*?)(?=\r\n\S)", head, re.S | re.M)
    assert found, "no DKIM-Signature"
    value = re.sub(r"\s+", "", found.group(1))
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_the_record_digest_prints_is_the_one_openssl_derives() -> None:
    key = load_key("d2026", "gazette.example.net", KEYS / "test.key")
    assert public_record(key).encode() == openssl_record()


@pytest.mark.parametrize("kind", ["edition", "single"])
def test_signatures_verify(kind: str) -> None:
    if kind == "edition":
        message = edition_message()
    else:
        env = Envelope("a@example.org", "", "<m@gazette.example.net>", "https://x/u", "t", "t", "h")
        message = build_message(sender(), "Confirm", DATE, env, campaign="signup")
    assert message.startswith(b"DKIM-Signature: ")
    assert dkim.verify(message, dnsfunc=dns)
    tags = signature(message)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        "gazette.example.net",
        "d2026",
    )
    signed = tags["h"].lower().split(":")
    for header in SIGNED_HEADERS:
        assert header.lower() in signed


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Subject: ", b"Subject: Re: "),
        (b"List-Unsubscribe: <https://news", b"List-Unsubscribe: <https://evil"),
        (b"here is the news", b"here is the spam"),
    ],
)
def test_a_changed_message_fails_verification(old: bytes, new: bytes) -> None:
    message = edition_message()
    assert old in message
    assert not dkim.verify(message.replace(old, new, 1), dnsfunc=dns)


def test_an_added_header_fails_verification() -> None:
    """Absent headers are signed too: nobody can add a Reply-To or a second List-Id."""
    message = edition_message()
    head, body = message.split(b"\r\n\r\n", 1)
    assert not dkim.verify(head + b"\r\nList-Id: <other.example.com>\r\n\r\n" + body, dnsfunc=dns)


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read DIGEST_DKIM_KEY_FILE"), (b"not a key", "is not a usable key")],
)
def test_unusable_keys_are_one_clear_error(tmp_path: Path, content, says: str) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=says):
        load_key("s", "example.net", path)


@pytest.mark.parametrize(
    "added",
    [
        b"From: Other <news@evil.example>",
        b"Subject: Click here",
        b"List-Unsubscribe: <https://evil.example/u>",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"Reply-To: evil@evil.example",
        b"Date: Mon, 30 Nov 2026 06:00:00 +0000",
        b"Message-ID: <other@evil.example>",
    ],
)
def test_a_second_copy_of_a_signed_header_fails_verification(added: bytes) -> None:
    """Over-signing: a copy put above the signed one (which many clients show) breaks it."""
    message = edition_message()
    assert dkim.verify(message, dnsfunc=dns)
    assert not dkim.verify(added + b"\r\n" + message, dnsfunc=dns)
