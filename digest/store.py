"""Every query digest makes. Functions take the caller's session first and never commit."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from digest.editions import Candidate
from digest.errors import Duplicate, InvalidInput, NotFound
from digest.models import (
    Article,
    Delivery,
    Edition,
    EditionArticle,
    EditionVariant,
    Feed,
    Subscriber,
    Suppression,
)
from digest.schedule import Cohort

OPEN_STATUSES = ("queued", "sending", "deferred")


def _insert(session: Session, model: Any) -> Any:
    """INSERT that knows ON CONFLICT on both dialects digest runs on."""
    return _insert_for(session.get_bind().dialect.name, model)


def _insert_for(dialect_name: str, model: Any) -> Any:
    return (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(model)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE touched (a CursorResult attribute the generic Result type lacks)."""
    return int(getattr(result, "rowcount", 0) or 0)


def dialect(session: Session) -> str:
    return session.get_bind().dialect.name


# --- subscribers -------------------------------------------------------------------


def address_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def is_suppressed(session: Session, email: str) -> bool:
    return session.get(Suppression, address_hash(email)) is not None


def suppressed_hashes(session: Session, emails: Iterable[str]) -> set[str]:
    hashes = [address_hash(e) for e in emails]
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        found.update(
            session.scalars(
                select(Suppression.email_hash).where(
                    Suppression.email_hash.in_(hashes[i : i + 500])
                )
            )
        )
    return found


def suppress(session: Session, email: str, reason: str, now: datetime) -> None:
    """Remember an address must never be mailed again (only its hash is kept)."""
    stmt = _insert(session, Suppression).values(
        email_hash=address_hash(email), reason=reason, created_at=now
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["email_hash"]))


def add_subscriber(
    session: Session,
    email: str,
    now: datetime,
    *,
    name: str = "",
    timezone: str | None = None,
    morning: bool = True,
    evening: bool = True,
    sections: str = "",
    status: str = "pending",
    consent: str = "",
) -> Subscriber:
    """Insert one subscriber; the address must already be normalised."""
    if find_subscriber(session, email) is not None:
        raise Duplicate(f"{email} is already subscribed")
    if status == "active" and is_suppressed(session, email):
        raise InvalidInput(f"{email} unsubscribed or bounced earlier and cannot be re-added")
    subscriber = Subscriber(
        email=email,
        name=name,
        timezone=timezone,
        morning=morning,
        evening=evening,
        sections=sections,
        status=status,
        consent=consent,
        created_at=now,
        confirmed_at=now if status == "active" else None,
    )
    session.add(subscriber)
    session.flush()
    return subscriber


def insert_subscribers(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Bulk insert; rows whose address exists already are skipped. Returns rows added."""
    if not rows:
        return 0
    stmt = _insert(session, Subscriber).on_conflict_do_nothing(index_elements=["email"])
    result = session.execute(stmt.returning(Subscriber.id), list(rows))
    return len(result.all())


def existing_emails(session: Session, emails: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(emails), 500):
        found.update(
            session.scalars(
                select(Subscriber.email).where(Subscriber.email.in_(emails[i : i + 500]))
            )
        )
    return found


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    return session.scalars(select(Subscriber).where(Subscriber.email == email)).first()


def get_subscriber(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound(f"no subscriber with id {subscriber_id}")
    return subscriber


def iter_subscribers(session: Session, status: str | None = None) -> Iterator[Subscriber]:
    """All subscribers in id order, fetched in chunks so memory stays flat."""
    stmt = select(Subscriber).order_by(Subscriber.id)
    if status:
        stmt = stmt.where(Subscriber.status == status)
    yield from session.scalars(stmt.execution_options(yield_per=1000))


def count_subscribers(session: Session) -> dict[str, int]:
    rows = session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
    return {status: n for status, n in rows}


def set_status(session: Session, subscriber: Subscriber, status: str, now: datetime) -> None:
    """Move a subscriber to a new status; leaving for good also suppresses the address."""
    subscriber.status = status
    if status == "active":
        subscriber.confirmed_at = subscriber.confirmed_at or now
    if status in ("unsubscribed", "bounced", "complained"):
        subscriber.unsubscribed_at = now
        suppress(session, subscriber.email, status, now)


def active_timezones(session: Session, default_timezone: str) -> set[str]:
    tz = func.coalesce(Subscriber.timezone, default_timezone)
    return set(session.scalars(select(tz).where(Subscriber.status == "active").distinct()))


def _cohort_filter(cohort: Cohort, default_timezone: str) -> Any:
    wants = Subscriber.morning if cohort.slot == "morning" else Subscriber.evening
    return and_(
        Subscriber.status == "active",
        wants.is_(True),
        func.coalesce(Subscriber.timezone, default_timezone) == cohort.timezone,
    )


def cohort_section_choices(session: Session, cohort: Cohort, default_timezone: str) -> list[str]:
    """The distinct section choices among a cohort's readers (one rendering each)."""
    stmt = (
        select(Subscriber.sections)
        .where(_cohort_filter(cohort, default_timezone))
        .distinct()
        .order_by(Subscriber.sections)
    )
    return list(session.scalars(stmt))


# --- feeds and articles ------------------------------------------------------------


def add_feed(session: Session, url: str, section: str) -> Feed:
    if session.scalars(select(Feed).where(Feed.url == url)).first():
        raise Duplicate(f"feed {url} is already added")
    feed = Feed(url=url, section=section)
    session.add(feed)
    session.flush()
    return feed


def list_feeds(session: Session) -> list[Feed]:
    return list(session.scalars(select(Feed).order_by(Feed.id)))


def insert_articles(session: Session, articles: Sequence[dict[str, Any]]) -> int:
    """Store articles not seen before (by guid, then by URL). Returns how many were new."""
    guids = [a["guid"] for a in articles if a.get("guid")]
    urls = [a["url"] for a in articles]
    seen_guids = (
        set(session.scalars(select(Article.guid).where(Article.guid.in_(guids))))
        if guids
        else set()
    )
    seen_urls = (
        set(session.scalars(select(Article.url).where(Article.url.in_(urls)))) if urls else set()
    )
    fresh = []
    for article in articles:
        guid = article.get("guid")
        if (guid and guid in seen_guids) or article["url"] in seen_urls:
            continue
        if guid:
            seen_guids.add(guid)
        seen_urls.add(article["url"])
        fresh.append(article)
    if fresh:
        session.execute(_insert(session, Article).on_conflict_do_nothing(), fresh)
    return len(fresh)


def candidate_articles(session: Session, since: datetime, until: datetime) -> list[Candidate]:
    """Articles that could fall in a window ending at `until` (pre-filter; the rest is pure)."""
    stmt = select(
        Article.id, Article.section, Article.priority, Article.published_at, Article.seen_at
    ).where(Article.published_at > since, Article.published_at <= until)
    return [Candidate(*row) for row in session.execute(stmt)]


def articles_by_id(session: Session, ids: Sequence[int]) -> dict[int, Article]:
    return {a.id: a for a in session.scalars(select(Article).where(Article.id.in_(ids)))}


# --- editions ----------------------------------------------------------------------


def find_edition(session: Session, cohort: Cohort) -> Edition | None:
    stmt = select(Edition).where(
        Edition.slot == cohort.slot,
        Edition.local_day == cohort.local_day,
        Edition.timezone == cohort.timezone,
    )
    return session.scalars(stmt).first()


def get_edition(session: Session, edition_id: int) -> Edition:
    edition = session.get(Edition, edition_id)
    if edition is None:
        raise NotFound(f"no edition with id {edition_id}")
    return edition


def previous_edition(session: Session, timezone: str, before: datetime) -> Edition | None:
    """The latest edition of this timezone cut before `before` (any slot, any status)."""
    stmt = (
        select(Edition)
        .where(Edition.timezone == timezone, Edition.window_end < before)
        .where(Edition.status != "missed")
        .order_by(Edition.window_end.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def create_edition(
    session: Session,
    cohort: Cohort,
    *,
    send_at: datetime,
    window_start: datetime,
    now: datetime,
    status: str = "planned",
    note: str = "",
) -> Edition | None:
    """Insert the cohort's edition; None if it exists already (unique on the cohort)."""
    stmt = (
        _insert(session, Edition)
        .values(
            slot=cohort.slot,
            local_day=cohort.local_day,
            timezone=cohort.timezone,
            status=status,
            send_at=send_at,
            window_start=window_start,
            window_end=send_at,
            created_at=now,
            note=note,
        )
        .on_conflict_do_nothing(index_elements=["slot", "local_day", "timezone"])
        .returning(Edition.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    return None if new_id is None else session.get(Edition, new_id)


def list_editions(session: Session, limit: int = 20) -> list[Edition]:
    return list(session.scalars(select(Edition).order_by(Edition.id.desc()).limit(limit)))


def edition_article_ids(session: Session, edition_id: int) -> list[int]:
    stmt = (
        select(EditionArticle.article_id)
        .where(EditionArticle.edition_id == edition_id)
        .order_by(EditionArticle.position)
    )
    return list(session.scalars(stmt))


def add_edition_articles(session: Session, edition_id: int, article_ids: Sequence[int]) -> None:
    session.add_all(
        EditionArticle(edition_id=edition_id, article_id=aid, position=i)
        for i, aid in enumerate(article_ids)
    )


def add_variant(session: Session, edition_id: int, sections: str, **fields: Any) -> EditionVariant:
    variant = EditionVariant(edition_id=edition_id, sections=sections, **fields)
    session.add(variant)
    session.flush()
    return variant


def get_variant(session: Session, variant_id: int) -> EditionVariant:
    variant = session.get(EditionVariant, variant_id)
    if variant is None:
        raise NotFound(f"no edition variant with id {variant_id}")
    return variant


def variants(session: Session, edition_id: int) -> list[EditionVariant]:
    stmt = select(EditionVariant).where(EditionVariant.edition_id == edition_id)
    return list(session.scalars(stmt.order_by(EditionVariant.id)))


# --- deliveries ----------------------------------------------------------------------


def queue_deliveries(
    session: Session, edition: Edition, default_timezone: str, now: datetime
) -> int:
    """One queued delivery per reader of the cohort, in one INSERT ... SELECT.

    Readers whose sections have no variant (nothing to show them) get no row.
    """
    cohort = Cohort(edition.slot, edition.local_day, edition.timezone)
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
        .where(_cohort_filter(cohort, default_timezone))
    )
    stmt = (
        _insert(session, Delivery)
        .from_select(
            ["edition_id", "subscriber_id", "variant_id", "status", "attempts", "queued_at"], source
        )
        .on_conflict_do_nothing(index_elements=["edition_id", "subscriber_id"])
    )
    session.execute(stmt)
    # rowcount of INSERT ... SELECT is not reliable across drivers (psycopg gives -1).
    return (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.edition_id == edition.id)
        )
        or 0
    )


def delivery_ids(
    session: Session, edition_id: int, statuses: Sequence[str] = ("queued",)
) -> list[int]:
    stmt = (
        select(Delivery.id)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
        .order_by(Delivery.id)
    )
    return list(session.scalars(stmt))


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

    On PostgreSQL rows another worker holds are skipped, not waited for.
    """
    ready = (
        select(Delivery.id)
        .where(
            Delivery.id.in_(ids),
            or_(
                Delivery.status == "queued",
                and_(Delivery.status == "deferred", Delivery.next_attempt_at <= now),
            ),
        )
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(ready.scalar_subquery()))
        .values(status="sending", lease_until=now + lease, attempts=Delivery.attempts + 1)
        .returning(Delivery.id)
    )
    return sorted(session.scalars(stmt).all())


def sending_rows(session: Session, ids: Sequence[int]) -> list[Any]:
    """What the send loop needs of each claimed row, in id order."""
    stmt = (
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
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    )
    return list(session.execute(stmt))


def subscriber_statuses(session: Session, subscriber_ids: Sequence[int]) -> dict[int, str]:
    stmt = select(Subscriber.id, Subscriber.status).where(Subscriber.id.in_(subscriber_ids))
    return {sid: status for sid, status in session.execute(stmt)}


# The send loop records every message on its own; these statements are built once
# and run as Core (no ORM session synchronisation), which keeps a record under 0.2 ms.
_DELIVERY_TABLE: Any = Delivery.__table__
_DELIVERY = _DELIVERY_TABLE.c


def _finish_stmt(**values: Any) -> Any:
    return (
        update(_DELIVERY_TABLE)
        .where(_DELIVERY.id == bindparam("b_id"), _DELIVERY.status == "sending")
        .values(lease_until=None, **values)
    )


_SENT = _finish_stmt(
    status="sent", sent_at=bindparam("b_at"), message_id=bindparam("b_mid"), last_error=None
)
_DEFERRED = _finish_stmt(
    status="deferred", last_error=bindparam("b_error"), next_attempt_at=bindparam("b_at")
)
_FAILED = _finish_stmt(status="failed", last_error=bindparam("b_error"))
_SUPPRESSED = _finish_stmt(status="suppressed", last_error=bindparam("b_error"))


class Recorder:
    """Records each delivery's outcome in its own autocommitted UPDATE.

    The send loop calls it right after the server's reply, so a crash can resend at
    most the one message in flight. It runs on its own connection, outside the
    caller's session transaction, at a fraction of a session commit's cost.
    """

    # SQLite has one writer at a time and its busy handler sleeps (milliseconds) when it
    # loses a race; lanes of one process take turns on this lock instead.
    _sqlite_lock = threading.Lock()

    def __init__(self, session: Session) -> None:
        engine: Any = session.get_bind()
        self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._lock: AbstractContextManager[Any] = (
            self._sqlite_lock if self._conn.dialect.name == "sqlite" else nullcontext()
        )

    def _run(self, stmt: Any, params: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self._conn.execute(stmt, params)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def sent(self, delivery_id: int, message_id: str, now: datetime) -> None:
        self._run(_SENT, {"b_id": delivery_id, "b_at": now, "b_mid": message_id})

    def deferred(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        self._run(_DEFERRED, {"b_id": delivery_id, "b_error": error[:1000], "b_at": retry_at})

    def failed(self, delivery_id: int, error: str) -> None:
        self._run(_FAILED, {"b_id": delivery_id, "b_error": error[:1000]})

    def suppressed(self, delivery_id: int, reason: str) -> None:
        self._run(_SUPPRESSED, {"b_id": delivery_id, "b_error": reason[:1000]})

    def statuses(self, subscriber_ids: Sequence[int]) -> dict[int, str]:
        stmt = select(Subscriber.id, Subscriber.status).where(Subscriber.id.in_(subscriber_ids))
        return {sid: status for sid, status in self._run(stmt)}

    def bounce(self, subscriber_id: int, email: str, now: datetime) -> None:
        """The mailbox does not exist: stop mailing it, for good."""
        self._run(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id)
            .values(status="bounced", unsubscribed_at=now)
        )
        stmt = _insert_for(self._conn.dialect.name, Suppression).values(
            email_hash=address_hash(email), reason="bounced", created_at=now
        )
        self._run(stmt.on_conflict_do_nothing(index_elements=["email_hash"]))

    def release(self, delivery_ids: Sequence[int]) -> None:
        """Hand claimed rows back to the queue untouched (the batch stopped early)."""
        self._run(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == "sending")
            .values(status="queued", lease_until=None, attempts=Delivery.attempts - 1)
        )


def edition_counts(session: Session, edition_id: int) -> dict[str, int]:
    stmt = (
        select(Delivery.status, func.count())
        .where(Delivery.edition_id == edition_id)
        .group_by(Delivery.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def update_edition_status(session: Session, edition_id: int) -> str:
    """`done` once no delivery is open any more; returns the status now stored."""
    edition = get_edition(session, edition_id)
    if edition.status == "sending":
        open_rows = session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.edition_id == edition_id, Delivery.status.in_(OPEN_STATUSES))
        )
        if not open_rows:
            edition.status = "done"
    return edition.status


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
        .where(or_(*stale))
        .order_by(Delivery.edition_id, Delivery.id)
    )
    return [(e, d) for e, d in session.execute(stmt)]


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
        total += _rowcount(result)
    return total


def retry_deliveries(
    session: Session, edition_id: int, statuses: Sequence[str], now: datetime
) -> int:
    """Operator retry: put failed or deferred rows of an edition back in the queue."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
        .values(status="queued", next_attempt_at=None, queued_at=now)
    )
    edition = get_edition(session, edition_id)
    if _rowcount(result) and edition.status == "done":
        edition.status = "sending"
    return _rowcount(result)


def delete_subscriber_deliveries(session: Session, subscriber_id: int) -> None:
    session.execute(delete(Delivery).where(Delivery.subscriber_id == subscriber_id))


def status_case() -> Any:
    return case((Delivery.status == "sent", 1), else_=0)


def day_editions(session: Session, day: date) -> list[Edition]:
    return list(session.scalars(select(Edition).where(Edition.local_day == day)))


# --- accounts ------------------------------------------------------------------------


def ping(session: Session) -> None:
    """A trivial query: raises if the database cannot be reached."""
    session.execute(select(literal(1))).scalar_one()


def known_sections(session: Session, since: datetime) -> list[str]:
    """Sections a reader can choose: every feed's, and any article's seen since `since`.

    Articles are bounded by time (published_at is indexed) so the subscribe page does
    not scan the whole archive.
    """
    found = set(session.scalars(select(Feed.section).distinct()))
    found.update(
        session.scalars(select(Article.section).where(Article.published_at > since).distinct())
    )
    return sorted(s for s in found if s)


def lift_suppression(session: Session, email: str) -> None:
    """Forget a suppression: only after the address owner confirmed fresh consent."""
    session.execute(delete(Suppression).where(Suppression.email_hash == address_hash(email)))


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
        )
        found.extend((d, at) for d, at in session.execute(stmt) if at is not None)
    return sorted(found)


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
