"""A relay's rate limit, shared by every lane, batch, worker and machine.

A token bucket (`rate` tokens a second, at most `burst` saved up) plus optional caps per
clock hour and per UTC day. With Redis the bucket lives there and every process takes
from it in one atomic script on Redis's clock; without Redis it lives in this process.
A 421, 451 or 454 reply halves the relay's rate for a minute (down to an eighth), for
everyone: the relay said "slow down", not "not this message".

`RateLimited` is a layer of the transport seam: it wraps any Transport.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from digest.config import SMTPConfig
from digest.errors import RelayUnavailable, TransientSendError
from digest.mail.message import Gathered
from digest.mail.transport import Transport

SLOW_DOWN_CODES = (421, 451, 454)
SLOW_SECONDS = 60.0
SLOWEST = 0.125
EPSILON = 1e-9


@dataclass(frozen=True)
class Limits:
    """How fast one relay may be sent to."""

    rate: float  # messages per second (> 0)
    burst: float  # the bucket's size: messages that may go at once
    per_hour: int = 0  # 0: no cap
    per_day: int = 0

    @classmethod
    def of(cls, config: SMTPConfig) -> Limits | None:
        """The relay's limits, or None when it has none."""
        if not (config.rate or config.per_hour or config.per_day):
            return None
        rate = config.rate or 1e6  # only caps: no per-second limit to speak of
        return cls(rate, config.burst or max(1.0, rate), config.per_hour, config.per_day)


def take_token(
    tokens: float, stamp: float, now: float, rate: float, burst: float
) -> tuple[float, float]:
    """The token bucket, pure: refill since `stamp`, then take one token if there is.

    Returns (tokens left, seconds to wait): a wait of 0 means the token was taken.
    """
    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1 - EPSILON:  # a token refilled to 0.9999999... is a token
        return max(0.0, tokens - 1), 0.0
    return tokens, (1 - tokens) / rate


def window_wait(count: int, cap: int, now: float, window: float) -> float:
    """Seconds until a fixed window (an hour, a day) with `count` sent has room again."""
    if not cap or count < cap:
        return 0.0
    return window - math.fmod(now, window)


class Limiter(Protocol):
    def take(self) -> float:
        """Take one message's permission; returns 0, or the seconds to wait first."""
        ...

    def slow_down(self) -> None:
        """The relay said to slow down: halve its rate for a while, for everyone."""
        ...


class LocalLimiter:
    """The bucket in this process (no Redis): shared by its lanes and batches."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens = limits.burst
        self._stamp = clock()
        self._slow, self._slow_until = 1.0, 0.0
        self._windows: dict[float, tuple[int, int]] = {3600.0: (-1, 0), 86400.0: (-1, 0)}

    def take(self) -> float:
        with self._lock:
            now = self.clock()
            if now >= self._slow_until:
                self._slow = 1.0
            caps = {3600.0: self.limits.per_hour, 86400.0: self.limits.per_day}
            counts = {}
            for window, cap in caps.items():
                index, count = self._windows[window]
                count = count if index == int(now // window) else 0
                counts[window] = count
                if wait := window_wait(count, cap, now, window):
                    return wait
            rate = self.limits.rate * self._slow
            self._tokens, wait = take_token(self._tokens, self._stamp, now, rate, self.limits.burst)
            self._stamp = now
            if wait:
                return wait
            for window in caps:
                self._windows[window] = (int(now // window), counts[window] + 1)
            return 0.0

    def slow_down(self) -> None:
        with self._lock:
            self._slow = max(SLOWEST, self._slow / 2)
            self._slow_until = self.clock() + SLOW_SECONDS


# The same bucket as take_token and window_wait, on Redis's clock, in one atomic step.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local caps = {{KEYS[3], tonumber(ARGV[3]), 3600}, {KEYS[4], tonumber(ARGV[4]), 86400}}
local counts = {}
for i, cap in ipairs(caps) do
  local key = cap[1] .. ':' .. math.floor(now / cap[3])
  counts[i] = key
  if cap[2] > 0 then
    local n = tonumber(redis.call('GET', key) or '0')
    if n >= cap[2] then return tostring(cap[3] - math.fmod(now, cap[3])) end
  end
end
rate = rate * tonumber(redis.call('GET', KEYS[2]) or '1')
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1]) or burst
local stamp = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 - 1e-9 then tokens = math.max(0, tokens - 1) else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
if wait > 0 then return tostring(wait) end
for i, cap in ipairs(caps) do
  if cap[2] > 0 then
    redis.call('INCR', counts[i])
    redis.call('EXPIRE', counts[i], 2 * cap[3])
  end
end
return '0'
"""

_SLOW_DOWN = """
local slow = tonumber(redis.call('GET', KEYS[1]) or '1')
slow = math.max(tonumber(ARGV[1]), slow / 2)
redis.call('SET', KEYS[1], tostring(slow), 'PX', ARGV[2])
return tostring(slow)
"""


class RedisLimiter:
    """The bucket in Redis, under `digest:relay:<host:port>:*`: every worker shares it."""

    def __init__(self, client: Any, relay: str, limits: Limits) -> None:
        self.limits = limits
        prefix = f"digest:relay:{relay}"
        self.keys = [f"{prefix}:bucket", f"{prefix}:slow", f"{prefix}:hour", f"{prefix}:day"]
        self._take = client.register_script(_TAKE)
        self._slow_down = client.register_script(_SLOW_DOWN)

    def take(self) -> float:
        limits = self.limits
        args = [limits.rate, limits.burst, limits.per_hour, limits.per_day]
        return float(self._take(keys=self.keys, args=args))

    def slow_down(self) -> None:
        self._slow_down(keys=[self.keys[1]], args=[SLOWEST, int(SLOW_SECONDS * 1000)])


def redis_client(url: str, **options: Any) -> Any:
    """A redis-py client for digest's Redis URL (kombu's redis+socket:// too, the
    embedded server's spelling); `options` go to redis.Redis (timeouts, say)."""
    import redis

    if url.startswith("redis+socket://"):
        path = url.removeprefix("redis+socket://").split("?", 1)[0]
        return redis.Redis(unix_socket_path=path, **options)
    return redis.Redis.from_url(url, **options)


_LOCAL: dict[tuple[str, Limits], LocalLimiter] = {}
_LOCAL_LOCK = threading.Lock()


def limiter_for(config: SMTPConfig, redis_url: str | None) -> Limiter | None:
    """The shared limiter of this relay: in Redis when there is one, else this
    process's. None when the relay has no limits."""
    limits = Limits.of(config)
    if limits is None:
        return None
    if redis_url:
        return RedisLimiter(redis_client(redis_url), config.name, limits)
    with _LOCAL_LOCK:
        return _LOCAL.setdefault((config.name, limits), LocalLimiter(limits))


class RateLimited:
    """A transport that waits for the relay's limiter before each message, and slows
    the whole relay down when it answers 421, 451 or 454.

    It waits at most `max_wait` seconds for one message; past that (an hourly cap
    reached, say) it raises RelayUnavailable and the batch gives its rows back.
    """

    def __init__(
        self,
        inner: Transport,
        limiter: Limiter,
        max_wait: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.limiter = limiter
        self.max_wait = max_wait
        self.sleep = sleep

    def describe(self) -> str:
        return f"{self.inner.describe()}, rate-limited"

    def fresh(self) -> RateLimited:
        return RateLimited(self.inner.fresh(), self.limiter, self.max_wait, self.sleep)

    def __enter__(self) -> RateLimited:
        self.inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.inner.__exit__(exc_type, exc, tb)

    def wait_for_token(self) -> None:
        waited = 0.0
        while wait := self.limiter.take():
            if waited + wait > self.max_wait:
                raise RelayUnavailable(
                    f"{self.inner.describe()} is at its rate limit for {wait:.0f} s more", wait
                )
            self.sleep(wait)
            waited += wait

    def send(self, sender: str, recipient: str, message: bytes, message_id: str) -> None:
        self.wait_for_token()
        self._heeding(lambda: self.inner.send(sender, recipient, message, message_id))

    # An SMTP relay's begin/end and prepare (see SMTPTransport), so that one thread can
    # take a rate-limited relay's connections in turn too: the token is taken when a
    # message begins, a "slow down" is heeded whichever half hears it.

    def prepare(self, sender: str, recipient: str) -> None:
        self.inner.prepare(sender, recipient)  # type: ignore[attr-defined]

    def begin(self, sender: str, recipient: str, message: bytes | Gathered) -> None:
        self.wait_for_token()
        self._heeding(lambda: self.inner.begin(sender, recipient, message))  # type: ignore[attr-defined]

    def end(self) -> None:
        self._heeding(self.inner.end)  # type: ignore[attr-defined]

    def _heeding(self, step: Callable[[], None]) -> None:
        try:
            step()
        except TransientSendError as exc:
            if exc.code in SLOW_DOWN_CODES:
                self.limiter.slow_down()
            raise
