"""Is digest working? A pure judgement of facts gathered from the store (see
digest/operations/monitor.py), the settings and `now`, with Nagios/Icinga plugin
levels: the monitoring check prints it, the console shows it as a banner, /metrics
exports its level and the alert mail reports its CRITICAL conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from digest.config import Settings
from digest.store.health import EditionActivity
from digest.words import counted

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
MIN_SETTLED = 20  # fewer settled deliveries than this say nothing about a failure rate
LOST_WORKER_WINDOW = timedelta(hours=1)  # how long a vanished worker is worth a warning
SHOWN = 4  # problems named on the summary line; the rest are counted


def heartbeat_every(stale_seconds: int) -> float:
    """How often a process writes its heartbeat so that a few missed writes still do
    not make it look down: a quarter of the staleness, between 1 s and 30 s."""
    return max(1.0, min(30.0, stale_seconds / 4))


@dataclass(frozen=True)
class Heart:
    """One heartbeat row as the check sees it."""

    kind: str  # "beat" or "worker"
    name: str
    seen_at: datetime
    stopped_at: datetime | None = None


@dataclass(frozen=True)
class LateCohort:
    """A cohort whose send time has passed and that has no edition."""

    slot: str
    local_day: str
    timezone: str
    send_at: datetime
    readers: int

    def __str__(self) -> str:
        return f"{self.slot} {self.local_day} {self.timezone}"


@dataclass(frozen=True)
class FeedTrouble:
    url: str
    last_ok_at: datetime | None
    error: str


@dataclass(frozen=True)
class Facts:
    """What the check judges; gathered by digest.operations.monitor.gather."""

    broker: bool  # a broker is configured, so beat and workers are expected to run
    hearts: tuple[Heart, ...] = ()
    queues: dict[str, int] | None = None  # tasks waiting per queue; None: not known
    broker_error: str = ""
    waiting: dict[str, int] = field(default_factory=dict)  # deliveries by waiting status
    editions: tuple[EditionActivity, ...] = ()
    unplanned: tuple[LateCohort, ...] = ()
    last_24h: dict[str, int] = field(default_factory=dict)  # deliveries by status
    feeds: tuple[FeedTrouble, ...] = ()


@dataclass(frozen=True)
class Problem:
    level: int  # WARNING or CRITICAL
    key: str  # names the condition across runs (the alert mail's memory)
    text: str  # what is wrong, one line
    todo: str  # what the operator should do about it


@dataclass(frozen=True)
class Health:
    level: int
    problems: tuple[Problem, ...]
    details: tuple[str, ...]
    perfdata: str = ""

    @property
    def name(self) -> str:
        return LEVELS[self.level]

    def summary(self) -> str:
        """The plugin's first line: `DIGEST CRITICAL - beat last seen 412 s ago; ...`."""
        worst = sorted(self.problems, key=lambda p: -p.level)
        texts = [p.text for p in worst[:SHOWN]]
        if len(worst) > SHOWN:
            texts.append(f"{len(worst) - SHOWN} more")
        said = "; ".join(texts) or (self.details[0] if self.details else "all well")
        line = f"DIGEST {self.name} - {said}"
        return f"{line} | {self.perfdata}" if self.perfdata else line

    def lines(self) -> list[str]:
        """The summary line, then each problem with what to do, then the details."""
        out = [self.summary()]
        for p in sorted(self.problems, key=lambda p: -p.level):
            out.append(f"{LEVELS[p.level]}: {p.text}")
            out.append(f"  what to do: {p.todo}")
        out += self.details
        return out

    def criticals(self) -> dict[str, Problem]:
        return {p.key: p for p in self.problems if p.level == CRITICAL}


def unknown(reason: str) -> Health:
    """The check could not look (the database is unreachable, say)."""
    return Health(UNKNOWN, (), (reason,), "")


def ago(since: datetime, now: datetime) -> str:
    """'412 s', '7 min', '3 h': how long ago."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 600:
        return f"{seconds} s"
    if seconds < 3 * 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _alive(heart: Heart, stale: int, now: datetime) -> bool:
    return heart.stopped_at is None and now - heart.seen_at <= timedelta(seconds=stale)


def _last_seen(heart: Heart, now: datetime) -> str:
    if heart.stopped_at is not None:
        return f"stopped {ago(heart.stopped_at, now)} ago on {heart.name}"
    return f"last seen {ago(heart.seen_at, now)} ago on {heart.name}"


BEAT_TODO = (
    "start exactly one beat (`docker compose up -d beat`, or `celery -A workers.app beat`); "
    "until then no edition is planned and nothing lost is re-queued"
)
WORKER_TODO = (
    "start a worker (`docker compose up -d worker`, or `celery -A workers.app worker`) "
    "and read the last one's log for why it stopped"
)


def _processes(facts: Facts, settings: Settings, now: datetime) -> tuple[list[Problem], list[str]]:
    problems: list[Problem] = []
    details: list[str] = []
    if facts.broker_error:
        problems.append(
            Problem(
                CRITICAL,
                "broker",
                f"broker unreachable ({facts.broker_error[:120]})",
                "start Redis or fix DIGEST_REDIS_URL; no task reaches a worker meanwhile",
            )
        )
    beats = [h for h in facts.hearts if h.kind == "beat"]
    alive_beats = [h for h in beats if _alive(h, settings.beat_stale_seconds, now)]
    if not beats:
        problems.append(Problem(CRITICAL, "beat", "beat has never run (no heartbeat)", BEAT_TODO))
    elif not alive_beats:
        problems.append(Problem(CRITICAL, "beat", f"beat {_last_seen(beats[0], now)}", BEAT_TODO))
    else:
        first = alive_beats[0]
        details.append(f"beat: seen {ago(first.seen_at, now)} ago on {first.name}")
    if len(alive_beats) > 1:
        names = ", ".join(sorted(h.name for h in alive_beats))
        problems.append(
            Problem(
                WARNING,
                "beats",
                f"{len(alive_beats)} beats running ({names})",
                "run exactly one beat: stop the others",
            )
        )
    workers = [h for h in facts.hearts if h.kind == "worker"]
    alive = [h for h in workers if _alive(h, settings.worker_stale_seconds, now)]
    tasks = sum((facts.queues or {}).values())
    rows = facts.waiting.get("queued", 0) + facts.waiting.get("sending", 0)
    for h in workers:
        state = "alive" if h in alive else "down"
        details.append(f"worker {h.name}: {state}, {_last_seen(h, now)}")
    if not alive:
        what = [f"{counted(tasks, 'task')} waiting"] if tasks else []
        what += [f"{counted(rows, 'delivery')} queued"] if rows else []
        last = f" (last worker {_last_seen(workers[0], now)})" if workers else ""
        if what:
            text = f"no worker alive, {', '.join(what)}{last}"
            problems.append(Problem(CRITICAL, "workers", text, WORKER_TODO))
        else:
            problems.append(Problem(WARNING, "workers", f"no worker alive{last}", WORKER_TODO))
    else:
        lost = [
            h
            for h in workers
            if h.stopped_at is None and h not in alive and now - h.seen_at <= LOST_WORKER_WINDOW
        ]
        for h in lost:
            problems.append(
                Problem(
                    WARNING,
                    f"worker-lost {h.name}",
                    f"worker {h.name} last seen {ago(h.seen_at, now)} ago without a clean "
                    f"shutdown ({len(alive)} alive)",
                    "read its log or the kernel's (OOM killer?) and start it again",
                )
            )
    return problems, details


def _sending(facts: Facts, settings: Settings, now: datetime) -> list[Problem]:
    problems: list[Problem] = []
    stall = timedelta(seconds=settings.stall_seconds)
    catchup = timedelta(minutes=settings.catchup_minutes)
    for late in facts.unplanned:
        if now - late.send_at < stall:
            continue
        readers = f"{late.readers} reader{'' if late.readers == 1 else 's'}"
        said = f"{late} due {ago(late.send_at, now)} ago and not planned ({readers})"
        if now - late.send_at > catchup:
            todo = (
                "it is past DIGEST_CATCHUP_MINUTES: beat will record it as missed, not send "
                "it; find out why beat or the workers were down"
            )
        else:
            todo = (
                "beat plans due cohorts every minute: check beat and the workers; "
                f"`digest send {late.slot} --timezone {late.timezone}` plans it by hand"
            )
        problems.append(Problem(CRITICAL, f"unplanned {late}", said, todo))
    recent = [e.last_sent for e in facts.editions if e.last_sent is not None]
    anything_sent = bool(recent) and now - max(recent) < stall
    for e in facts.editions:
        if e.status not in ("planned", "sending") or not e.waiting:
            continue
        last = max(t for t in (e.last_sent, e.created_at) if t is not None)
        if now - last < stall:
            continue
        said = "nothing sent yet" if e.last_sent is None else "nothing sent"
        text = (
            f"edition {e.id} ({e.cohort}): {said} for {ago(last, now)}, "
            f"{counted(e.waiting, 'delivery')} waiting"
        )
        if anything_sent:  # other editions go out: this one waits its turn in the queue
            problems.append(
                Problem(
                    WARNING,
                    f"stalled {e.id}",
                    text + " behind other editions",
                    "add workers if the backlog does not shrink",
                )
            )
        else:
            problems.append(
                Problem(
                    CRITICAL,
                    f"stalled {e.id}",
                    text,
                    f"check the workers and the relays (`digest status {e.id}`); the sweep "
                    "sends queued rows again once a worker runs",
                )
            )
    for e in facts.editions:
        if e.status == "missed" and now - e.send_at <= timedelta(hours=24):
            problems.append(
                Problem(
                    WARNING,
                    f"missed {e.id}",
                    f"edition {e.id} ({e.cohort}) was missed: planned more than "
                    f"{settings.catchup_minutes} min after its send time",
                    "nothing was sent to its readers; find why beat or the workers were down",
                )
            )
    return problems


def _quality(facts: Facts, settings: Settings, now: datetime) -> list[Problem]:
    problems: list[Problem] = []
    sent, failed = facts.last_24h.get("sent", 0), facts.last_24h.get("failed", 0)
    settled = sent + failed
    if settled >= MIN_SETTLED and failed * 100 > settings.failure_warn_percent * settled:
        problems.append(
            Problem(
                WARNING,
                "failures",
                f"{failed} of {settled} deliveries failed in the last 24 h "
                f"({failed * 100 / settled:.0f}%, over {settings.failure_warn_percent}%)",
                "read the errors on the edition's page or `digest status EDITION`; "
                "`digest retry EDITION --failed` once the cause is fixed",
            )
        )
    deferred = facts.waiting.get("deferred", 0)
    if deferred >= settings.deferred_warn:
        problems.append(
            Problem(
                WARNING,
                "deferred",
                f"{counted(deferred, 'delivery')} deferred for a retry "
                f"(over {settings.deferred_warn})",
                "the relay refuses or throttles mail: read the deferred errors on the "
                "edition's page and check DIGEST_SMTP_* and the relay's limits",
            )
        )
    hours = timedelta(hours=settings.feed_warn_hours)
    failing = [f for f in facts.feeds if f.last_ok_at is None or now - f.last_ok_at >= hours]
    if failing:
        first = failing[0]
        since = (
            "never fetched"
            if first.last_ok_at is None
            else f"failing for {ago(first.last_ok_at, now)}"
        )
        more = f" and {len(failing) - 1} more" if len(failing) > 1 else ""
        problems.append(
            Problem(
                WARNING,
                "feeds",
                f"feed {first.url[:80]} {since}: {first.error[:100]}{more}",
                "fix or pause the feed on the Feeds page (`digest feeds list` shows each error)",
            )
        )
    return problems


def assess(facts: Facts, settings: Settings, now: datetime) -> Health:
    """The check: CRITICAL when beat is stale, no worker is alive while work waits, a
    due cohort is not planned or an edition stopped moving; WARNING for failures,
    deferred rows piling up and failing feeds; OK otherwise."""
    problems: list[Problem] = []
    details: list[str] = []
    if facts.broker:
        found, said = _processes(facts, settings, now)
        problems += found
        details += said
    else:
        details.append(
            "no broker (DIGEST_REDIS_URL): beat and workers are not used; "
            "`digest send` from cron plans and sends"
        )
    problems += _sending(facts, settings, now)
    problems += _quality(facts, settings, now)
    tasks = sum((facts.queues or {}).values())
    queued = facts.waiting.get("queued", 0) + facts.waiting.get("sending", 0)
    details.append(
        f"waiting: {counted(tasks, 'task')} in the broker, "
        f"{counted(queued, 'delivery')} queued or being sent, "
        f"{facts.waiting.get('deferred', 0)} deferred"
        if facts.queues is not None
        else f"waiting: {counted(queued, 'delivery')} queued or being sent, "
        f"{facts.waiting.get('deferred', 0)} deferred"
    )
    level = max([p.level for p in problems], default=OK)
    return Health(level, tuple(problems), tuple(details), _perfdata(facts, settings, now))


def _perfdata(facts: Facts, settings: Settings, now: datetime) -> str:
    parts = []
    beats = [h for h in facts.hearts if h.kind == "beat"]
    if facts.broker and beats:
        age = max(0, int((now - beats[0].seen_at).total_seconds()))
        parts.append(f"beat_age={age}s;;{settings.beat_stale_seconds}")
    if facts.broker:
        alive = [
            h
            for h in facts.hearts
            if h.kind == "worker" and _alive(h, settings.worker_stale_seconds, now)
        ]
        parts.append(f"workers={len(alive)};;1:")
    if facts.queues is not None:
        parts.append(f"tasks={sum(facts.queues.values())}")
    parts.append(f"queued={facts.waiting.get('queued', 0) + facts.waiting.get('sending', 0)}")
    parts.append(f"deferred={facts.waiting.get('deferred', 0)};{settings.deferred_warn}")
    return " ".join(parts)
