"""MIME messages: built once per edition variant, with only what differs filled per reader.

The stdlib EmailMessage costs milliseconds per message; here the header block and the
part framing are fixed once and each message is a join of bytes. `build_message` is the
slow, obviously-correct stdlib way, kept for single sends and to prove the two agree.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from urllib.parse import quote

from digest.addresses import check_header_value, fold_header_text
from digest.render import Splicer


@dataclass(frozen=True)
class Envelope:
    """A whole single message's reader parts and bodies (the stdlib path)."""

    to_address: str
    to_name: str
    message_id: str
    unsubscribe_url: str
    unsubscribe_token: str
    text: str
    html: str


@dataclass(frozen=True)
class Sender:
    from_address: str
    from_name: str
    list_id: str
    list_name: str
    unsubscribe_mailto: str


def _addr(name: str, address: str, header: str = "To") -> str:
    """A header address, the display name folded to one line and encoded if need be.

    Non-ASCII names become RFC 2047 encoded-words of at most 75 characters, folded
    with CRLF as the rest of the header block is.
    """
    clean = fold_header_text(name, limit=80)
    check_header_value(address)
    if clean.isascii():
        return formataddr((clean, address))
    words = Header(clean, "utf-8", header_name=header).encode(maxlinelen=76, linesep="\r\n")
    return f"{words} <{address}>"


def _encoded(text: str, header: str = "Subject") -> str:
    folded = fold_header_text(text, limit=300)
    if folded.isascii():
        return folded
    return Header(folded, "utf-8", header_name=header).encode(maxlinelen=76, linesep="\r\n")


def list_unsubscribe(url: str, mailto: str, token: str) -> str:
    """The https URL first (RFC 8058 one-click), then a mailto fallback."""
    check_header_value(url)
    return f"<{url}>, <mailto:{mailto}?subject={quote('unsubscribe ' + token)}>"


def qp(text: str, final: bool = True) -> bytes:
    """Quoted-printable with CRLF line ends; C speed via binascii.

    `final` marks the end of a part, which (as EmailMessage.set_content does) always
    ends with a line break. Any CR, LF or CRLF is a line break: a bare CR never
    reaches the wire (relays that guard against SMTP smuggling refuse them).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if final and not text.endswith("\n"):
        text += "\n"
    data = text.encode("utf-8")
    encoded = binascii.b2a_qp(data, istext=True)
    if any(len(line) > 76 for line in encoded.split(b"\n")):
        # binascii does not count the =20 it writes for trailing whitespace against the
        # 76-character limit; the stdlib encoder does (slower, and rarely needed).
        encoded = quoprimime.body_encode(data.decode("latin-1"), 76, "\n").encode("ascii")
    return encoded.replace(b"\n", b"\r\n")


def soft_break(encoded: bytes) -> bytes:
    """End a QP piece with a soft line break ("=" CRLF, which decodes to nothing),
    keeping its last line within 76 characters and never splitting an =XX escape."""
    start = encoded.rfind(b"\n") + 1
    last = encoded[start:]
    if len(last) <= 75:
        return encoded + b"=\r\n"
    cut = 75
    while b"=" in last[cut - 2 : cut]:  # "=" only ever opens an escape in QP output
        cut -= 1
    return encoded[:start] + last[:cut] + b"=\r\n" + last[cut:] + b"=\r\n"


class EncodedSplicer:
    """A sliced body whose fixed pieces are quoted-printable encoded once.

    Each reader's values are encoded alone and joined in between QP soft line
    breaks, so a message costs a few small encodes instead of encoding the whole
    15-30 kB body again, and decodes to exactly the same text.
    """

    def __init__(self, splicer: Splicer) -> None:
        last = len(splicer.parts) - 1
        self.parts = [
            qp(part) if i == last else soft_break(qp(part, final=False))
            for i, part in enumerate(splicer.parts)
        ]
        self.slots = splicer.slots

    def fill(self, values: dict[str, str]) -> bytes:
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out += (soft_break(qp(values[slot], final=False)), part)
        return b"".join(out)


@dataclass(frozen=True)
class Reader:
    """One reader's part of a templated message: address, ids, and slot values."""

    to_address: str
    to_name: str
    message_id: str
    unsubscribe_url: str
    unsubscribe_token: str
    html_values: dict[str, str]
    text_values: dict[str, str]


class MessageTemplate:
    """The fixed bytes of one variant's message; `render` adds one reader's parts."""

    def __init__(
        self,
        sender: Sender,
        subject: str,
        date: datetime,
        variant_key: str,
        html: Splicer,
        text: Splicer,
    ) -> None:
        self.boundary = "==digest-" + hashlib.sha256(variant_key.encode()).hexdigest()[:24] + "=="
        list_id = check_header_value(sender.list_id)
        fixed = [
            f"From: {_addr(sender.from_name, sender.from_address, 'From')}",
            f"Subject: {_encoded(subject)}",
            f"Date: {format_datetime(date)}",
            f"List-Id: {_encoded(sender.list_name, 'List-Id')} <{list_id}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"',
        ]
        self.sender = sender
        self.head = ("\r\n".join(fixed) + "\r\n\r\n").encode("ascii")
        self.text_open = (
            f"--{self.boundary}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode()
        self.html_open = (
            f"\r\n--{self.boundary}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode()
        self.close = f"\r\n--{self.boundary}--\r\n".encode()
        self.html = EncodedSplicer(html)
        self.text = EncodedSplicer(text)

    def render(self, reader: Reader) -> bytes:
        unsubscribe = list_unsubscribe(
            reader.unsubscribe_url, self.sender.unsubscribe_mailto, reader.unsubscribe_token
        )
        per_reader = (
            f"To: {_addr(reader.to_name, reader.to_address)}\r\n"
            f"Message-ID: {check_header_value(reader.message_id)}\r\n"
            f"List-Unsubscribe: {unsubscribe}\r\n"
        ).encode("ascii")
        return b"".join(
            (
                per_reader,
                self.head,
                self.text_open,
                self.text.fill(reader.text_values),
                self.html_open,
                self.html.fill(reader.html_values),
                self.close,
            )
        )


def _address(name: str, address: str) -> Address:
    local, _, domain = check_header_value(address).rpartition("@")
    return Address(display_name=fold_header_text(name, 80), username=local, domain=domain)


def build_message(sender: Sender, subject: str, date: datetime, env: Envelope) -> EmailMessage:
    """The stdlib way (slow, a few ms): for single sends and to check MessageTemplate."""
    msg = EmailMessage(policy=SMTP)
    # Address objects: the stdlib then quotes, encodes and folds display names itself
    # (a formatted string would let "(" or "<" in a unicode name swallow the address).
    msg["From"] = _address(sender.from_name, sender.from_address)
    msg["To"] = _address(env.to_name, env.to_address)
    msg["Subject"] = fold_header_text(subject, limit=300)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = check_header_value(env.message_id)
    msg["List-Id"] = f"{fold_header_text(sender.list_name)} <{check_header_value(sender.list_id)}>"
    msg["List-Unsubscribe"] = list_unsubscribe(
        env.unsubscribe_url, sender.unsubscribe_mailto, env.unsubscribe_token
    )
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(env.text, cte="quoted-printable")
    msg.add_alternative(env.html, subtype="html", cte="quoted-printable")
    return msg
