"""The loud signal, for real: heartbeats of real beat and worker processes, the
monitoring check's exit code and summary as they stop, /metrics scraped and parsed,
the console's banner and the alert mail."""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from digest import store
from digest.cli import cli
from digest.config import load_settings
from digest.db import make_engine, make_sessionmaker
from digest.editions import pipeline, sending
from digest.mail.relays import make_transport
from digest.operations import operators
from digest.store import heartbeats
from tests.conftest import FakeClock, add_articles, wait_for
from tests.test_pipeline import AFTER, CUT, MORNING, add_reader
from workers.client import client_app

QUICK = {
    "DIGEST_BEAT_STALE_SECONDS": "3",
    "DIGEST_WORKER_STALE_SECONDS": "3",
    "DIGEST_SWEEP_EVERY_SECONDS": "1",
    "DIGEST_DISPATCH_EVERY_SECONDS": "3600",
    "DIGEST_INGEST_EVERY_SECONDS": "3600",
}


def check(env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", "--check"], env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def until(env: dict[str, str], code: int, words: str, timeout: float) -> str:
    """The check's output once it exits `code` with `words` on its summary line."""

    def looks() -> str | None:
        got, output = check(env)
        return output if got == code and words in output.splitlines()[0] else None

    try:
        return str(wait_for(looks, timeout, f"exit {code} with {words!r}", interval=0.5))
    except AssertionError:
        raise AssertionError(f"{check(env)}") from None


def start_beat(spawn: Any, env: dict[str, str]) -> Any:
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel=INFO"]
    return spawn("beat", argv, env)


def test_the_check_goes_critical_when_the_worker_and_then_beat_stop(
    sqlite_url, worker_env, start_worker, spawn
) -> None:
    env = worker_env(sqlite_url, **QUICK)
    code, output = check(env)
    assert code == 2 and output.startswith("DIGEST CRITICAL - beat has never run")

    beat = start_beat(spawn, env)
    worker = start_worker(env, concurrency=1)
    ok = until(env, 0, "DIGEST OK", timeout=20)
    assert "beat: seen" in ok and "alive, last seen" in ok

    # A worker killed outright leaves no word: its heartbeat just gets old, while
    # beat's sweep ticks pile up in the queue.
    worker.signal(signal.SIGKILL)
    worker.proc.wait(timeout=10)
    down = until(env, 2, "no worker alive", timeout=3 + 10)
    summary = down.splitlines()[0]
    assert summary.startswith("DIGEST CRITICAL - no worker alive, ")
    assert "tasks waiting (last worker last seen" in summary
    assert "what to do: start a worker" in down

    # Beat killed too: stale after DIGEST_BEAT_STALE_SECONDS.
    beat.signal(signal.SIGKILL)
    beat.proc.wait(timeout=10)
    down = until(env, 2, "beat last seen", timeout=3 + 10)
    assert down.splitlines()[0].startswith("DIGEST CRITICAL - beat last seen ")


def test_a_clean_stop_is_reported_at_once_and_the_watch_task_mails_it(
    sqlite_url, worker_env, start_worker, spawn, smtp_server
) -> None:
    sink, smtp_url = smtp_server
    quick = {**QUICK, "DIGEST_BEAT_STALE_SECONDS": "600", "DIGEST_ALERT_TO": "ops@example.com"}
    env = worker_env(sqlite_url, smtp_url, **quick)
    beat = start_beat(spawn, env)
    start_worker(env, concurrency=1)
    until(env, 0, "DIGEST OK", timeout=20)
    beat.stop()  # SIGTERM: beat says it stopped, though its staleness is 10 minutes
    code, output = check(env)
    assert code == 2, output
    assert "beat stopped " in output.splitlines()[0]

    # The task beat runs every minute when DIGEST_ALERT_TO is set, run by the worker.
    app = client_app(load_settings(env))
    try:
        result = app.send_task("digest.watch").get(timeout=30)
    finally:
        app.close()
    assert result == {"level": "CRITICAL", "problems": 1, "mails": 1}
    assert [rcpts for _, rcpts, _ in sink.messages] == [["ops@example.com"]]
    assert sink.parsed()[0]["Subject"].startswith("[digest CRITICAL] beat stopped ")


# --- /metrics ------------------------------------------------------------------------------

TOKEN = "metrics-token-0123456789"


def seeded(session, settings) -> tuple[int, datetime]:
    """An edition of 3 readers, 2 sent 30 s after its send time; beat and a worker seen."""
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(3):
        add_reader(session, f"m{i}@example.com")
    session.commit()
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    sent_at = CUT + timedelta(seconds=90)
    sending.send_batch(session, settings, make_transport(settings), ids[:2], sent_at)
    heartbeats.beat_heart(session, "beat", "beat-host", 1, AFTER, sent_at + timedelta(seconds=10))
    heartbeats.beat_heart(session, "worker", "celery@w1", 2, AFTER, sent_at + timedelta(seconds=20))
    session.commit()
    return plan.edition_id, sent_at


def scrape(client: Any, **headers: str) -> dict[str, Any]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_metrics_are_off_without_a_token(make_app, settings) -> None:
    assert make_app(settings).test_client().get("/metrics").status_code == 404


def test_metrics_need_the_token(make_app, settings) -> None:
    client = make_app(settings.with_(metrics_token=TOKEN)).test_client()
    assert client.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
    assert client.get("/metrics", headers=wrong).status_code == 401
    basic = base64.b64encode(b"prometheus:" + TOKEN.encode()).decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    bad = base64.b64encode(b"prometheus:nope").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {bad}"}).status_code == 401


def test_metrics_scraped_and_parsed(make_app, settings, session, redis_url) -> None:
    queue = f"digest-metrics-{uuid.uuid4().hex[:8]}"
    settings = settings.with_(metrics_token=TOKEN, redis_url=redis_url, task_queue=queue)
    edition_id, sent_at = seeded(session, settings)
    clock = FakeClock(sent_at + timedelta(seconds=30))
    client = make_app(settings, clock=clock).test_client()
    found = scrape(client, Authorization=f"Bearer {TOKEN}")

    assert found["digest_database_up"] == {(): 1.0}
    deliveries = found["digest_deliveries"]
    assert deliveries[(("status", "sent"),)] == 2
    assert deliveries[(("status", "queued"),)] == 1
    assert found["digest_deliveries_waiting"][(("status", "queued"),)] == 1
    assert found["digest_editions"] == {(("status", "sending"),): 1}
    lag = found["digest_cohort_lag_seconds"]
    assert lag == {(("slot", "morning"), ("timezone", "Australia/Sydney")): 90.0}
    assert found["digest_beat_last_seen_timestamp_seconds"] == {
        (): (sent_at + timedelta(seconds=10)).timestamp()
    }
    assert found["digest_workers_alive"] == {(): 1.0}
    assert found["digest_worker_last_seen_timestamp_seconds"] == {
        (("worker", "celery@w1"),): (sent_at + timedelta(seconds=20)).timestamp()
    }
    assert found["digest_readers"][(("status", "active"),)] == 3
    assert found["digest_broker_up"] == {(): 1.0}
    assert found["digest_queue_tasks"] == {
        (("queue", queue),): 0.0,
        (("queue", f"{queue}.send"),): 0.0,
    }
    assert found["digest_check_status"] == {(): 0.0}

    # Six minutes on, nothing more sent while a row waits: the check is CRITICAL.
    clock.advance(minutes=6)
    found = scrape(client, Authorization=f"Bearer {TOKEN}")
    assert found["digest_check_status"] == {(): 2.0}
    assert found["digest_check_problems"][(("level", "critical"),)] >= 1
    assert found["digest_workers_alive"] == {(): 0.0}
    assert edition_id


# --- the console's banner --------------------------------------------------------------------

PASSWORD = "correct horse battery"


def test_the_console_shows_the_problems_on_every_page(make_app, settings, session, redis_url):
    settings = settings.with_(redis_url=redis_url)  # beat and workers are expected
    at = CUT + timedelta(hours=3)
    operators.add(session, "ed", PASSWORD, at)
    heartbeats.beat_heart(session, "beat", "beat-host", 1, at, at - timedelta(seconds=412))
    session.commit()
    clock = FakeClock(at)
    client = make_app(settings, clock=clock).test_client()
    r = client.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert r.status_code == 302
    for path in ("/admin/", "/admin/editions", "/admin/readers", "/admin/feeds", "/admin/audit"):
        page = client.get(path).get_data(as_text=True)
        assert 'class="health health-critical" role="alert"' in page, path
        assert "beat last seen 412 s ago on beat-host" in page
        assert "start exactly one beat" in page
        assert "no worker alive" in page
    # The sign-in page shows nothing to a stranger.
    client.post("/admin/logout", data={})
    login = make_app(settings, clock=clock).test_client().get("/admin/login")
    assert "beat-host" not in login.get_data(as_text=True)

    # Beat and a worker back: the banner goes, once the check it showed is 10 s old (one
    # check serves every page of a process that long).
    heartbeats.beat_heart(session, "beat", "beat-host", 1, at, at)
    heartbeats.beat_heart(session, "worker", "celery@w1", 2, at, at)
    session.commit()
    client = make_app(settings, clock=clock).test_client()
    client.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert 'class="health' not in client.get("/admin/").get_data(as_text=True)
    heartbeats.beat_heart(session, "beat", "beat-host", 1, at, at - timedelta(seconds=400))
    session.commit()
    assert 'class="health' not in client.get("/admin/").get_data(as_text=True)
    clock.advance(seconds=11)
    assert "beat last seen 411 s ago" in client.get("/admin/").get_data(as_text=True)


# --- alert mail ------------------------------------------------------------------------------


def test_alert_mail_once_per_new_critical_and_once_when_it_clears(
    sqlite_url, smtp_server, redis_url, tmp_path
) -> None:
    sink, smtp_url = smtp_server
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "test-secret-key",
        "DIGEST_BASE_URL": "https://news.example.com",
        "DIGEST_REDIS_URL": redis_url,
        "DIGEST_TASK_QUEUE": f"digest-alert-{uuid.uuid4().hex[:8]}",
        "DIGEST_SMTP_URL": smtp_url,
        "DIGEST_ALERT_TO": "ops@example.com, oncall@example.com",
    }

    def run(now: datetime) -> str:
        result = CliRunner().invoke(
            cli, ["--now", now.isoformat(), "status", "--check", "--alert"], env=env
        )
        assert result.exit_code in (0, 1, 2), result.output
        return result.output

    at = CUT + timedelta(hours=2)
    output = run(at)
    assert "DIGEST CRITICAL - beat has never run" in output
    assert (
        "alert mail sent to ops@example.com, oncall@example.com (raised: beat has never run"
        in output
    )
    assert sorted(r for _, rcpts, _ in sink.messages for r in rcpts) == [
        "oncall@example.com",
        "ops@example.com",
    ]
    mail = sink.parsed()[0]
    assert mail["Subject"] == "[digest CRITICAL] beat has never run (no heartbeat)"
    assert mail["From"] and mail["Message-ID"] and mail["Date"]
    text = mail.get_body(("plain",)).get_content()
    assert "What to do: start exactly one beat" in text
    assert "The check now says:" in text and "DIGEST CRITICAL - beat has never run" in text

    # Still down a minute later: nothing new is mailed.
    run(at + timedelta(minutes=1))
    assert len(sink.messages) == 2

    # Beat and a worker are back: one "cleared" mail.
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        later = at + timedelta(minutes=2)
        heartbeats.beat_heart(session, "beat", "beat-host", 1, later, later)
        heartbeats.beat_heart(session, "worker", "celery@w1", 2, later, later)
        session.commit()
    engine.dispose()
    output = run(at + timedelta(minutes=2))
    assert output.startswith("DIGEST OK")
    assert "(cleared: beat has never run" in output
    assert len(sink.messages) == 4
    assert sink.parsed()[-1]["Subject"] == "[digest cleared] beat has never run (no heartbeat)"
    run(at + timedelta(minutes=3))
    assert len(sink.messages) == 4


def test_alert_mail_is_rate_limited_per_hour(sqlite_url, smtp_server, redis_url, tmp_path):
    sink, smtp_url = smtp_server
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "test-secret-key",
        "DIGEST_REDIS_URL": redis_url,
        "DIGEST_TASK_QUEUE": f"digest-alert-{uuid.uuid4().hex[:8]}",
        "DIGEST_SMTP_URL": smtp_url,
        "DIGEST_ALERT_TO": "ops@example.com",
        "DIGEST_ALERT_PER_HOUR": "1",
    }
    at = CUT + timedelta(hours=2)
    args = ["--now", at.isoformat(), "status", "--check", "--alert"]
    output = CliRunner().invoke(cli, args, env=env).output
    assert "beat has never run" in output and len(sink.messages) == 1
    # A second CRITICAL condition 20 minutes on: a due cohort nobody planned.
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
        add_reader(session, "late@example.com")
        session.commit()
    engine.dispose()
    later = at + timedelta(minutes=20)
    args = ["--now", later.isoformat(), "status", "--check", "--alert"]
    output = CliRunner().invoke(cli, args, env=env).output
    assert "morning 2026-11-30 Australia/Sydney due 140 min ago and not planned" in output
    assert "alert mail" not in output
    # One mail an hour: the second condition waits for the next hour.
    assert len(sink.messages) == 1
    later = at + timedelta(minutes=61)
    args = ["--now", later.isoformat(), "status", "--check", "--alert"]
    output = CliRunner().invoke(cli, args, env=env).output
    assert "(raised: morning 2026-11-30 Australia/Sydney due" in output
    assert len(sink.messages) == 2


# --- digest status says it too ----------------------------------------------------------------


def test_digest_status_ends_with_the_checks_verdict(sqlite_url, redis_url, tmp_path) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "test-secret-key",
        "DIGEST_REDIS_URL": redis_url,
        "DIGEST_TASK_QUEUE": f"digest-status-{uuid.uuid4().hex[:8]}",
    }
    result = CliRunner().invoke(cli, ["status"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    health = lines.index(
        "Health: DIGEST CRITICAL - beat has never run (no heartbeat); no worker alive"
    )
    assert lines[health + 1].startswith(
        "  beat has never run (no heartbeat): start exactly one beat"
    )
    result = CliRunner().invoke(cli, ["status", "--alert"], env=env)
    assert result.exit_code == 2 and "--alert and --every go with --check" in result.output


def test_the_check_can_run_for_ever(sqlite_url, tmp_path) -> None:
    """`--every` (the compose monitor) prints the summary line when it changes."""
    import subprocess

    env = {
        "PATH": os.environ["PATH"],
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": sqlite_url,
        "DIGEST_SECRET_KEY": "test-secret-key",
    }
    argv = [sys.executable, "-m", "digest.cli", "status", "--check", "--every", "1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        time.sleep(2.5)  # two more rounds, the same verdict: nothing more printed
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=10)[0]
    assert first.split(" ", 2)[2].startswith("DIGEST OK - no broker")
    assert rest == ""


def test_the_check_is_unknown_when_it_cannot_read_the_database(tmp_path) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "DIGEST_SECRET_KEY": "test-secret-key",
    }
    result = CliRunner().invoke(cli, ["status", "--check"], env=env)
    assert result.exit_code == 3
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("DIGEST UNKNOWN - cannot read the database: ")
    # A database without digest's tables is no better.
    env["DIGEST_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(cli, ["status", "--check"], env=env)
    assert result.exit_code == 3 and "no such table" in result.output
    # Nor are settings it cannot read.
    env["DIGEST_WORKER_STALE_SECONDS"] = "0"
    result = CliRunner().invoke(cli, ["status", "--check"], env=env)
    assert result.exit_code == 3
    assert (
        result.output == "DIGEST UNKNOWN - DIGEST_WORKER_STALE_SECONDS must be at least 1, got 0\n"
    )


# --- the "Seen", reproduced -------------------------------------------------------------


def signed_in(make_app: Any, settings: Any, session: Any, clock: Any) -> Any:
    operators.add(session, "ed", PASSWORD, clock())
    session.commit()
    client = make_app(settings, clock=clock).test_client()
    assert client.post("/admin/login", data={"name": "ed", "password": PASSWORD}).status_code == 302
    return client


def test_seen_only_the_web_app_running(make_app, settings, session, worker_env) -> None:
    """Seen: with only the web app running, the overview said "due now" and nothing was
    ever sent. It still says "due now", under a banner that says why nothing goes."""
    settings = load_settings(worker_env(settings.database_url))
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(2):
        add_reader(session, f"s{i}@example.com")
    session.commit()
    client = signed_in(make_app, settings, session, FakeClock(CUT + timedelta(minutes=10)))
    page = client.get("/admin/").get_data(as_text=True)
    assert "due now" in page
    banner = page[page.index('class="health') : page.index("</section>")]
    assert "CRITICAL" in banner and "beat has never run" in banner
    assert (
        "morning 2026-11-30 Australia/Sydney due 10 min ago and not planned (2 readers)" in banner
    )
    assert "<code>digest send morning --timezone Australia/Sydney</code> plans it by hand" in banner


def test_seen_send_now_with_the_worker_stopped(make_app, settings, session, worker_env) -> None:
    """Seen: with the worker stopped, Send now said "1 send tasks enqueued" (sic), the edition
    stayed at "sending 0 of 4" and `digest status` said only "1 tasks waiting". Now the
    banner and `digest status` say that no worker is alive, and then that the edition
    has not moved."""
    env = worker_env(settings.database_url)
    settings = load_settings(env)
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(4):
        add_reader(session, f"w{i}@example.com")
    at = CUT + timedelta(minutes=5)
    heartbeats.beat_heart(session, "beat", "beat-host", 1, at, at)  # beat runs; no worker
    session.commit()
    clock = FakeClock(at)
    client = signed_in(make_app, settings, session, clock)
    page = client.get("/admin/trigger").get_data(as_text=True)
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    form = {"slot": "morning", "timezone": "Australia/Sydney", "csrf": token}
    r = client.post("/admin/trigger", data=form, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert "1 send task enqueued" in page
    assert "no worker alive, 4 deliveries queued" in page

    status = CliRunner().invoke(cli, ["--now", at.isoformat(), "status"], env=env).output
    assert (
        "Health: DIGEST CRITICAL - no worker alive, 1 task waiting, 4 deliveries queued" in status
    )

    clock.advance(minutes=6)
    heartbeats.beat_heart(session, "beat", "beat-host", 1, at, clock())
    session.commit()
    page = client.get("/admin/").get_data(as_text=True)
    assert "Australia/Sydney): nothing sent yet for 360 s" in page
    assert "4 deliveries waiting" in page
    code, output = check({**env, "DIGEST_NOW": clock().isoformat()})
    assert code == 2 and "nothing sent yet for 360 s, 4 deliveries waiting" in output
