"""The console's editions: list, one edition, its preview, retry, the archive
takedown; sending a slot now and test copies."""

from __future__ import annotations

from typing import Any

from flask import Response, abort, flash, render_template, request

from digest import store
from digest.config import SLOTS, check_timezone
from digest.editions import control, dispatch, guard, pages, pipeline
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort, local_day
from digest.editions.sending import prepare_variant
from digest.errors import ConfigError, DigestError, InvalidInput
from digest.mail.addresses import normalise_address
from digest.mail.relays import make_transport
from digest.operations import engagement, overview
from digest.readers import accounts
from digest.store import overview as q
from digest.web.auth import console, operator_name
from digest.web.base import DIGITS, EDITION_CSP, db, runtime
from digest.web.console.common import checked_id, done, hand_off, record_action
from digest.words import counted, noun

# --- editions --------------------------------------------------------------------------------


EDITIONS_PAGE = 50


@console.get("/editions")
def editions() -> Any:
    """Every edition, newest first, fifty a page."""
    raw = request.args.get("page", "0")
    number = int(raw) if DIGITS.fullmatch(raw) and len(raw) < 7 else 0
    rows = q.editions_page(db(), limit=EDITIONS_PAGE, offset=number * EDITIONS_PAGE)
    counts = q.counts_by_edition(db(), [e.id for e in rows])
    return render_template(
        "admin/editions.html",
        editions=rows,
        counts=counts,
        page=number,
        first=number * EDITIONS_PAGE + 1,
        total=q.count_editions(db()),
    )


@console.get("/editions/<int:edition_id>")
def edition(edition_id: int) -> Any:
    session = db()
    found = store.get_edition(session, checked_id(edition_id))
    ids = store.edition_article_ids(session, found.id)
    by_id = store.articles_by_id(session, ids)
    return render_template(
        "admin/edition.html",
        edition=found,
        articles=[by_id[i] for i in ids if i in by_id],
        counts=store.edition_counts(session, found.id),
        errors=q.edition_errors(session, found.id),
        variants=store.variants(session, found.id),
        progress=overview.progress(session, runtime().clock(), [found.id])[0],
        clicks=engagement.edition_clicks(session, found.id),
        tracking=runtime().settings.click_tracking,
    )


@console.get("/editions/<int:edition_id>/preview")
def edition_preview(edition_id: int) -> Any:
    """A variant as a reader would get it, with sample values in the reader's slots."""
    sections = request.args.get("sections", "")
    for variant in store.variants(db(), checked_id(edition_id)):
        if variant.sections == sections:
            values = slot_values(
                name="Reader",
                unsubscribe_url="#",
                preferences_url="#",
                view_url="#",
                for_html=True,
            )
            html = pages.as_page(prepare_variant(variant).html.fill(values))
            response = Response(html, mimetype="text/html")
            response.headers["Content-Security-Policy"] = EDITION_CSP
            return response
    abort(404)


@console.post("/editions/<int:edition_id>/retry")
def edition_retry(edition_id: int) -> Any:
    statuses = [s for s in request.form.getlist("status") if s in ("failed", "deferred")]
    if not statuses:
        return done("Choose failed, deferred or both.", "console.edition", edition_id=edition_id)
    rt = runtime()
    edition_id = checked_id(edition_id)
    count, batches = dispatch.retry_edition(db(), rt.settings, edition_id, statuses, rt.clock())
    record_action(
        "retried",
        f"edition {edition_id}: {count} {'/'.join(statuses)} {noun(count, 'delivery')}",
    )
    db().commit()
    how = hand_off(batches, first=True)
    return done(
        f"{counted(count, 'delivery')} re-queued; {how}.",
        "console.edition",
        edition_id=edition_id,
    )


@console.post("/editions/<int:edition_id>/archive/<action>")
def edition_publish(edition_id: int, action: str) -> Any:
    """Take an edition off the public archive, or put it back (takedown)."""
    if action not in ("publish", "unpublish"):
        abort(404)
    found = store.get_edition(db(), checked_id(edition_id))
    found.unpublished = action == "unpublish"
    word = "taken off the public archive" if found.unpublished else "put back in the archive"
    record_action(
        f"edition {action}ed",
        f"edition {found.id} ({found.slot} {found.local_day} {found.timezone}): {word}",
    )
    db().commit()
    return done(f"Edition {found.id}: {word}.", "console.edition", edition_id=found.id)


# --- trigger a slot now ------------------------------------------------------------------------


def _cohort_from_request() -> Cohort:
    rt = runtime()
    slot = request.values.get("slot", "")
    if slot not in SLOTS:
        raise InvalidInput(f"choose a slot: {', '.join(SLOTS)}")
    zone = request.values.get("timezone") or rt.settings.default_timezone
    try:
        check_timezone(zone)
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None
    day = dispatch.parse_day(request.values.get("day", "")[:10] or None)
    return Cohort(slot, day or local_day(rt.clock(), zone), zone)


@console.route("/trigger", methods=["GET", "POST"])
def trigger() -> Any:
    rt = runtime()
    session = db()
    zones = sorted(
        store.active_timezones(session, rt.settings.default_timezone)
        | {rt.settings.default_timezone}
    )
    if "slot" not in request.values:
        return render_template("admin/trigger.html", zones=zones, slots=SLOTS, plan=None)
    try:
        cohort = _cohort_from_request()
    except InvalidInput as exc:
        flash(str(exc))
        return render_template("admin/trigger.html", zones=zones, slots=SLOTS, plan=None)
    now = rt.clock()
    force = request.values.get("force") == "1"
    if request.method == "GET":  # the confirmation: who will get what, or why nothing
        decision = guard.may_plan(
            session, rt.settings, cohort, now, origin=guard.CONSOLE, force=force
        )
        readers = q.readers_per_cohort(session, rt.settings.default_timezone)
        rendered = (
            pipeline.preview(session, rt.settings, cohort, now) if decision.may_plan else None
        )
        count = readers.get((cohort.timezone, cohort.slot), 0)
        plan = {
            "cohort": cohort,
            "decision": decision,
            "readers": count,
            "existing": store.find_edition(session, cohort),
            "subject": rendered[0].subject if rendered else "",
            # Only a plan that would send something is offered as a button.
            "sendable": decision.may_plan and bool(rendered) and count > 0,
            # A day still ahead may be forced here (audited); nothing else may.
            "forceable": decision.action == guard.REFUSE
            and not force
            and cohort.local_day > local_day(now, cohort.timezone),
            "force": force,
        }
        return render_template("admin/trigger.html", zones=zones, slots=SLOTS, plan=plan)
    fanout = dispatch.plan_slot(
        session,
        rt.settings,
        cohort.slot,
        now,
        day=cohort.local_day,
        timezone=cohort.timezone,
        origin=guard.CONSOLE,
        who=operator_name(),
        force=force,
    )[0]
    plan_result = fanout.plan
    if plan_result is None:
        assert fanout.decision is not None
        return done(f"{cohort}: not sent: {fanout.decision.reason}.", "console.trigger")
    if plan_result.status == pipeline.NOTHING:
        return done(f"{cohort}: {plan_result.note}.", "console.trigger")
    how = hand_off(fanout.batches)
    note = plan_result.note or plan_result.status
    return done(f"{cohort}: {note}; {how}.", "console.edition", edition_id=plan_result.edition_id)


# --- pause, resume, cancel, plan again ---------------------------------------------------------

_CONTROLS = ("pause", "resume", "cancel", "replan")


@console.route("/editions/<int:edition_id>/control/<action>", methods=["GET", "POST"])
def edition_control(edition_id: int, action: str) -> Any:
    """GET: what the action would do (how many got it, how many would be held);
    POST: do it, audited."""
    if action not in _CONTROLS:
        abort(404)
    rt = runtime()
    session = db()
    edition_id = checked_id(edition_id)
    found = store.get_edition(session, edition_id)
    if request.method == "GET":
        return render_template(
            "admin/control.html",
            edition=found,
            action=action,
            standing=control.standing(session, edition_id),
        )
    now, who = rt.clock(), operator_name()
    try:
        if action == "pause":
            result = control.pause(session, edition_id, now, origin=guard.CONSOLE, who=who)
            how = "lanes stop within a few seconds; nothing more is sent until you resume"
        elif action == "cancel":
            result = control.cancel(session, edition_id, now, origin=guard.CONSOLE, who=who)
            how = "nothing more is sent"
        elif action == "resume":
            result, queued = dispatch.resume_edition(
                session, edition_id, now, rt.settings.batch_size, origin=guard.CONSOLE, who=who
            )
            how = hand_off(list(queued))
        else:
            result, _ = control.replan(
                session, rt.settings, edition_id, now, origin=guard.CONSOLE, who=who
            )
            size = rt.settings.batch_size
            how = hand_off(dispatch.queued_batches(session, edition_id, size).all())
    except DigestError as exc:
        session.rollback()
        return done(f"Not done: {exc}", "console.edition", edition_id=edition_id)
    return done(f"{result.describe()}; {how}.", "console.edition", edition_id=edition_id)


# --- test send ---------------------------------------------------------------------------------


@console.route("/test-send", methods=["GET", "POST"])
def test_send() -> Any:
    rt = runtime()
    session = db()
    recent = q.editions_page(session, limit=30)
    if request.method == "GET":
        return render_template("admin/test_send.html", editions=recent, slots=SLOTS)
    to = request.form.get("to", "")[:320]
    choice = request.form.get("edition", "")
    try:
        address = normalise_address(to)
        if DIGITS.fullmatch(choice):
            found = store.get_edition(session, checked_id(int(choice)))
            cohort = Cohort(found.slot, found.local_day, found.timezone)
        else:
            zone = rt.settings.default_timezone
            cohort = Cohort(choice, local_day(rt.clock(), zone), zone)
            rt.settings.send_time(choice)
        message_id = pipeline.test_send(
            session, rt.settings, make_transport(rt.settings), cohort, address, rt.clock()
        )
    except (DigestError, ConfigError) as exc:
        flash(f"No test copy sent: {exc}")
        return render_template("admin/test_send.html", editions=recent, slots=SLOTS), 422
    # Masked: the audit log outlives any reader's erasure.
    record_action("test copy sent", f"{cohort} to {accounts.mask_address(address)} ({message_id})")
    session.commit()
    # The operator stays on the page that sent it, to send another.
    return done(f"Test copy of {cohort} sent to {address}.", "console.test_send")
