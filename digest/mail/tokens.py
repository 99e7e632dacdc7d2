"""Signed tokens for subscriber links, and the deterministic Message-ID."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from digest.errors import InvalidToken

PURPOSES = ("unsubscribe", "confirm", "preferences", "view", "keep")


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _pads(secret: str) -> tuple[Any, Any]:
    """SHA-256 with HMAC's inner and outer keys already absorbed (RFC 2104): copying
    them costs a fraction of keying a new HMAC, and a message signs several tokens."""
    found = _PADS.get(secret)
    if found is None:
        key = secret.encode()
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        if len(_PADS) >= 16:
            _PADS.clear()
        found = _PADS[secret] = (
            hashlib.sha256(key.translate(_IPAD)),
            hashlib.sha256(key.translate(_OPAD)),
        )
    return found


_PADS: dict[str, tuple[Any, Any]] = {}
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def mac(secret: str, message: bytes) -> bytes:
    """HMAC-SHA256 of message under secret (the same bytes as hmac.new(...).digest())."""
    inner, outer = _pads(secret)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


def _short(digest: bytes) -> str:
    """The first 128 bits, URL-safe base64 without padding."""
    return binascii.b2a_base64(digest[:16], newline=False)[:22].translate(_URLSAFE).decode()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def sign(secret: str, message: str) -> str:
    """A short URL-safe HMAC-SHA256 (128 bits) of message under secret."""
    return _short(mac(secret, message.encode()))


def _signed(purpose: str, scope: str, sid: str, exp: str) -> str:
    # A scoped token (a view link names its edition) signs purpose and scope together,
    # so it is good for that one thing only.
    return f"{purpose}:{scope}|{sid}|{exp}" if scope else f"{purpose}|{sid}|{exp}"


def make_token(
    secret: str,
    purpose: str,
    subscriber_id: int,
    expires: datetime | None = None,
    *,
    scope: str = "",
) -> str:
    """A URL-safe token binding purpose, subscriber, optional scope and expiry under an HMAC."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    exp = _b36(int(expires.timestamp())) if expires else ""
    sid = _b36(subscriber_id)
    return f"{sid}.{exp}.{sign(secret, _signed(purpose, scope, sid, exp))}"


def reader_tokens(secret: str, subscriber_id: int, scope: str) -> tuple[str, str, str]:
    """A reader's unsubscribe, preferences and `scope`d view tokens, exactly as
    make_token makes them (no expiry), in one go: the send path's share of the work."""
    sid = _b36(subscriber_id)
    unsubscribe = _short(mac(secret, f"unsubscribe|{sid}|".encode()))
    preferences = _short(mac(secret, f"preferences|{sid}|".encode()))
    view = _short(mac(secret, f"view:{scope}|{sid}|".encode()))
    return f"{sid}..{unsubscribe}", f"{sid}..{preferences}", f"{sid}..{view}"


def read_token(
    secret: str, purpose: str, token: str, now: datetime | None = None, *, scope: str = ""
) -> int:
    """The subscriber id a token was made for, or InvalidToken."""
    parts = token.split(".") if isinstance(token, str) and len(token) < 100 else []
    if len(parts) != 3:
        raise InvalidToken("this link is malformed")
    sid, exp, mac = parts
    expected = sign(secret, _signed(purpose, scope, sid, exp))
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise InvalidToken("this link is not valid")
    try:
        subscriber_id = int(sid, 36)
        expires = int(exp, 36) if exp else None
    except ValueError:
        raise InvalidToken("this link is malformed") from None
    if expires is not None and (now or datetime.now(UTC)).timestamp() > expires:
        raise InvalidToken("this link has expired")
    return subscriber_id


# The most JSON a sealed token may carry, and so the longest such token unseal reads:
# a sign-up's request at its largest (see accounts.largest_request) fits with room left.
SEALED_DATA_MAX = 2048
SEALED_MAX = 13 + 1 + 13 + 1 + -(-SEALED_DATA_MAX // 3) * 4 + 1 + 22


def seal(
    secret: str, purpose: str, subscriber_id: int, expires: datetime, data: dict[str, str]
) -> str:
    """A token like make_token's that also carries `data`, signed with it: what a sign-up
    asked for travels in its own confirmation link, so no later request can change it."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    sid, exp = _b36(subscriber_id), _b36(int(expires.timestamp()))
    body = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    if len(body) > SEALED_DATA_MAX:
        raise ValueError(f"{len(body)} bytes are too many for a sealed token")
    payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
    # Four parts, where make_token signs three: one kind can never pass for the other.
    return f"{sid}.{exp}.{payload}.{sign(secret, f'{purpose}+|{sid}|{exp}|{payload}')}"


def unseal(
    secret: str, purpose: str, token: str, now: datetime | None = None
) -> tuple[int, dict[str, str]]:
    """The subscriber id and data a sealed token carries, or InvalidToken."""
    parts = token.split(".") if isinstance(token, str) and len(token) <= SEALED_MAX else []
    if len(parts) != 4:
        raise InvalidToken("this link is not valid")
    sid, exp, payload, mac = parts
    expected = sign(secret, f"{purpose}+|{sid}|{exp}|{payload}")
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise InvalidToken("this link is not valid")
    try:
        subscriber_id, expires = int(sid, 36), int(exp, 36)
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        raise InvalidToken("this link is malformed") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidToken("this link is malformed")
    if (now or datetime.now(UTC)).timestamp() > expires:
        raise InvalidToken("this link has expired")
    return subscriber_id, data


def click_token(secret: str, edition_id: int, article_id: int) -> str:
    """The part of a click link fixed per rendering: it names an edition and an article
    of it, nothing else (aggregate mode: nothing ties a click to a reader)."""
    e, a = _b36(edition_id), _b36(article_id)
    return f"{e}.{a}.{sign(secret, f'click|{e}|{a}')}"


def click_reader_part(secret: str, edition_id: int, subscriber_id: int) -> str:
    """What reader mode appends to every click link of one message: the reader, signed
    with the edition (so one value serves all of the message's links)."""
    e, s = _b36(edition_id), _b36(subscriber_id)
    return f".{s}.{sign(secret, f'clickr|{e}|{s}')}"


def read_click(secret: str, token: str) -> tuple[int, int, int | None]:
    """(edition, article, reader or None) a click token names, or InvalidToken."""
    parts = token.split(".") if isinstance(token, str) and len(token) < 120 else []
    if len(parts) not in (3, 5):
        raise InvalidToken("this link is malformed")
    e, a, mac = parts[:3]
    if not hmac.compare_digest(mac.encode(), sign(secret, f"click|{e}|{a}").encode()):
        raise InvalidToken("this link is not valid")
    reader: int | None = None
    if len(parts) == 5:
        s, rmac = parts[3:]
        if not hmac.compare_digest(rmac.encode(), sign(secret, f"clickr|{e}|{s}").encode()):
            raise InvalidToken("this link is not valid")
        reader = _int36(s)
    return _int36(e), _int36(a), reader


def open_token(secret: str, edition_id: int) -> str:
    """The tracking pixel's name: the edition only."""
    e = _b36(edition_id)
    return f"{e}.{sign(secret, f'open|{e}')}"


def read_open(secret: str, token: str) -> int:
    """The edition an open token names, or InvalidToken."""
    e, _, mac = token.partition(".") if isinstance(token, str) and len(token) < 60 else ("", "", "")
    if not e or not hmac.compare_digest(mac.encode(), sign(secret, f"open|{e}").encode()):
        raise InvalidToken("this link is not valid")
    return _int36(e)


def _int36(text: str) -> int:
    try:
        value = int(text, 36)
    except ValueError:
        raise InvalidToken("this link is malformed") from None
    if not 0 < value < 2**31:
        raise InvalidToken("this link is malformed")
    return value


def _message_tag(secret: str, fields: str) -> str:
    return sign(secret, f"msgid|{fields}")[:10].replace("-", "x").replace("_", "y")


def message_id(
    secret: str, installation: str, edition_id: int, subscriber_id: int, domain: str
) -> str:
    """The same Message-ID every time this installation sends this edition to this
    subscriber: `<digest.EDITION.SUBSCRIBER.TAG.INSTALLATION@domain>`. The installation
    id (one per database) keeps databases that share a secret key from minting the same
    one; the tag, an HMAC over all three, lets a bounce that quotes it name the reader."""
    tag = _message_tag(secret, f"{installation}|{edition_id}|{subscriber_id}")
    return f"<digest.{edition_id}.{subscriber_id}.{tag}.{installation}@{domain}>"


def _legacy_message_id(secret: str, edition_id: int, subscriber_id: int, domain: str) -> str:
    """The Message-ID minted before installation ids (`<digest.E.S.TAG@domain>`): still
    recognised when a late bounce quotes one."""
    tag = _message_tag(secret, f"{edition_id}|{subscriber_id}")
    return f"<digest.{edition_id}.{subscriber_id}.{tag}@{domain}>"


_OUR_ID = re.compile(
    r"<digest\.(\d{1,18})\.(\d{1,18})\.[A-Za-z0-9]{1,20}(?:\.([a-z0-9]{4,16}))?"
    r"@([^>\s]{1,255})>"
)


@dataclass(frozen=True)
class OurMessageId:
    """What a Message-ID of ours names; `installation` is "" for one minted before
    installation ids (it cannot say which database sent it)."""

    edition_id: int
    subscriber_id: int
    installation: str


def read_message_id(secret: str, value: str) -> OurMessageId | None:
    """The edition, subscriber and installation a Message-ID of ours names, if its HMAC
    tag holds (under this key, whichever installation minted it)."""
    found = _OUR_ID.search(value or "")
    if found is None:
        return None
    edition_id, subscriber_id = int(found.group(1)), int(found.group(2))
    installation, domain = found.group(3) or "", found.group(4)
    expected = (
        message_id(secret, installation, edition_id, subscriber_id, domain)
        if installation
        else _legacy_message_id(secret, edition_id, subscriber_id, domain)
    )
    if not hmac.compare_digest(expected.encode(), found.group(0).encode()):
        return None
    return OurMessageId(edition_id, subscriber_id, installation)


def single_message_id(kind: str, installation: str, domain: str) -> str:
    """A random Message-ID for a message sent once (sign-up email, test copy):
    `<kind.INSTALLATION.16 hex@domain>` (a long domain puts it on a line of its own)."""
    middle = f"{installation}." if installation else ""
    return f"<{kind}.{middle}{secrets.token_hex(8)}@{domain}>"
