"""Heartbeats of beat and the workers, and what the alert mail last said of each
CRITICAL condition. Written by the processes themselves, read by the monitoring check,
the console's banner and /metrics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from digest.models import AlertState, Heartbeat
from digest.store.base import insert_for_session, rowcount


def beat_heart(
    session: Session, kind: str, name: str, pid: int, started_at: datetime, now: datetime
) -> None:
    """Record that `name` (a beat or a worker) is alive at `now`."""
    stmt = insert_for_session(session, Heartbeat).values(
        kind=kind, name=name, pid=pid, started_at=started_at, seen_at=now, stopped_at=None
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["kind", "name"],
            set_={"pid": pid, "started_at": started_at, "seen_at": now, "stopped_at": None},
        )
    )


def stop_heart(session: Session, kind: str, name: str, pid: int, now: datetime) -> None:
    """A clean shutdown: the row says when it stopped (if it is still this process's)."""
    session.execute(
        update(Heartbeat)
        .where(Heartbeat.kind == kind, Heartbeat.name == name, Heartbeat.pid == pid)
        .values(seen_at=now, stopped_at=now)
    )


def heartbeats(session: Session, since: datetime) -> list[Heartbeat]:
    """Every heartbeat seen since `since`, newest first."""
    stmt = select(Heartbeat).where(Heartbeat.seen_at >= since)
    return list(session.scalars(stmt.order_by(Heartbeat.seen_at.desc())))


def latest_heartbeat(session: Session, kind: str) -> Heartbeat | None:
    stmt = select(Heartbeat).where(Heartbeat.kind == kind).order_by(Heartbeat.seen_at.desc())
    return session.scalars(stmt.limit(1)).first()


def forget_hearts(session: Session, before: datetime) -> int:
    """Drop heartbeats last seen before `before` (workers long gone)."""
    return rowcount(session.execute(delete(Heartbeat).where(Heartbeat.seen_at < before)))


# --- alert mail state ------------------------------------------------------------------------


def alert_states(session: Session) -> list[AlertState]:
    return list(session.scalars(select(AlertState).order_by(AlertState.key)))


def upsert_alert(session: Session, key: str, summary: str, active: bool, now: datetime) -> None:
    """Record whether the condition `key` holds now (and its latest summary)."""
    stmt = insert_for_session(session, AlertState).values(
        key=key, summary=summary, active=active, notified=False, mailed_at=None, changed_at=now
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
    session.execute(
        update(AlertState)
        .where(AlertState.key == key, AlertState.active != active)
        .values(active=active, changed_at=now)
    )
    if summary:
        session.execute(update(AlertState).where(AlertState.key == key).values(summary=summary))


def claim_alert(
    session: Session,
    key: str,
    notified: bool,
    mailed_at: datetime | None,
    now: datetime,
) -> bool:
    """Take the right to mail about `key` (now saying `not notified`); False when
    another process did so first, or the row changed since it was read."""
    mailed = (
        AlertState.mailed_at.is_(None) if mailed_at is None else AlertState.mailed_at == mailed_at
    )
    result = session.execute(
        update(AlertState)
        .where(AlertState.key == key, AlertState.notified == notified, mailed)
        .values(notified=not notified, mailed_at=now)
    )
    return rowcount(result) == 1


def release_alert(
    session: Session, key: str, notified: bool, mailed_at: datetime | None, now: datetime
) -> None:
    """Undo a claim whose mail did not go: the next run tries again."""
    session.execute(
        update(AlertState)
        .where(AlertState.key == key, AlertState.mailed_at == now)
        .values(notified=notified, mailed_at=mailed_at)
    )


def mails_since(session: Session, since: datetime) -> int:
    """How many conditions were mailed about since `since` (the hourly budget)."""
    rows = session.scalars(select(AlertState.key).where(AlertState.mailed_at >= since))
    return len(list(rows))


def forget_alerts(session: Session, keys: Sequence[str]) -> None:
    if keys:
        session.execute(delete(AlertState).where(AlertState.key.in_(list(keys))))
