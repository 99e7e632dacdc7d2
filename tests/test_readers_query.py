"""The readers list's filter and keyset pages (digest/store/readers_query), on SQLite and
PostgreSQL; parse_filter as a table."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from werkzeug.datastructures import MultiDict

from digest import store
from digest.errors import InvalidInput
from digest.models import Delivery, Edition
from digest.store.readers_query import (
    BadFilter,
    ReaderFilter,
    count_readers,
    describe,
    list_readers,
    matching_ids,
    parse_filter,
    to_query,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ReaderFilter()),
        ({"status": "active,pending"}, ReaderFilter(status=("active", "pending"))),
        (
            MultiDict([("status", "active"), ("status", "bounced")]),
            ReaderFilter(status=("active", "bounced")),
        ),
        ({"q": "  Ana@Example.com "}, ReaderFilter(text="ana@example.com")),
        ({"email": " Ana@Example.com"}, ReaderFilter(email="ana@example.com")),
        ({"source": "api", "status": ["erased"]}, ReaderFilter(source="api", status=("erased",))),
        (
            {"timezone": "Europe/London", "editions": "morning", "section": "Sport"},
            ReaderFilter(timezone="Europe/London", editions="morning", section="sport"),
        ),
        (
            {"signed_up_from": "2026-11-01", "signed_up_to": "2026-11-30"},
            ReaderFilter(signed_up_from=date(2026, 11, 1), signed_up_to=date(2026, 11, 30)),
        ),
        (
            {"min_failures": "2", "last_delivery": "never", "sort": "email", "order": "asc"},
            ReaderFilter(min_failures=2, last_delivery="never", sort="email", descending=False),
        ),
    ],
)
def test_parse_filter_reads_a_query_string(values, expected) -> None:
    assert parse_filter(values) == expected
    assert parse_filter(to_query(expected)) == expected


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"status": "gone"}, "status"),
        ({"editions": "noon"}, "editions"),
        ({"signed_up_from": "30/11/2026"}, "signed_up_from"),
        ({"min_failures": "²"}, "min_failures"),
        ({"sort": "name; drop"}, "sort"),
        ({"timezone": "Europe/London'"}, "timezone"),
        ({"signed_up_from": "2026-12-01", "signed_up_to": "2026-11-01"}, "signed_up_from"),
    ],
)
def test_parse_filter_names_the_bad_field(values, field: str) -> None:
    with pytest.raises(InvalidInput, match=field) as raised:
        parse_filter(values)
    assert isinstance(raised.value, BadFilter) and raised.value.field == field


def test_describe_never_repeats_the_searched_text() -> None:
    said = describe(
        ReaderFilter(status=("active",), text="ana@example.com", section="sport", email="bo@x.org")
    )
    assert "ana" not in said and "status active" in said and "section sport" in said
    assert "bo@" not in said and "one address" in said
    assert describe(ReaderFilter()) == "every reader"


def seed(session, n: int = 30) -> list[int]:
    ids = []
    for i in range(n):
        s = store.add_subscriber(
            session,
            f"r{i:02d}@example.com",
            NOW - timedelta(days=i % 10),
            name=f"Reader {i}",
            status=("active", "pending", "unsubscribed")[i % 3],
            timezone="Europe/London" if i % 2 else None,
            sections="sport" if i % 5 == 0 else "",
        )
        ids.append(s.id)
    session.commit()
    return ids


def test_filters_combine(session) -> None:
    ids = seed(session)
    both = ReaderFilter(status=("active",), timezone="Europe/London")
    found = [r.id for r in list_readers(session, both, now=NOW, limit=100).rows]
    assert found and all(
        store.get_subscriber(session, i).status == "active"
        and store.get_subscriber(session, i).timezone == "Europe/London"
        for i in found
    )
    assert count_readers(session, ReaderFilter(text="reader 1"), NOW) == 11  # 1, 10..19
    assert count_readers(session, ReaderFilter(text="r01@example.com"), NOW) == 1
    assert count_readers(session, ReaderFilter(email="r01@example.co"), NOW) == 0  # exactly
    assert [r.id for r in list_readers(session, ReaderFilter(email="r01@example.com")).rows] == [
        ids[1]
    ]
    sport = list_readers(session, ReaderFilter(section="sport", status=("active",)), now=NOW)
    # "all sections" readers get sport too
    assert len(sport.rows) == count_readers(session, ReaderFilter(status=("active",)), NOW)
    assert sum(len(c) for c in matching_ids(session, ReaderFilter(), NOW, chunk=7)) == len(ids)
    recent = ReaderFilter(signed_up_from=(NOW - timedelta(days=2)).date())
    assert count_readers(session, recent, NOW) == 9  # days 0, 1, 2 of every ten
    session.rollback()


def test_pages_are_stable_while_readers_sign_up(session) -> None:
    seed(session)
    for flt in (ReaderFilter(), ReaderFilter(sort="email", descending=False)):
        first = list_readers(session, flt, limit=10, now=NOW)
        assert (first.first, first.last, first.total) == (1, 10, 30)
        store.add_subscriber(session, "aaa-new@example.com", NOW + timedelta(days=1))
        session.commit()
        second = list_readers(session, flt, after=first.next_after, limit=10, now=NOW)
        assert not {r.id for r in first.rows} & {r.id for r in second.rows}
        unplaced = list_readers(
            session, flt, after=first.next_after, limit=10, now=NOW, locate=False
        )  # the API's: no count of the rows ahead
        assert unplaced.rows == second.rows and unplaced.first == 0 < second.first
        assert unplaced.next_after == second.next_after
        back = list_readers(session, flt, before=second.prev_before, limit=10, now=NOW)
        assert [r.id for r in back.rows] == [r.id for r in first.rows]
        pages, after = [first], first.next_after
        while after is not None:
            pages.append(list_readers(session, flt, after=after, limit=10, now=NOW))
            after = pages[-1].next_after
        seen = [r.id for p in pages for r in p.rows]
        assert len(seen) == len(set(seen)) == pages[-1].total - 1  # the new one sorts first
        store_delete = store.find_subscriber(session, "aaa-new@example.com")
        session.delete(store_delete)
        session.commit()


def test_last_delivery_and_failures(session) -> None:
    ids = seed(session, 6)
    edition = Edition(
        slot="morning",
        local_day=date(2026, 12, 1),
        timezone="UTC",
        status="done",
        send_at=NOW,
        window_start=NOW,
        window_end=NOW,
        created_at=NOW,
    )
    session.add(edition)
    session.flush()
    session.add(
        Delivery(
            edition_id=edition.id,
            subscriber_id=ids[0],
            status="sent",
            queued_at=NOW,
            sent_at=NOW - timedelta(days=3),
        )
    )
    session.add(
        Delivery(edition_id=edition.id, subscriber_id=ids[1], status="failed", queued_at=NOW)
    )
    session.commit()
    recent = list_readers(session, ReaderFilter(last_delivery="7d"), now=NOW).rows
    assert [r.id for r in recent] == [ids[0]] and recent[0].last_sent_at is not None
    assert count_readers(session, ReaderFilter(last_delivery="never"), NOW) == 5
    failed = list_readers(session, ReaderFilter(min_failures=1), now=NOW).rows
    assert [(r.id, r.failures) for r in failed] == [(ids[1], 1)]
    session.rollback()


def test_pages_of_200000_readers_on_postgresql(database_url, session, capsys) -> None:
    """Page times on 200,000 readers, printed (the assertion is loose: a shared machine)."""
    import time as clock

    from sqlalchemy import text

    if not database_url.startswith("postgresql"):
        pytest.skip("the 200,000-reader figures are for PostgreSQL")
    session.execute(
        text(
            "INSERT INTO subscriber (email, name, timezone, morning, evening, sections, status,"
            " consent, created_at) SELECT 'r' || g || '@example.com', 'Reader ' || g,"
            " CASE WHEN g % 3 = 0 THEN 'Europe/London' WHEN g % 3 = 1 THEN NULL"
            " ELSE 'Australia/Sydney' END, g % 2 = 0, true, CASE WHEN g % 7 = 0 THEN 'sport'"
            " ELSE '' END, CASE WHEN g % 10 = 0 THEN 'pending' WHEN g % 17 = 0 THEN"
            " 'unsubscribed' ELSE 'active' END, CASE WHEN g % 4 = 0 THEN 'cli' ELSE"
            " 'web form' END, timestamp '2026-01-01' + g * interval '1 minute'"
            " FROM generate_series(1, 200000) AS g"
        )
    )
    session.commit()
    session.execute(text("ANALYZE subscriber"))
    filters = {
        "every reader, newest first": ReaderFilter(),
        "active in London, morning": ReaderFilter(
            status=("active",), timezone="Europe/London", editions="morning"
        ),
        "by address, a-z": ReaderFilter(sort="email", descending=False),
        "text 'r1999'": ReaderFilter(text="r1999"),
        "section sport, signed up in March": ReaderFilter(
            section="sport", signed_up_from=date(2026, 3, 1), signed_up_to=date(2026, 3, 31)
        ),
        "never sent anything, cli": ReaderFilter(last_delivery="never", source="cli"),
    }
    times: dict[str, list[float]] = {}
    for name, flt in filters.items():
        after = None
        start = None
        for _ in range(3):  # the first page and two after it
            started = clock.perf_counter()
            page = list_readers(session, flt, after=after, limit=50, now=NOW, start=start)
            start = page.last + 1
            times.setdefault(name, []).append((clock.perf_counter() - started) * 1000)
            after = page.next_after
            if after is None:
                break
        assert page.total > 0
    plan = (
        session.execute(text("EXPLAIN " + str(_compiled(session, ReaderFilter(), after=100000))))
        .scalars()
        .all()
    )
    session.rollback()
    with capsys.disabled():
        print("\nEXPLAIN, the page after reader 100000 (newest first):")
        print("\n".join("  " + line for line in plan))
        print("\nreaders list on 200,000 readers (PostgreSQL), ms per page of 50:")
        for name, ms in times.items():
            print(f"  {name:<40} " + "  ".join(f"{m:6.1f}" for m in ms))
    assert max(max(ms) for ms in times.values()) < 2000  # loose: timing lives in the print


def _compiled(session, flt, after):
    from sqlalchemy import select

    from digest.models import Subscriber
    from digest.store.readers_query import _beyond, _ordered, conditions

    stmt = _ordered(
        select(Subscriber.id).where(*conditions(flt, NOW), _beyond(flt, after, forward=True)),
        flt,
    ).limit(51)
    return stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
