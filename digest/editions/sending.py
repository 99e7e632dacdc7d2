"""Sending an edition: claim delivery rows, fill each reader's slots into the
pre-encoded message, send over reused SMTP connections, record each reply at once.

These functions own their transactions (they commit): each delivery is recorded in its
own autocommitted statement right after the server accepted it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions.clicks import reader_part
from digest.editions.halt import HaltWatch
from digest.editions.heartbeat import MARGIN, Heartbeat
from digest.editions.render import Rendered, SlotMarks, Splicer, html_escaped, slot_values
from digest.errors import (
    ConfigError,
    HeaderInjection,
    PermanentSendError,
    RelayUnavailable,
    TransientSendError,
)
from digest.mail.message import EncodedSplicer, MessageTemplate, Reader, Sender
from digest.mail.returns import envelope_sender
from digest.mail.senders import sender_for
from digest.mail.tokens import make_token, message_id, reader_tokens
from digest.mail.transport import Transport
from digest.models import EditionVariant

Progress = Callable[[int, int], None]
OPEN = ("queued", "deferred")  # rows a send may claim (deferred ones once due)


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


@dataclass(frozen=True)
class PreparedVariant:
    html: Splicer
    text: Splicer
    subject: str


def prepare_rendering(page: Rendered) -> PreparedVariant:
    """Cut a fresh rendering (not stored, or not as sent) at its slots."""
    return _cut(page.html, page.text, page.subject, page.slot_nonce)


def _cut(html: str, text: str, subject: str, nonce: str) -> PreparedVariant:
    marks = SlotMarks(nonce)
    return PreparedVariant(Splicer.of(html, marks), Splicer.of(text, marks), subject)


@lru_cache(maxsize=64)
def _splicers(variant_id: int, html: str, text: str, subject: str, nonce: str) -> PreparedVariant:
    return _cut(html, text, subject, nonce)


def prepare_variant(variant: EditionVariant) -> PreparedVariant:
    """Cut a stored rendering at its slots (cached: variants never change)."""
    return _splicers(variant.id, variant.html, variant.text, variant.subject, variant.slot_nonce)


def sender_of(settings: Settings) -> Sender:
    return sender_for(settings)  # From, list headers, Reply-To, Feedback-ID, DKIM key


def account_links(settings: Settings, subscriber_id: int) -> dict[str, str]:
    """A reader's unsubscribe and preferences links, each token signed for its purpose
    (every edition and the sign-up email carry them)."""
    secret, base = settings.secret_key, settings.base_url
    unsubscribe = make_token(secret, "unsubscribe", subscriber_id)
    return {
        "unsubscribe_token": unsubscribe,
        "unsubscribe_url": f"{base}/unsubscribe/{unsubscribe}",
        "preferences_url": f"{base}/preferences/{make_token(secret, 'preferences', subscriber_id)}",
    }


def public_links(settings: Settings, view_url: str) -> dict[str, str]:
    """Slot links for a rendering anyone may see (web version, archive, test copies):
    the account links go to pages that ask for the links in the reader's own email."""
    base = settings.base_url
    return {
        "unsubscribe_url": f"{base}/unsubscribe",
        "preferences_url": f"{base}/preferences",
        "view_url": view_url,
    }


def reader_links(settings: Settings, subscriber_id: int, edition_id: int) -> dict[str, str]:
    """The personal links of one reader in one edition."""
    # Scoped to this edition and checked against the edition's age when opened: a
    # forwarded "view in browser" link shows this one edition and nothing else.
    view = make_token(settings.secret_key, "view", subscriber_id, scope=str(edition_id))
    return {
        **account_links(settings, subscriber_id),
        "view_url": f"{settings.base_url}/editions/{edition_id}/{view}",
    }


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


def send_batch(
    session: Session,
    settings: Settings,
    transport: Transport,
    delivery_ids: Sequence[int],
    now: datetime,
    on_progress: Progress | None = None,
) -> BatchReport:
    """Claim the given deliveries and send them, recording replies in group commits.

    The rows are split over `settings.smtp_connections` connections (threads): a
    relay answers each command after a round trip, and overlapping those waits is
    where a sender's throughput comes from. Each connection is reused for its share.
    The claim is short (`claim_seconds`) and renewed by a heartbeat while we live.
    """
    report = BatchReport()
    per_message = check_claim(settings)
    claim = timedelta(seconds=settings.claim_seconds)
    claimed = store.claim_deliveries(session, delivery_ids, now, claim)
    session.commit()
    if not claimed:
        return report
    started = time.monotonic()
    report.claimed = len(claimed)
    rows = store.sending_rows(session, claimed)
    editions = {row.edition_id for row in rows}
    templates = batch_templates(session, settings, {r.variant_id for r in rows}, now)
    installation = store.installation_id(session)  # once per batch, for the Message-IDs
    session.commit()  # the lanes below use their own connections
    lanes = max(1, min(settings.smtp_connections, len(rows) // 20))
    transports = [transport] + [transport.fresh() for _ in range(lanes - 1)]
    if all(hasattr(t, "begin") for t in transports):
        # SMTP connections: one thread writes a message on each in turn and reads each
        # answer when that connection's turn comes round again, by which time it is
        # usually there (no thread switches, no lock handoffs: a third of the CPU).
        groups, shares = [transports], [rows]
    else:
        # Relays, rate limits, the outbox: a thread per connection, each its share.
        groups, shares = [[t] for t in transports], [rows[i::lanes] for i in range(lanes)]

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - started)

    with (
        store.Recorder(session, now + claim, group=settings.record_group) as record,
        Heartbeat(
            record, claimed, clock, settings.claim_seconds, per_message, settings.record_window
        ) as beat,
    ):
        # Stop well inside the batch's time limit (the task's, which ends its process).
        stop_at = started + 0.9 * settings.lease_seconds
        lane = Lane(
            settings, templates, now, report, record, beat, stop_at, per_message, installation
        )
        lane.halt = HaltWatch(session.get_bind(), editions)
        if len(groups) == 1:
            lane.progress, lane.total = on_progress, len(rows)
            lane.run(groups[0], shares[0])
        else:
            with ThreadPoolExecutor(len(groups), thread_name_prefix="digest-send") as pool:
                futures = [
                    pool.submit(lane.run, group, share)
                    for group, share in zip(groups, shares, strict=True)
                ]
                try:
                    while wait(futures, timeout=0.5).not_done:
                        if on_progress:
                            on_progress(report.done, len(rows))
                except BaseException:
                    # A time limit or shutdown reached this thread: the lanes stop after
                    # their current message and hand the rest back to the queue.
                    lane.stop.set()
                    raise
                for future in futures:
                    future.result()  # a lane's unexpected error, after all have stopped
    if on_progress:
        on_progress(report.done, len(rows))
    for edition_id in editions:
        store.update_edition_status(session, edition_id)
    session.commit()
    return report


_ENCODED: dict[tuple[int, str], tuple[EncodedSplicer, EncodedSplicer]] = {}


def encoded_variant(variant: EditionVariant) -> tuple[EncodedSplicer, EncodedSplicer]:
    """A rendering's HTML and text, quoted-printable encoded between their slots, once
    per process (variants never change; their nonce tells two databases' apart)."""
    key = (variant.id, variant.slot_nonce)
    found = _ENCODED.get(key)
    if found is None:
        prepared = prepare_variant(variant)
        if len(_ENCODED) >= 64:
            _ENCODED.clear()
        found = _ENCODED[key] = (EncodedSplicer(prepared.html), EncodedSplicer(prepared.text))
    return found


def message_template(settings: Settings, variant: Any, now: datetime) -> MessageTemplate:
    """`variant`: an EditionVariant, or its head (store.variant_heads) once encoded."""
    html, text = _ENCODED.get((variant.id, variant.slot_nonce)) or encoded_variant(variant)
    key = f"{variant.edition_id}:{variant.sections}"
    return MessageTemplate(sender_of(settings), variant.subject, now, key, html, text)


def batch_templates(
    session: Session, settings: Settings, variant_ids: set[int], now: datetime
) -> dict[int, MessageTemplate]:
    """A batch's message templates; a variant's 30-80 kB of bodies are read from the
    database only when this process has not encoded them yet."""
    templates = {}
    for head in store.variant_heads(session, variant_ids):
        cached = (head.id, head.slot_nonce) in _ENCODED
        variant = head if cached else store.get_variant(session, head.id)
        templates[head.id] = message_template(settings, variant, now)
    return templates


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


def check_claim(settings: Settings) -> float:
    """The longest one message may take; ConfigError if a claim cannot outlast it."""
    per_message = message_deadline(settings)
    if settings.claim_seconds < per_message + 2 * MARGIN:
        raise ConfigError(
            f"DIGEST_CLAIM_SECONDS ({settings.claim_seconds}) must exceed the longest a "
            f"message may take ({per_message:g} s: the SMTP deadline=, plus failover and "
            "rate-limit waits) by a few seconds"
        )
    return per_message


def message_deadline(settings: Settings) -> float:
    """The longest one message may take at the transport (its SMTP deadline, and the
    wait for a rate-limited relay)."""
    from digest.mail.relays import message_budget

    return message_budget(settings)


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
        # A transport that can send the next envelope with this body (SMTP) is told whose
        # it is; a relay pool or the outbox has nothing to gain from knowing.
        self.prepares = [getattr(t, "prepare", None) for t in transports]

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
        prepare = self.prepares[turn]
        if prepare is not None:
            after = self._nth_active(rows, i, slots, statuses)
            if after is not None:
                sender = envelope_sender(settings, after.edition_id, after.subscriber_id)
                self.senders[after.id] = sender  # its own begin takes it from here
                prepare(sender, after.email)
        reader = address_reader(
            settings, lane.installation, row.edition_id, row.subscriber_id, row.email, row.name
        )
        try:
            message = lane.templates[row.variant_id].render(reader)
            sender = self.senders.pop(row.id, "") or envelope_sender(
                settings, row.edition_id, row.subscriber_id
            )
            if prepare is None:
                transport.send(sender, row.email, message, reader.message_id)
            else:
                transport.begin(sender, row.email, message)  # type: ignore[attr-defined]
        except RelayUnavailable:
            raise  # not this reader's problem: the lane hands the row back untried
        except (TransientSendError, PermanentSendError, HeaderInjection) as exc:
            self._count(row, *_failure(settings, record, row, exc, lane.now))
            return
        self.aloft[turn] = (row, reader.message_id)
        if prepare is None:
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
        if self.prepares[turn] is not None:
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
            record.failed(r.id, f"gave up after {r.attempts} attempts: {exc}")
            return "failed", str(exc)
        record.deferred(r.id, str(exc), now + backoff(settings, r.attempts))
        return "deferred", str(exc)
    record.failed(r.id, str(exc))
    if getattr(exc, "unknown_mailbox", False):
        record.bounce(r.subscriber_id, r.email, now)
    return "failed", str(exc)


def chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


def run_edition(
    session: Session,
    settings: Settings,
    transport: Transport,
    edition_id: int,
    now: datetime,
    on_progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchReport:
    """Send every queued delivery of an edition in this process, batch by batch.

    Rows a batch handed back (its lanes ran out of time) are sent in another pass, as
    long as the last pass got something done. When no relay can take mail, it waits
    for the first to come back (DIGEST_OUTAGE_SECONDS in all) and goes on. What is
    still open afterwards is the caller's to report (store.edition_counts).
    """
    report = BatchReport()
    started = time.monotonic()
    counts = store.edition_counts(session, edition_id)
    total = counts.get("queued", 0) + counts.get("deferred", 0)
    waited = 0.0

    def progress(done: int, _of: int) -> None:
        if on_progress:
            on_progress(min(total, report.done + done), total)

    while True:
        this_pass = BatchReport()
        last = 0
        # Deferred rows whose retry time has come go too (the claim skips the others).
        while batch := store.delivery_page(session, edition_id, last, settings.batch_size, OPEN):
            # `now` moves on with the time spent: leases, retry times and sent_at of a
            # long run must not lie in the past (the sweep would take rows being sent).
            batch_now = now + timedelta(seconds=time.monotonic() - started)
            done = send_batch(session, settings, transport, batch, batch_now, progress)
            this_pass.add(done)
            report.add(done)
            last = batch[-1]
            if done.retry_after:
                break  # no relay takes mail: the next batches would find the same
        session.commit()  # end the last page's read: on SQLite it holds the write lock
        if this_pass.retry_after and waited < settings.outage_seconds:
            pause = min(this_pass.retry_after, settings.outage_seconds - waited)
            sleep(pause)
            waited += pause
            continue
        if not this_pass.handed_back or not this_pass.done:
            break
    report.handed_back = this_pass.handed_back  # what is left, not every hand-back
    report.retry_after = this_pass.retry_after
    return report
