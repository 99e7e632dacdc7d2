"""Several SMTP relays as one transport: work shared by weight, failover, and the
relays' rate limits. A layer of the transport seam, like digest/mail/ratelimit.py.

Each message goes to the relay a smooth weighted round robin picks, on one board shared
by every lane of the process: over any run of messages the shares follow the weights
(2:1:1 sends 50/25/25 within a message or two), whatever the number of lanes, batches
or processes. Each lane keeps a connection per relay, so switching costs nothing. A
relay that cannot be reached, drops the connection, runs past its deadline or says 421
is taken out for `down_seconds` and the message goes to another one at once; one that
keeps answering 4xx (`strikes` in a row) is taken out too. With every relay out,
sending raises RelayUnavailable: the batch hands its rows back untried and goes again
when the first relay is due back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from digest.config import Settings, SMTPConfig
from digest.errors import RelayUnavailable, TransientSendError
from digest.mail.ratelimit import RateLimited, limiter_for
from digest.mail.transport import OutboxTransport, SMTPTransport, Transport

RATE_WAIT = 5.0  # the longest a message waits for its relay's rate limit
# A message that failed on one relay within this share of the SMTP deadline may go to
# another at once: so one message takes at most 1.5 deadlines, failover included.
FAILOVER_WITHIN = 0.5


class RelayBoard:
    """Which relays are out and until when, and whose turn it is; shared by the lanes
    of a process."""

    def __init__(
        self,
        down_seconds: float = 30.0,
        strikes: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.down_seconds = down_seconds
        self.strikes_allowed = strikes
        self.clock = clock
        self._lock = threading.Lock()
        self._down_until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}
        self._turns: dict[str, float] = {}

    def is_up(self, name: str) -> bool:
        return self._down_until.get(name, 0.0) <= self.clock()

    def back_in(self, names: Sequence[str]) -> float:
        """Seconds until the first of these relays is due back."""
        now = self.clock()
        return max(0.0, min(self._down_until.get(n, now) for n in names) - now)

    def take_out(self, name: str) -> None:
        with self._lock:
            self._down_until[name] = self.clock() + self.down_seconds
            self._strikes[name] = 0

    def strike(self, name: str) -> bool:
        """One more 4xx in a row; True when that takes the relay out."""
        with self._lock:
            self._strikes[name] = self._strikes.get(name, 0) + 1
            out = self._strikes[name] >= self.strikes_allowed
        if out:
            self.take_out(name)
        return out

    def ok(self, name: str) -> None:
        if self._strikes.get(name):
            with self._lock:
                self._strikes[name] = 0

    def pick(self, names: Sequence[str], weights: Sequence[float]) -> int:
        """The relay (index) whose turn it is, by weight (smooth weighted round robin:
        each candidate gains its weight, the one furthest ahead is chosen and pays back
        the total). Relays left out of a pick (down, tried) neither gain nor pay."""
        with self._lock:
            total = 0.0
            best, best_score = 0, float("-inf")
            for i, (name, weight) in enumerate(zip(names, weights, strict=True)):
                score = self._turns.get(name, 0.0) + weight
                self._turns[name] = score
                total += weight
                if score > best_score:
                    best, best_score = i, score
            self._turns[names[best]] -= total
            return best


class RelayPool:
    """One lane's transport over several relays (see the module docstring)."""

    def __init__(
        self,
        configs: Sequence[SMTPConfig],
        transports: Sequence[Transport],
        board: RelayBoard,
    ) -> None:
        self.configs = list(configs)
        self.transports = list(transports)
        self.board = board
        self.names = [c.name for c in configs]
        self.deadline = max(c.deadline for c in configs)

    def describe(self) -> str:
        return "relays " + ", ".join(f"{c.name} (weight {c.weight:g})" for c in self.configs)

    def fresh(self) -> RelayPool:
        return RelayPool(self.configs, [t.fresh() for t in self.transports], self.board)

    def __enter__(self) -> RelayPool:
        for transport in self.transports:
            transport.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for transport in self.transports:
            transport.__exit__(exc_type, exc, tb)

    def _choose(self, tried: set[int]) -> int:
        up = [
            i for i in range(len(self.names)) if i not in tried and self.board.is_up(self.names[i])
        ]
        if not up:
            names = self.names
            raise RelayUnavailable(
                f"every relay is out ({', '.join(names)}); trying again in "
                f"{self.board.back_in(names):.0f} s",
                max(1.0, self.board.back_in(names)),
            )
        pick = self.board.pick([self.names[i] for i in up], [self.configs[i].weight for i in up])
        return up[pick]

    def send(self, sender: str, recipient: str, message: bytes, message_id: str) -> None:
        started = time.monotonic()
        tried: set[int] = set()
        unavailable: RelayUnavailable | None = None
        while True:
            try:
                index = self._choose(tried)
            except RelayUnavailable:
                if unavailable is not None:
                    raise unavailable from None  # every relay up is at its rate cap
                raise
            name = self.names[index]
            try:
                self.transports[index].send(sender, recipient, message, message_id)
            except RelayUnavailable as exc:  # this relay is at its cap: another may not be
                tried.add(index)
                unavailable = (
                    exc
                    if unavailable is None
                    else min(unavailable, exc, key=lambda e: e.retry_after)
                )
                continue
            except TransientSendError as exc:
                if exc.code is None or exc.code == 421:
                    # Unreachable, dropped, past its deadline or closing: the relay, not
                    # the message. Take it out and try another if this one failed fast.
                    self.board.take_out(name)
                    tried.add(index)
                    if time.monotonic() - started <= FAILOVER_WITHIN * self.deadline:
                        continue  # to another relay, or RelayUnavailable if none is up
                    if not any(self.board.is_up(n) for n in self.names):
                        raise RelayUnavailable(
                            f"every relay is out ({', '.join(self.names)}): {exc}",
                            max(1.0, self.board.back_in(self.names)),
                        ) from None
                else:
                    self.board.strike(name)
                raise
            self.board.ok(name)
            return


_BOARDS: dict[tuple[str, ...], RelayBoard] = {}
_BOARDS_LOCK = threading.Lock()


def board_for(configs: Sequence[SMTPConfig]) -> RelayBoard:
    """This process's board for this set of relays."""
    with _BOARDS_LOCK:
        return _BOARDS.setdefault(tuple(c.name for c in configs), RelayBoard())


def relays_of(settings: Settings) -> tuple[SMTPConfig, ...]:
    """Every relay; `smtp` alone when it was set apart from the list (tests, the CLI)."""
    if settings.smtp is not None and settings.smtp not in settings.smtp_relays:
        return (settings.smtp,)
    return settings.smtp_relays


def message_budget(settings: Settings) -> float:
    """The longest one message may take at the transport: its SMTP deadline, plus the
    wait for a rate-limited relay's token."""
    relays = relays_of(settings)
    if not relays:
        return 5.0
    limited = any(c.rate or c.per_hour or c.per_day for c in relays)
    deadline = max(c.deadline for c in relays) * (1 + FAILOVER_WITHIN if len(relays) > 1 else 1)
    return deadline + (RATE_WAIT if limited else 0.0)


def relay_transport(settings: Settings) -> Transport:
    """SMTP to the configured relay(s), each behind its rate limit when it has one."""
    relays = relays_of(settings)
    layers: list[Transport] = []
    for config in relays:
        transport: Transport = SMTPTransport(config, reuse=True)
        limiter = limiter_for(config, settings.redis_url)
        if limiter is not None:
            transport = RateLimited(transport, limiter, max_wait=RATE_WAIT)
        layers.append(transport)
    if len(layers) == 1:
        return layers[0]
    return RelayPool(relays, layers, board_for(relays))


def make_transport(settings: Settings) -> Transport:
    """The transport the settings ask for: the configured relays (with their rate limits
    and failover) when an SMTP URL is set, else the outbox folder."""
    if settings.smtp is not None or settings.smtp_relays:
        return relay_transport(settings)
    return OutboxTransport(settings.outbox_dir)
