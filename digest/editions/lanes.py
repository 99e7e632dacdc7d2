"""One send batch's lanes: the messages a lane has on its SMTP connections (`Flight`),
what each message costs per reader (`address_reader`), and how each outcome is counted
(`BatchReport`) and recorded. sending.py claims the rows, builds the templates and runs
the lanes; this module sends and lands one message at a time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from digest import store
from digest.config import Settings
from digest.editions.clicks import reader_part
from digest.editions.halt import HaltWatch
from digest.editions.heartbeat import Heartbeat
from digest.editions.render import html_escaped, slot_values
from digest.errors import (
    HeaderInjection,
    PermanentSendError,
    RelayUnavailable,
    TransientSendError,
)
from digest.mail.message import MessageTemplate, Reader
from digest.mail.returns import envelope_sender
from digest.mail.tokens import message_id, reader_tokens
from digest.mail.transport import Transport
from digest.words import counted

Progress = Callable[[int, int], None]


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    suppressed: int = 0
    errors: list[str] = field(default_factory=list)
    # Claimed rows given back to the queue unsent (the lane ran out of time, or stopped).
    handed_back: list[int] = field(default_factory=list)
    # Set when no relay could take a message: try again in this many seconds.
    retry_after: float = 0.0
    # Claimed rows given back unsent because their edition was paused or cancelled:
    # not to be tried again until it is resumed.
    held: list[int] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.sent + self.deferred + self.failed + self.suppressed

    def count(self, outcome: str, email: str, error: str | None = None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if error and len(self.errors) < 100:
            self.errors.append(f"{email}: {error}")

    def add(self, other: BatchReport) -> None:
        for name in ("claimed", "sent", "deferred", "failed", "suppressed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors[:20])
        self.handed_back.extend(other.handed_back)
        self.held.extend(other.held)
        self.retry_after = max(self.retry_after, other.retry_after)


def address_reader(
    settings: Settings,
    installation: str,
    edition_id: int,
    subscriber_id: int,
    email: str,
    name: str,
) -> Reader:
    """One reader's slot values and ids, for the pre-encoded message template (the same
    links as reader_links, its tokens signed in one go: this runs for every message).
    `installation` is the database's id (store.installation_id), read once per batch."""
    secret, base = settings.secret_key, settings.base_url
    unsubscribe, preferences, view = reader_tokens(secret, subscriber_id, str(edition_id))
    unsubscribe_url = f"{base}/unsubscribe/{unsubscribe}"
    text_values = slot_values(
        name=name,
        for_html=False,
        unsubscribe_url=unsubscribe_url,
        preferences_url=f"{base}/preferences/{preferences}",
        view_url=f"{base}/editions/{edition_id}/{view}",
        click_reader=reader_part(settings, edition_id, subscriber_id),
    )
    return Reader(
        to_address=email,
        to_name=name,
        message_id=message_id(
            secret, installation, edition_id, subscriber_id, settings.sender_domain
        ),
        unsubscribe_url=unsubscribe_url,
        unsubscribe_token=unsubscribe,
        html_values=html_escaped(text_values),
        text_values=text_values,
    )


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Exponential: base, 2x base, 4x base ... capped."""
    seconds = settings.retry_base_seconds * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.retry_max_seconds))


@dataclass
class Lane:
    """What the parallel lanes of one batch share; `run` sends one lane's rows."""

    settings: Settings
    templates: dict[int, MessageTemplate]
    now: datetime
    report: BatchReport
    record: store.Recorder  # one per batch: group commits, the claim's current value
    beat: Heartbeat
    stop_at: float  # time.monotonic() after which no message may still be under way
    per_message: float  # the longest one message may take (its SMTP deadline)
    installation: str  # the database's installation id, part of every Message-ID
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    halt: HaltWatch | None = None  # an operator paused or cancelled the edition
    # Told how far the batch is, twice a second, by a lane that runs in the caller's
    # thread (lanes on threads of their own leave that to the caller).
    progress: Progress | None = None
    total: int = 0

    def go_on(self) -> bool:
        """Whether another message may start: it must end before the lane's stop and
        inside the claim, whatever the relay does (its deadline bounds it)."""
        if self.stop.is_set() or time.monotonic() + self.per_message > self.stop_at:
            return False
        if self.record.failing is not None:
            # Replies cannot be recorded (the database is away): what is sent now would
            # be sent again. The lanes stop; what they sent waits in the recorder.
            self.stop.set()
            return False
        return self.beat.holds(self.per_message)

    def run(self, transports: Sequence[Transport], rows: Sequence[Any]) -> None:
        """Send rows over these connections in turn (see `Flight`); rows left unsent go
        back to the queue."""
        pending = {row.id for row in rows}
        held: set[int] = set()
        record = self.record
        flight = Flight(self, transports, pending)
        try:
            with ExitStack() as stack:
                for transport in transports:
                    stack.enter_context(transport)
                statuses: dict[int, str] = {}  # the claim read every reader's status
                read_at = told_at = time.monotonic()
                for i, row in enumerate(rows):
                    if not self.go_on():
                        break
                    if self.progress is not None and time.monotonic() - told_at >= 0.5:
                        self.progress(self.report.done, self.total)
                        told_at = time.monotonic()
                    if i % 100 == 0 and time.monotonic() - read_at >= 1.0:
                        # Re-read statuses as we go (every 100 messages, once a second at
                        # most): an unsubscribe during the edition wins.
                        statuses = record.statuses([r.subscriber_id for r in rows[i : i + 100]])
                        read_at = time.monotonic()
                    if self.halt is not None and self.halt.halted(row.edition_id):
                        held.add(row.id)  # goes back untried, sent only after a resume
                        continue
                    flight.begin(row, rows, i, statuses)
                flight.land_all()
        except RelayUnavailable as exc:
            # No relay can take mail now: the rows go back untried (no attempt spent)
            # and the batch goes again when the first relay is due back.
            flight.land_quietly()
            with self.lock:
                self.report.retry_after = max(self.report.retry_after, exc.retry_after)
                if len(self.report.errors) < 100:
                    self.report.errors.append(str(exc))
            self.stop.set()  # the other lanes would only find the same
        except Exception:
            flight.land_quietly()
            if self.record.failing is None:
                self._hand_back(pending, quiet=True)
                raise
            # Recording failed (the database went away): stop every lane, and write what
            # was sent once the database is back (below), so nothing is sent twice.
            self.stop.set()
        except BaseException:
            # The error that stopped the lane is the one to report: a hand-back
            # that fails too (the database went away) must not replace it.
            flight.land_quietly()
            self._hand_back(pending, quiet=True)
            raise
        self._hand_back(pending, held=held)

    def _hand_back(
        self, pending: set[int], quiet: bool = False, held: set[int] | None = None
    ) -> None:
        held = held or set()

        def hand_back() -> None:
            if pending:
                self.record.release(sorted(pending))
            else:
                self.record.flush()  # this lane's replies are recorded before it ends

        try:
            if quiet:
                hand_back()
            else:
                # Through an outage, for as long as the claim lasts (the rows are ours
                # until then) and the batch may run: the replies that wait are written.
                until = min(self.stop_at, max(self.beat.valid_until, time.monotonic() + 5))
                self.record.outlast(hand_back, until)
        except Exception:
            if not quiet:
                raise
            return  # the claim ends with its lease; the sweep takes the rows then
        with self.lock:
            self.report.handed_back.extend(sorted(pending - held))
            self.report.held.extend(sorted(pending & held))


def splits(transport: Transport) -> bool:
    """Whether a transport sends in two halves (begin, then end) and can be told the
    next envelope (prepare): an SMTP relay, rate-limited or not."""
    return hasattr(transport, "begin")


class Flight:
    """The messages one lane has on its connections: each row is begun on the next
    connection in turn, once that connection's last message has landed (its answer
    read and recorded). With PIPELINING the envelope of a connection's next message
    goes out with the body of this one, so its answer is usually waiting by the time
    the turn comes round: one write and one read per message, in one thread."""

    def __init__(self, lane: Lane, transports: Sequence[Transport], pending: set[int]) -> None:
        self.lane = lane
        self.transports = transports
        self.pending = pending
        # Per connection, the message begun on it and not yet landed: (row, Message-ID).
        self.aloft: list[tuple[Any, str] | None] = [None] * len(transports)
        self.begun = 0
        self.senders: dict[int, str] = {}  # MAIL FROM of the rows announced ahead, by id
        self.upcoming: deque[int] = deque()  # indices of the next active rows
        self.scanned = -1  # the last row index _nth_active looked at
        # A transport that sends in halves (SMTP) is told whose envelope comes next on
        # it; a relay pool or the outbox sends whole and has nothing to gain from it.
        self.halves = [splits(t) for t in transports]

    def begin(self, row: Any, rows: Sequence[Any], i: int, statuses: dict[int, str]) -> None:
        lane, settings, record = self.lane, self.lane.settings, self.lane.record
        status = statuses.get(row.subscriber_id, row.status)
        if status != "active":
            record.suppressed(row.id, f"subscriber is {status}")
            self._count(row, "suppressed", None)
            return
        slots = len(self.transports)
        turn = self.begun % slots
        self.begun += 1
        self.land(turn)  # the connection's last message, begun `slots` messages ago
        transport = self.transports[turn]
        halves = self.halves[turn]
        if halves:
            after = self._nth_active(rows, i, slots, statuses)
            if after is not None:
                sender = envelope_sender(settings, after.edition_id, after.subscriber_id)
                self.senders[after.id] = sender  # its own begin takes it from here
                transport.prepare(sender, after.email)  # type: ignore[attr-defined]
        reader = address_reader(
            settings, lane.installation, row.edition_id, row.subscriber_id, row.email, row.name
        )
        try:
            template = lane.templates[row.variant_id]
            sender = self.senders.pop(row.id, "") or envelope_sender(
                settings, row.edition_id, row.subscriber_id
            )
            if not halves:
                transport.send(sender, row.email, template.render(reader), reader.message_id)
            else:
                # In pieces: SMTP writes them in one gather, never joined.
                message = template.gathered(reader)
                transport.begin(sender, row.email, message)  # type: ignore[attr-defined]
        except RelayUnavailable:
            raise  # not this reader's problem: the lane hands the row back untried
        except (TransientSendError, PermanentSendError, HeaderInjection) as exc:
            self._count(row, *_failure(settings, record, row, exc, lane.now))
            return
        self.aloft[turn] = (row, reader.message_id)
        if not halves:
            self.land(turn)  # sent whole: its answer is in

    def land(self, turn: int) -> None:
        """The message aloft on this connection, if any: its answer read, its outcome
        recorded."""
        aloft = self.aloft[turn]
        if aloft is None:
            return
        self.aloft[turn] = None
        row, message_id = aloft
        lane = self.lane
        if self.halves[turn]:
            try:
                self.transports[turn].end()  # type: ignore[attr-defined]
            except (TransientSendError, PermanentSendError) as exc:
                self._count(row, *_failure(lane.settings, lane.record, row, exc, lane.now))
                return
        lane.record.sent(row.id, message_id, lane.now)
        self._count(row, "sent", None)

    def land_all(self) -> None:
        """Every message aloft, the oldest first."""
        slots = len(self.transports)
        for k in range(slots):
            self.land((self.begun + k) % slots)

    def _nth_active(self, rows: Sequence[Any], i: int, n: int, statuses: dict[int, str]) -> Any:
        """The n-th row after rows[i] whose reader is active: the next message on the
        same connection as rows[i], the rows going round n connections in turn. Each
        row is looked at once (`upcoming` keeps the next active ones)."""
        upcoming = self.upcoming
        while upcoming and upcoming[0] <= i:
            upcoming.popleft()
        while len(upcoming) < n and self.scanned + 1 < len(rows):
            self.scanned += 1
            after = rows[self.scanned]
            if self.scanned > i and statuses.get(after.subscriber_id, after.status) == "active":
                upcoming.append(self.scanned)
        return rows[upcoming[n - 1]] if len(upcoming) >= n else None

    def land_quietly(self) -> None:
        """Every message aloft, on the way out of an error: what was written is landed
        (the recorder keeps an outcome it cannot write yet), so that no row that went
        is handed back to go again; an error on the way is the first one's."""
        for turn in range(len(self.transports)):
            try:
                self.land(turn)
            except Exception:
                self.aloft[turn] = None  # left pending: handed back with the rest

    def _count(self, row: Any, outcome: str, error: str | None) -> None:
        self.pending.discard(row.id)
        with self.lane.lock:
            self.lane.report.count(outcome, row.email, error)


def _failure(
    settings: Settings, record: store.Recorder, r: Any, exc: Exception, now: datetime
) -> tuple[str, str]:
    """Record a message that did not go: deferred or failed; returns (outcome, error)."""
    if isinstance(exc, TransientSendError):
        if r.attempts >= settings.max_attempts:
            record.failed(r.id, f"gave up after {counted(r.attempts, 'attempt')}: {exc}")
            return "failed", str(exc)
        record.deferred(r.id, str(exc), now + backoff(settings, r.attempts))
        return "deferred", str(exc)
    record.failed(r.id, str(exc))
    if getattr(exc, "unknown_mailbox", False):
        record.bounce(r.subscriber_id, r.email, now)
    return "failed", str(exc)
