"""Signed tokens for subscriber links, and the deterministic Message-ID."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime

from digest.errors import InvalidToken

PURPOSES = ("unsubscribe", "confirm", "preferences", "view")


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


def message_id(secret: str, edition_id: int, subscriber_id: int, domain: str) -> str:
    """The same Message-ID every time this edition goes to this subscriber."""
    tag = (
        sign(secret, f"msgid|{edition_id}|{subscriber_id}")[:10].replace("-", "x").replace("_", "y")
    )
    return f"<digest.{edition_id}.{subscriber_id}.{tag}@{domain}>"


def single_message_id(kind: str, domain: str) -> str:
    """A short, random Message-ID for a message sent once (sign-up email, test copy):
    `<kind.16 hex@domain>`, so that the header stays within 78 characters."""
    return f"<{kind}.{secrets.token_hex(8)}@{domain}>"
