"""Whether a cohort may be planned now: the one rule every way of starting a send obeys
(beat, `digest send`, the console's Send now, the Celery task and so Flower, the API).

`may_plan` reads the database but changes nothing; `pipeline.plan_cohort` acts on its
decision and writes it to the audit log with its origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions.schedule import local_day, send_at
from digest.models import Cohort
from digest.words import counted

# Who may start a plan. Only people at the CLI or the console may force a day that is
# still ahead; a Celery client (Flower) or the API may not.
BEAT, CLI, CONSOLE, CELERY, API = "beat", "cli", "console", "celery", "api"
MAY_FORCE = (CLI, CONSOLE)

# What the caller does with a decision.
PLAN = "plan"  # plan and send it
EXISTS = "exists"  # the cohort has its edition: nothing to do
RECORD = "record"  # record it as missed or superseded: an edition that sends no mail
REFUSE = "refuse"  # do nothing, and say why
WAIT = "wait"  # not due yet and the caller did not ask to send early


@dataclass(frozen=True)
class Decision:
    """What may happen to one cohort now, and why, in words an operator reads."""

    cohort: Cohort
    action: str
    reason: str
    status: str = ""  # RECORD: missed or superseded; EXISTS: the edition's status
    edition_id: int | None = None  # EXISTS: the edition
    forced: bool = False  # PLAN of a day still ahead, by an operator who forced it
    early: bool = False  # PLAN before its send time: covers up to now

    @property
    def may_plan(self) -> bool:
        return self.action == PLAN

    def as_dict(self) -> dict[str, object]:
        """For task results and the API: plain values, never an address."""
        return {
            "cohort": str(self.cohort),
            "action": self.action,
            "reason": self.reason,
            "status": self.status,
            "edition": self.edition_id,
        }


def _hhmm(at: datetime, timezone: str) -> str:
    return at.astimezone(ZoneInfo(timezone)).strftime("%H:%M")


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"


def may_plan(
    session: Session,
    settings: Settings,
    cohort: Cohort,
    now: datetime,
    *,
    origin: str,
    force: bool = False,
    early: bool = True,
) -> Decision:
    """Decide whether `cohort` may be planned now, for a caller of kind `origin`.

    In this order: an edition exists; a day still ahead (only the CLI and the console
    may force it); not due yet (sent early only if the caller asks, `early`); superseded
    (an edition of the timezone already covers up to this one's cut, e.g. its evening
    went out before its morning was planned); missed (beat records a cohort later than
    DIGEST_CATCHUP_MINUTES as missed; an operator who asks for it sends it late).
    """
    existing = store.find_edition(session, cohort)
    if existing is not None:
        return Decision(
            cohort,
            EXISTS,
            f"edition {existing.id} exists ({existing.status}); nothing to plan",
            status=existing.status,
            edition_id=existing.id,
        )
    at = send_at(settings.send_time(cohort.slot), cohort.local_day, cohort.timezone)
    today = local_day(now, cohort.timezone)
    if cohort.local_day > today:
        if not force:
            return Decision(
                cohort,
                REFUSE,
                f"{cohort.local_day} is still ahead in {cohort.timezone}: planning it now "
                "uses up that day's edition. Only an operator may force it (`digest send "
                "--force`, or the console)",
            )
        if origin not in MAY_FORCE:
            return Decision(
                cohort,
                REFUSE,
                f"{cohort.local_day} is still ahead in {cohort.timezone}, and a day ahead "
                f"may be forced only from the CLI or the console, not by {origin}",
            )
        return Decision(
            cohort,
            PLAN,
            f"{cohort.local_day} is still ahead: forced by an operator, it covers up to now",
            forced=True,
            early=True,
        )
    if at > now and not early:
        return Decision(
            cohort,
            WAIT,
            f"not due until {_hhmm(at, cohort.timezone)} local time",
        )
    cut = min(at, now)
    later = store.latest_covering(session, cohort.timezone, cut)
    if later is not None:
        return Decision(
            cohort,
            RECORD,
            f"superseded: the {later.slot} {later.local_day} edition ({later.id}) went out "
            f"first and covers up to {later.window_end.isoformat(timespec='minutes')}, so "
            "nothing of this one's window is left to send",
            status="superseded",
        )
    late = now - at
    if late > timedelta(minutes=settings.catchup_minutes):
        if origin == BEAT:
            return Decision(
                cohort,
                RECORD,
                f"not sent: its send time {at.isoformat()} passed more than "
                f"{counted(settings.catchup_minutes, 'minute')} before it was planned",
                status="missed",
            )
        return Decision(cohort, PLAN, f"sent late: its send time passed {_ago(late)} ago")
    if at > now:
        return Decision(
            cohort,
            PLAN,
            f"before its send time ({_hhmm(at, cohort.timezone)} local): covers up to now",
            early=True,
        )
    return Decision(cohort, PLAN, "due")
