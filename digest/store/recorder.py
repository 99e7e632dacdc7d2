"""Recording a send batch's outcomes in group commits, on a connection of its own, and
renewing the batch's claim on its rows.

A claim is the `lease_until` the claim wrote: only rows still holding that exact value
are this batch's. Renewing it moves the value for every row the batch still holds, so
records, renewals and hand-backs all go through one lock and one connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from digest.models import Delivery, ReturnedMail, Subscriber, Suppression
from digest.store.base import insert_for
from digest.store.subscribers import address_hash

T = TypeVar("T")
_TABLE: Any = Delivery.__table__
_C = _TABLE.c


class Outcome(NamedTuple):
    """One delivery's result, waiting for the next group commit."""

    id: int
    status: str  # sent, deferred, failed or suppressed
    sent_at: datetime | None = None
    message_id: str | None = None
    error: str | None = None
    retry_at: datetime | None = None


# SQLite: one UPDATE per outcome, all in one transaction, by the driver's executemany.
# Only the claim that holds the row may finish it: once its lease is gone the sweep
# may have handed the row to another sender.
_FINISH_SQLITE = (
    "UPDATE delivery SET status = ?, lease_until = NULL, last_error = ?, sent_at = ?, "
    "message_id = ?, next_attempt_at = ? WHERE id = ? AND status = 'sending' AND lease_until = ?"
)


def _stored_form(dialect: Any) -> Callable[[datetime | None], Any]:
    """A datetime as the UTC columns store it on this dialect (the type's own bind
    processing), remembered for the few distinct instants a batch records."""
    process = _C.sent_at.type.dialect_impl(dialect).bind_processor(dialect)
    cache: dict[datetime, Any] = {}

    def stored(value: datetime | None) -> Any:
        if value is None:
            return None
        found = cache.get(value)
        if found is None:
            found = cache[value] = process(value) if process else value
            if len(cache) > 64:
                cache.clear()
        return found

    return stored


# PostgreSQL: every outcome of the group in one statement, the rows as one JSON text
# (json.dumps and the server parse it; psycopg would dump each array element in Python).
_FINISH_PG = text(
    """
    UPDATE delivery AS d
    SET status = v.status, lease_until = NULL, last_error = v.error,
        sent_at = COALESCE(v.sent_at, d.sent_at),
        message_id = COALESCE(v.message_id, d.message_id),
        next_attempt_at = COALESCE(v.retry_at, d.next_attempt_at)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id bigint, status text, sent_at timestamp, message_id text, error text,
        retry_at timestamp
    )
    WHERE d.id = v.id AND d.id = ANY(CAST(:ids AS bigint[]))
      -- IS NOT DISTINCT FROM (the same test here) keeps the planner on the primary
      -- key: every row of a claim shares one lease_until, and an index scan on
      -- (status, lease_until) would read the whole claim for each group.
      AND (d.status, d.lease_until) IS NOT DISTINCT FROM ('sending', CAST(:lease AS timestamp))
    """
)


def _iso(value: datetime | None) -> str | None:
    """As the UTCDateTime columns store it (naive UTC), in JSON."""
    naive = _naive(value)
    return None if naive is None else naive.isoformat()


def _naive(value: datetime | None) -> datetime | None:
    """As the UTCDateTime columns store it (the array statement bypasses the type)."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class Recorder:
    """The outcomes of one claim, each group written in one transaction on a connection
    outside the caller's session. The sending thread writes a group once it is whole
    (a writer thread would cost more: it waits for the interpreter lock while the
    sender holds it, and handing the lock back and forth costs a third of the write);
    the batch's heartbeat writes what has waited longer than its window when sending
    is slow (see `due`).

    A crash loses at most the outcomes not yet written: the messages in flight plus one
    group. `group=1` records every reply in its own commit, before the lane goes on.
    """

    # SQLite has one writer at a time and its busy handler sleeps (milliseconds) when it
    # loses a race; recorders of one process take turns on this lock instead.
    _sqlite_lock = threading.Lock()

    def __init__(self, session: Session, lease_until: datetime, *, group: int = 1) -> None:
        self.lease_until = lease_until
        self.group = max(1, group)
        engine: Any = session.get_bind()  # an Engine: sessions are made on one
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._conn: Any = self._connect()
        self._write_lock: AbstractContextManager[Any] = (
            self._sqlite_lock if self._conn.dialect.name == "sqlite" else nullcontext()
        )
        self._lock = threading.RLock()  # the connection and the claim value
        self._buffer = threading.Lock()  # the outcomes waiting (taken without waiting on I/O)
        self._outcomes: list[Outcome] = []
        self._bounces: list[tuple[int, str, datetime]] = []
        self._oldest = 0.0  # time.monotonic() of the oldest unwritten outcome
        self.written = 0
        # The error of the last write when it failed (the database is away), None once
        # one succeeds: lanes start no message while it is set.
        self.failing: Exception | None = None
        self._stored: Callable[[datetime | None], Any] | None = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()

    # --- outcomes ------------------------------------------------------------------

    def _add(self, outcome: Outcome) -> None:
        # Kept before anything is written: a write that fails (the database went away)
        # leaves it queued with the others for the next flush, never lost.
        with self._buffer:
            if not self._outcomes:
                self._oldest = time.monotonic()
            self._outcomes.append(outcome)
            count = len(self._outcomes)
        if count >= self.group:
            self.flush()  # a whole group: written now, before the sender goes on

    def sent(self, delivery_id: int, message_id: str, now: datetime) -> None:
        self._add(Outcome(delivery_id, "sent", sent_at=now, message_id=message_id))

    def deferred(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        self._add(Outcome(delivery_id, "deferred", error=error[:1000], retry_at=retry_at))

    def failed(self, delivery_id: int, error: str) -> None:
        self._add(Outcome(delivery_id, "failed", error=error[:1000]))

    def suppressed(self, delivery_id: int, reason: str) -> None:
        self._add(Outcome(delivery_id, "suppressed", error=reason[:1000]))

    def bounce(self, subscriber_id: int, email: str, now: datetime) -> None:
        """The mailbox does not exist: stop mailing it, for good (with the next group)."""
        with self._buffer:
            self._bounces.append((subscriber_id, email, now))

    def waiting(self) -> tuple[int, float]:
        """How many outcomes wait for a commit, and for how long the oldest has."""
        with self._buffer:
            if not self._outcomes:
                return 0, 0.0
            return len(self._outcomes), time.monotonic() - self._oldest

    def due(self, window: float) -> bool:
        """Whether outcomes have waited `window` seconds for their group (sending is
        slow): then the heartbeat writes them."""
        count, age = self.waiting()
        return count > 0 and age >= window

    def flush(self) -> None:
        """Write every waiting outcome in one transaction. Outcomes stay queued until
        that commit succeeds, so a later flush (after a reconnect) can still write them."""
        with self._lock:
            with self._buffer:
                if not self._outcomes and not self._bounces:
                    return
                outcomes, bounces = list(self._outcomes), list(self._bounces)

            def write(conn: Any) -> None:
                if outcomes:
                    self._write_outcomes(conn, outcomes)
                for subscriber_id, email, now in bounces:
                    self._write_bounce(conn, subscriber_id, email, now)

            self._transaction(write, atomic=bool(bounces))
            with self._buffer:
                del self._outcomes[: len(outcomes)]
                del self._bounces[: len(bounces)]
                if self._outcomes:
                    self._oldest = time.monotonic()  # near enough: they came in meanwhile
            self.written += len(outcomes)

    def _write_outcomes(self, conn: Any, outcomes: list[Outcome]) -> None:
        if self._pg:
            # A group's outcomes share a few instants: each is converted once.
            stamp = {
                t: _iso(t) for t in {o.sent_at for o in outcomes} | {o.retry_at for o in outcomes}
            }
            rows = [
                {
                    "id": o.id,
                    "status": o.status,
                    "sent_at": stamp[o.sent_at],
                    "message_id": o.message_id,
                    "error": o.error,
                    "retry_at": stamp[o.retry_at],
                }
                for o in outcomes
            ]
            conn.execute(
                _FINISH_PG,
                {
                    "rows": json.dumps(rows),
                    "ids": "{" + ",".join(str(o.id) for o in outcomes) + "}",
                    "lease": _naive(self.lease_until),
                },
            )
            return
        # The values in the columns' stored form (a batch's outcomes share a few
        # instants: each is converted once).
        if self._stored is None:
            self._stored = _stored_form(conn.dialect)
        stored = self._stored
        lease = stored(self.lease_until)
        conn.exec_driver_sql(
            _FINISH_SQLITE,
            [
                (o.status, o.error, stored(o.sent_at), o.message_id, stored(o.retry_at))
                + (o.id, lease)
                for o in outcomes
            ],
        )

    @staticmethod
    def _write_bounce(conn: Any, subscriber_id: int, email: str, now: datetime) -> None:
        conn.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id)
            .values(status="bounced", unsubscribed_at=now)
        )
        stmt = insert_for(conn.dialect.name, Suppression).values(
            email_hash=address_hash(email), reason="bounced", created_at=now
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["email_hash"]))
        # Listed with the rest of the returned mail (the console's Returned mail page).
        conn.execute(
            insert(ReturnedMail).values(
                at=now,
                subscriber_id=subscriber_id,
                kind="hard",
                source="smtp",
                reason="the receiving server refused the address at send time (unknown mailbox)",
            )
        )

    # --- the claim -------------------------------------------------------------------

    def _held(self, delivery_ids: Sequence[int]) -> Any:
        """An UPDATE of those rows this claim still holds (nobody else's)."""
        return update(Delivery).where(
            Delivery.id.in_(delivery_ids),
            Delivery.status == "sending",
            Delivery.lease_until == self.lease_until,
        )

    def renew(self, delivery_ids: Sequence[int], until: datetime) -> int:
        """Move the claim on the rows it still holds to `until`; returns how many.

        Waiting outcomes are written first, under the claim they were made with.
        """
        with self._lock:
            self.flush()
            stmt = self._held(delivery_ids).values(lease_until=until)
            count = self._transaction(lambda conn: conn.execute(stmt).rowcount)
            self.lease_until = until
            return int(count)

    def release(self, delivery_ids: Sequence[int]) -> None:
        """Hand claimed rows back to the queue untouched (the batch stopped early)."""
        with self._lock:
            self.flush()
            stmt = self._held(delivery_ids).values(
                status="queued", lease_until=None, attempts=Delivery.attempts - 1
            )
            self._transaction(lambda conn: conn.execute(stmt))

    def statuses(self, subscriber_ids: Sequence[int]) -> dict[int, str]:
        """The status of each of these readers who is no longer active (who left, was
        suppressed or bounced since the claim); the active ones, nearly all, are left
        out: the query costs what the few changed rows cost."""
        stmt = select(Subscriber.id, Subscriber.status).where(
            Subscriber.id.in_(subscriber_ids), Subscriber.status != "active"
        )
        with self._lock:
            return dict(self._transaction(lambda conn: list(conn.execute(stmt))))

    def outlast(self, work: Callable[[], T], until: float, pause: float = 0.5) -> T:
        """`work()`, tried again every `pause` seconds while the database is away, up to
        time.monotonic() `until`; then its error. The outcomes waiting stay queued in
        between, so replies that came in during an outage are written once it ends."""
        while True:
            try:
                return work()
            except DBAPIError:
                if time.monotonic() + pause >= until:
                    raise
                time.sleep(pause)

    def _connect(self) -> Any:
        """The recorder's connection. On PostgreSQL it commits each statement by itself:
        every write but a bounce's is one statement, and without BEGIN and COMMIT it
        costs one round trip instead of three."""
        conn = self._engine.connect()  # raises while the database is away
        if self._pg:
            conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def _transaction(self, work: Any, atomic: bool = False) -> Any:
        """Run `work(connection)` in one transaction (`atomic`: its statements commit
        together; otherwise `work` is one statement). A connection found dropped is
        replaced and the work tried once more (every write here is guarded by the
        claim, so running it twice changes nothing)."""
        with self._lock, self._write_lock:
            try:
                result = self._attempts(work, atomic and self._pg)
            except DBAPIError as exc:
                self.failing = exc
                raise
            self.failing = None
            return result

    def _attempts(self, work: Any, atomic: bool) -> Any:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                if atomic:  # a real transaction on the autocommit connection, this once
                    conn.execution_options(isolation_level=conn.default_isolation_level)
                try:
                    with conn.begin():
                        return work(conn)
                finally:
                    if atomic and not conn.invalidated and not conn.closed:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
            except DBAPIError as exc:
                # A dropped connection leaves an invalid transaction behind, and
                # reusing it raises PendingRollbackError over the real error.
                broken, self._conn = self._conn, None
                try:
                    broken.close()
                except DBAPIError:
                    pass
                if attempt == 2 or not exc.connection_invalidated:
                    raise
