"""Stop a wrong edition while it goes out: pause, resume, cancel, and plan a cancelled
edition again (corrected) for the readers it did not reach.

A pause or a cancel is a status on the edition. Senders never claim rows of a paused
or cancelled edition, and running lanes look at the status between messages (see
digest/editions/halt.py), so both reach every worker within a few seconds; rows not
yet sent go back untried. Each function commits its change with its audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.editions import pipeline
from digest.errors import InvalidInput
from digest.models import Cohort, Edition
from digest.words import counted


@dataclass(frozen=True)
class Standing:
    """How far an edition got: what an operator is told before and after a change."""

    edition_id: int
    status: str
    sent: int  # readers who got it
    held: int  # not sent yet: queued or deferred
    in_flight: int  # claimed by a lane now
    cancelled: int
    total: int

    def describe(self) -> str:
        flight = f", {self.in_flight} being sent now" if self.in_flight else ""
        cancelled = f", {self.cancelled} cancelled" if self.cancelled else ""
        return (
            f"edition {self.edition_id} [{self.status}]: {self.sent} of {self.total} readers "
            f"got it, {self.held} not sent yet{flight}{cancelled}"
        )


def standing(session: Session, edition_id: int) -> Standing:
    edition = store.get_edition(session, edition_id)
    session.refresh(edition, ["status"])
    counts = store.edition_counts(session, edition_id)
    return Standing(
        edition_id,
        edition.status,
        sent=counts.get("sent", 0),
        held=counts.get("queued", 0) + counts.get("deferred", 0),
        in_flight=counts.get("sending", 0),
        cancelled=counts.get("cancelled", 0),
        total=sum(counts.values()),
    )


def _audit(
    session: Session, who: str, origin: str, action: str, detail: str, now: datetime
) -> None:
    store.audit(session, who or origin, action, f"[{origin}] {detail}", now)


def pause(
    session: Session, edition_id: int, now: datetime, *, origin: str, who: str = ""
) -> Standing:
    """Stop sending the edition: lanes stop within a few seconds, rows not yet sent
    wait untried until `resume`."""
    edition = store.get_edition(session, edition_id)
    if not store.set_edition_status(
        session, edition_id, "paused", only_from=("sending", "planned")
    ):
        session.refresh(edition, ["status"])
        raise InvalidInput(
            f"edition {edition_id} is {edition.status}: only an edition being sent can be paused"
        )
    now_standing = standing(session, edition_id)
    _audit(session, who, origin, "paused", now_standing.describe(), now)
    session.commit()
    return now_standing


def resume(
    session: Session, edition_id: int, now: datetime, *, origin: str, who: str = ""
) -> Standing:
    """Send a paused edition again; the caller fans out its queued rows
    (dispatch.resume_edition) or sends them here (sending.run_edition)."""
    edition = store.get_edition(session, edition_id)
    if not store.set_edition_status(session, edition_id, "sending", only_from=("paused",)):
        session.refresh(edition, ["status"])
        raise InvalidInput(f"edition {edition_id} is {edition.status}, not paused")
    now_standing = standing(session, edition_id)
    _audit(session, who, origin, "resumed", now_standing.describe(), now)
    session.commit()
    return now_standing


def cancel(
    session: Session, edition_id: int, now: datetime, *, origin: str, who: str = ""
) -> Standing:
    """Stop the edition for good: rows not sent become `cancelled` and are never sent
    by a sweep or a retry (rows in flight finish or are cancelled within seconds)."""
    edition = store.get_edition(session, edition_id)
    if not store.set_edition_status(
        session, edition_id, "cancelled", only_from=("sending", "planned", "paused")
    ):
        session.refresh(edition, ["status"])
        raise InvalidInput(
            f"edition {edition_id} is {edition.status}: only an edition being sent (or "
            "paused) can be cancelled"
        )
    store.cancel_open_deliveries(session, edition_id, now)
    now_standing = standing(session, edition_id)
    _audit(session, who, origin, "cancelled", now_standing.describe(), now)
    session.commit()
    return now_standing


def settle(session: Session, edition_id: int) -> Standing:
    """Cancel what lanes gave back since the cancel; the edition's standing now."""
    store.update_edition_status(session, edition_id)
    session.commit()
    return standing(session, edition_id)


def replan(
    session: Session,
    settings: Settings,
    edition_id: int,
    now: datetime,
    *,
    origin: str,
    who: str = "",
) -> tuple[Standing, int]:
    """Plan a cancelled edition again for the readers who did not get it: the same
    window, selected afresh (hidden articles leave it), rendered again; its cancelled
    rows are queued with the new rendering, rows already sent stay as they are, so
    nobody gets it twice. Returns the standing and how many rows were queued; the
    caller fans them out (dispatch) or sends them here."""
    edition: Edition = store.get_edition(session, edition_id)
    session.refresh(edition, ["status"])
    if edition.status != "cancelled":
        raise InvalidInput(
            f"edition {edition_id} is {edition.status}: only a cancelled edition can be "
            "planned again (cancel it first)"
        )
    store.cancelled_leftovers(session, now)  # rows a lane gave back after the cancel
    cohort = Cohort(edition.slot, edition.local_day, edition.timezone)
    _, snapshot = pipeline.select_snapshot(
        session,
        settings,
        cohort,
        edition.window_end,
        window_start=edition.window_start,
        except_edition=edition.id,
    )
    if not snapshot:
        raise InvalidInput(f"edition {edition_id} would have no articles left: nothing to send")
    store.replace_edition_articles(session, edition.id, [c.id for c in snapshot])
    pipeline.render_variants(session, settings, cohort, edition.id, snapshot)
    queued = store.requeue_cancelled(session, edition.id, now)
    edition.status = "sending" if queued else "done"
    edition.note = (
        f"{edition.note}; planned again {now.isoformat(timespec='minutes')}: "
        f"{counted(len(snapshot), 'article')}, {counted(queued, 'reader')} who had not got it"
    )
    session.flush()
    now_standing = standing(session, edition_id)
    _audit(session, who, origin, "re-planned", now_standing.describe(), now)
    session.commit()
    return now_standing, queued
