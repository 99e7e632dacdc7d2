"""The sign-up form's slower path when the hourly budget of confirmation emails is spent:
a proof of work the reader's browser does in about a second (SHA-256 of the signed
challenge and a counter, with POW_BITS leading zero bits), instead of a refusal for
everyone. Pure functions: time is passed in, the caller makes each challenge single-use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

POW_BITS = 16
POW_TTL = timedelta(minutes=15)
_MAX_NONCE_DIGITS = 12


def _mac(secret: str, body: str) -> str:
    return hmac.new(secret.encode(), f"signup-pow|{body}".encode(), hashlib.sha256).hexdigest()[:32]


def make_challenge(secret: str, now: datetime, bits: int = POW_BITS) -> str:
    """A signed challenge: when it was made, how hard it is, and a random part."""
    body = f"{int(now.timestamp())}.{bits}.{secrets.token_hex(8)}"
    return f"{body}.{_mac(secret, body)}"


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits a digest starts with."""
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def solution_ok(secret: str, challenge: str, nonce: str, now: datetime) -> bool:
    """Whether `nonce` solves this challenge (made here, not expired, hard enough)."""
    parts = challenge.split(".")
    if len(parts) != 4 or not nonce.isascii() or not nonce.isdigit():
        return False
    if len(nonce) > _MAX_NONCE_DIGITS:
        return False
    stamp, bits, _, mac = parts
    if not hmac.compare_digest(mac, _mac(secret, ".".join(parts[:3]))):
        return False
    made = datetime.fromtimestamp(int(stamp), now.tzinfo)
    if not now - POW_TTL <= made <= now + timedelta(minutes=1):
        return False
    digest = hashlib.sha256(f"{challenge}:{nonce}".encode()).digest()
    return leading_zero_bits(digest) >= int(bits)


def solve(challenge: str) -> str:
    """The first nonce that solves a challenge (what the page's script does; tests)."""
    bits = int(challenge.split(".")[1])
    n = 0
    while leading_zero_bits(hashlib.sha256(f"{challenge}:{n}".encode()).digest()) < bits:
        n += 1
    return str(n)
