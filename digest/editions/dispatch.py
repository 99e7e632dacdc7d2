"""What the Celery tasks decide between pipeline calls: which deliveries to fan out in
which batches, and when a batch with deferred rows should run again.

The tasks in workers/ only translate arguments, call these and enqueue what they return;
everything here takes its session, settings and `now` like the rest of digest/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings, check_timezone
from digest.editions import control, guard, pipeline, queueing, sending
from digest.editions.pipeline import PlanResult
from digest.errors import InvalidInput


class QueuedBatches:
    """An edition's queued delivery ids in batches of `size`, read as they are iterated
    (one streamed query): fanning out a million-reader edition never holds every id.
    Iterating needs the session it was made with to be open."""

    def __init__(self, session: Session, edition_id: int, size: int) -> None:
        self.session, self.edition_id, self.size = session, edition_id, size

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for delivery_id in store.stream_delivery_ids(self.session, self.edition_id):
            batch.append(delivery_id)
            if len(batch) == self.size:
                yield batch
                batch = []
        if batch:
            yield batch

    def all(self) -> list[list[int]]:
        return list(self)

    def __len__(self) -> int:
        queued = store.edition_counts(self.session, self.edition_id).get("queued", 0)
        return -(-queued // self.size)


@dataclass
class Fanout:
    """One planned edition and its queued delivery ids, to hand to send tasks in batches.

    An edition planned a chunk at a time (`grow`) has its first readers queued; the
    stream hands out their batches, queues the next chunk (queueing.queue_more), hands
    out its batches, and so on: the first workers send while the rest is queued."""

    plan: PlanResult | None
    queued: QueuedBatches | None = None
    decision: guard.Decision | None = None
    grow: Callable[[], tuple[list[int], bool]] | None = None

    @property
    def batches(self) -> list[list[int]]:
        """Every batch at once (the console, tests); tasks stream them with `stream()`."""
        return list(self.stream())

    def stream(self) -> Iterator[list[int]]:
        """The batches as they are read from the database (and queued, with `grow`)."""
        return self._stream() if self.queued is not None else iter(())

    def _stream(self) -> Iterator[list[int]]:
        assert self.queued is not None
        yield from self.queued  # what is queued so far (all of it, for a resumed plan)
        while self.grow is not None:
            ids, more = self.grow()  # a chunk's new rows, as its INSERT returned them
            if not more:
                self.grow = None
                self._queued_all()
            yield from sending.chunks(sorted(ids), self.queued.size)

    def _queued_all(self) -> None:
        """The plan as it stands once every reader is queued (its count, its note)."""
        if self.plan is not None and self.queued is not None:
            session, edition_id = self.queued.session, self.queued.edition_id
            self.plan = replace(
                self.plan,
                queued=store.count_deliveries(session, edition_id),
                note=store.get_edition(session, edition_id).note,
                queuing=False,
            )

    def summary(self) -> dict[str, Any]:
        """What a task may return about it: ids and counts, never an address."""
        if self.plan is None:
            assert self.decision is not None
            return {"refused": True, **self.decision.as_dict()}
        return {
            "edition": self.plan.edition_id,
            "cohort": str(self.plan.cohort),
            "created": self.plan.created,
            "status": self.plan.status,
            "queued": self.plan.queued,
            "batches": len(self.queued) if self.queued is not None else 0,
            "reason": self.decision.reason if self.decision else "",
        }


def parse_now(value: str | None) -> datetime:
    """An ISO 8601 instant with an offset, as UTC; the real clock when None."""
    if value is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not an ISO 8601 instant") from None
    if when.tzinfo is None:
        raise InvalidInput(f"{value!r} has no UTC offset")
    return when.astimezone(UTC)


def parse_day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not a date like 2026-11-29") from None


def queued_batches(session: Session, edition_id: int, size: int) -> QueuedBatches:
    """The edition's queued delivery ids in chunks of `size`, in id order, streamed."""
    return QueuedBatches(session, edition_id, size)


def _fanout(
    session: Session,
    settings: Settings,
    plan: PlanResult,
    now: datetime,
    decision: guard.Decision | None = None,
) -> Fanout:
    """A plan's queued rows in batches, and the rest of its readers queued as they are
    handed out when it was planned a chunk at a time. The rows of each chunk are dated
    by the planner's clock moved on by the time spent, so that the sweep takes a plan
    whose planner stopped for lost only when its newest chunk is a claim's time old."""
    fanout = Fanout(plan, queued_batches(session, plan.edition_id, settings.batch_size), decision)
    if plan.queuing:
        started = time.monotonic()

        def grow() -> tuple[list[int], bool]:
            at = now + timedelta(seconds=time.monotonic() - started)
            size = queueing.chunk_size(settings)
            return queueing.queue_more(session, settings, plan.edition_id, at, size)

        fanout.grow = grow
    return fanout


def plan_slot(
    session: Session,
    settings: Settings,
    slot: str,
    now: datetime,
    *,
    day: date | None = None,
    timezone: str | None = None,
    resume: bool = False,
    origin: str = guard.CELERY,
    who: str = "",
    force: bool = False,
    early: bool = True,
    chunked: bool = False,
) -> list[Fanout]:
    """Plan the slot's edition for one timezone, or for every timezone with readers,
    each as the guard decides (guard.may_plan) and audited with its origin. `chunked`
    (the tasks, which stream the batches to workers as they come): each plan queues
    its first readers, the stream the rest (see Fanout).

    Only an edition this call created is fanned out: a second call for the same cohort
    creates nothing and sends nothing. With `resume` (the task came back after its
    worker was lost, possibly between planning and fanning out) existing editions'
    queued rows are fanned out too; claiming makes that safe. A refused cohort has a
    Fanout with no plan and the decision saying why.
    """
    settings.send_time(slot)  # unknown slots fail here, before anything is written
    if timezone is not None:
        check_timezone(timezone)
    fanouts = []
    for cohort in pipeline.cohorts_for(session, settings, slot, now, day, timezone):
        decision, plan = pipeline.plan_cohort(
            session,
            settings,
            cohort,
            now,
            origin=origin,
            who=who,
            force=force,
            early=early,
            chunk=queueing.first_chunk_size(settings) if chunked else None,
        )
        if plan is not None and plan.status == "sending" and (plan.created or resume):
            # A resumed plan goes on queueing where its lost planner stopped.
            fanouts.append(_fanout(session, settings, plan, now, decision))
        else:
            fanouts.append(Fanout(plan, decision=decision))
    return fanouts


def task_now(value: str | None) -> datetime:
    """A task's `now`: a pinned clock may go back (tests, replays) but never ahead of
    the real one, or a Celery client could plan a day ahead by saying it has come."""
    when = parse_now(value)
    if when > datetime.now(UTC) + timedelta(minutes=1):
        raise InvalidInput(
            f"now={value} is ahead of the clock: a task may not plan as if a later time had come"
        )
    return when


def resume_edition(
    session: Session, edition_id: int, now: datetime, size: int, *, origin: str, who: str = ""
) -> tuple[control.Standing, QueuedBatches]:
    """Resume a paused edition; its queued rows in batches, for the caller to send."""
    now_standing = control.resume(session, edition_id, now, origin=origin, who=who)
    return now_standing, queued_batches(session, edition_id, size)


def dispatch_due(session: Session, settings: Settings, now: datetime) -> list[Fanout]:
    """Plan every due cohort (see pipeline.dispatch_due), each a chunk at a time, and
    batch what each queues."""
    chunk = queueing.first_chunk_size(settings)
    return [
        _fanout(session, settings, plan, now) if plan.status == "sending" else Fanout(plan)
        for plan in pipeline.dispatch_due(session, settings, now, chunk=chunk)
    ]


def sweep(
    session: Session, settings: Settings, now: datetime, *, queued_too: bool = True
) -> list[list[int]]:
    """Re-queue what no worker carries (see pipeline.sweep); batches to send again."""
    found = pipeline.sweep(session, settings, now, queued_too=queued_too)
    if store.cancelled_leftovers(session, now):  # rows of cancelled editions: never sent
        session.commit()
    return [batch for ids in found.values() for batch in sending.chunks(ids, settings.batch_size)]


def retry_edition(
    session: Session, settings: Settings, edition_id: int, statuses: Sequence[str], now: datetime
) -> tuple[int, list[list[int]]]:
    """Operator retry: put the edition's rows in `statuses` back in the queue.

    Returns how many rows were re-queued and the batches of all its queued rows.
    """
    if not statuses:
        raise InvalidInput("say which deliveries to retry: failed, deferred or both")
    count = store.retry_deliveries(session, edition_id, statuses, now)
    session.commit()
    return count, list(queued_batches(session, edition_id, settings.batch_size))


def next_retry(
    session: Session,
    delivery_ids: Sequence[int],
    now: datetime,
    report: sending.BatchReport | None = None,
) -> tuple[list[int], float] | None:
    """The batch's rows left deferred and the seconds until the first of them is due,
    or None when nothing in the batch waits for a retry. With the batch's `report`: a
    batch that claimed every row and deferred none has none waiting, and the query
    (hundreds of ids) is not made."""
    if report is not None and not report.deferred and report.claimed >= len(set(delivery_ids)):
        return None
    deferred = store.deferred_among(session, delivery_ids)
    if not deferred:
        return None
    first = min(at for _, at in deferred)
    return [d for d, _ in deferred], max(0.0, (first - now).total_seconds())


def counts(report: sending.BatchReport) -> dict[str, int]:
    """A batch report without its error texts, which name addresses."""
    return {
        "claimed": report.claimed,
        "sent": report.sent,
        "deferred": report.deferred,
        "failed": report.failed,
        "suppressed": report.suppressed,
    }
