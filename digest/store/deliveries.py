"""Delivery rows: queueing, claiming, repair (outcomes are recorded by store.recorder)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from digest.errors import InvalidInput
from digest.models import (
    Cohort,
    Delivery,
    Edition,
    EditionVariant,
    Subscriber,
)
from digest.store.base import insert_for_session, rowcount
from digest.store.editions import HALTED, get_edition, set_edition_status
from digest.store.subscribers import cohort_filter

OPEN_STATUSES = ("queued", "sending", "deferred")


def _not_halted(row: Any = Delivery) -> Any:
    """Rows of editions that may be sent (not paused, not cancelled)."""
    return row.edition_id.not_in(select(Edition.id).where(Edition.status.in_(HALTED)))


def _ready(row: Any) -> Any:
    """The rule of which delivery rows a batch may claim: queued, or deferred and due
    (`now` is a bound parameter), and of an edition that is not paused or cancelled.
    `row` is Delivery or an alias of it."""
    return and_(
        or_(
            row.status == "queued",
            and_(row.status == "deferred", row.next_attempt_at <= bindparam("now")),
        ),
        _not_halted(row),
    )


def queue_deliveries(
    session: Session,
    edition: Edition,
    default_timezone: str,
    now: datetime,
    *,
    after: int | None = None,
    limit: int | None = None,
    ids: list[int] | None = None,
) -> int | None:
    """Queue one delivery per reader of the cohort in one INSERT ... SELECT: every
    reader, or (with `limit`) the next `limit` readers in subscriber id order after the
    subscriber id `after`. Returns the last subscriber id a chunk covered while readers
    may remain, None once none is left. A reader queued already keeps their one row;
    readers whose sections have no variant (nothing to show them) get none. `ids`
    (a chunk's caller, which sends them) gets the new rows' ids appended.
    """
    cohort = Cohort(edition.slot, edition.local_day, edition.timezone)
    readers = cohort_filter(cohort, default_timezone)
    if after is not None:
        readers = and_(readers, Subscriber.id > after)
    last = None
    if limit is not None:
        last = session.scalar(
            select(Subscriber.id).where(readers).order_by(Subscriber.id).offset(limit - 1).limit(1)
        )
        if last is not None:
            readers = and_(readers, Subscriber.id <= last)
    source = (
        select(
            literal(edition.id),
            Subscriber.id,
            EditionVariant.id,
            literal("queued"),
            literal(0),
            literal(now, type_=Delivery.__table__.c.queued_at.type),
        )
        .join(
            EditionVariant,
            and_(
                EditionVariant.edition_id == edition.id,
                EditionVariant.sections == Subscriber.sections,
            ),
        )
        .where(readers)
    )
    stmt = (
        insert_for_session(session, Delivery)
        .from_select(
            ["edition_id", "subscriber_id", "variant_id", "status", "attempts", "queued_at"], source
        )
        .on_conflict_do_nothing(index_elements=["edition_id", "subscriber_id"])
    )
    if ids is None:
        session.execute(stmt)
    else:
        ids.extend(session.scalars(stmt.returning(Delivery.id)))
    return last


def move_queue_cursor(session: Session, edition_id: int, was: int, to: int | None) -> bool:
    """Record that the edition's readers are queued up to subscriber id `to` (None:
    all of them), if the cursor still stands at `was`; whether it moved. One statement:
    of two planners queueing the same chunk, only one moves it (the other's rows were
    a no-op against the first's)."""
    result = session.execute(
        update(Edition)
        .where(Edition.id == edition_id, Edition.queue_after == was)
        .values(queue_after=to)
        .execution_options(synchronize_session="fetch")
    )
    return rowcount(result) == 1


def stalled_plans(session: Session, before: datetime) -> list[int]:
    """Editions whose readers are still being queued but whose newest row (or, with
    none yet, the edition itself) dates from before `before`: their planner is gone."""
    newest = (
        select(func.max(Delivery.queued_at))
        .where(Delivery.edition_id == Edition.id)
        .scalar_subquery()
    )
    stmt = (
        select(Edition.id)
        .where(
            Edition.queue_after.is_not(None),
            func.coalesce(newest, Edition.created_at, type_=Edition.created_at.type) < before,
        )
        .order_by(Edition.id)
    )
    return list(session.scalars(stmt))


def count_deliveries(session: Session, edition_id: int) -> int:
    """How many delivery rows the edition has, in any status."""
    # (rowcount of INSERT ... SELECT is not reliable across drivers: psycopg gives -1.)
    stmt = select(func.count()).select_from(Delivery).where(Delivery.edition_id == edition_id)
    return int(session.scalar(stmt) or 0)


def delivery_ids(
    session: Session, edition_id: int, statuses: Sequence[str] = ("queued",)
) -> list[int]:
    stmt = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
        .order_by(Delivery.id)
    )
    return list(session.scalars(stmt))


def stream_delivery_ids(session: Session, edition_id: int) -> Iterator[int]:
    """The edition's queued delivery ids in id order, fetched a few thousand at a time
    (a server-side cursor on PostgreSQL): flat memory for any edition size."""
    stmt = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.status == "queued")
        .order_by(Delivery.id)
        .execution_options(yield_per=5000)
    )
    yield from session.scalars(stmt)


def delivery_page(
    session: Session, edition_id: int, after: int, size: int, statuses: Sequence[str] = ("queued",)
) -> list[int]:
    """Up to `size` of the edition's delivery ids above `after`, in id order (keyset
    paging: the caller walks an edition of any size with flat memory)."""
    stmt = (
        select(Delivery.id)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_(statuses),
            Delivery.id > after,
        )
        .order_by(Delivery.id)
        .limit(size)
    )
    return list(session.scalars(stmt))


def claim_deliveries(
    session: Session, ids: Sequence[int], now: datetime, lease: timedelta
) -> list[int]:
    """Move the given rows that are ready to `sending`; returns those this caller won.

    On PostgreSQL rows another worker holds are skipped, not waited for; rows of a
    paused or cancelled edition are never claimed.
    """
    values = {"ids": list(ids), "now": now, "until": now + lease}
    # No objects of these rows live in the session: nothing to synchronise, and the
    # ORM's evaluation of the WHERE clause would cost more than the claim itself.
    options = {"synchronize_session": False}
    return sorted(session.scalars(_CLAIM, values, execution_options=options).all())


# Built once, the ids bound as one expanding parameter: a batch of 500 ids costs no
# statement building and no coercion of 500 literals.
_READY = (
    select(Delivery.id)
    .where(Delivery.id.in_(bindparam("ids", expanding=True)), _ready(Delivery))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(Delivery)
    .where(Delivery.id.in_(_READY.scalar_subquery()))
    .values(status="sending", lease_until=bindparam("until"), attempts=Delivery.attempts + 1)
    .returning(Delivery.id)
)


def sending_rows(session: Session, ids: Sequence[int]) -> list[Any]:
    """What the send loop needs of each claimed row, in id order."""
    return list(session.execute(_SENDING_ROWS, {"ids": list(ids)}))


def claim_rows(session: Session, ids: Sequence[int], now: datetime, lease: timedelta) -> list[Any]:
    """claim_deliveries, then sending_rows of the rows won: on PostgreSQL in one
    statement, the ids as one array (500 bound parameters cost the client more to
    render and parse than the claim costs the server), on SQLite in two."""
    if session.get_bind().dialect.name != "postgresql":
        return sending_rows(session, claim_deliveries(session, ids, now, lease))
    batch = "{" + ",".join(str(int(i)) for i in ids) + "}"
    values = {"ids": batch, "now": now, "until": now + lease}
    return sorted(session.execute(_CLAIM_ROWS_PG, values), key=lambda row: row.id)


# The claim and its rows on PostgreSQL, one statement: the batch's ids come as one
# array literal (text, cast by the server), are unnested and joined to the table, so the
# plan reads them by primary key however the server caches it (a generic plan of
# `id = ANY(...)` ANDs in the status index and reads every queued row).
_batch = (
    func.unnest(cast(bindparam("ids", type_=String), ARRAY(BigInteger)))
    .table_valued("id")
    .render_derived(name="batch")
)
_row = aliased(Delivery, name="d")
_WON = (
    select(_row.id)
    .select_from(_batch)
    .join(_row, _row.id == _batch.c.id)
    .where(_ready(_row))
    .with_for_update(of=_row, skip_locked=True)
)
_claimed = (
    update(Delivery)
    .where(Delivery.id.in_(_WON.scalar_subquery()))
    .values(status="sending", lease_until=bindparam("until"), attempts=Delivery.attempts + 1)
    .returning(
        Delivery.id,
        Delivery.edition_id,
        Delivery.subscriber_id,
        Delivery.variant_id,
        Delivery.attempts,
    )
    .cte("claimed")
)
_CLAIM_ROWS_PG = select(_claimed, Subscriber.email, Subscriber.name, Subscriber.status).join(
    Subscriber, Subscriber.id == _claimed.c.subscriber_id
)


_SENDING_ROWS = (
    select(
        Delivery.id,
        Delivery.edition_id,
        Delivery.subscriber_id,
        Delivery.variant_id,
        Delivery.attempts,
        Subscriber.email,
        Subscriber.name,
        Subscriber.status,
    )
    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
    .where(Delivery.id.in_(bindparam("ids", expanding=True)))
    .order_by(Delivery.id)
)


def edition_counts(session: Session, edition_id: int) -> dict[str, int]:
    stmt = (
        select(Delivery.status, func.count())
        .where(Delivery.edition_id == edition_id)
        .group_by(Delivery.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def update_edition_status(session: Session, edition_id: int) -> str:
    """`done` once every reader is queued and no delivery is open any more; returns
    the status now stored.

    The status is read afresh and changed only from `sending`: an operator may have
    paused or cancelled the edition meanwhile, in another process. Every batch asks,
    so the status and whether one row is open (not how many: counting the rest of a
    million-reader edition would cost more than the batch) come in one query.
    """
    open_row = exists().where(Delivery.edition_id == edition_id, Delivery.status.in_(OPEN_STATUSES))
    status, still_open, queuing = session.execute(
        select(Edition.status, open_row, Edition.queue_after.is_not(None)).where(
            Edition.id == edition_id
        )
    ).one()
    if status == "cancelled":
        cancel_open_deliveries(session, edition_id, now=None)
    elif status == "sending" and not still_open and not queuing:
        set_edition_status(session, edition_id, "done", only_from=("sending",))
        status = session.scalar(select(Edition.status).where(Edition.id == edition_id)) or status
    loaded = session.identity_map.get(session.identity_key(Edition, edition_id))
    if loaded is not None:
        session.expire(loaded, ["status"])  # an Edition this session holds reads it afresh
    return str(status)


def stale_deliveries(
    session: Session, now: datetime, queued_before: datetime | None
) -> list[tuple[int, int]]:
    """(edition, delivery) pairs the sweep must put back: expired leases, ripe retries,
    and (unless `queued_before` is None) queued rows older than any task should take
    to pick them up."""
    stale = [
        and_(Delivery.status == "sending", Delivery.lease_until < now),
        and_(Delivery.status == "deferred", Delivery.next_attempt_at <= now),
    ]
    if queued_before is not None:
        stale.append(and_(Delivery.status == "queued", Delivery.queued_at < queued_before))
    stmt = (
        select(Delivery.edition_id, Delivery.id)
        .where(or_(*stale), _not_halted())  # a paused edition's rows wait for its resume
        .order_by(Delivery.edition_id, Delivery.id)
    )
    return [(e, d) for e, d in session.execute(stmt)]


def waiting_rows(
    session: Session, now: datetime, queued_before: datetime
) -> dict[str, tuple[int, datetime | None]]:
    """What no worker may be carrying, as (count, oldest instant) per kind:
    `queued` rows queued before `queued_before`, `expired` claims (their holder stopped
    renewing them) and `due` retries."""
    kinds = {
        "queued": (
            and_(Delivery.status == "queued", Delivery.queued_at < queued_before),
            Delivery.queued_at,
        ),
        "expired": (
            and_(Delivery.status == "sending", Delivery.lease_until < now),
            Delivery.lease_until,
        ),
        "due": (
            and_(Delivery.status == "deferred", Delivery.next_attempt_at <= now),
            Delivery.next_attempt_at,
        ),
    }
    found = {}
    for kind, (where, column) in kinds.items():
        stmt = select(func.count(), func.min(column)).where(where, _not_halted())
        count, oldest = session.execute(stmt).one()
        found[kind] = (int(count), oldest)
    return found


def requeue(session: Session, delivery_ids: Sequence[int], now: datetime) -> int:
    """Expired `sending` rows go back to `queued`; all given rows get a fresh queued_at."""
    total = 0
    for i in range(0, len(delivery_ids), 500):
        chunk = delivery_ids[i : i + 500]
        result = session.execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.status.in_(("sending", "queued")))
            .values(status="queued", lease_until=None, queued_at=now)
        )
        total += rowcount(result)
    return total


def retry_deliveries(
    session: Session, edition_id: int, statuses: Sequence[str], now: datetime
) -> int:
    """Operator retry: put failed or deferred rows of an edition back in the queue."""
    if get_edition(session, edition_id).status == "cancelled":
        raise InvalidInput(
            f"edition {edition_id} was cancelled: plan it again for the readers who did "
            f"not get it (`digest replan {edition_id}`) instead"
        )
    result = session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
        .values(status="queued", next_attempt_at=None, queued_at=now)
    )
    edition = get_edition(session, edition_id)
    if rowcount(result) and edition.status == "done":
        edition.status = "sending"
    return rowcount(result)


def suppress_open_deliveries(session: Session, subscriber_id: int, reason: str) -> set[int]:
    """Mark a reader's not-yet-claimed deliveries suppressed; returns their edition ids.

    Rows already claimed (`sending`) are left to the sender, which re-reads statuses.
    """
    stmt = (
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status.in_(("queued", "deferred")))
        .values(status="suppressed", lease_until=None, last_error=reason[:1000])
        .returning(Delivery.edition_id)
    )
    return set(session.scalars(stmt).all())


def find_delivery(session: Session, edition_id: int, subscriber_id: int) -> Delivery | None:
    stmt = select(Delivery).where(
        Delivery.edition_id == edition_id, Delivery.subscriber_id == subscriber_id
    )
    return session.scalars(stmt).first()


def deferred_among(session: Session, delivery_ids: Sequence[int]) -> list[tuple[int, datetime]]:
    """Which of these rows wait for a retry, and when each may go again."""
    found: list[tuple[int, datetime]] = []
    for i in range(0, len(delivery_ids), 500):
        stmt = select(Delivery.id, Delivery.next_attempt_at).where(
            Delivery.id.in_(delivery_ids[i : i + 500]),
            Delivery.status == "deferred",
            Delivery.next_attempt_at.is_not(None),
            _not_halted(),  # a paused edition's retries wait for its resume
        )
        found.extend((d, at) for d, at in session.execute(stmt) if at is not None)
    return sorted(found)


def first_retry_at(session: Session, edition_id: int) -> datetime | None:
    """When the edition's first deferred delivery may be tried again."""
    return session.scalar(
        select(func.min(Delivery.next_attempt_at)).where(
            Delivery.edition_id == edition_id, Delivery.status == "deferred"
        )
    )


def record_late_bounce(session: Session, edition_id: int, subscriber_id: int, detail: str) -> None:
    """A message the relay accepted bounced later: its delivery failed after all."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.subscriber_id == subscriber_id,
            Delivery.status == "sent",
        )
        .values(status="failed", last_error=detail[:1000])
    )


def cancel_open_deliveries(session: Session, edition_id: int, now: datetime | None) -> int:
    """Rows of a cancelled edition that no sender holds become `cancelled` (never sent
    later by a sweep or a retry); with `now`, claims that ended by then count too (their
    worker stopped). Rows a live lane holds are left to it: it records them or gives
    them back, and the next call cancels them. Returns how many were cancelled."""
    unheld: list[Any] = [Delivery.status.in_(("queued", "deferred"))]
    if now is not None:
        unheld.append(and_(Delivery.status == "sending", Delivery.lease_until < now))
    result = session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, or_(*unheld))
        .values(status="cancelled", lease_until=None, next_attempt_at=None)
    )
    return rowcount(result)


def cancelled_leftovers(session: Session, now: datetime) -> int:
    """What the sweep does for every cancelled edition: rows given back or left by a
    stopped worker after the cancel become `cancelled` too."""
    ids = session.scalars(
        select(Edition.id).where(
            Edition.status == "cancelled",
            select(Delivery.id)
            .where(
                Delivery.edition_id == Edition.id,
                Delivery.status.in_(("queued", "deferred", "sending")),
            )
            .exists(),
        )
    ).all()
    return sum(cancel_open_deliveries(session, edition_id, now) for edition_id in ids)


def requeue_cancelled(session: Session, edition_id: int, now: datetime) -> int:
    """A corrected edition goes to the readers it did not reach: its cancelled rows are
    queued again with the variant of their reader's sections now (rows whose choice
    has nothing left stay cancelled). Rows already sent are not touched."""
    variant = (
        select(EditionVariant.id)
        .join(Subscriber, Subscriber.sections == EditionVariant.sections)
        .where(EditionVariant.edition_id == edition_id, Subscriber.id == Delivery.subscriber_id)
        .scalar_subquery()
    )
    session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status == "cancelled")
        .values(variant_id=variant)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status == "cancelled",
            Delivery.variant_id.is_not(None),
        )
        .values(status="queued", queued_at=now, attempts=0, last_error=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)
