"""Plan and send editions end to end: real database, real SMTP server."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.db import make_engine, make_sessionmaker
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.tokens import read_token
from digest.mail.transport import SMTPTransport
from digest.models import Delivery, Edition, EditionVariant, Subscriber
from tests.conftest import NOW, PG_URL, add_articles
from tests.faults import TcpProxy, dripping_server

TZ = "Australia/Sydney"
DAY = date(2026, 11, 30)  # morning cut: 2026-11-29 19:00 UTC
MORNING = Cohort("morning", DAY, TZ)
CUT = datetime(2026, 11, 29, 19, 0, tzinfo=NOW.tzinfo)
AFTER = CUT + timedelta(minutes=1)


def add_reader(
    session,
    email: str,
    name: str = "",
    sections: str = "",
    tz: str | None = TZ,
    morning: bool = True,
    evening: bool = True,
) -> Subscriber:
    return store.add_subscriber(
        session,
        email,
        NOW,
        name=name,
        sections=sections,
        timezone=tz,
        morning=morning,
        evening=evening,
        status="active",
    )


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server) -> Settings:
    return settings.with_(smtp=parse_smtp_url(smtp_server[1]))


@pytest.fixture
def world(session) -> dict[str, Subscriber]:
    add_articles(
        session,
        CUT - timedelta(hours=1),
        [
            ("Ferry timetable changes", "news"),
            ("Harbour swim record", "sport"),
            ("Council approves gardens", "news"),
            ("Netball final", "sport"),
        ],
    )
    readers = {
        "ana": add_reader(session, "ana@example.com", "Ana Souza"),
        "ben": add_reader(session, "ben@example.com", "Ben", sections="sport"),
        "cy": add_reader(session, "cy@example.com"),
        "evening_only": add_reader(session, "eve@example.com", morning=False),
        "pending": store.add_subscriber(session, "pending@example.com", NOW, timezone=TZ),
        "london": add_reader(session, "lon@example.com", tz="Europe/London"),
    }
    session.commit()
    return readers


def send(session, settings: Settings, edition_id: int, now: datetime = AFTER):
    return sending.run_edition(session, settings, SMTPTransport(settings.smtp), edition_id, now)


def test_morning_edition_end_to_end(session, smtp_settings, smtp_server, world) -> None:
    sink, _ = smtp_server
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    assert plan.created and plan.queued == 3 and plan.status == "sending"
    report = send(session, smtp_settings, plan.edition_id)
    assert (report.sent, report.failed, report.deferred) == (3, 0, 0)
    assert sorted(r for m in sink.messages for r in m[1]) == [
        "ana@example.com",
        "ben@example.com",
        "cy@example.com",
    ]

    ana = sink.to("ana@example.com")[0]
    html = ana.get_body(("html",)).get_content()
    text = ana.get_body(("plain",)).get_content()
    assert "Good morning Ana Souza," in html and "Good morning Ana Souza," in text
    for title in ("Ferry timetable changes", "Harbour swim record", "Netball final"):
        assert title in html and title in text
    assert "DGST" not in html and "DGST" not in text  # every slot filled
    assert 'style="' in html and "<link" not in html  # inlined, nothing fetched
    assert "1 Example Street" in html and "Unsubscribe" in html and "preferences" in html
    token = re.search(r"/unsubscribe/([\w.-]+)>", str(ana["List-Unsubscribe"])).group(1)
    assert read_token(smtp_settings.secret_key, "unsubscribe", token) == world["ana"].id
    assert f"/unsubscribe/{token}" in html

    ben_html = sink.to("ben@example.com")[0].get_body(("html",)).get_content()
    assert "Harbour swim record" in ben_html and "Ferry timetable changes" not in ben_html

    counts = store.edition_counts(session, plan.edition_id)
    assert counts == {"sent": 3}
    assert store.get_edition(session, plan.edition_id).status == "done"
    ids = session.scalars(select(Delivery.message_id).where(Delivery.edition_id == plan.edition_id))
    assert sorted(ids) == sorted(m["Message-ID"] for m in sink.parsed())


def test_rendering_happens_once_per_section_choice(session, smtp_settings, world) -> None:
    add_reader(session, "dee@example.com", sections="sport")
    session.commit()
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    variants = session.scalars(
        select(EditionVariant.sections).where(EditionVariant.edition_id == plan.edition_id)
    )
    assert sorted(variants) == ["", "sport"]  # four readers, two renderings


def test_planning_and_sending_twice_sends_nothing_twice(
    session, smtp_settings, smtp_server, world
) -> None:
    sink, _ = smtp_server
    first = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    send(session, smtp_settings, first.edition_id)
    again = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER + timedelta(minutes=1))
    assert again.edition_id == first.edition_id and not again.created
    report = send(session, smtp_settings, first.edition_id)
    assert report.claimed == 0 and len(sink.messages) == 3
    assert session.scalar(select(func.count()).select_from(Edition)) == 1
    assert session.scalar(select(func.count()).select_from(Delivery)) == 3


def test_no_articles_means_no_email_and_a_reason(session, smtp_settings, smtp_server) -> None:
    add_reader(session, "ana@example.com")
    session.commit()
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    assert plan.status == "empty" and "no articles published between" in plan.note
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0
    assert smtp_server[0].messages == []


def test_next_edition_starts_where_the_last_one_ended(session, smtp_settings, world) -> None:
    morning = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    add_articles(session, CUT + timedelta(hours=5), [("Afternoon storm", "news")], prefix="b")
    # An article published before the morning cut but only fetched now still gets in.
    store.insert_articles(
        session,
        [
            {
                "guid": "late",
                "url": "https://news.example.com/late",
                "title": "Late arrival",
                "summary_html": "",
                "section": "news",
                "priority": 0,
                "image_url": None,
                "feed_id": None,
                "published_at": CUT - timedelta(hours=2),
                "seen_at": CUT + timedelta(hours=3),
            }
        ],
    )
    session.commit()
    evening = pipeline.plan_edition(
        session, smtp_settings, Cohort("evening", DAY, TZ), CUT + timedelta(hours=11)
    )
    morning_ids = set(store.edition_article_ids(session, morning.edition_id))
    evening_ids = store.edition_article_ids(session, evening.edition_id)
    titles = {a.title for a in store.articles_by_id(session, evening_ids).values()}
    assert titles == {"Afternoon storm", "Late arrival"}
    assert not morning_ids & set(evening_ids)
    assert evening.queued == 3  # ana, cy and eve; ben's sport choice has nothing new
    assert "nothing new for readers of sport" in evening.note


def test_transient_failure_defers_then_succeeds(session, smtp_settings, smtp_server, world) -> None:
    sink, _ = smtp_server
    sink.refuse["cy@example.com"] = "451 4.7.1 greylisted, try again"
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    report = send(session, smtp_settings, plan.edition_id)
    assert (report.sent, report.deferred) == (2, 1)
    row = session.scalars(select(Delivery).where(Delivery.status == "deferred")).one()
    due = AFTER + timedelta(seconds=smtp_settings.retry_base_seconds)
    assert due <= row.next_attempt_at < due + timedelta(seconds=5)  # now moves on as it runs
    assert "451" in (row.last_error or "")
    # Too early: nothing is claimed. After the backoff: sent, once.
    assert send(session, smtp_settings, plan.edition_id).claimed == 0
    del sink.refuse["cy@example.com"]
    later = AFTER + timedelta(minutes=5)
    report = sending.send_batch(
        session, smtp_settings, SMTPTransport(smtp_settings.smtp), [row.id], later
    )
    assert report.sent == 1
    assert len(sink.to("cy@example.com")) == 1
    assert store.edition_counts(session, plan.edition_id) == {"sent": 3}


def test_transient_failures_give_up_after_max_attempts(
    session, smtp_settings, smtp_server, world
) -> None:
    sink, _ = smtp_server
    sink.refuse["cy@example.com"] = "452 mailbox full"
    settings = smtp_settings.with_(max_attempts=2)
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    send(session, settings, plan.edition_id)
    row = session.scalars(select(Delivery).where(Delivery.status == "deferred")).one()
    sending.send_batch(
        session, settings, SMTPTransport(settings.smtp), [row.id], AFTER + timedelta(hours=1)
    )
    session.refresh(row)
    assert row.status == "failed" and row.attempts == 2 and "gave up" in (row.last_error or "")


def test_unknown_mailbox_fails_and_suppresses(session, smtp_settings, smtp_server, world) -> None:
    sink, _ = smtp_server
    sink.refuse["cy@example.com"] = "550 5.1.1 <cy@example.com>: user unknown"
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    report = send(session, smtp_settings, plan.edition_id)
    assert (report.sent, report.failed) == (2, 1)
    cy = session.get(Subscriber, world["cy"].id)
    session.refresh(cy)
    assert cy.status == "bounced" and store.is_suppressed(session, "cy@example.com")
    # Listed on the console's Returned mail page with every other bounce.
    assert [(r.address, r.kind, r.source) for r in store.returned_page(session)] == [
        ("cy@example.com", "hard", "smtp")
    ]
    evening = pipeline.plan_edition(
        session, smtp_settings, Cohort("evening", DAY, TZ), CUT + timedelta(hours=11)
    )
    assert evening.status == "empty" or "cy@example.com" not in [
        r.email
        for r in store.sending_rows(session, store.delivery_ids(session, evening.edition_id))
    ]


def test_unsubscribe_during_the_edition_stops_the_unsent_message(
    session, smtp_settings, smtp_server, world
) -> None:
    sink, _ = smtp_server
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    store.set_status(session, session.get(Subscriber, world["ana"].id), "unsubscribed", AFTER)
    session.commit()
    send(session, smtp_settings, plan.edition_id)
    assert sink.to("ana@example.com") == []
    assert store.edition_counts(session, plan.edition_id) == {"sent": 2, "suppressed": 1}


def test_hostile_titles_are_escaped_and_stay_out_of_headers(
    session, smtp_settings, smtp_server
) -> None:
    sink, _ = smtp_server
    add_reader(session, "ana@example.com", name="Ana\r\nBcc: evil@example.org")
    add_articles(
        session,
        CUT - timedelta(hours=1),
        [
            ("<script>alert(1)</script>\r\nBcc: evil@example.org", "news"),
            ("<img src=x onerror=alert(1)>", "news"),
        ],
    )
    session.commit()
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    send(session, smtp_settings, plan.edition_id)
    msg = sink.parsed()[0]
    assert msg["Bcc"] is None and "\n" not in str(msg["Subject"])
    assert sink.messages[0][1] == ["ana@example.com"]
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html


def test_missed_edition_is_recorded_not_sent(session, smtp_settings, world) -> None:
    plan = pipeline.plan_edition(
        session, smtp_settings, MORNING, AFTER + timedelta(hours=5), missed=True
    )
    assert plan.status == "missed" and "not sent" in plan.note
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_dispatch_plans_each_due_cohort_once(session, smtp_settings, world) -> None:
    results = pipeline.dispatch_due(session, smtp_settings, AFTER)
    planned = {(r.cohort.slot, r.cohort.timezone, r.status) for r in results}
    assert ("morning", TZ, "sending") in planned
    assert pipeline.dispatch_due(session, smtp_settings, AFTER + timedelta(minutes=1)) == []


def test_sweep_requeues_expired_leases(session, smtp_settings, smtp_server, world) -> None:
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    claimed = store.claim_deliveries(session, ids, AFTER, timedelta(seconds=60))
    session.commit()
    assert claimed == ids  # a worker took them ... and died
    assert pipeline.sweep(session, smtp_settings, AFTER + timedelta(seconds=30)) == {}
    found = pipeline.sweep(session, smtp_settings, AFTER + timedelta(seconds=61))
    assert found == {plan.edition_id: ids}
    report = send(session, smtp_settings, plan.edition_id, AFTER + timedelta(seconds=62))
    assert report.sent == 3 and len(smtp_server[0].messages) == 3


def test_two_claims_never_overlap(session, sessions, smtp_settings, world) -> None:
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    with sessions() as other:
        first = store.claim_deliveries(session, ids, AFTER, timedelta(minutes=5))
        session.commit()
        second = store.claim_deliveries(other, ids, AFTER, timedelta(minutes=5))
        other.commit()
    assert first == ids and second == []


def test_claim_rows_gives_the_rows_won_once_in_id_order(session, smtp_settings, world) -> None:
    """What a batch claims comes with what its send loop needs, in id order; ids not
    ready (unknown, already claimed, of a paused edition) are left out."""
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    lease = timedelta(seconds=60)
    store.set_edition_status(session, plan.edition_id, "paused", only_from=("sending",))
    assert store.claim_rows(session, ids, AFTER, lease) == []
    store.set_edition_status(session, plan.edition_id, "sending", only_from=("paused",))
    rows = store.claim_rows(session, [10**9, *reversed(ids)], AFTER, lease)
    session.commit()
    assert [r.id for r in rows] == ids
    assert [tuple(r) for r in rows] == [tuple(r) for r in store.sending_rows(session, ids)]
    assert {r.email for r in rows} == {"ana@example.com", "ben@example.com", "cy@example.com"}
    assert all(r.attempts == 1 and r.status == "active" for r in rows)
    assert store.edition_counts(session, plan.edition_id) == {"sending": len(ids)}
    assert store.claim_rows(session, ids, AFTER, lease) == []


@pytest.mark.skipif(not PG_URL, reason="DIGEST_TEST_DATABASE_URL not set")
def test_claim_rows_skips_what_another_holds_and_plans_by_primary_key(
    sessions, smtp_settings, world
) -> None:
    """PostgreSQL: a row another transaction holds is skipped, not waited for; and the
    claim reads its batch by primary key even under a cached generic plan (where
    `id = ANY(...)` would AND in the status index and read every queued row)."""
    from sqlalchemy import text

    from digest.store.deliveries import _CLAIM_ROWS_PG

    with sessions() as session, sessions() as other:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("PostgreSQL only")
        plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
        session.commit()
        ids = store.delivery_ids(session, plan.edition_id)
        other.execute(text("SELECT id FROM delivery WHERE id = :id FOR UPDATE"), {"id": ids[0]})
        rows = store.claim_rows(session, ids, AFTER, timedelta(seconds=60))
        session.commit()
        assert [r.id for r in rows] == ids[1:]
        other.rollback()

        # The statement as psycopg sends it, the batch's values as $1-$3 (as a prepared
        # statement has them), its constants written in.
        compiled = _CLAIM_ROWS_PG.params(ids="{}", now=AFTER, until=AFTER).compile(
            dialect=session.get_bind().dialect
        )
        numbers = {"ids": "$1", "now": "$2", "until": "$3"}

        def placeholder(found: re.Match[str]) -> str:
            name = found.group(1) or found.group(2)
            value = compiled.params[name]
            if found.group(2):  # a list written in (`IN (...)`)
                return ", ".join(repr(v) for v in value)
            return numbers.get(name) or repr(value)

        sql = re.sub(r"%\((\w+)\)s|__\[POSTCOMPILE_(\w+)\]", placeholder, compiled.string)
        assert sql.count("$1") == 1 and sql.count("$2") == 1 and sql.count("$3") == 1
        session.execute(text("SET plan_cache_mode = force_generic_plan"))
        session.execute(text(f"PREPARE claim_test(text, timestamp, timestamp) AS {sql}"))
        plan_json = session.execute(
            text("EXPLAIN (FORMAT JSON) EXECUTE claim_test('{1,2,3}', now(), now())")
        ).scalar()
        session.rollback()
    shown = str(plan_json)
    assert "delivery_pkey" in shown
    assert "ix_delivery_status_lease" not in shown and "ix_delivery_edition_status" not in shown


def test_interrupted_batch_hands_unsent_rows_back(session, smtp_settings, smtp_server) -> None:
    """A time limit reaching the task mid-batch: every lane stops after its current
    message; nothing is left `sending`, and what was sent is recorded as sent."""
    sink, _ = smtp_server
    sink.delay = 0.03
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(80):
        add_reader(session, f"r{i}@example.com")
    session.commit()
    settings = smtp_settings.with_(smtp_connections=2)
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)

    def time_limit(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sending.send_batch(
            session,
            settings,
            SMTPTransport(settings.smtp),
            store.delivery_ids(session, plan.edition_id),
            AFTER,
            time_limit,
        )
    counts = store.edition_counts(session, plan.edition_id)
    assert "sending" not in counts
    assert counts["sent"] == len(sink.messages) and 0 < counts["sent"] < 80
    assert counts["queued"] == 80 - counts["sent"]
    report = send(session, settings, plan.edition_id)  # the retry sends the rest, once
    assert report.sent == counts["queued"] and len(sink.messages) == 80


def test_a_claim_only_finishes_rows_it_still_holds(session, smtp_settings, world) -> None:
    """A sender whose lease ran out (and whose rows the sweep gave to another) cannot
    overwrite the new owner's record or hand its rows back."""
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    lease = timedelta(seconds=60)
    store.claim_deliveries(session, ids, AFTER, lease)
    session.commit()
    pipeline.sweep(session, smtp_settings, AFTER + timedelta(seconds=61))
    later = AFTER + timedelta(seconds=62)
    assert store.claim_deliveries(session, ids, later, lease) == ids
    session.commit()
    with store.Recorder(session, AFTER + lease) as stale:
        stale.sent(ids[0], "<late@x>", later)
        stale.release(ids)
    with store.Recorder(session, later + lease) as owner:
        owner.sent(ids[1], "<owner@x>", later)
    assert store.edition_counts(session, plan.edition_id) == {"sending": 2, "sent": 1}


def test_the_sender_writes_whole_groups_and_the_heartbeat_what_waited(
    session, smtp_settings
) -> None:
    """A group is written by the sender once it is whole (8 here); fewer outcomes wait
    until they are `window` old, and then the heartbeat's tick writes them."""
    from digest.editions.heartbeat import Heartbeat

    _many_readers(session, 10)
    plan = pipeline.plan_edition(session, smtp_settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    lease = timedelta(seconds=60)
    store.claim_deliveries(session, ids, AFTER, lease)
    session.commit()
    with store.Recorder(session, AFTER + lease, group=8) as record:
        for i in ids[:7]:
            record.sent(i, f"<{i}@x>", AFTER)
        assert record.written == 0 and record.waiting()[0] == 7 and not record.due(60.0)
        record.sent(ids[7], f"<{ids[7]}@x>", AFTER)
        assert record.written == 8 and record.waiting()[0] == 0
        for i in ids[8:]:
            record.sent(i, f"<{i}@x>", AFTER)
        assert not record.due(window=60.0) and record.due(window=0.0)

        def clock() -> datetime:
            return AFTER

        with Heartbeat(record, ids, clock, 60, 5, window=0.05):
            deadline = time.monotonic() + 5
            while record.written < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert record.written == 10
    assert store.edition_counts(session, plan.edition_id) == {"sent": 10}


# --- faults: a dropped database, a dripping relay, handed-back rows ----------------------


def _many_readers(session, count: int) -> None:
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(count):
        add_reader(session, f"r{i:03}@example.com")
    session.commit()


def test_a_database_outage_mid_batch_resends_nothing_that_was_sent(
    database_url, session, smtp_settings, smtp_server
) -> None:
    """A blip (every connection dropped, the database still there) costs nothing: the
    recorder reconnects and writes. A restart mid-batch (the database away for a
    second or two) stops the lanes, keeps the replies that came in, and writes them
    once it is back: every message sent is recorded sent, the rest go back to the
    queue, nothing is left to be sent twice. An outage that outlasts the claim ends
    the batch with the database's own OperationalError, which tasks retry, never
    PendingRollbackError."""
    if not database_url.startswith("postgresql"):
        pytest.skip("cuts a PostgreSQL connection off")
    from sqlalchemy.exc import OperationalError

    sink, url = smtp_server
    _many_readers(session, 30)
    host, port = re.search(r"@([^:/]+):(\d+)/", database_url).groups()  # type: ignore[union-attr]
    proxy = TcpProxy(host, int(port))
    through = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", database_url, count=1)
    settings = smtp_settings.with_(
        database_url=through,
        smtp=parse_smtp_url(f"{url}?deadline=1"),
        smtp_connections=1,
        claim_seconds=4,
    )
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    accept = sink.handle_DATA
    fault: list[Any] = []  # (the sink's count at which to cut, what the cut is)

    async def handle_DATA(server, session_, envelope):  # type: ignore[no-untyped-def]
        if fault and len(sink.messages) == fault[0][0]:
            proxy.cut()
            what = fault.pop()[1]
            if what == "blip":
                proxy.restore()
            elif what == "restart":
                threading.Timer(1.5, proxy.restore).start()
        return await accept(server, session_, envelope)

    def batch(tagged: Any, part: list[int], what: str) -> sending.BatchReport:
        fault.append((len(sink.messages) + 4, what))  # at the fifth message of the batch
        return sending.send_batch(tagged, settings, SMTPTransport(settings.smtp), part, AFTER)

    def recorded() -> None:
        """Every message the relay took is recorded sent; the rest wait in the queue."""
        counts = store.edition_counts(session, plan.edition_id)
        session.commit()
        assert counts == {"sent": len(sink.messages), "queued": 30 - len(sink.messages)}

    sink.handle_DATA = handle_DATA
    engine = make_engine(through)
    try:
        with make_sessionmaker(engine)() as tagged:
            # The blip: the recorder reconnects; if the heartbeat met the database
            # away meanwhile, the lane stops and hands the rest back.
            blip = batch(tagged, ids[:10], "blip")
            recorded()
            assert blip.sent == len(sink.messages) >= 5
            assert blip.sent + len(blip.handed_back) == 10
            before = len(sink.messages)
            restarted = batch(tagged, ids[10:20], "restart")
            recorded()
            assert restarted.sent == len(sink.messages) - before >= 5
            assert len(restarted.handed_back) == 10 - restarted.sent
            with pytest.raises(OperationalError):
                batch(tagged, ids[20:], "outage")
    finally:
        proxy.close()
        engine.dispose()
    session.commit()
    # The claim is not renewed any more: the sweep takes the rows once it ends, with the
    # rows earlier batches handed back (queued since the plan: their task is done).
    counts = store.edition_counts(session, plan.edition_id)
    assert counts.get("sending", 0) > 0
    expired = AFTER + timedelta(seconds=settings.claim_seconds + 1)
    assert sum(len(v) for v in pipeline.sweep(session, settings, expired).values()) == counts[
        "sending"
    ] + counts.get("queued", 0)
    assert max(Counter(r for _, rcpts, _ in sink.messages for r in rcpts).values()) == 1


def test_lanes_hand_rows_back_before_their_lease_whatever_the_relay_does(
    session, smtp_settings
) -> None:
    """A relay that answers one byte every 50 ms: each message gives up at its SMTP
    deadline and the lanes stop, handing the rest back, well before the lease ends."""
    _many_readers(session, 40)
    with dripping_server(0.05) as drip:
        settings = smtp_settings.with_(
            smtp=parse_smtp_url(f"{drip.url}?timeout=5&deadline=0.4"),
            lease_seconds=3,
            smtp_connections=2,
        )
        plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
        ids = store.delivery_ids(session, plan.edition_id)
        started = time.monotonic()
        report = sending.send_batch(session, settings, SMTPTransport(settings.smtp), ids, AFTER)
        took = time.monotonic() - started
    assert took < 0.9 * 3 + 0.5  # every lane stopped inside its lease
    counts = store.edition_counts(session, plan.edition_id)
    assert "sending" not in counts
    assert counts["deferred"] == report.deferred > 0  # each timed-out message, retried later
    assert counts["queued"] == len(report.handed_back) > 0
    assert counts["deferred"] + counts["queued"] == 40


def test_an_edition_sent_here_finishes_what_its_batches_handed_back(
    session, smtp_settings, smtp_server
) -> None:
    """Batches stop at their lease and hand rows back; run_edition sends those too."""
    sink, _ = smtp_server
    sink.delay = 0.04
    _many_readers(session, 50)
    settings = smtp_settings.with_(
        smtp=parse_smtp_url(f"{smtp_server[1]}?deadline=0.2"),
        lease_seconds=2,
        smtp_connections=1,
    )
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    report = send(session, settings, plan.edition_id)
    assert store.edition_counts(session, plan.edition_id) == {"sent": 50}
    assert report.sent == 50 and report.handed_back == []
    assert len(sink.messages) == 50
