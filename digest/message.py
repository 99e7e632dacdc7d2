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
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from urllib.parse import quote

from digest.addresses import check_header_value, fold_header_text


@dataclass(frozen=True)
class Envelope:
    """What differs per reader: the address, the links and the Message-ID."""

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


def _addr(name: str, address: str) -> str:
    """A header address, the display name folded to one line and encoded if need be."""
    return formataddr((fold_header_text(name, limit=80), check_header_value(address)), "utf-8")


def _encoded(text: str) -> str:
    folded = fold_header_text(text, limit=300)
    if folded.isascii():
        return folded
    return Header(folded, "utf-8").encode(maxlinelen=998)


def list_unsubscribe(url: str, mailto: str, token: str) -> str:
    """The https URL first (RFC 8058 one-click), then a mailto fallback."""
    check_header_value(url)
    return f"<{url}>, <mailto:{mailto}?subject={quote('unsubscribe ' + token)}>"


def qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends; C speed via binascii."""
    if not text.endswith("\n"):
        text += "\n"  # as EmailMessage.set_content does: a part ends with a line break
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class MessageTemplate:
    """The fixed bytes of one variant's message; `render` adds one reader's parts."""

    def __init__(self, sender: Sender, subject: str, date: datetime, variant_key: str) -> None:
        self.boundary = "==digest-" + hashlib.sha256(variant_key.encode()).hexdigest()[:24] + "=="
        fixed = [
            f"From: {_addr(sender.from_name, sender.from_address)}",
            f"Subject: {_encoded(subject)}",
            f"Date: {format_datetime(date)}",
            f"List-Id: {_encoded(sender.list_name)} <{check_header_value(sender.list_id)}>",
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

    def render(self, env: Envelope) -> bytes:
        unsubscribe = list_unsubscribe(
            env.unsubscribe_url, self.sender.unsubscribe_mailto, env.unsubscribe_token
        )
        per_reader = (
            f"To: {_addr(env.to_name, env.to_address)}\r\n"
            f"Message-ID: {check_header_value(env.message_id)}\r\n"
            f"List-Unsubscribe: {unsubscribe}\r\n"
        ).encode("ascii")
        return b"".join(
            (
                per_reader,
                self.head,
                self.text_open,
                qp(env.text),
                self.html_open,
                qp(env.html),
                self.close,
            )
        )


def build_message(sender: Sender, subject: str, date: datetime, env: Envelope) -> EmailMessage:
    """The stdlib way (slow, a few ms): for single sends and to check MessageTemplate."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _addr(sender.from_name, sender.from_address)
    msg["To"] = _addr(env.to_name, env.to_address)
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
