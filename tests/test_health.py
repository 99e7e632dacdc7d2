"""The monitoring check's judgement (pure: facts, settings, now) as a table, and the
alert mail's decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from digest.config import load_settings
from digest.operations.alerts import REPEAT_GAP, Known, decide
from digest.operations.health import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Facts,
    FeedTrouble,
    Heart,
    LateCohort,
    Problem,
    assess,
    heartbeat_every,
    unknown,
)
from digest.store.health import EditionActivity

NOW = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
SETTINGS = load_settings({"DIGEST_DATA_DIR": "/tmp/unused", "DIGEST_SECRET_KEY": "k"})


def s(seconds: float) -> datetime:
    """`seconds` before NOW."""
    return NOW - timedelta(seconds=seconds)


BEAT = Heart("beat", "beat-host", s(10))
WORKER = Heart("worker", "celery@w1", s(5))
HEALTHY = Facts(
    broker=True,
    hearts=(BEAT, WORKER),
    queues={"digest": 0, "digest.send": 0},
    waiting={"queued": 0, "sending": 0, "deferred": 0},
)


def edition(**changes: object) -> EditionActivity:
    base = EditionActivity(
        id=42,
        slot="morning",
        local_day=date(2026, 12, 6),
        timezone="Europe/London",
        status="sending",
        send_at=s(1200),
        created_at=s(1190),
        waiting=400,
        first_sent=s(1180),
        last_sent=s(30),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


CASES = [
    # (name, facts, level, words on the summary line)
    ("all well", HEALTHY, OK, "beat: seen 10 s ago on beat-host"),
    (
        "no broker: beat and workers are not expected",
        Facts(broker=False, waiting={"queued": 0}),
        OK,
        "no broker",
    ),
    (
        "beat stale",
        replace(HEALTHY, hearts=(Heart("beat", "beat-host", s(412)), WORKER)),
        CRITICAL,
        "beat last seen 412 s ago on beat-host",
    ),
    (
        "beat just inside its staleness",
        replace(HEALTHY, hearts=(Heart("beat", "beat-host", s(180)), WORKER)),
        OK,
        "beat: seen 180 s ago",
    ),
    (
        "beat stopped cleanly is still down",
        replace(HEALTHY, hearts=(Heart("beat", "b", s(200), stopped_at=s(200)), WORKER)),
        CRITICAL,
        "beat stopped 200 s ago on b",
    ),
    (
        "beat never ran",
        replace(HEALTHY, hearts=(WORKER,)),
        CRITICAL,
        "beat has never run",
    ),
    (
        "two beats",
        replace(HEALTHY, hearts=(BEAT, Heart("beat", "other", s(3)), WORKER)),
        WARNING,
        "2 beats running (beat-host, other)",
    ),
    (
        "no worker while tasks wait",
        replace(HEALTHY, hearts=(BEAT, Heart("worker", "celery@w1", s(200))), queues={"d": 3}),
        CRITICAL,
        "no worker alive, 3 tasks waiting (last worker last seen 200 s ago on celery@w1)",
    ),
    (
        "no worker while rows are queued (no broker figures)",
        replace(HEALTHY, hearts=(BEAT,), queues=None, waiting={"queued": 4, "sending": 0}),
        CRITICAL,
        "no worker alive, 4 deliveries queued",
    ),
    (
        "no worker, nothing waiting",
        replace(HEALTHY, hearts=(BEAT, Heart("worker", "w", s(60), stopped_at=s(60)))),
        WARNING,
        "no worker alive (last worker stopped 60 s ago on w)",
    ),
    (
        "one worker of two lost",
        replace(HEALTHY, hearts=(BEAT, WORKER, Heart("worker", "celery@w2", s(300)))),
        WARNING,
        "worker celery@w2 last seen 300 s ago without a clean shutdown (1 alive)",
    ),
    (
        "a worker long gone is no longer news",
        replace(HEALTHY, hearts=(BEAT, WORKER, Heart("worker", "celery@w2", s(7200)))),
        OK,
        "beat: seen",
    ),
    (
        "broker unreachable",
        replace(HEALTHY, queues=None, broker_error="cannot reach the broker: refused"),
        CRITICAL,
        "broker unreachable (cannot reach the broker: refused)",
    ),
    (
        "a due cohort not planned after the stall time",
        replace(
            HEALTHY,
            unplanned=(LateCohort("morning", "2026-12-06", "Europe/London", s(420), 12),),
        ),
        CRITICAL,
        "morning 2026-12-06 Europe/London due 420 s ago and not planned (12 readers)",
    ),
    (
        "a due cohort not planned yet, within the stall time",
        replace(
            HEALTHY,
            unplanned=(LateCohort("morning", "2026-12-06", "Europe/London", s(100), 12),),
        ),
        OK,
        "beat: seen",
    ),
    (
        "an edition that stopped moving",
        replace(HEALTHY, editions=(edition(last_sent=s(400)),)),
        CRITICAL,
        "edition 42 (morning 2026-12-06 Europe/London): nothing sent for 400 s, "
        "400 deliveries waiting",
    ),
    (
        "an edition planned and never sent",
        replace(HEALTHY, editions=(edition(first_sent=None, last_sent=None),)),
        CRITICAL,
        "edition 42 (morning 2026-12-06 Europe/London): nothing sent yet for 19 min",
    ),
    (
        "an edition waiting behind another that sends",
        replace(
            HEALTHY,
            editions=(edition(last_sent=None, first_sent=None), edition(id=43, waiting=0)),
        ),
        WARNING,
        "behind other editions",
    ),
    (
        "an edition moving",
        replace(HEALTHY, editions=(edition(),)),
        OK,
        "beat: seen",
    ),
    (
        "a finished edition sent long ago is fine",
        replace(HEALTHY, editions=(edition(status="done", waiting=0, last_sent=s(5000)),)),
        OK,
        "beat: seen",
    ),
    (
        "a missed edition",
        replace(HEALTHY, editions=(edition(status="missed", waiting=0, last_sent=None),)),
        WARNING,
        "edition 42 (morning 2026-12-06 Europe/London) was missed",
    ),
    (
        "failure rate over 5%",
        replace(HEALTHY, last_24h={"sent": 90, "failed": 10}),
        WARNING,
        "10 of 100 deliveries failed in the last 24 h (10%, over 5%)",
    ),
    (
        "failure rate at 5%",
        replace(HEALTHY, last_24h={"sent": 95, "failed": 5}),
        OK,
        "beat: seen",
    ),
    (
        "too few deliveries to speak of a rate",
        replace(HEALTHY, last_24h={"sent": 5, "failed": 5}),
        OK,
        "beat: seen",
    ),
    (
        "deferred rows piling up",
        replace(HEALTHY, waiting={"queued": 0, "sending": 0, "deferred": 150}),
        WARNING,
        "150 deliveries deferred for a retry (over 100)",
    ),
    (
        "a feed failing for hours",
        replace(HEALTHY, feeds=(FeedTrouble("https://f.example/rss", s(7 * 3600), "HTTP 500"),)),
        WARNING,
        "feed https://f.example/rss failing for 7 h: HTTP 500",
    ),
    (
        "a feed failing for an hour",
        replace(HEALTHY, feeds=(FeedTrouble("https://f.example/rss", s(3600), "HTTP 500"),)),
        OK,
        "beat: seen",
    ),
    (
        "critical outranks warning",
        replace(
            HEALTHY,
            hearts=(Heart("beat", "b", s(999)), WORKER),
            waiting={"queued": 0, "sending": 0, "deferred": 500},
        ),
        CRITICAL,
        "beat last seen 16 min ago on b; 500 deliveries deferred",
    ),
]


@pytest.mark.parametrize(
    ("facts", "level", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_check_judges_the_facts(facts: Facts, level: int, words: str) -> None:
    health = assess(facts, SETTINGS, NOW)
    assert health.level == level, health.lines()
    summary = health.summary()
    assert summary.startswith(f"DIGEST {('OK', 'WARNING', 'CRITICAL')[level]} - ")
    assert words in summary, summary
    for problem in health.problems:
        assert problem.todo  # every problem says what to do


def test_staleness_comes_from_the_settings() -> None:
    quick = SETTINGS.with_(beat_stale_seconds=5, worker_stale_seconds=5)
    facts = replace(HEALTHY, hearts=(Heart("beat", "b", s(6)), Heart("worker", "w", s(6))))
    facts = replace(facts, queues={"digest": 1})
    assert assess(facts, quick, NOW).level == CRITICAL
    assert assess(facts, SETTINGS, NOW).level == OK


def test_the_summary_line_counts_what_it_does_not_name() -> None:
    many = tuple(LateCohort("morning", "2026-12-06", f"Zone/{i}", s(900), 1) for i in range(6))
    summary = assess(replace(HEALTHY, unplanned=many), SETTINGS, NOW).summary()
    assert summary.count("not planned") == 4 and "; 2 more |" in summary


def test_perfdata_follows_the_summary() -> None:
    summary = assess(HEALTHY, SETTINGS, NOW).summary()
    assert summary.endswith("| beat_age=10s;;180 workers=1;;1: tasks=0 queued=0 deferred=0;100")


def test_unknown_has_its_own_level() -> None:
    assert unknown("DIGEST UNKNOWN - database unreachable").level == UNKNOWN


@pytest.mark.parametrize(("stale", "every"), [(180, 30), (120, 30), (60, 15), (4, 1), (1, 1)])
def test_heartbeats_come_several_times_per_staleness(stale: int, every: float) -> None:
    assert heartbeat_every(stale) == every


# --- the alert mail's decisions ----------------------------------------------------------------

P = Problem(CRITICAL, "beat", "beat last seen 412 s ago", "start beat")


@pytest.mark.parametrize(
    ("known", "criticals", "spent", "mails"),
    [
        ({}, {"beat": P}, 0, [("beat", True)]),  # new: mailed
        ({"beat": Known("beat", "x", True, s(3600))}, {"beat": P}, 0, []),  # still on: quiet
        ({"beat": Known("beat", "x", True, s(3600))}, {}, 0, [("beat", False)]),  # cleared
        ({"beat": Known("beat", "x", True, s(60))}, {}, 0, [("beat", False)]),  # at once
        ({"beat": Known("beat", "x", False, None)}, {}, 0, []),  # never mailed, gone: quiet
        # it flaps: back within REPEAT_GAP of the clear mail, nothing; after it, a mail
        ({"beat": Known("beat", "x", False, s(60))}, {"beat": P}, 0, []),
        (
            {"beat": Known("beat", "x", False, s(REPEAT_GAP.total_seconds()))},
            {"beat": P},
            0,
            [("beat", True)],
        ),
        ({}, {"beat": P}, 10, []),  # the hour's budget is spent
        # short budget: raised conditions go before clears
        (
            {"a": Known("a", "x", True, s(3600))},
            {"beat": P, "z": replace(P, key="z")},
            8,
            [("beat", True), ("z", True)],
        ),
    ],
)
def test_alert_decisions(known, criticals, spent, mails) -> None:
    found = decide(known, criticals, NOW, spent, 10)
    assert [(m.key, m.raised) for m in found] == mails


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DIGEST_BEAT_STALE_SECONDS", "0", "DIGEST_BEAT_STALE_SECONDS must be at least 1, got 0"),
        ("DIGEST_WORKER_STALE_SECONDS", "soon", "DIGEST_WORKER_STALE_SECONDS must be a whole"),
        ("DIGEST_ALERT_TO", "ops@example.com, nobody", "DIGEST_ALERT_TO: 'nobody' is not an"),
        ("DIGEST_ALERT_TO", "ops@example.com\r\nBcc: x@y.z", "DIGEST_ALERT_TO: "),
        ("DIGEST_METRICS_TOKEN", "short", "DIGEST_METRICS_TOKEN must be at least 16"),
    ],
)
def test_bad_monitoring_settings_name_the_variable(name: str, value: str, message: str) -> None:
    from digest.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings({"DIGEST_DATA_DIR": "/tmp/unused", "DIGEST_SECRET_KEY": "k", name: value})
    assert str(caught.value).startswith(message)


def test_monitoring_settings_are_read() -> None:
    env = {
        "DIGEST_DATA_DIR": "/tmp/unused",
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_ALERT_TO": "ops@example.com, oncall@example.com",
        "DIGEST_METRICS_TOKEN": "m" * 20,
        "DIGEST_BEAT_STALE_SECONDS": "30",
    }
    settings = load_settings(env)
    assert settings.alert_to == ("ops@example.com", "oncall@example.com")
    assert settings.beat_stale_seconds == 30 and settings.worker_stale_seconds == 120
    assert "m" * 20 not in repr(settings)


def test_a_cohort_past_its_catch_up_says_it_will_be_missed() -> None:
    late = LateCohort("evening", "2026-12-05", "Europe/London", s(13 * 3600), 4)
    (problem,) = assess(replace(HEALTHY, unplanned=(late,)), SETTINGS, NOW).problems
    assert problem.level == CRITICAL
    assert (
        problem.text == "evening 2026-12-05 Europe/London due 13 h ago and not planned (4 readers)"
    )
    assert problem.todo.startswith(
        "it is past DIGEST_CATCHUP_MINUTES: beat will record it as missed"
    )
