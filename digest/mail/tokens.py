"""Signed tokens for subscriber links, and the deterministic Message-ID."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

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


def sign(secret: str, message: str) -> str:
    """A short URL-safe HMAC-SHA256 (128 bits) of message under secret."""
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


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


def seal(
    secret: str, purpose: str, subscriber_id: int, expires: datetime, data: dict[str, str]
) -> str:
    """A token like make_token's that also carries `data`, signed with it: what a sign-up
    asked for travels in its own confirmation link, so no later request can change it."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    sid, exp = _b36(subscriber_id), _b36(int(expires.timestamp()))
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
    # Four parts, where make_token signs three: one kind can never pass for the other.
    return f"{sid}.{exp}.{payload}.{sign(secret, f'{purpose}+|{sid}|{exp}|{payload}')}"


def unseal(
    secret: str, purpose: str, token: str, now: datetime | None = None
) -> tuple[int, dict[str, str]]:
    """The subscriber id and data a sealed token carries, or InvalidToken."""
    parts = token.split(".") if isinstance(token, str) and len(token) < 2000 else []
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


def message_id(secret: str, edition_id: int, subscriber_id: int, domain: str) -> str:
    """The same Message-ID every time this edition goes to this subscriber."""
    tag = (
        sign(secret, f"msgid|{edition_id}|{subscriber_id}")[:10].replace("-", "x").replace("_", "y")
    )
    return f"<digest.{edition_id}.{subscriber_id}.{tag}@{domain}>"
