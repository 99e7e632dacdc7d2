"""Celery workers for real: a Redis broker, worker subprocesses, an aiosmtpd sink.

Time is injected: tasks take an ISO `now`, as beat would call them at that instant.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from celery.exceptions import Reject
from click.testing import CliRunner
from sqlalchemy import func, select, update

from digest import store
from digest.cli import cli
from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker
from digest.editions import dispatch
from digest.errors import ConfigError
from digest.feeds.sanitize import clean_summary
from digest.models import Delivery, Edition, Subscriber
from tests.conftest import make_settings, wait_for
from workers.base import DigestTask
from workers.client import client_app, enqueue, queue_lengths
from workers.config import beat_schedule, celery_config, send_options

LONDON, SYDNEY = "Europe/London", "Australia/Sydney"
TICK = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)  # 06:00 in London, 17:00 in Sydney
TASKS = [
    "digest.dispatch_due",
    "digest.ingest_feeds",
    "digest.plan_edition",
    "digest.read_bounce_mailbox",
    "digest.send_batch",
    "digest.sweep",
]


# --- helpers --------------------------------------------------------------------------


def seed(
    database_url: str,
    readers: dict[str, str],
    articles_at: list[datetime],
    *,
    evening: bool = True,
) -> None:
    """Active readers (address -> timezone) and one article per instant given."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            store.insert_articles(
                session,
                [
                    {
                        "guid": f"g-{when.isoformat()}",
                        "url": f"https://news.example.com/{when:%Y%m%d%H%M}",
                        "title": f"Story of {when:%d %b %H:%M}",
                        "summary_html": clean_summary("<p>What happened.</p>"),
                        "section": "news",
                        "priority": 0,
                        "published_at": when,
                        "seen_at": when,
                        "image_url": None,
                        "feed_id": None,
                    }
                    for when in articles_at
                ],
            )
            for email, tz in readers.items():
                # Readers since two days before TICK: yesterday's editions were theirs.
                since = TICK - timedelta(days=2)
                store.add_subscriber(
                    session, email, since, timezone=tz, evening=evening, status="active"
                )
            session.commit()
    finally:
        engine.dispose()


def query(database_url: str, fn: Any) -> Any:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return fn(session)
    finally:
        engine.dispose()


def delivery_counts(database_url: str) -> dict[str, int]:
    by_status = select(Delivery.status, func.count()).group_by(Delivery.status)
    return query(database_url, lambda s: {status: n for status, n in s.execute(by_status)})


def editions(database_url: str) -> list[Edition]:
    return query(database_url, lambda s: list(s.scalars(select(Edition).order_by(Edition.id))))


def recipients(sink: Any) -> Counter[str]:
    return Counter(r for _, rcpts, _ in sink.messages for r in rcpts)


def digest_cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    """Run a `digest` command in this process with `env` as its environment."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def client(worker_env: Any, sqlite_url: str) -> Iterator[Any]:
    """A Celery app in the test process that sends tasks and reads their results."""
    app = client_app(load_settings(worker_env(sqlite_url)))
    yield app
    app.close()


def run(app: Any, name: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
    """Send a task, wait for it and for every send_batch task it fanned out."""
    result = app.send_task(name, kwargs=kwargs).get(timeout=timeout)
    for task_id in result.get("batches", []):
        app.AsyncResult(task_id).get(timeout=timeout)
    return dict(result)


def slow_down(sink: Any, seconds: float) -> None:
    """Make the SMTP server take `seconds` over each message."""
    accept = sink.handle_DATA

    async def handle_DATA(server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(seconds)
        return str(await accept(server, session, envelope))

    sink.handle_DATA = handle_DATA


# --- configuration (no processes) -----------------------------------------------------


def test_celery_config_is_production_safe(tmp_path) -> None:
    settings = make_settings(
        tmp_path, "sqlite://", DIGEST_REDIS_URL="redis://:hunter2@redis:6379/0"
    )
    conf = celery_config(settings)
    vt = settings.visibility_timeout
    assert conf["broker_transport_options"]["visibility_timeout"] == vt
    assert conf["result_backend_transport_options"]["visibility_timeout"] == vt
    assert conf["visibility_timeout"] == vt
    assert vt > conf["task_time_limit"] + settings.retry_max_seconds
    assert conf["task_time_limit"] <= settings.lease_seconds  # a batch never outlives its lease
    assert conf["task_acks_late"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["task_reject_on_worker_lost"]
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"]
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert (conf["timezone"], conf["enable_utc"]) == ("UTC", True)
    assert conf["accept_content"] == ["json"]
    assert conf["task_routes"]["digest.send_batch"]["queue"] == "digest.send"
    assert [q.name for q in conf["task_queues"]] == ["digest", "digest.send"]
    assert {e["task"] for e in conf["beat_schedule"].values()} <= set(TASKS)
    assert conf["beat_schedule"]["dispatch-due"]["schedule"] == 60
    assert "hunter2" not in repr(settings)


def test_beat_ticks_expire_before_the_next(tmp_path) -> None:
    settings = make_settings(tmp_path, "sqlite://", DIGEST_SWEEP_EVERY_SECONDS="30")
    schedule = beat_schedule(settings)
    assert schedule["sweep"] == {
        "task": "digest.sweep",
        "schedule": 30.0,
        "options": {"expires": 30},
    }


def test_beat_reads_the_bounce_mailbox_only_when_one_is_set(tmp_path) -> None:
    assert "bounce-mailbox" not in beat_schedule(make_settings(tmp_path, "sqlite://"))
    url = "imaps://bounces:pw@imap.example.com/INBOX?move=Processed"
    schedule = beat_schedule(make_settings(tmp_path, "sqlite://", DIGEST_INBOUND_IMAP_URL=url))
    assert schedule["bounce-mailbox"]["task"] == "digest.read_bounce_mailbox"
    assert schedule["bounce-mailbox"]["schedule"] == 300.0


@pytest.mark.parametrize(
    "env",
    [
        {},  # no broker at all
        {"DIGEST_REDIS_URL": "redis://r:6379/0", "DIGEST_VISIBILITY_TIMEOUT": "3600"},
    ],
)
def test_celery_config_refuses_unsafe_settings(tmp_path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        celery_config(make_settings(tmp_path, "sqlite://", **env))


def test_redeliveries_are_capped(tmp_path, redis_url: str) -> None:
    settings = make_settings(tmp_path, "sqlite://", DIGEST_REDIS_URL=redis_url)
    app = client_app(settings)
    try:

        def noop() -> None:
            return None

        task = app.task(base=DigestTask, name="digest.test_cap", max_redeliveries=2)(noop)
        task_id = f"cap-{os.getpid()}-{datetime.now().timestamp()}"
        task.push_request(id=task_id, delivery_info={"redelivered": False}, retries=0)
        task.before_start(task_id, (), {})  # a first delivery is not counted
        task.pop_request()
        task.push_request(id=task_id, delivery_info={"redelivered": True}, retries=0)
        try:
            task.before_start(task_id, (), {})
            task.before_start(task_id, (), {})
            with pytest.raises(Reject) as caught:
                task.before_start(task_id, (), {})
            assert caught.value.requeue is False
        finally:
            task.pop_request()
        app.backend.client.delete(f"digest:redelivered:{task_id}:0")
    finally:
        app.close()


# --- real workers ---------------------------------------------------------------------


def test_a_beat_tick_sends_each_due_cohort_exactly_once(
    sqlite_url, smtp_server, worker_env, start_worker, client
) -> None:
    sink, smtp_url = smtp_server
    london = {f"l{i}@example.com": LONDON for i in range(3)}
    sydney = {f"s{i}@example.com": SYDNEY for i in range(3)}
    seed(sqlite_url, london | sydney, [TICK - timedelta(hours=h) for h in (1, 2, 3)])
    worker = start_worker(worker_env(sqlite_url, smtp_url, DIGEST_BATCH_SIZE="2"))
    assert all(f". {name}" in worker.output() for name in TASKS)

    first = run(client, "digest.dispatch_due", now=TICK.isoformat())
    # London's 06:00 and Sydney's 17:00 are both due at 06:00 UTC; older cohorts missed.
    sent = {e["cohort"]: e for e in first["editions"] if e["status"] == "sending"}
    assert set(sent) == {f"morning 2026-11-29 {LONDON}", f"evening 2026-11-29 {SYDNEY}"}
    assert len(first["batches"]) == 4  # 3 readers each, batches of 2
    assert recipients(sink) == Counter({email: 1 for email in london | sydney})
    assert delivery_counts(sqlite_url) == {"sent": 6}

    for later in (TICK, TICK + timedelta(minutes=1)):  # another tick, same or next minute
        assert run(client, "digest.dispatch_due", now=later.isoformat()) == {
            "editions": [],
            "batches": [],
        }
    assert len(sink.messages) == 6
    assert {e.status for e in editions(sqlite_url) if e.status != "missed"} == {"done"}


def test_a_plan_task_sends_its_first_readers_while_it_queues_the_rest(
    sqlite_url, smtp_server, worker_env, start_worker, client
) -> None:
    sink, smtp_url = smtp_server
    readers = {f"r{i:02}@example.com": LONDON for i in range(13)}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    # Batches of 2: the plan queues 4 readers, then the rest (up to 40) in its stream.
    start_worker(worker_env(sqlite_url, smtp_url, DIGEST_BATCH_SIZE="2"), concurrency=2)
    plan = run(client, "digest.plan_edition", slot="morning", timezone=LONDON, now=TICK.isoformat())
    [edition] = plan["editions"]
    assert edition["queued"] == 13
    assert len(plan["batches"]) == 7  # 2 + 2, then 2 x 4 + 1
    assert recipients(sink) == Counter({email: 1 for email in readers})
    [done] = editions(sqlite_url)
    assert (done.status, done.queue_after, done.note) == ("done", None, "1 article, 13 readers")
    assert delivery_counts(sqlite_url) == {"sent": 13}


def test_two_ticks_and_five_sends_make_one_edition(
    database_url, smtp_server, worker_env, start_worker, spawn
) -> None:
    sink, smtp_url = smtp_server
    now = TICK + timedelta(minutes=5)
    readers = {f"r{i}@example.com": LONDON for i in range(12)}
    seed(database_url, readers, [TICK - timedelta(hours=1)])
    env = worker_env(database_url, smtp_url, DIGEST_BATCH_SIZE="4")
    start_worker(env)
    app = client_app(load_settings(env))
    try:
        ticks = [
            app.send_task("digest.dispatch_due", kwargs={"now": now.isoformat()}) for _ in range(2)
        ]
        cli = [sys.executable, "-m", "digest.cli", "send", "morning"]
        sends = [spawn("send", cli, {**env, "DIGEST_NOW": now.isoformat()}) for _ in range(5)]
        task_ids = []
        for send in sends:
            assert send.proc.wait(timeout=60) == 0, send.output()
            task_ids += re.findall(r"task ([0-9a-f-]{36})", send.output())
            # Per due cohort (London's and the default timezone's, Sydney, whose morning
            # has passed too) one plan task, or none once the guard finds its edition.
            for zone in (LONDON, SYDNEY):
                line = next(x for x in send.output().splitlines() if zone in x)
                assert "enqueued" in line or "exists" in line, send.output()
        assert 0 < len(task_ids) <= 10
        results = [t.get(timeout=60) for t in ticks]
        results += [app.AsyncResult(t).get(timeout=60) for t in task_ids]
        for result in results:
            for batch in result["batches"]:
                app.AsyncResult(batch).get(timeout=60)
    finally:
        app.close()

    london = [e for e in editions(database_url) if e.timezone == LONDON and e.slot == "morning"]
    assert [(e.local_day.isoformat(), e.status) for e in london] == [
        ("2026-11-28", "missed"),  # yesterday's, past its catch-up window: never sent late
        ("2026-11-29", "done"),
    ]
    assert delivery_counts(database_url) == {"sent": 12}
    assert recipients(sink) == Counter({email: 1 for email in readers})
    created = [e for r in results for e in r["editions"] if e["created"] and e["queued"]]
    assert len(created) == 1  # exactly one of the seven calls planned London's edition


# The morning edition at 06:00 local time, before and after each city's clocks change
# (London springs forward on 29 March 2026, Sydney falls back on 5 April 2026).
DST_MORNINGS = [
    (LONDON, "2026-03-28", datetime(2026, 3, 28, 6, 0, tzinfo=UTC)),  # GMT
    (LONDON, "2026-03-29", datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),  # BST from 01:00 UTC
    (LONDON, "2026-03-30", datetime(2026, 3, 30, 5, 0, tzinfo=UTC)),
    (SYDNEY, "2026-04-04", datetime(2026, 4, 3, 19, 0, tzinfo=UTC)),  # AEDT
    (SYDNEY, "2026-04-05", datetime(2026, 4, 4, 20, 0, tzinfo=UTC)),  # AEST from 16:00 UTC
    (SYDNEY, "2026-04-06", datetime(2026, 4, 5, 20, 0, tzinfo=UTC)),
]


def test_each_city_gets_its_morning_at_its_own_six_across_dst(
    sqlite_url, smtp_server, worker_env, start_worker, client
) -> None:
    sink, smtp_url = smtp_server
    readers = {"london@example.com": LONDON, "sydney@example.com": SYDNEY}
    hours = [datetime(2026, 3, 26, tzinfo=UTC) + timedelta(hours=3 * i) for i in range(100)]
    seed(sqlite_url, readers, hours, evening=False)
    start_worker(worker_env(sqlite_url, smtp_url))
    minute = timedelta(minutes=1)

    for tz, day, six in DST_MORNINGS:
        reader = next(email for email, zone in readers.items() if zone == tz)
        before = recipients(sink)[reader]
        run(client, "digest.dispatch_due", now=(six - minute).isoformat())
        assert recipients(sink)[reader] == before, f"{tz} {day}: sent before 06:00"
        run(client, "digest.dispatch_due", now=six.isoformat())
        assert recipients(sink)[reader] == before + 1, f"{tz} {day}: not sent at 06:00"
        run(client, "digest.dispatch_due", now=(six + minute).isoformat())
        assert recipients(sink)[reader] == before + 1, f"{tz} {day}: sent twice"
        message = sink.to(reader)[-1]
        assert parsedate_to_datetime(message["Date"]) == six

    mornings = {
        (e.timezone, e.local_day.isoformat()): e.send_at
        for e in editions(sqlite_url)
        if e.slot == "morning" and e.status == "done"
    }
    assert mornings == {(tz, day): six for tz, day, six in DST_MORNINGS}
    assert recipients(sink) == Counter({"london@example.com": 3, "sydney@example.com": 3})


def test_a_killed_worker_loses_no_delivery(
    sqlite_url, smtp_server, worker_env, start_worker, client
) -> None:
    sink, smtp_url = smtp_server
    readers = {f"r{i:02}@example.com": LONDON for i in range(30)}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    slow_down(sink, 0.05)
    # Small groups and a long window: the group, not the window, bounds what is unwritten.
    env = worker_env(
        sqlite_url,
        smtp_url,
        DIGEST_BATCH_SIZE="5",
        DIGEST_RECORD_GROUP="4",
        DIGEST_RECORD_WINDOW_MS="1000",
    )
    doomed = start_worker(env, concurrency=2)

    plan = client.send_task(
        "digest.plan_edition",
        args=["morning"],
        kwargs={"timezone": LONDON, "now": TICK.isoformat()},
    ).get(timeout=30)
    assert len(plan["batches"]) == 6
    wait_for(lambda: len(sink.messages) >= 6, 30, "the first messages")
    doomed.signal(signal.SIGKILL)  # the whole worker: parent and pool processes
    doomed.proc.wait(timeout=10)

    states = {t: client.AsyncResult(t).state for t in plan["batches"]}
    in_flight = {t for t, state in states.items() if state in ("STARTED", "PROGRESS")}
    assert 1 <= len(in_flight) <= 2, states
    # What Flower shows for a running batch: its progress, as sent of total.
    progress = [client.AsyncResult(t).info for t in in_flight if states[t] == "PROGRESS"]
    assert progress and all(p["total"] == 5 and 0 <= p["done"] <= 5 for p in progress)
    assert delivery_counts(sqlite_url).get("sending", 0) > 0

    start_worker(env, concurrency=2)  # a replacement takes what is still queued
    for task_id in set(plan["batches"]) - in_flight:
        client.AsyncResult(task_id).get(timeout=60)
    # Rows the dead worker held stay `sending` until their lease runs out; then the
    # sweep (beat runs it every few minutes) puts them back and sends them.
    stuck = delivery_counts(sqlite_url).get("sending", 0)
    assert stuck > 0
    later = TICK + timedelta(seconds=load_settings(env).lease_seconds + 1)
    swept = run(client, "digest.sweep", now=later.isoformat())
    assert swept["requeued"] == stuck

    assert delivery_counts(sqlite_url) == {"sent": 30}
    got = recipients(sink)
    assert set(got) == set(readers)
    duplicates = sum(got.values()) - len(readers)
    # What the README promises: per batch running when its worker died, at most
    # DIGEST_RECORD_GROUP + 2 x its lanes - 1 (one lane here): replies not yet committed
    # and the messages in flight.
    assert duplicates <= len(in_flight) * (load_settings(env).record_group + 2 * 1 - 1)
    ids = Counter(m["Message-ID"] for m in sink.parsed())
    assert len(ids) == 30  # a resent message carries the same Message-ID


def test_a_planner_killed_between_chunks_loses_no_reader(
    database_url, smtp_server, worker_env, start_worker, client
) -> None:
    """The plan task's worker dies after its first readers were queued and sent, while
    its next chunk waits on a reader's row lock: the sweep queues and sends the rest,
    and every reader gets the edition once."""
    if not database_url.startswith("postgresql"):
        pytest.skip("holds a PostgreSQL row lock on a reader")
    sink, smtp_url = smtp_server
    readers = {f"k{i:02}@example.com": LONDON for i in range(30)}
    seed(database_url, readers, [TICK - timedelta(hours=1)])
    # Batches of 2: the plan queues the first 4 readers, its next chunk the other 26.
    env = worker_env(database_url, smtp_url, DIGEST_BATCH_SIZE="2")
    engine = make_engine(database_url)
    try:
        with engine.connect() as holder:
            # The second chunk's INSERT checks its foreign key to this reader and waits.
            locked = select(Subscriber.id).where(Subscriber.email == "k09@example.com")
            holder.execute(locked.with_for_update())
            doomed = start_worker(env, concurrency=2)
            kwargs = {"timezone": LONDON, "now": TICK.isoformat()}
            client.send_task("digest.plan_edition", args=["morning"], kwargs=kwargs)
            wait_for(
                lambda: delivery_counts(database_url) == {"sent": 4}, 30, "the first chunk sent"
            )
            doomed.signal(signal.SIGKILL)
            doomed.proc.wait(timeout=10)
            holder.rollback()
    finally:
        engine.dispose()
    [edition] = editions(database_url)
    assert edition.status == "sending" and edition.queue_after is not None
    assert "readers being queued" in edition.note

    start_worker(env, concurrency=2)
    # Within a claim's time the planner may still be at work; after it, the sweep
    # queues the rest and sends it.
    assert run(client, "digest.sweep", now=(TICK + timedelta(seconds=5)).isoformat()) == {
        "requeued": 0,
        "batches": [],
    }
    later = TICK + timedelta(seconds=load_settings(env).claim_seconds + 1)
    swept = run(client, "digest.sweep", now=later.isoformat())
    assert swept["requeued"] == 26
    assert recipients(sink) == Counter({email: 1 for email in readers})
    [edition] = editions(database_url)
    assert (edition.status, edition.queue_after) == ("done", None)
    assert edition.note == "1 article, 30 readers"


def test_transient_failures_retry_and_operators_retry_failures(
    sqlite_url, smtp_server, worker_env, start_worker, client
) -> None:
    sink, smtp_url = smtp_server
    readers = {"ok@example.com": LONDON, "busy@example.com": LONDON, "no@example.com": LONDON}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    refusals = {"busy@example.com": ["451 4.3.0 try again later"]}
    sink.refuse["no@example.com"] = "550 5.7.1 policy rejection"
    accept_rcpt = sink.handle_RCPT

    async def handle_RCPT(server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        if refusals.get(address):
            return refusals[address].pop()
        return await accept_rcpt(server, session, envelope, address, options)

    sink.handle_RCPT = handle_RCPT
    env = worker_env(sqlite_url, smtp_url, DIGEST_RETRY_BASE_SECONDS="1")
    start_worker(env)

    plan = run(client, "digest.plan_edition", slot="morning", timezone=LONDON, now=TICK.isoformat())
    # The 451 was deferred for 1 s and retried by the task itself; the 550 is final.
    assert sorted(recipients(sink)) == ["busy@example.com", "ok@example.com"]
    assert delivery_counts(sqlite_url) == {"sent": 2, "failed": 1}
    most = select(Delivery.status, func.max(Delivery.attempts)).group_by(Delivery.status)
    attempts = query(sqlite_url, lambda s: {k: v for k, v in s.execute(most)})
    assert attempts == {"sent": 2, "failed": 1}

    del sink.refuse["no@example.com"]
    edition_id = plan["editions"][0]["edition"]
    retry = digest_cli(env, "retry", str(edition_id), "--failed")
    assert "1 delivery re-queued" in retry
    assert "1 digest.send_batch task enqueued" in retry
    wait_for(lambda: delivery_counts(sqlite_url) == {"sent": 3}, 30, "the retried delivery")
    assert recipients(sink) == Counter({email: 1 for email in readers})

    status = digest_cli(env, "status", str(edition_id))
    assert "sent: 3" in status
    assert f"queue {env['DIGEST_TASK_QUEUE']}: 0 tasks waiting" in status
    assert f"queue {env['DIGEST_TASK_QUEUE']}.send: 0 tasks waiting" in status


def test_send_inline_runs_in_process_and_otherwise_enqueues(
    sqlite_url, smtp_server, worker_env
) -> None:
    sink, smtp_url = smtp_server
    seed(sqlite_url, {"a@example.com": LONDON}, [TICK - timedelta(hours=1)])
    env = worker_env(sqlite_url, smtp_url, DIGEST_NOW=TICK.isoformat())
    inline = digest_cli(env, "send", "morning", "--timezone", LONDON, "--inline")
    assert "1 sent" in inline and "task" not in inline
    assert recipients(sink) == Counter({"a@example.com": 1})
    # With a broker and no worker, the task waits in the queue for one.
    argv = [sys.executable, "-m", "digest.cli", "send", "evening", "--timezone", LONDON]
    queued = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert queued.returncode == 0, queued.stderr
    assert re.search(r"digest.plan_edition enqueued \(task [0-9a-f-]{36}\)", queued.stdout)
    queue = env["DIGEST_TASK_QUEUE"]
    assert queue_lengths(load_settings(env)) == {queue: 1, f"{queue}.send": 0}
    assert len(sink.messages) == 1


def test_enqueue_reports_an_unreachable_broker(tmp_path) -> None:
    settings = make_settings(
        tmp_path, "sqlite://", DIGEST_REDIS_URL=f"redis+socket://{tmp_path}/nothing.sock"
    )
    with pytest.raises(ConnectionError):
        enqueue(settings, "digest.sweep", [([], {})])


def _fixed_offset_zone_at_six(now: datetime) -> str:
    """An Etc/GMT zone whose local time is between 06:00 and 06:59 at `now`."""
    for offset in range(-12, 15):
        if (now.hour + offset) % 24 == 6:
            # POSIX-style names: Etc/GMT-5 is five hours *ahead* of UTC.
            return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    raise AssertionError("unreachable")


def test_digest_dev_runs_worker_and_beat_until_ctrl_c(
    sqlite_url, smtp_server, worker_env, spawn
) -> None:
    """Real clock and real beat: the reader whose local time is 06:xx gets the edition.
    Ctrl-C comes while the relay has the message and has not answered yet: the batch
    in hand finishes (Celery's warm shutdown) and records it sent."""
    sink, smtp_url = smtp_server
    sink.answer_delay = 1.5
    now = datetime.now(UTC)
    zone = _fixed_offset_zone_at_six(now)
    # Published at 05:00 local, before the 06:00 cut whatever the minute is now.
    before_cut = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    seed(sqlite_url, {"dev@example.com": zone}, [before_cut])
    env = worker_env(sqlite_url, smtp_url, DIGEST_DISPATCH_EVERY_SECONDS="1")
    del env["DIGEST_REDIS_URL"]  # digest dev starts an embedded Redis of its own
    dev = spawn("dev", [sys.executable, "-m", "digest.cli", "dev", "--concurrency=1"], env)
    pids: list[int] = []
    try:
        wait_for(lambda: sink.to("dev@example.com"), 60, "the edition sent by beat and worker")
        pids += [int(p) for p in re.findall(r"started \(pid (\d+)\)", dev.output())]
        assert len(pids) == 2 and "embedded redis" in dev.output()

        os.kill(dev.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert dev.proc.wait(timeout=40) == 0, dev.output()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        for pid in pids:  # each child leads its own group; never leave one behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert len(sink.to("dev@example.com")) == 1
    assert delivery_counts(sqlite_url) == {"sent": 1}


def test_settings_for_workers_come_from_the_environment(tmp_path) -> None:
    settings: Settings = make_settings(
        tmp_path,
        "sqlite://",
        DIGEST_TASK_QUEUE="mail",
        DIGEST_VISIBILITY_TIMEOUT="9000",
        DIGEST_TASK_MAX_REDELIVERIES="5",
        DIGEST_RETRY_BASE_SECONDS="2",
        DIGEST_RETRY_MAX_SECONDS="100",
    )
    assert (settings.task_queue, settings.visibility_timeout) == ("mail", 9000)
    assert (settings.task_max_redeliveries, settings.retry_base_seconds) == (5, 2)
    assert settings.retry_max_seconds == 100


def test_retry_and_sweep_run_in_process_without_a_broker(
    sqlite_url, smtp_server, worker_env
) -> None:
    sink, smtp_url = smtp_server
    seed(sqlite_url, {"a@example.com": LONDON, "b@example.com": LONDON}, [TICK])
    env = worker_env(sqlite_url, smtp_url, DIGEST_NOW=(TICK + timedelta(minutes=1)).isoformat())
    del env["DIGEST_REDIS_URL"]
    sink.refuse["b@example.com"] = "550 5.7.1 not today"
    out = digest_cli(env, "send", "morning", "--timezone", LONDON, code=4)
    assert "1 sent" in out and "finished with 1 failed deliveries" in out
    assert delivery_counts(sqlite_url) == {"sent": 1, "failed": 1}
    [edition] = [e for e in editions(sqlite_url) if e.status == "done" and e.slot == "morning"]

    del sink.refuse["b@example.com"]
    with pytest.raises(AssertionError, match="--failed, --deferred or both"):
        digest_cli(env, "retry", str(edition.id))
    out = digest_cli(env, "retry", str(edition.id), "--failed", "--deferred")
    assert "1 delivery re-queued" in out and "1 sent" in out
    assert delivery_counts(sqlite_url) == {"sent": 2}
    assert recipients(sink) == Counter({"a@example.com": 1, "b@example.com": 1})
    assert "0 deliveries re-queued" in digest_cli(env, "sweep")


# --- faults: the database goes away, handed-back rows, exit codes ------------------------


def _through(proxy: Any, database_url: str) -> str:
    """The same database URL, reached through the proxy."""
    return re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", database_url, count=1)


def test_send_tasks_outlast_a_database_outage(
    database_url, smtp_server, worker_env, start_worker, client
) -> None:
    """The database is cut off for a few seconds while batches are enqueued: the tasks
    keep retrying (DIGEST_OUTAGE_SECONDS), apart from the deliveries' own attempts
    (one here), and send everything once it is back."""
    if not database_url.startswith("postgresql"):
        pytest.skip("cuts a PostgreSQL connection off")
    from tests.faults import TcpProxy

    sink, smtp_url = smtp_server
    readers = {f"o{i}@example.com": LONDON for i in range(12)}
    seed(database_url, readers, [TICK - timedelta(hours=1)])
    host, port = re.search(r"@([^:/]+):(\d+)/", database_url).groups()  # type: ignore[union-attr]
    proxy = TcpProxy(host, int(port))
    try:
        env = worker_env(
            _through(proxy, database_url),
            smtp_url,
            DIGEST_MAX_ATTEMPTS="1",
            DIGEST_OUTAGE_SECONDS="30",
            DIGEST_BATCH_SIZE="4",
        )
        direct = load_settings({**env, "DIGEST_DATABASE_URL": database_url})
        # The batches are read while the session is open (they stream from it).
        [batches] = query(
            database_url,
            lambda s: [
                f.batches for f in dispatch.plan_slot(s, direct, "morning", TICK, timezone=LONDON)
            ],
        )
        start_worker(env)
        proxy.cut()
        tasks = [
            client.send_task("digest.send_batch", args=[batch], kwargs={"now": TICK.isoformat()})
            for batch in batches
        ]
        wait_for(
            lambda: any(t.state == "RETRY" for t in tasks), 30, "a task to retry in the outage"
        )
        time.sleep(3)  # several retries' worth: more than DIGEST_MAX_ATTEMPTS
        proxy.restore()
        for task in tasks:
            task.get(timeout=60)
    finally:
        proxy.close()
    assert delivery_counts(database_url) == {"sent": 12}
    assert recipients(sink) == Counter({email: 1 for email in readers})


def test_send_here_exits_non_zero_and_says_what_is_left(
    sqlite_url, smtp_server, worker_env
) -> None:
    """Exit codes of an in-process `digest send`: 0 all sent, 3 not finished (a
    deferred delivery), and one line naming what is left."""
    sink, smtp_url = smtp_server
    seed(sqlite_url, {"a@example.com": LONDON, "b@example.com": LONDON}, [TICK])
    env = worker_env(sqlite_url, smtp_url, DIGEST_NOW=(TICK + timedelta(minutes=1)).isoformat())
    del env["DIGEST_REDIS_URL"]
    sink.refuse["b@example.com"] = "451 4.7.1 greylisted"
    out = digest_cli(env, "send", "morning", "--timezone", LONDON, code=3)
    assert "1 sent, 1 deferred" in out
    assert re.search(r"edition \d+ not finished: 1 deferred; first retry due 2026-11-29T06:", out)
    del sink.refuse["b@example.com"]
    out = digest_cli(
        env,
        "--now",
        (TICK + timedelta(hours=1)).isoformat(),
        "send",
        "morning",
        "--timezone",
        LONDON,
    )
    assert "1 sent" in out and "not finished" not in out
    assert delivery_counts(sqlite_url) == {"sent": 2}


def test_an_outbox_that_cannot_be_created_is_one_line(sqlite_url, worker_env, tmp_path) -> None:
    seed(sqlite_url, {"a@example.com": LONDON}, [TICK])
    (tmp_path / "file").write_text("")
    env = worker_env(
        sqlite_url,
        DIGEST_NOW=(TICK + timedelta(minutes=1)).isoformat(),
        DIGEST_OUTBOX_DIR=str(tmp_path / "file" / "outbox"),
    )
    del env["DIGEST_REDIS_URL"]
    result = CliRunner().invoke(cli, ["send", "morning", "--timezone", LONDON], env=env)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last == (
        f"Error: outbox folder {tmp_path / 'file' / 'outbox'} cannot be created "
        "(DIGEST_OUTBOX_DIR): Not a directory"
    )
    assert "Traceback" not in result.output


@contextmanager
def read_only_folder(folder: Any) -> Iterator[None]:
    """A folder no file can be written to: a read-only tmpfs mount as root (for whom
    permissions are no obstacle), its mode otherwise."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs: {mount.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_outbox_is_one_line_and_exit_3(sqlite_url, worker_env, tmp_path) -> None:
    """The outbox folder is there but read-only: `digest send` stops with one line and
    exit 3 (not finished), no traceback, and the rows wait in the queue untried."""
    seed(sqlite_url, {"a@example.com": LONDON, "b@example.com": LONDON}, [TICK])
    outbox = tmp_path / "outbox"
    env = worker_env(
        sqlite_url,
        DIGEST_NOW=(TICK + timedelta(minutes=1)).isoformat(),
        DIGEST_OUTBOX_DIR=str(outbox),
    )
    del env["DIGEST_REDIS_URL"]
    with read_only_folder(outbox):
        result = CliRunner().invoke(cli, ["send", "morning", "--timezone", LONDON], env=env)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    [error] = [line for line in result.output.splitlines() if "outbox" in line]
    why = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert error == (
        f"Error: outbox folder {outbox} cannot be written (DIGEST_OUTBOX_DIR): {why}; "
        "not finished, the rest waits in the queue"
    )
    assert delivery_counts(sqlite_url) == {"queued": 2}
    attempts = query(sqlite_url, lambda s: s.scalar(select(func.max(Delivery.attempts))))
    assert attempts == 0


# --- recovery in seconds: claims renewed by live workers, lost tasks re-enqueued ---------

QUICK = {
    "DIGEST_CLAIM_SECONDS": "3",
    "DIGEST_SWEEP_EVERY_SECONDS": "1",
    "DIGEST_DISPATCH_EVERY_SECONDS": "3600",
    "DIGEST_INGEST_EVERY_SECONDS": "3600",
}


def start_worker_with_beat(spawn: Any, env: dict[str, str], concurrency: int = 2) -> Any:
    """A worker that runs beat too (-B): the sweep every DIGEST_SWEEP_EVERY_SECONDS."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-B"]
    argv += [f"--concurrency={concurrency}", f"--hostname=b{os.getpid()}-{time.time()}@localhost"]
    argv += ["--loglevel=INFO", "--without-gossip", "--without-mingle"]
    child = spawn("worker-beat", argv, env)
    wait_for(lambda: " ready." in child.output(), 40, "the worker with beat", interval=0.1)
    return child


def test_a_stopped_workers_claims_come_back_in_seconds(
    sqlite_url, smtp_server, worker_env, start_worker, spawn, client
) -> None:
    """A worker is SIGKILLed mid-edition. Live workers renew their claims (batches here
    outlast a claim several times over, and nothing is taken from them); the dead one's
    claims end within DIGEST_CLAIM_SECONDS and the sweep sends their rows again: the
    edition completes in seconds, not after a 10-minute lease."""
    sink, smtp_url = smtp_server
    now = datetime.now(UTC)
    readers = {f"k{i:02}@example.com": LONDON for i in range(30)}
    seed(sqlite_url, readers, [now - timedelta(hours=2 * i) for i in range(1, 24)])
    slow_down(sink, 0.4)  # a batch of 10 takes 4 s or more: longer than its 3 s claim
    env = worker_env(sqlite_url, f"{smtp_url}?deadline=1", DIGEST_BATCH_SIZE="10", **QUICK)
    doomed = start_worker(env, concurrency=2)
    plan = client.send_task(
        "digest.plan_edition", args=["morning"], kwargs={"timezone": LONDON}
    ).get(timeout=30)
    assert len(plan["batches"]) == 3
    wait_for(lambda: len(sink.messages) >= 4, 30, "the first messages")
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    killed_at = time.monotonic()
    held = delivery_counts(sqlite_url).get("sending", 0)
    assert held > 0

    time.sleep(3.5)  # the dead worker's claims have ended; nobody has swept yet
    status = digest_cli(env, "status")
    assert f"WARNING: {held} deliveries claimed by stopped workers" in status

    start_worker_with_beat(spawn, env)
    wait_for(lambda: delivery_counts(sqlite_url) == {"sent": 30}, 40, "every delivery sent")
    assert time.monotonic() - killed_at < 40  # the lease is 600 s: that is not what ended
    got = recipients(sink)
    assert set(got) == set(readers)
    # At most the messages in flight when the worker died (one per lane of each of its
    # two running batches) plus their unwritten group (DIGEST_RECORD_GROUP each).
    bound = 2 * (1 + load_settings(env).record_group)
    assert sum(got.values()) - len(readers) <= min(bound, held)
    assert "WARNING" not in digest_cli(env, "status")


def test_requeued_rows_go_ahead_of_the_backlog(
    sqlite_url, smtp_server, worker_env, start_worker
) -> None:
    """A row a stopped worker held is swept back while a backlog of fresh batches waits:
    it is sent among the first, not behind the whole backlog."""
    sink, smtp_url = smtp_server
    readers = {f"p{i:02}@example.com": LONDON for i in range(24)}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    env = worker_env(sqlite_url, smtp_url, DIGEST_BATCH_SIZE="1")
    settings = load_settings(env)
    [batches] = query(
        sqlite_url,
        lambda s: [
            f.batches for f in dispatch.plan_slot(s, settings, "morning", TICK, timezone=LONDON)
        ],
    )
    [held] = batches.pop(0)  # the first in line, held by a worker that died: claim over

    def hold(session: Any) -> str:
        session.execute(
            update(Delivery)
            .where(Delivery.id == held)
            .values(status="sending", lease_until=TICK - timedelta(minutes=1))
        )
        session.commit()
        join = select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)
        return str(session.scalar(join.where(Delivery.id == held)))

    email = query(sqlite_url, hold)
    # The backlog, as the plan task fans it out; then the sweep, as beat calls it.
    calls = [([batch], {"now": TICK.isoformat()}) for batch in batches]
    enqueue(settings, "digest.send_batch", calls, **send_options(first=False))
    enqueue(settings, "digest.sweep", [([], {"now": TICK.isoformat()})])
    start_worker(env, concurrency=1)
    wait_for(lambda: len(sink.messages) == len(readers), 60, "every message")
    order = [rcpts[0] for _, rcpts, _ in sink.messages]
    assert order.index(email) < 3, order  # behind the backlog it would be the last
    assert delivery_counts(sqlite_url) == {"sent": len(readers)}


def test_queued_rows_whose_tasks_were_lost_are_enqueued_again(
    sqlite_url, smtp_server, worker_env, spawn, client, redis_url
) -> None:
    """Redis comes back empty while the database holds queued rows: `digest status`
    says so, and the sweep re-enqueues them within seconds."""
    from tests.conftest import redis_client

    sink, smtp_url = smtp_server
    readers = {f"q{i:02}@example.com": LONDON for i in range(12)}
    now = datetime.now(UTC)  # queued just now: a 10-minute lease would not see them lost
    seed(sqlite_url, readers, [now - timedelta(hours=2 * i) for i in range(1, 24)])
    env = worker_env(sqlite_url, f"{smtp_url}?deadline=1", DIGEST_BATCH_SIZE="5", **QUICK)
    settings = load_settings(env)
    [batches] = query(
        sqlite_url,
        lambda s: [
            f.batches for f in dispatch.plan_slot(s, settings, "morning", now, timezone=LONDON)
        ],
    )
    enqueue(settings, "digest.send_batch", [([b], {}) for b in batches])
    queue = env["DIGEST_TASK_QUEUE"]
    assert queue_lengths(settings)[f"{queue}.send"] == 3
    with redis_client(redis_url) as r:
        r.delete(f"{queue}.send")  # what a Redis restarted without its data has
    status = digest_cli(env, "--now", (now + timedelta(minutes=5)).isoformat(), "status")
    assert (
        "WARNING: 12 deliveries queued with no task (no task waiting in the broker), "
        "the oldest queued 5m00s ago" in status
    )
    started = time.monotonic()
    start_worker_with_beat(spawn, env)
    wait_for(lambda: delivery_counts(sqlite_url) == {"sent": 12}, 40, "the lost work sent")
    assert time.monotonic() - started < 40
    assert recipients(sink) == Counter({email: 1 for email in readers})
