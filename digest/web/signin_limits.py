"""How failed console sign-ins are limited, so that guessing is slow and strangers
cannot lock an operator out.

Failures are counted per client (an IPv6 client per /64) and per (client, name): a
client that keeps failing waits (429). Failures for one name from anywhere never lock
the name; they slow it down: each attempt for that name waits a little longer, up to a
few seconds, whoever sends it. A correct password from a client that has not failed
therefore always signs in. Counters live where the sign-up limits' do (Redis with
DIGEST_REDIS_URL, this process otherwise).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

CLIENT_LIMIT = "5 per minute;30 per hour"
CLIENT_NAME_LIMIT = "5 per minute;20 per hour"
# Failures for one name (from anywhere) within an hour of its first before it is slowed down, the
# delay per failure beyond that, and the most any attempt waits.
NAME_WINDOW_SECONDS = 3600
NAME_FREE = 10
NAME_STEP = 0.1
NAME_MAX_DELAY = 3.0
NAME_LOGIN_MAX = 64
# At most one audit entry per client per this many seconds says it was refused.
REFUSAL_NOTE_SECONDS = 600


def login_name(raw: str) -> str:
    """The name a sign-in is for, normalised once: every limit and the sign-in itself
    use this (so padding or case cannot buy a fresh counter)."""
    return raw.strip().lower()[:NAME_LOGIN_MAX]


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in was not even tried, and how long until it may be."""

    retry_after: int
    first_in_window: bool


class SigninLimits:
    """The counters of failed sign-ins (see the module's docstring)."""

    def __init__(self, storage: Storage | Any) -> None:
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)
        self.per_client = parse_many(CLIENT_LIMIT)
        self.per_client_name = parse_many(CLIENT_NAME_LIMIT)

    def _checks(self, client: str, name: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return [(i, ("digest-signin-client", client)) for i in self.per_client] + [
            (i, ("digest-signin-client-name", client, _h(name))) for i in self.per_client_name
        ]

    def refused(self, client: str, name: str, now: float) -> Refusal | None:
        """A Refusal when this client (or this client for this name) failed too often."""
        waits = []
        for item, keys in self._checks(client, name):
            if not self.limiter.test(item, *keys):
                reset, _ = self.limiter.get_window_stats(item, *keys)
                waits.append(max(1, int(reset - now) + 1))
        if not waits:
            return None
        note_key = "digest-signin-refusal:" + _h(client)
        first = self.storage.incr(note_key, REFUSAL_NOTE_SECONDS) == 1
        return Refusal(max(waits), first)

    def name_failures(self, name: str) -> int:
        """Failures for this name in the last hour, from any client."""
        return int(self.storage.get("digest-signin-name:" + _h(name)) or 0)

    def delay(self, name: str) -> float:
        """How long an attempt for this name waits before its password is checked."""
        over = self.name_failures(name) - NAME_FREE
        return 0.0 if over <= 0 else min(NAME_MAX_DELAY, NAME_STEP * over)

    def failed(self, client: str, name: str) -> None:
        """Count one failed sign-in against the client, the (client, name) and the name."""
        for item, keys in self._checks(client, name):
            self.limiter.hit(item, *keys)
        self.storage.incr("digest-signin-name:" + _h(name), NAME_WINDOW_SECONDS)


def wait(seconds: float) -> None:
    """The delay itself (a separate function so the app can be given another)."""
    if seconds > 0:
        time.sleep(seconds)
