"""Queueing an edition's readers a chunk at a time, after its plan queued the first
(pipeline.plan_edition with `chunk`): each chunk one short transaction, whose new rows
the caller sends while the next is queued. `edition.queue_after` is the cursor: the
last subscriber id queued, NULL once every reader has a row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.models import Edition
from digest.words import counted

# Planning a chunk at a time: the plan's own transaction queues FIRST_BATCHES batches of
# readers, so two workers start sending while the planner queues the rest, CHUNK_BATCHES
# batches a transaction (a million readers: a hundred short transactions, not one long).
FIRST_BATCHES = 2
CHUNK_BATCHES = 20
QUEUING = "readers being queued"  # an edition's note until queue_more has queued them all


def first_chunk_size(settings: Settings) -> int:
    return FIRST_BATCHES * settings.batch_size


def chunk_size(settings: Settings) -> int:
    return CHUNK_BATCHES * settings.batch_size


def queue_more(
    session: Session, settings: Settings, edition_id: int, now: datetime, chunk: int
) -> tuple[list[int], bool]:
    """Queue the next `chunk` readers of an edition planned a chunk at a time, in a
    transaction of its own; the new rows' ids to send (none while the edition is
    paused or cancelled) and whether readers remain. Safe to call from two planners at
    once (a resumed task and the sweep): each reader still gets one row, and the one
    whose cursor move loses reads the edition again. The last chunk writes the
    edition's reader count into its note and lets it be done."""
    edition: Edition = store.get_edition(session, edition_id)
    session.refresh(edition, ["queue_after", "note"])
    was = edition.queue_after
    if was is None:
        return [], False
    ids: list[int] = []
    after = store.queue_deliveries(
        session, edition, settings.default_timezone, now, after=was, limit=chunk, ids=ids
    )
    if not store.move_queue_cursor(session, edition_id, was, after):
        session.rollback()  # another planner queued this chunk first
        return [], True
    if after is None:
        queued = store.count_deliveries(session, edition_id)
        edition.note = edition.note.replace(QUEUING, counted(queued, "reader"), 1)
    session.commit()
    if after is None:
        store.update_edition_status(session, edition_id)  # done, if all were sent already
        session.commit()
    # Asked after the commit: a resume from now on hands these rows out itself (it
    # sends every queued row), and a cancel's last chunk cancels them.
    if store.halted_editions(session, [edition_id]):
        ids = []
    return ids, after is not None


def queue_rest(session: Session, settings: Settings, edition_id: int, now: datetime) -> None:
    """Queue every reader an edition planned a chunk at a time has not queued yet."""
    while queue_more(session, settings, edition_id, now, chunk_size(settings))[1]:
        pass
