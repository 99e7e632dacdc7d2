"""Limits that keep the sign-up form from being used to mail people in bulk.

Per client address (applied by Flask-Limiter in the web app), per recipient mailbox
(plus-address and case variants count as one; not for a request that came through a
link in the mailbox's own email), a global hourly budget of confirmation emails (past
it, sign-ups that do a proof of work still go, up to CEILING times the budget: see
signup_challenge), and one use per form token. The counters live in Redis when DIGEST_REDIS_URL
is set, so every web worker shares them, and in this process's memory otherwise.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import threading
import time
from collections import deque

from limits import RateLimitItem, RateLimitItemPerHour, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from digest.config import Settings
from digest.errors import ConfigError
from digest.mail.addresses import mailbox_of

CEILING = 4


def storage_uri(settings: Settings) -> str:
    """The `limits` storage for the settings: their Redis, or process memory."""
    url = settings.redis_url
    if not url:
        return "memory://"
    if url.startswith("redis+socket://"):  # kombu's spelling of a unix socket
        return "redis+unix://" + url.removeprefix("redis+socket://")
    if url.startswith("unix://"):
        return "redis+unix://" + url.removeprefix("unix://")
    return url


def parse_limits(name: str, value: str) -> list[RateLimitItem]:
    """'10 per hour;30 per day' as limit items, or ConfigError naming the setting."""
    try:
        return parse_many(value)
    except ValueError:
        raise ConfigError(
            f"{name} must look like '10 per hour' or '10/hour;30/day', got {value!r}"
        ) from None


def mailbox_key(email: str) -> str:
    """One key per mailbox (see addresses.mailbox_of), hashed: no address is kept."""
    return hashlib.sha256(mailbox_of(email).encode()).hexdigest()[:32]


class SignupGuard:
    """The shared counters behind the sign-up form's limits."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.storage = storage or storage_from_string(storage_uri(settings))
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.per_mailbox = parse_limits(
            "DIGEST_SIGNUP_MAILBOX_LIMIT", settings.signup_mailbox_limit
        )
        self.budget = RateLimitItemPerHour(max(1, settings.signup_mails_per_hour))
        # Past the budget, sign-ups that did the proof of work: at most this many more.
        self.ceiling = RateLimitItemPerHour(max(1, settings.signup_mails_per_hour) * CEILING)
        self.form_ttl = 13 * 3600  # outlives the form token itself (12 hours)

    def claim_form_token(self, token: str) -> bool:
        """True the first time a form token is used, False ever after."""
        key = "digest:form:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        return self.storage.incr(key, self.form_ttl) == 1

    def budget_left(self) -> bool:
        """Whether the hourly budget of confirmation emails has any left."""
        return self.limiter.test(self.budget, "digest-signup-budget")

    def take_mail(self, email: str, *, owner: bool = False, proven: bool = False) -> bool:
        """Count one email to this mailbox against its limits and the global budget;
        False (and nothing counted) when either is spent.

        `owner`: the request came through a link from the mailbox's own email, so
        strangers' requests cannot have used up its allowance. `proven`: it did the
        slower path's proof of work, so it may go past the budget (up to a ceiling)."""
        key = mailbox_key(email)
        mailbox_ok = all(self.limiter.test(i, "digest-mailbox", key) for i in self.per_mailbox)
        if not (mailbox_ok or owner):
            return False
        if not self.limiter.hit(self.budget, "digest-signup-budget"):
            if not (proven and self.limiter.hit(self.ceiling, "digest-signup-ceiling")):
                return False
        for item in self.per_mailbox:
            self.limiter.hit(item, "digest-mailbox", key)
        return True


class SendPacer:
    """Makes a sign-up that sends nothing take about as long as one that sends.

    Otherwise the answer's timing would tell whether an address was signed up moments
    ago (a repeat is answered without mail). Keeps the last real send times.
    """

    def __init__(self, default: float = 0.2, keep: int = 50) -> None:
        self.samples: deque[float] = deque([default], maxlen=keep)
        self.lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self.lock:
            self.samples.append(min(seconds, 10.0))

    def typical(self) -> float:
        with self.lock:
            return statistics.median(self.samples)

    def pad(self, started: float) -> None:
        """Sleep until a typical send would have finished, counted from `started`."""
        target = self.typical() * random.uniform(0.85, 1.15)
        left = started + target - time.monotonic()
        if left > 0:
            time.sleep(left)
