"""MIME messages: one builder for every message digest sends.

The header block and the part framing of a variant are fixed once; each message is a
join of bytes with one reader's values quoted-printable encoded in between. Editions
use `MessageTemplate` directly; a single message (the sign-up email, an operator's test
copy) goes through `build_message`, which is the same template with no open slots, so
every message on the wire has the same headers written the same way.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.utils import format_datetime, formataddr
from typing import Protocol
from urllib.parse import quote

from digest.mail.addresses import check_header_value, fold_header_text
from digest.mail.dkim import DKIMKey, dkim_header


class Body(Protocol):
    """A text cut at its per-reader slots: parts[0] slot[0] parts[1] ... parts[-1]."""

    @property
    def parts(self) -> Sequence[str]: ...

    @property
    def slots(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Whole:
    """A body with no slots (a single message)."""

    text: str

    @property
    def parts(self) -> Sequence[str]:
        return (self.text,)

    @property
    def slots(self) -> Sequence[str]:
        return ()


@dataclass(frozen=True)
class Envelope:
    """A whole single message's reader parts and bodies."""

    to_address: str
    to_name: str
    message_id: str
    unsubscribe_url: str
    unsubscribe_token: str
    text: str
    html: str


@dataclass(frozen=True)
class Sender:
    """Who sends, and the list's own headers (the same in every message)."""

    from_address: str
    from_name: str
    list_id: str
    list_name: str
    unsubscribe_mailto: str
    reply_to: str = ""
    feedback_sender: str = "digest"  # last field of Feedback-ID: the sender's own id
    dkim: DKIMKey | None = None


def _addr(name: str, address: str, header: str = "To") -> str:
    """A header address, the display name folded to one line and encoded if need be.

    Non-ASCII names become RFC 2047 encoded-words of at most 75 characters, folded
    with CRLF as the rest of the header block is; the address itself is never encoded.
    """
    clean = fold_header_text(name, limit=80)
    check_header_value(address)
    if not address.isascii():
        raise ValueError(f"address {address!r} is not ASCII")
    if clean.isascii():
        if clean and not _SPECIALS.search(clean):
            return f"{clean} <{address}>"  # as formataddr writes it: nothing to quote
        return formataddr((clean, address))
    words = Header(clean, "utf-8", header_name=header).encode(maxlinelen=76, linesep="\r\n")
    return f"{words} <{address}>"


_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # RFC 5322 specials: a name with one is quoted


def _encoded(text: str, header: str = "Subject") -> str:
    """Unstructured text for a header: ASCII words stay as they are (readable in the raw
    message and to filters), each run of other words becomes RFC 2047 encoded-words;
    folded at spaces so that lines stay within 78 characters."""
    folded = fold_header_text(text, limit=300)
    if folded.isascii() and len(header) + 2 + len(folded) <= 78:
        return folded
    tokens: list[str] = []
    run: list[str] = []
    for word in [*folded.split(" "), ""]:
        if word and not word.isascii():
            run.append(word)
            continue
        if run:
            encoded = Header(" ".join(run), "utf-8", header_name=header).encode(maxlinelen=76)
            tokens += encoded.split()  # one token per encoded-word
            run = []
        if word:
            tokens.append(word)
    lines = [f"{header}:"]
    for token in tokens:
        if len(lines[-1]) + 1 + len(token) > 78 and lines[-1] != f"{header}:":
            lines.append("")
        lines[-1] += " " + token
    return "\r\n".join(lines)[len(header) + 2 :]


def ascii_phrase(text: str) -> str:
    """Free text as an RFC 5322 phrase in plain ASCII (accents dropped, quoted if need be),
    for headers that clients show raw, such as List-Id."""
    plain = unicodedata.normalize("NFKD", fold_header_text(text, limit=80))
    plain = "".join(c for c in plain if c.isascii() and c.isprintable()).strip()
    if not plain:
        return ""
    if any(c in plain for c in '()<>[]:;@\\,."'):
        return '"' + plain.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return plain


def list_unsubscribe(url: str, mailto: str, token: str) -> str:
    """The https URL first (RFC 8058 one-click), then a mailto fallback, folded between
    the two (RFC 2369 allows whitespace there) so lines stay short."""
    check_header_value(url)
    check_header_value(mailto)
    # digest's own tokens are URL-safe already: only the space needs quoting then.
    plain = token.replace(".", "").replace("-", "").replace("_", "")
    words = f"unsubscribe%20{token}" if plain.isascii() and plain.isalnum() else None
    value = f"<{url}>,\r\n <mailto:{mailto}?subject={words or quote('unsubscribe ' + token)}>"
    # "List-Unsubscribe: " is 18 characters: a long URL starts on a line of its own.
    return value if len(url) + 21 <= 78 else "\r\n " + value


def feedback_id(campaign: str, edition: str, list_id: str, sender: str) -> str:
    """Gmail's Feedback-ID: campaign:edition:list:sender, colons only as separators."""
    fields = [campaign, edition, list_id, sender]
    clean = ["".join(c for c in f if c.isascii() and c.isalnum() or c in "._-") for f in fields]
    return ":".join(clean)


def qp(text: str, final: bool = True) -> bytes:
    """Quoted-printable with CRLF line ends; C speed via binascii.

    `final` marks the end of a part, which always ends with a line break. Any CR, LF or
    CRLF is a line break: a bare CR never reaches the wire (relays that guard against
    SMTP smuggling refuse them).
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
    if encoded[:1] == b"." or b"\n." in encoded:
        encoded = _no_leading_dots(encoded)
    return encoded.replace(b"\n", b"\r\n")


def _no_leading_dots(encoded: bytes) -> bytes:
    """QP lines that begin with "." begin with its escape "=2E" instead, so a message
    never holds a line an SMTP DATA transfer would have to dot-stuff (RFC 5321 4.5.2):
    the transport sends the body as it is. A line the escape makes too long is split
    with a soft line break (which decodes to nothing)."""
    lines = encoded.split(b"\n")
    for i, line in enumerate(lines):
        if line[:1] != b".":
            continue
        line = b"=2E" + line[1:]
        pieces = []
        while len(line) > 76:
            cut = 75
            # Never split an =XX escape, nor leave a dot first on the next line.
            while b"=" in line[cut - 2 : cut] or line[cut : cut + 1] == b".":
                cut -= 1
            pieces.append(line[:cut] + b"=")
            line = line[cut:]
        lines[i] = b"\n".join([*pieces, line])
    return b"\n".join(lines)


def soft_break(encoded: bytes) -> bytes:
    """End a QP piece with a soft line break ("=" CRLF, which decodes to nothing),
    keeping its last line within 76 characters and never splitting an =XX escape."""
    start = encoded.rfind(b"\n") + 1
    last = encoded[start:]
    if len(last) <= 75:
        return encoded + b"=\r\n"
    cut = 75
    # "=" only ever opens an escape in QP output: never split one, nor leave a dot
    # first on the new line.
    while b"=" in last[cut - 2 : cut] or last[cut : cut + 1] == b".":
        cut -= 1
    return encoded[:start] + last[:cut] + b"=\r\n" + last[cut:] + b"=\r\n"


class EncodedSplicer:
    """A sliced body whose fixed pieces are quoted-printable encoded once.

    Each reader's values are encoded alone and joined in between QP soft line
    breaks, so a message costs a few small encodes instead of encoding the whole
    15-30 kB body again, and decodes to exactly the same text.
    """

    def __init__(self, body: Body) -> None:
        last = len(body.parts) - 1
        self.parts = [
            qp(part) if i == last else soft_break(qp(part, final=False))
            for i, part in enumerate(body.parts)
        ]
        self.slots = list(body.slots)
        self._after = list(zip(self.slots, self.parts[1:], strict=True))  # (slot, part)

    def fill(self, values: dict[str, str], encoded: dict[str, bytes] | None = None) -> bytes:
        """The body with these values; `encoded` keeps each distinct value's encoding
        (a link appears several times, in both parts) for the rest of the message."""
        out: list[bytes] = []
        self.fill_into(out, values, {} if encoded is None else encoded)
        return b"".join(out)

    def fill_into(
        self, out: list[bytes], values: dict[str, str], encoded: dict[str, bytes]
    ) -> None:
        """fill(), its pieces appended to `out` instead of joined."""
        out.append(self.parts[0])
        for slot, part in self._after:
            value = values[slot]
            piece = encoded.get(value)
            if piece is None:
                piece = encoded[value] = encode_value(value)
            out += (piece, part)


def encode_value(value: str) -> bytes:
    """One slot value as a QP piece ending in a soft line break.

    A short line of printable ASCII without "=" (a link, most names) is its own
    quoted-printable encoding, as long as it does not end in a space or start with a
    dot (a line of its own that DATA would have to dot-stuff): no encoder needed."""
    if (
        len(value) <= 75
        and value.isascii()
        and value.isprintable()
        and "=" not in value
        and value[-1:] != " "
        and value[:1] != "."
    ):
        return value.encode("ascii") + b"=\r\n"
    return soft_break(qp(value, final=False))


class DotSafe(bytes):
    """A message no line of which begins with a dot (qp escapes one as =2E, and no
    header line starts with one): SMTP DATA sends it as it is, without the scan and the
    copy dot-stuffing costs. Any change to the bytes gives plain bytes again."""

    __slots__ = ()


class Gathered(tuple[bytes, ...]):
    """A message as the byte strings it is made of, in order, dot-safe as DotSafe is:
    the SMTP transport writes the pieces in one gather (sendmsg) without joining them,
    so a 25 kB message is not copied three times on its way to the socket."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return sum(map(len, self))

    def joined(self) -> DotSafe:
        return DotSafe(b"".join(self))


@dataclass(slots=True)
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
    """The fixed bytes of one variant's message; `render` adds one reader's parts.

    `variant_key` is "edition:sections" for an edition; its first field names the
    edition in Feedback-ID, `campaign` the kind of mail.
    """

    def __init__(
        self,
        sender: Sender,
        subject: str,
        date: datetime,
        variant_key: str,
        html: Body | EncodedSplicer,
        text: Body | EncodedSplicer,
        *,
        campaign: str = "edition",
    ) -> None:
        self.boundary = "==digest-" + hashlib.sha256(variant_key.encode()).hexdigest()[:24] + "=="
        list_id = check_header_value(sender.list_id)
        list_name = ascii_phrase(sender.list_name)
        edition = variant_key.split(":", 1)[0]
        fixed = [
            f"From: {_addr(sender.from_name, sender.from_address, 'From')}",
            *([f"Reply-To: {_addr('', sender.reply_to, 'Reply-To')}"] if sender.reply_to else []),
            f"Subject: {_encoded(subject)}",
            f"Date: {format_datetime(date)}",
            f"List-Id: {list_name} <{list_id}>" if list_name else f"List-Id: <{list_id}>",
            # A test copy's unsubscribe link is the generic page: nothing to one-click.
            *(["List-Unsubscribe-Post: List-Unsubscribe=One-Click"] if campaign != "test" else []),
            f"Feedback-ID: {feedback_id(campaign, edition, list_id, sender.feedback_sender)}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative;\r\n boundary="{self.boundary}"',
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
        # Encoded once per variant when the caller keeps them (a send batch's templates).
        self.html = html if isinstance(html, EncodedSplicer) else EncodedSplicer(html)
        self.text = text if isinstance(text, EncodedSplicer) else EncodedSplicer(text)

    def render(self, reader: Reader) -> DotSafe:
        """One reader's message, whole."""
        message = self.gathered(reader)
        return message if isinstance(message, DotSafe) else message.joined()

    def gathered(self, reader: Reader) -> Gathered | DotSafe:
        """One reader's message as its pieces (a DKIM-signed one, whole: the signature
        covers the joined body)."""
        unsubscribe = list_unsubscribe(
            reader.unsubscribe_url, self.sender.unsubscribe_mailto, reader.unsubscribe_token
        )
        encoded: dict[str, bytes] = {}
        mid = check_header_value(reader.message_id)
        # Folded before the id when the line would pass 78 characters (a long domain).
        mid = " " + mid if len(mid) <= 66 else "\r\n " + mid
        out = [
            (
                f"To: {_addr(reader.to_name, reader.to_address)}\r\n"
                f"Message-ID:{mid}\r\n"
                f"List-Unsubscribe: {unsubscribe}\r\n"
            ).encode("ascii"),
            self.head,
            self.text_open,
        ]
        self.text.fill_into(out, reader.text_values, encoded)
        out.append(self.html_open)
        self.html.fill_into(out, reader.html_values, encoded)
        out.append(self.close)
        if self.sender.dkim is not None:
            message = b"".join(out)
            return DotSafe(dkim_header(self.sender.dkim, message) + message)
        return Gathered(out)


def build_message(
    sender: Sender,
    subject: str,
    date: datetime,
    env: Envelope,
    *,
    campaign: str = "notice",
    edition: str = "0",
) -> bytes:
    """A single message's bytes, built by the same template as every edition."""
    template = MessageTemplate(
        sender,
        subject,
        date,
        f"{edition}:{env.message_id}",
        Whole(env.html),
        Whole(env.text),
        campaign=campaign,
    )
    reader = Reader(
        env.to_address,
        env.to_name,
        env.message_id,
        env.unsubscribe_url,
        env.unsubscribe_token,
        {},
        {},
    )
    return template.render(reader)
