"""Issue 15, part 5 (and part 2's Celery entry point): pause, resume and cancel an
edition while it goes out, plan a cancelled one again for the readers it did not
reach; the Celery task refuses what the guard refuses, with the reason as its result.
Real SMTP server, real databases, real Celery worker processes where workers act."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from digest import store
from digest.config import Settings, load_settings, parse_smtp_url
from digest.editions import control, dispatch, guard, pipeline, sending
from digest.editions.schedule import Cohort
from digest.errors import InvalidInput
from digest.mail.transport import SMTPTransport
from digest.models import Article, AuditEntry, Delivery, Edition
from tests.conftest import wait_for
from tests.test_workers import LONDON, TICK, digest_cli, query, recipients, seed
from workers.client import client_app


@pytest.fixture
def tasks(worker_env: Any, sqlite_url: str) -> Any:
    """A Celery client in the test process, as Flower or the coming API would be one."""
    app = client_app(load_settings(worker_env(sqlite_url)))
    yield app
    app.close()


# --- in process ---------------------------------------------------------------------------


def _seed_in(session: Any, readers: int) -> None:
    from digest.feeds.sanitize import clean_summary

    store.insert_articles(
        session,
        [
            {
                "guid": f"s{i}",
                "url": f"https://news.example.com/s/{i}",
                "title": f"Story {i}" if i else "Wrong headline",
                "summary_html": clean_summary(f"<p>Story {i}</p>"),
                "section": "news",
                "priority": 5 if i == 0 else 0,
                "published_at": TICK - timedelta(hours=1, minutes=i),
                "seen_at": TICK - timedelta(hours=1, minutes=i),
                "image_url": None,
                "feed_id": None,
            }
            for i in range(3)
        ],
    )
    for i in range(readers):
        store.add_subscriber(
            session,
            f"r{i:02}@example.com",
            TICK - timedelta(days=2),
            timezone=LONDON,
            status="active",
        )
    session.commit()


def _plan(session: Any, settings: Settings) -> int:
    cohort = Cohort("morning", date(2026, 11, 29), LONDON)
    _, plan = pipeline.plan_cohort(session, settings, cohort, TICK, origin=guard.CLI, who="ed")
    assert plan is not None and plan.status == "sending"
    return plan.edition_id


def test_pause_holds_rows_from_claims_sweeps_and_retries_until_resumed(
    session, settings: Settings, smtp_server
) -> None:
    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url), batch_size=4)
    _seed_in(session, 6)
    edition_id = _plan(session, settings)
    ids = store.delivery_ids(session, edition_id)
    transport = SMTPTransport(settings.smtp)
    first = sending.send_batch(session, settings, transport, ids[:2], TICK)
    assert first.sent == 2
    paused = control.pause(session, edition_id, TICK, origin=guard.CONSOLE, who="ed")
    assert (paused.sent, paused.held, paused.status) == (2, 4, "paused")
    # Nothing claims, sweeps or retries its rows while it is paused.
    assert sending.send_batch(session, settings, transport, ids, TICK).claimed == 0
    later = TICK + timedelta(hours=1)
    assert dispatch.sweep(session, settings, later) == []
    assert store.waiting_rows(session, later, later)["queued"][0] == 0
    with pytest.raises(InvalidInput):
        control.pause(session, edition_id, TICK, origin=guard.CLI)
    assert len(sink.messages) == 2
    resumed, batches = dispatch.resume_edition(
        session, edition_id, later, settings.batch_size, origin=guard.CLI, who="ed"
    )
    assert resumed.status == "sending"
    for batch in list(batches):
        sending.send_batch(session, settings, transport, batch, later)
    assert store.edition_counts(session, edition_id) == {"sent": 6}
    assert recipients(sink) == Counter({f"r{i:02}@example.com": 1 for i in range(6)})
    session.expire_all()
    actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == ["planned", "paused", "resumed"]


def test_a_cancelled_edition_is_corrected_and_sent_to_those_who_did_not_get_it(
    session, settings: Settings, smtp_server
) -> None:
    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url))
    _seed_in(session, 5)
    edition_id = _plan(session, settings)
    ids = store.delivery_ids(session, edition_id)
    transport = SMTPTransport(settings.smtp)
    sending.send_batch(session, settings, transport, ids[:2], TICK)
    # A deferred row and a claim held by a worker that died: neither may go later.
    session.execute(
        update(Delivery)
        .where(Delivery.id == ids[2])
        .values(status="deferred", next_attempt_at=TICK + timedelta(minutes=1))
    )
    session.execute(
        update(Delivery)
        .where(Delivery.id == ids[3])
        .values(status="sending", lease_until=TICK + timedelta(seconds=30))
    )
    session.commit()
    done = control.cancel(session, edition_id, TICK, origin=guard.CLI, who="ed")
    assert (done.sent, done.cancelled, done.in_flight) == (2, 2, 1)
    later = TICK + timedelta(hours=1)
    assert dispatch.sweep(session, settings, later) == []  # the dead claim: cancelled
    assert store.edition_counts(session, edition_id) == {"sent": 2, "cancelled": 3}
    with pytest.raises(InvalidInput, match="cancelled"):
        dispatch.retry_edition(session, settings, edition_id, ["failed", "deferred"], later)
    assert sending.send_batch(session, settings, transport, ids, later).claimed == 0
    assert len(sink.messages) == 2
    wrong = session.scalars(select(Article).where(Article.title == "Wrong headline")).one()
    wrong.hidden = True
    session.commit()
    again, queued = control.replan(session, settings, edition_id, later, origin=guard.CLI)
    assert queued == 3 and again.status == "sending"
    for batch in dispatch.queued_batches(session, edition_id, 100):
        sending.send_batch(session, settings, transport, batch, later)
    assert store.edition_counts(session, edition_id) == {"sent": 5}
    got = recipients(sink)
    assert got == Counter({f"r{i:02}@example.com": 1 for i in range(5)})  # nobody twice
    corrected = [m for m in sink.parsed()[2:]]
    for msg in corrected:
        text = msg.get_body(("plain",)).get_content()
        assert "Wrong headline" not in text and "Story 1" in text
    session.expire_all()
    assert store.get_edition(session, edition_id).status == "done"
    with pytest.raises(InvalidInput, match="only a cancelled edition"):
        control.replan(session, settings, edition_id, later, origin=guard.CLI)


# --- real workers -------------------------------------------------------------------------


def slow(sink: Any, seconds: float) -> None:
    accept = sink.handle_DATA

    async def handle_DATA(server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(seconds)
        return str(await accept(server, session, envelope))

    sink.handle_DATA = handle_DATA


def _counts(url: str) -> dict[str, int]:
    stmt = select(Delivery.status, func.count()).group_by(Delivery.status)
    return query(url, lambda s: {k: n for k, n in s.execute(stmt)})


def test_pause_reaches_every_worker_in_seconds_and_cancel_stops_for_good(
    sqlite_url, smtp_server, worker_env, start_worker, tasks
) -> None:
    sink, smtp_url = smtp_server
    readers = {f"p{i:02}@example.com": LONDON for i in range(60)}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    # Two batches of 30 at 0.3 s a message: each would take 9 s to finish. Only the
    # lanes' look at the edition between messages can stop them sooner.
    slow(sink, 0.3)
    env = worker_env(sqlite_url, smtp_url, DIGEST_BATCH_SIZE="30", DIGEST_SMTP_CONNECTIONS="2")
    start_worker(env, concurrency=2)  # two workers, three processes: a pause reaches all
    start_worker(env, concurrency=1)
    plan = tasks.send_task(
        "digest.plan_edition",
        kwargs={"slot": "morning", "timezone": LONDON, "now": TICK.isoformat()},
    ).get(timeout=30)
    edition_id = plan["editions"][0]["edition"]
    wait_for(lambda: len(sink.messages) >= 5, 30, "the first messages")
    out = digest_cli(env, "pause", str(edition_id))
    assert "paused: edition" in out
    # Within a few seconds every lane has stopped and given its rows back untried.
    wait_for(lambda: _counts(sqlite_url).get("sending", 0) == 0, 5, "the lanes to stop")
    stopped_at = len(sink.messages)
    status = digest_cli(env, "status")
    assert f"PAUSED: `digest resume {edition_id}`" in status, status
    import time

    time.sleep(2)  # nothing more goes out while it is paused
    assert len(sink.messages) == stopped_at < 60
    counts = _counts(sqlite_url)
    assert counts["sent"] == stopped_at and counts["queued"] == 60 - stopped_at
    assert max(recipients(sink).values()) == 1

    out = digest_cli(env, "resume", str(edition_id))
    assert "resumed" in out and re.search(r"\d+ digest\.send_batch tasks? enqueued", out), out
    wait_for(lambda: len(sink.messages) >= stopped_at + 5, 30, "sending again")
    # Cancel through the Celery task (Flower, the coming API): the result says how far.
    result = tasks.send_task("digest.control_edition", args=[edition_id, "cancel"]).get(timeout=30)
    assert "standing" in result and "got it" in result["standing"], result
    wait_for(lambda: _counts(sqlite_url).get("sending", 0) == 0, 15, "the lanes to stop")
    settled = _counts(sqlite_url)
    assert settled.get("queued", 0) == 0 and settled["cancelled"] > 0
    assert settled["sent"] == len(sink.messages)
    time.sleep(2)
    # The sweep never sends a cancelled row.
    tasks.send_task("digest.sweep", kwargs={"now": (TICK + timedelta(hours=1)).isoformat()}).get(
        timeout=30
    )
    time.sleep(1)
    assert _counts(sqlite_url) == settled and len(sink.messages) == settled["sent"]
    assert max(recipients(sink).values()) == 1
    refused = tasks.send_task("digest.control_edition", args=[edition_id, "pause"]).get(timeout=30)
    assert "cancelled" in refused["refused"]
    # Corrected and planned again: the rest get it, nobody twice.
    out = digest_cli(env, "replan", str(edition_id))
    assert "planned again" in out
    wait_for(lambda: _counts(sqlite_url) == {"sent": 60}, 40, "the corrected edition")
    assert recipients(sink) == Counter({email: 1 for email in readers})
    actions = query(
        sqlite_url,
        lambda s: [(e.action, e.detail[:9]) for e in s.scalars(select(AuditEntry))],
    )
    assert ("paused", "[cli] edi") in actions and ("cancelled", "[celery] ") in actions


def test_seen_flower_cannot_plan_a_day_ahead_and_every_refusal_says_why(
    sqlite_url, smtp_server, worker_env, start_worker, tasks
) -> None:
    """Seen: Flower's async-apply/digest.plan_edition with {"day": "2026-12-25"} sent the
    Christmas edition at once, used up that day and left no audit entry."""
    sink, smtp_url = smtp_server
    seed(sqlite_url, {"x@example.com": LONDON}, [TICK - timedelta(hours=1)])
    env = worker_env(sqlite_url, smtp_url)
    start_worker(env, concurrency=1)
    ahead = (datetime.now(UTC) + timedelta(days=19)).date().isoformat()
    result = tasks.send_task(
        "digest.plan_edition", args=["morning"], kwargs={"day": ahead, "timezone": LONDON}
    ).get(timeout=30)
    assert (
        "still ahead" in result["refused"] and "Only an operator may force it" in result["refused"]
    ), result
    [edition] = result["editions"]
    assert edition["refused"] and edition["action"] == "refuse"
    # Saying it is already Christmas does not work either; nor does nonsense.
    later = (datetime.now(UTC) + timedelta(days=19)).isoformat()
    result = tasks.send_task(
        "digest.plan_edition", args=["morning"], kwargs={"now": later, "timezone": LONDON}
    ).get(timeout=30)
    assert "ahead of the clock" in result["refused"]
    result = tasks.send_task(
        "digest.plan_edition", args=["morning"], kwargs={"day": "christmas"}
    ).get(timeout=30)
    assert "not a date" in result["refused"]
    assert query(sqlite_url, lambda s: s.scalar(select(func.count()).select_from(Edition))) == 0
    assert sink.messages == []
    audit = query(
        sqlite_url,
        lambda s: [(e.operator, e.action, e.detail) for e in s.scalars(select(AuditEntry))],
    )
    assert audit and audit[0][:2] == ("celery", "plan refused") and "[celery]" in audit[0][2]
    # Today's edition is whole: planned (and audited) as any other.
    result = tasks.send_task(
        "digest.plan_edition",
        args=["morning"],
        kwargs={"timezone": LONDON, "now": TICK.isoformat(), "requested_by": "ops"},
    ).get(timeout=30)
    assert result["editions"][0]["queued"] == 1 and "refused" not in result
    wait_for(lambda: len(sink.messages) == 1, 30, "today's edition")
    audit = query(
        sqlite_url, lambda s: [(e.operator, e.action) for e in s.scalars(select(AuditEntry))]
    )
    assert audit[-1] == ("ops via celery", "planned")


def test_the_console_confirms_with_counts_then_pauses_cancels_and_replans(
    make_app, session, settings: Settings, smtp_server
) -> None:
    from digest.operations import operators

    sink, url = smtp_server
    settings = settings.with_(smtp=parse_smtp_url(url))
    _seed_in(session, 5)
    edition_id = _plan(session, settings)
    ids = store.delivery_ids(session, edition_id)
    sending.send_batch(session, settings, SMTPTransport(settings.smtp), ids[:2], TICK)
    operators.add(session, "ed", "correct horse battery", TICK)
    session.commit()
    client = make_app(settings, clock=lambda: TICK).test_client()
    client.post("/admin/login", data={"name": "ed", "password": "correct horse battery"})
    page = client.get(f"/admin/editions/{edition_id}").get_data(as_text=True)
    assert "Pause…" in page and "Cancel…" in page and "Resume…" not in page
    confirm = client.get(f"/admin/editions/{edition_id}/control/pause").get_data(as_text=True)
    assert "2 of 5" in confirm and "<strong>3</strong> would be held" in confirm
    csrf = re.search(r'name="csrf" value="([^"]+)"', confirm).group(1)  # type: ignore[union-attr]
    r = client.post(f"/admin/editions/{edition_id}/control/pause", data={"csrf": csrf})
    assert r.status_code == 302
    overview = client.get("/admin/").get_data(as_text=True)
    assert f'data-status="{edition_id}">paused' in overview
    confirm = client.get(f"/admin/editions/{edition_id}/control/cancel").get_data(as_text=True)
    assert "<strong>3</strong> not sent yet would be cancelled" in confirm
    client.post(f"/admin/editions/{edition_id}/control/cancel", data={"csrf": csrf})
    session.expire_all()
    assert store.edition_counts(session, edition_id) == {"sent": 2, "cancelled": 3}
    wrong = session.scalars(select(Article).where(Article.title == "Wrong headline")).one()
    wrong.hidden = True
    session.commit()
    confirm = client.get(f"/admin/editions/{edition_id}/control/replan").get_data(as_text=True)
    assert "<strong>3</strong> readers who did not get it" in confirm
    client.post(f"/admin/editions/{edition_id}/control/replan", data={"csrf": csrf})

    def all_sent() -> bool:
        counts = store.edition_counts(session, edition_id)
        session.rollback()  # no transaction left open: on SQLite it would hold the lock
        return counts == {"sent": 5}

    wait_for(all_sent, 20, "the corrected edition to go to the other three")
    assert recipients(sink) == Counter({f"r{i:02}@example.com": 1 for i in range(5)})
    actions = [(e.operator, e.action) for e in session.scalars(select(AuditEntry))]
    assert [a for a in actions if a[1] != "signed in"][-3:] == [
        ("ed", "paused"),
        ("ed", "cancelled"),
        ("ed", "re-planned"),
    ]
