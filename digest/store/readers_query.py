"""Finding readers at scale: one filter (ReaderFilter, read from a query string by
parse_filter) and the queries on it: a keyset page (list_readers), counts, the ids of
every match (for bulk actions and exports).

Pages are keyed on (sort column, id) of the last row shown, never on an offset, so a
page stays the same while readers sign up; the cursor is a reader's id, so no address
or date goes into a URL. Shared by the console (digest/web/console/readers.py) and the
API; the caller owns the session.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, not_, or_, select, tuple_
from sqlalchemy.orm import Session

from digest.errors import InvalidInput
from digest.models import SUBSCRIBER_STATUSES, Delivery, Subscriber, Suppression
from digest.store.subscribers import address_hash

STATUSES = (*SUBSCRIBER_STATUSES, "erased")
SORTS = ("created", "email", "id")
EDITIONS = ("morning", "evening", "both")
# How readers signed up: the start of their consent record ("api" is every way in
# through the JSON API: its readers, sign-ups and imports with their default source).
SOURCES = ("web form", "cli", "import", "console import", "api")
LAST_DELIVERY = ("never", "7d", "30d", "over30d")
PAGE_SIZES = (25, 50, 100, 200)
MAX_TEXT = 320


@dataclass(frozen=True)
class ReaderFilter:
    """Which readers, in what order. Empty fields do not filter; they combine with AND.

    status: any of these (erased readers only when asked for); timezone: this IANA name,
    or "default" for readers on the site's default; editions: gets the morning, the
    evening or both; section: gets this section (readers with "all sections" do);
    source: how they signed up (the start of their consent record); signed_up_from/to:
    local dates, inclusive, in UTC; last_delivery: never, within 7 or 30 days, or not
    for 30 days; min_failures: at least this many failed deliveries (hard bounces and
    refusals); text: in the address or the name, any case; email: exactly this address
    (lower-cased, as addresses are stored).
    """

    status: tuple[str, ...] = ()
    timezone: str = ""
    editions: str = ""
    section: str = ""
    source: str = ""
    signed_up_from: date | None = None
    signed_up_to: date | None = None
    last_delivery: str = ""
    min_failures: int = 0
    text: str = ""
    email: str = ""
    sort: str = "created"
    descending: bool = True

    def is_empty(self) -> bool:
        """Whether it filters nothing (the order aside)."""
        blank = ReaderFilter(sort=self.sort, descending=self.descending)
        return self == blank


@dataclass(frozen=True)
class ReaderRow:
    """One reader as the list shows them."""

    id: int
    email: str
    name: str
    status: str
    timezone: str | None
    morning: bool
    evening: bool
    sections: str
    consent: str
    created_at: datetime
    last_sent_at: datetime | None
    failures: int
    suppressed: str | None


@dataclass
class ReaderPage:
    """A page of readers, with where it stands: rows first to last of total."""

    rows: list[ReaderRow]
    total: int
    first: int  # 1-based position of the first row (0 when there are none)
    next_after: int | None
    prev_before: int | None

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


# --- reading a filter ----------------------------------------------------------------------


class BadFilter(InvalidInput):
    """A filter value that cannot be used; `field` is the query parameter's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _date(name: str, value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        shown = repr(value[:20])
        raise BadFilter(name, f"{name} must be a date such as 2026-11-30, got {shown}") from None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value and value not in allowed:
        shown = repr(value[:40])
        raise BadFilter(name, f"{name} must be one of {', '.join(allowed)}, got {shown}")
    return value


def parse_filter(values: Mapping[str, Any]) -> ReaderFilter:
    """A ReaderFilter from query-string values (a dict, or a MultiDict whose `status`
    may repeat); BadFilter (an InvalidInput) names the first field that is wrong. Pure:
    no I/O."""
    getlist = getattr(values, "getlist", None)
    raw_status = getlist("status") if getlist else values.get("status", "")
    if isinstance(raw_status, str):
        raw_status = [raw_status]
    split = [part.strip() for item in raw_status for part in str(item).split(",")]
    status = tuple(dict.fromkeys(s for s in split if s))
    for s in status:
        _choice("status", s, STATUSES)

    def one(key: str, limit: int = 100) -> str:
        value = values.get(key, "")
        return str(value).strip()[:limit] if value is not None else ""

    failures = one("min_failures", 6)
    if failures and not (failures.isascii() and failures.isdigit()):
        raise BadFilter("min_failures", f"min_failures must be a whole number, got {failures!r}")
    timezone = one("timezone", 64)
    if timezone and timezone != "default" and not all(c.isalnum() or c in "/_+-" for c in timezone):
        shown = repr(timezone)
        raise BadFilter("timezone", f"timezone must be an IANA name or 'default', got {shown}")
    section = one("section", 64).lower()
    order = one("order", 4) or "desc"
    found = ReaderFilter(
        status=status,
        timezone=timezone,
        editions=_choice("editions", one("editions"), EDITIONS),
        section=section,
        source=_choice("source", one("source"), SOURCES),
        signed_up_from=_date("signed_up_from", one("signed_up_from", 20)),
        signed_up_to=_date("signed_up_to", one("signed_up_to", 20)),
        last_delivery=_choice("last_delivery", one("last_delivery"), LAST_DELIVERY),
        min_failures=int(failures or 0),
        text=one("q", MAX_TEXT).lower(),
        email=one("email", MAX_TEXT).lower(),
        sort=_choice("sort", one("sort") or "created", SORTS),
        descending=_choice("order", order, ("asc", "desc")) == "desc",
    )
    if found.signed_up_from and found.signed_up_to and found.signed_up_from > found.signed_up_to:
        raise BadFilter("signed_up_from", "signed_up_from must not be after signed_up_to")
    return found


def to_query(flt: ReaderFilter) -> dict[str, str]:
    """The query-string values that parse_filter reads back as the same filter."""
    out: dict[str, str] = {}
    if flt.status:
        out["status"] = ",".join(flt.status)
    for key in ("timezone", "editions", "section", "source", "last_delivery"):
        if getattr(flt, key):
            out[key] = getattr(flt, key)
    if flt.signed_up_from:
        out["signed_up_from"] = flt.signed_up_from.isoformat()
    if flt.signed_up_to:
        out["signed_up_to"] = flt.signed_up_to.isoformat()
    if flt.min_failures:
        out["min_failures"] = str(flt.min_failures)
    if flt.text:
        out["q"] = flt.text
    if flt.email:
        out["email"] = flt.email
    if flt.sort != "created":
        out["sort"] = flt.sort
    if not flt.descending:
        out["order"] = "asc"
    return out


def describe(flt: ReaderFilter) -> str:
    """The filter in words, for the audit log and confirmations (the text searched for
    and the address are not repeated)."""
    said = []
    for f in fields(ReaderFilter):
        value = getattr(flt, f.name)
        if f.name in ("sort", "descending") or not value:
            continue
        if f.name == "text":
            said.append("a text search")
        elif f.name == "email":
            said.append("one address")
        elif f.name == "status":
            said.append("status " + " or ".join(value))
        else:
            said.append(f"{f.name.replace('_', ' ')} {value}")
    return ", ".join(said) or "every reader"


# --- the queries -----------------------------------------------------------------------------


def _sent_since(when: datetime | None) -> Any:
    q = select(Delivery.id).where(Delivery.subscriber_id == Subscriber.id)
    q = q.where(Delivery.sent_at.is_not(None) if when is None else Delivery.sent_at >= when)
    return q.exists()


def conditions(flt: ReaderFilter, now: datetime) -> list[ColumnElement[bool]]:
    """The WHERE terms of a filter (erased readers only when its status asks)."""
    where: list[ColumnElement[bool]] = []
    if flt.status:
        where.append(Subscriber.status.in_(flt.status))
    else:
        where.append(Subscriber.status != "erased")
    if flt.timezone == "default":
        where.append(Subscriber.timezone.is_(None))
    elif flt.timezone:
        where.append(Subscriber.timezone == flt.timezone)
    if flt.editions in ("morning", "both"):
        where.append(Subscriber.morning.is_(True))
    if flt.editions in ("evening", "both"):
        where.append(Subscriber.evening.is_(True))
    if flt.section:
        padded = literal(",") + Subscriber.sections + literal(",")
        where.append(
            or_(Subscriber.sections == "", padded.contains(f",{flt.section},", autoescape=True))
        )
    if flt.source:
        where.append(Subscriber.consent.startswith(flt.source, autoescape=True))
    if flt.signed_up_from:
        where.append(Subscriber.created_at >= datetime.combine(flt.signed_up_from, time(), UTC))
    if flt.signed_up_to:
        end = datetime.combine(flt.signed_up_to + timedelta(days=1), time(), UTC)
        where.append(Subscriber.created_at < end)
    if flt.last_delivery == "never":
        where.append(not_(_sent_since(None)))
    elif flt.last_delivery in ("7d", "30d"):
        where.append(_sent_since(now - timedelta(days=int(flt.last_delivery[:-1]))))
    elif flt.last_delivery == "over30d":
        where.append(and_(_sent_since(None), not_(_sent_since(now - timedelta(days=30)))))
    if flt.min_failures:
        failed = (
            select(func.count(Delivery.id))
            .where(Delivery.subscriber_id == Subscriber.id, Delivery.status == "failed")
            .scalar_subquery()
        )
        where.append(failed >= flt.min_failures)
    if flt.email:
        where.append(Subscriber.email == flt.email)
    if flt.text:
        where.append(
            or_(
                # Addresses are stored lower-cased (addresses.normalise_address).
                Subscriber.email.contains(flt.text, autoescape=True),
                func.lower(Subscriber.name).contains(flt.text, autoescape=True),
            )
        )
    return where


def _sort_column(flt: ReaderFilter) -> Any:
    return {"created": Subscriber.created_at, "email": Subscriber.email, "id": Subscriber.id}[
        flt.sort
    ]


def _ordered(stmt: Select[Any], flt: ReaderFilter, reverse: bool = False) -> Select[Any]:
    col = _sort_column(flt)
    down = flt.descending != reverse
    cols = [col, Subscriber.id] if flt.sort == "created" else [col]
    return stmt.order_by(*[c.desc() if down else c.asc() for c in cols])


def count_readers(session: Session, flt: ReaderFilter, now: datetime) -> int:
    """How many readers match."""
    stmt = select(func.count()).select_from(Subscriber).where(*conditions(flt, now))
    return int(session.scalar(stmt) or 0)


def list_readers(
    session: Session,
    flt: ReaderFilter,
    after: int | None = None,
    limit: int = 50,
    *,
    before: int | None = None,
    now: datetime | None = None,
    start: int | None = None,
    locate: bool = True,
) -> ReaderPage:
    """One page of matching readers in the filter's order: the first page, the one after
    reader `after`, or the one before reader `before` (ids of rows of the last page).

    `start` is the position of the page's first row when the caller knows it (the page
    before said so): it saves counting the rows ahead. Without `locate` (the API, which
    pages forward only and shows no position) `first` is 0 after the first page and the
    rows ahead are not counted."""
    now = now or datetime.now(UTC)
    limit = max(1, min(limit, 500))
    where = conditions(flt, now)
    stmt = select(Subscriber.id).where(*where)
    if after is not None:
        stmt = _ordered(stmt.where(_beyond(flt, after, forward=True)), flt)
    elif before is not None:
        stmt = _ordered(stmt.where(_beyond(flt, before, forward=False)), flt, reverse=True)
    else:
        stmt = _ordered(stmt, flt)
    ids = list(session.scalars(stmt.limit(limit + 1)))
    more = len(ids) > limit
    ids = ids[:limit]
    if before is not None:
        ids.reverse()
    rows = _rows(session, ids, now)
    total = count_readers(session, flt, now)
    first = 0
    if rows and after is None and before is None:
        first = 1
    elif rows and start is not None and 0 < start <= total:
        first = start
    elif rows and locate:
        ahead = select(func.count()).select_from(Subscriber)
        ahead = ahead.where(*where, _beyond(flt, ids[0], forward=False))
        first = int(session.scalar(ahead) or 0) + 1
    has_next = more if before is None else bool(rows) and first + len(rows) - 1 < total
    has_prev = bool(rows) and first > 1
    return ReaderPage(
        rows=rows,
        total=total,
        first=first,
        next_after=ids[-1] if rows and has_next else None,
        prev_before=ids[0] if has_prev else None,
    )


def _beyond(flt: ReaderFilter, reader_id: int, *, forward: bool) -> ColumnElement[bool]:
    """Rows that come after (forward) or before reader `reader_id` in the filter's order:
    one row-value comparison, which the (created_at, id) and email indexes serve."""
    smaller = flt.descending == forward  # going down a descending list: smaller keys
    if flt.sort == "id":
        return Subscriber.id < reader_id if smaller else Subscriber.id > reader_id
    if flt.sort == "email":  # unique: the address alone is the key
        mark = select(Subscriber.email).where(Subscriber.id == reader_id).scalar_subquery()
        return Subscriber.email < mark if smaller else Subscriber.email > mark
    at = select(Subscriber.created_at).where(Subscriber.id == reader_id).scalar_subquery()
    key, there = tuple_(Subscriber.created_at, Subscriber.id), tuple_(at, literal(reader_id))
    return key < there if smaller else key > there


def _rows(session: Session, ids: list[int], now: datetime) -> list[ReaderRow]:
    if not ids:
        return []
    last_sent = (
        select(func.max(Delivery.sent_at))
        .where(Delivery.subscriber_id == Subscriber.id)
        .scalar_subquery()
    )
    failures = (
        select(func.count(Delivery.id))
        .where(Delivery.subscriber_id == Subscriber.id, Delivery.status == "failed")
        .scalar_subquery()
    )
    stmt = select(Subscriber, last_sent, failures).where(Subscriber.id.in_(ids))
    found = {s.id: (s, sent, n) for s, sent, n in session.execute(stmt)}
    hashes = {i: address_hash(found[i][0].email) for i in ids if i in found}
    stmt_reasons = select(Suppression.email_hash, Suppression.reason).where(
        Suppression.email_hash.in_(list(hashes.values()))
    )
    reasons: dict[str, str] = {h: r for h, r in session.execute(stmt_reasons)}
    out = []
    for i in ids:
        if i not in found:
            continue
        s, sent, n = found[i]
        out.append(
            ReaderRow(
                s.id,
                s.email,
                s.name,
                s.status,
                s.timezone,
                s.morning,
                s.evening,
                s.sections,
                s.consent,
                s.created_at,
                sent,
                int(n or 0),
                reasons.get(hashes[i]),
            )
        )
    return out


def matching_ids(
    session: Session, flt: ReaderFilter, now: datetime, chunk: int = 1000
) -> Iterator[list[int]]:
    """The ids of every matching reader, in chunks, in id order (bulk actions, exports):
    each chunk is read after the one before it, so the caller may change rows between."""
    where = conditions(flt, now)
    last = 0
    while True:
        stmt = (
            select(Subscriber.id)
            .where(*where, Subscriber.id > last)
            .order_by(Subscriber.id)
            .limit(chunk)
        )
        ids = list(session.scalars(stmt))
        if not ids:
            return
        yield ids
        last = ids[-1]


def readers_by_id(session: Session, ids: list[int]) -> list[Subscriber]:
    """The readers with these ids, in id order."""
    return list(
        session.scalars(select(Subscriber).where(Subscriber.id.in_(ids)).order_by(Subscriber.id))
    )
