"""Sending an edition: claim a batch's delivery rows, build its message templates
(each variant's bodies encoded once per process), run its lanes (lanes.py) over reused
SMTP connections, and go over an edition batch by batch.

These functions own their transactions (they commit); the replies are recorded in group
commits by the batch's recorder, on a connection of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions.halt import HaltWatch
from digest.editions.heartbeat import MARGIN, Heartbeat
from digest.editions.lanes import BatchReport, Lane, Progress, splits
from digest.editions.render import Rendered, SlotMarks, Splicer
from digest.errors import ConfigError
from digest.mail.message import EncodedSplicer, MessageTemplate, Sender
from digest.mail.senders import sender_for
from digest.mail.tokens import make_token
from digest.mail.transport import Transport
from digest.models import EditionVariant

OPEN = ("queued", "deferred")  # rows a send may claim (deferred ones once due)


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


def send_batch(
    session: Session,
    settings: Settings,
    transport: Transport,
    delivery_ids: Sequence[int],
    now: datetime,
    on_progress: Progress | None = None,
) -> BatchReport:
    """Claim the given deliveries and send them, recording replies in group commits.

    The rows go over `settings.smtp_connections` connections: a relay answers after a
    round trip, and overlapping those waits is where a sender's throughput comes from.
    One thread takes SMTP connections in turn (lanes.Flight); a relay pool or the
    outbox gets a thread per connection. Each connection is reused for the batch, and
    SMTP ones are left to this process's next batch (mail/parked.py).
    The claim is short (`claim_seconds`) and renewed by a heartbeat while we live.
    """
    report = BatchReport()
    per_message = check_claim(settings)
    claim = timedelta(seconds=settings.claim_seconds)
    rows = store.claim_rows(session, delivery_ids, now, claim)
    session.commit()
    if not rows:
        return report
    started = time.monotonic()
    claimed = [row.id for row in rows]
    report.claimed = len(claimed)
    editions = {row.edition_id for row in rows}
    templates = batch_templates(session, settings, {r.variant_id for r in rows}, now)
    installation = store.installation_id(session)  # once per batch, for the Message-IDs
    session.commit()  # the lanes below use their own connections
    lanes = max(1, min(settings.smtp_connections, len(rows) // 20))
    transports = [transport] + [transport.fresh() for _ in range(lanes - 1)]
    if all(splits(t) for t in transports):
        # SMTP connections: one thread writes a message on each in turn and reads each
        # answer when that connection's turn comes round again, by which time it is
        # usually there (no thread switches, no lock handoffs: a third of the CPU).
        groups, shares = [transports], [rows]
    else:
        # Several relays (a pool that picks one per message), the outbox: a thread per
        # connection, each its share.
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


def encoded_variant(variant: Any) -> tuple[EncodedSplicer, EncodedSplicer]:
    """A rendering's HTML and text, quoted-printable encoded between their slots, once
    per process (variants never change; their nonce tells two databases' apart).
    `variant` is an EditionVariant, or its head (store.variant_heads) once encoded."""
    key = (variant.id, variant.slot_nonce)
    found = _ENCODED.get(key)
    if found is None:
        prepared = prepare_variant(variant)
        if len(_ENCODED) >= 64:
            _ENCODED.clear()
        found = _ENCODED[key] = (EncodedSplicer(prepared.html), EncodedSplicer(prepared.text))
    return found


def message_template(settings: Settings, variant: Any, now: datetime) -> MessageTemplate:
    """`variant`: as encoded_variant takes it."""
    html, text = encoded_variant(variant)
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
