"""The operator console's pages (/admin): overview, editions, trigger and test sends,
readers, feeds and articles, the audit log.

Views are thin: they call digest/ functions, write the action to the audit log in the
same transaction, and redirect (POST) or render templates/admin/ (GET). Sends started
here are handed to Celery when a broker is configured, else run on a background thread
of this process, so the page answers at once and shows the progress live.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Response, abort, flash, jsonify, redirect, render_template, request, url_for

from digest import store
from digest.config import SLOTS, Settings, check_timezone
from digest.editions import dispatch, pipeline
from digest.editions.render import slot_values
from digest.editions.schedule import Cohort, local_day
from digest.editions.sending import prepare_variant, send_batch
from digest.errors import ConfigError, DigestError, InvalidInput
from digest.feeds import ingest
from digest.mail.addresses import normalise_address
from digest.mail.relays import make_transport
from digest.operations import engagement, operators, overview
from digest.readers import accounts, reader_admin
from digest.store import overview as q
from digest.store.articles import latest_articles
from digest.store.base import MAX_ID
from digest.web.auth import console, operator_name
from digest.web.base import DIGITS, EDITION_CSP, db, runtime

log = logging.getLogger(__name__)


def _audit(action: str, detail: str = "") -> None:
    operators.record(db(), operator_name(), action, detail, runtime().clock())


def _id(value: int) -> int:
    if not 0 < value <= MAX_ID:
        abort(404)
    return value


def _done(message: str, endpoint: str, **values: Any) -> Response:
    flash(message)
    return redirect(url_for(endpoint, **values))  # type: ignore[return-value]


# --- sending from the console ---------------------------------------------------------------


def _hand_off(batches: list[list[int]]) -> str:
    """Send the batches: as Celery tasks with a broker, else on a thread of this process."""
    rt = runtime()
    if not batches:
        return "nothing to send"
    if rt.settings.redis_url:
        from workers.client import enqueue

        ids = enqueue(rt.settings, "digest.send_batch", [([b], {}) for b in batches])
        return f"{len(ids)} send tasks enqueued"
    worker = threading.Thread(
        target=_send_here, args=(rt.settings, rt.sessions, rt.clock, batches), daemon=True
    )
    worker.start()
    return f"sending {sum(map(len, batches))} messages from the web process"


def _send_here(settings: Settings, sessions: Any, clock: Any, batches: list[list[int]]) -> None:
    transport = make_transport(settings)
    try:
        with sessions() as session:
            for batch in batches:
                send_batch(session, settings, transport, batch, clock())
    except Exception:  # a thread's error would vanish: log it, the sweep recovers the rows
        log.exception("console send stopped; the sweep will pick up what is left")


# --- overview --------------------------------------------------------------------------------


@console.get("/")
def overview_page() -> Any:
    rt = runtime()
    data = overview.overview(db(), rt.settings, rt.clock())
    peak = max([max(s, u) for _, s, u in data.chart] + [1])
    return render_template("admin/overview.html", data=data, peak=peak, slots=SLOTS)


# The endpoint name the gate redirects to after sign-in.
console.add_url_rule("/", "overview", overview_page)


@console.get("/live.json")
def live() -> Any:
    """The overview's live part: editions being sent (or the ones asked for)."""
    rt = runtime()
    now = rt.clock()
    wanted = [_id(int(i)) for i in request.args.getlist("edition")[:50] if DIGITS.fullmatch(i)]
    rows = {p.edition_id: p for p in overview.progress(db(), now)}
    rows.update((p.edition_id, p) for p in overview.progress(db(), now, wanted))
    return jsonify(editions=[p.as_json() for p in rows.values()])


# --- editions --------------------------------------------------------------------------------


@console.get("/editions")
def editions() -> Any:
    rows = q.editions_page(db(), limit=100)
    counts = q.counts_by_edition(db(), [e.id for e in rows])
    return render_template("admin/editions.html", editions=rows, counts=counts)


@console.get("/editions/<int:edition_id>")
def edition(edition_id: int) -> Any:
    session = db()
    found = store.get_edition(session, _id(edition_id))
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
    for variant in store.variants(db(), _id(edition_id)):
        if variant.sections == sections:
            values = slot_values(
                name="Reader", unsubscribe_url="#", preferences_url="#", view_url="#",
                for_html=True,
            )
            response = Response(prepare_variant(variant).html.fill(values), mimetype="text/html")
            response.headers["Content-Security-Policy"] = EDITION_CSP
            return response
    abort(404)


@console.post("/editions/<int:edition_id>/retry")
def edition_retry(edition_id: int) -> Any:
    statuses = [s for s in request.form.getlist("status") if s in ("failed", "deferred")]
    if not statuses:
        return _done("Choose failed, deferred or both.", "console.edition", edition_id=edition_id)
    rt = runtime()
    edition_id = _id(edition_id)
    count, batches = dispatch.retry_edition(db(), rt.settings, edition_id, statuses, rt.clock())
    _audit("retried", f"edition {edition_id}: {count} {'/'.join(statuses)} deliveries")
    db().commit()
    how = _hand_off(batches)
    return _done(f"{count} deliveries re-queued; {how}.", "console.edition", edition_id=edition_id)


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
    return Cohort(slot, local_day(rt.clock(), zone), zone)


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
    if request.method == "GET":  # the confirmation: who will get what
        readers = q.readers_per_cohort(session, rt.settings.default_timezone)
        rendered = pipeline.preview(session, rt.settings, cohort, now)
        plan = {
            "cohort": cohort,
            "readers": readers.get((cohort.timezone, cohort.slot), 0),
            "existing": store.find_edition(session, cohort),
            "subject": rendered[0].subject if rendered else "",
        }
        return render_template("admin/trigger.html", zones=zones, slots=SLOTS, plan=plan)
    fanouts = dispatch.plan_slot(
        session, rt.settings, cohort.slot, now, day=cohort.local_day, timezone=cohort.timezone
    )
    fanout = fanouts[0]
    _audit("triggered", f"{cohort}: {fanout.plan.status}, {fanout.plan.queued} queued")
    session.commit()
    how = _hand_off(fanout.batches)
    note = fanout.plan.note or fanout.plan.status
    return _done(f"{cohort}: {note}; {how}.", "console.edition", edition_id=fanout.plan.edition_id)


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
            found = store.get_edition(session, _id(int(choice)))
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
    _audit("test copy sent", f"{cohort} to {accounts.mask_address(address)} ({message_id})")
    session.commit()
    return _done(f"Test copy of {cohort} sent to {address}.", "console.audit")


# --- readers -----------------------------------------------------------------------------------


@console.get("/readers")
def readers() -> Any:
    query = request.args.get("q", "")[:320]
    found = reader_admin.search(db(), query) if query.strip() else []
    counts = store.count_subscribers(db())
    return render_template("admin/readers.html", query=query, found=found, counts=counts)


@console.get("/readers/<int:subscriber_id>")
def reader(subscriber_id: int) -> Any:
    rt = runtime()
    shown = reader_admin.view(db(), _id(subscriber_id), rt.settings.default_timezone)
    subscriber = store.get_subscriber(db(), subscriber_id)
    return render_template(
        "admin/reader.html",
        reader=shown,
        form=accounts.form_of(subscriber),
        timezones=accounts.timezone_choices(subscriber.timezone or ""),
    )


@console.get("/readers/<int:subscriber_id>/export.json")
def reader_export(subscriber_id: int) -> Any:
    rt = runtime()
    data = reader_admin.export_person(db(), _id(subscriber_id), rt.settings.default_timezone)
    _audit("exported", f"reader {subscriber_id}")
    db().commit()
    response = jsonify(data)
    response.headers["Content-Disposition"] = f'attachment; filename="reader-{subscriber_id}.json"'
    return response


_READER_ACTIONS = {
    "unsubscribe": (reader_admin.unsubscribe, "unsubscribed"),
    "suppress": (reader_admin.suppress, "suppressed"),
    "erase": (reader_admin.erase, "erased"),
}


@console.post("/readers/<int:subscriber_id>/<action>")
def reader_action(subscriber_id: int, action: str) -> Any:
    rt = runtime()
    session = db()
    _id(subscriber_id)
    if action == "settings":
        form = accounts.Form(
            name=request.form.get("name", "")[:400],
            timezone=request.form.get("timezone", "")[:100],
            editions=request.form.get("editions", "both")[:40],
            sections=[s for s in request.form.get("sections", "").split(",") if s.strip()][:100],
        )
        try:
            reader_admin.update(session, subscriber_id, form)
        except InvalidInput as exc:
            session.rollback()
            return _done(f"Not saved: {exc}", "console.reader", subscriber_id=subscriber_id)
        _audit("changed reader", f"reader {subscriber_id}: settings")
    elif action in _READER_ACTIONS:
        if action == "erase" and request.form.get("confirm") != "erase":
            return _done(
                "Type erase to confirm.", "console.reader", subscriber_id=subscriber_id
            )
        act, word = _READER_ACTIONS[action]
        act(session, subscriber_id, rt.clock())
        _audit(word, f"reader {subscriber_id}")
    else:
        abort(404)
    session.commit()
    return _done(f"Reader {subscriber_id}: done.", "console.reader", subscriber_id=subscriber_id)


# --- feeds and articles ------------------------------------------------------------------------


@console.get("/feeds")
def feeds() -> Any:
    return render_template("admin/feeds.html", feeds=store.list_feeds(db()))


@console.post("/feeds")
def feed_add() -> Any:
    url = request.form.get("url", "").strip()[:2000]
    section = request.form.get("section", "news").strip().lower()[:64] or "news"
    try:
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("a feed is an http:// or https:// URL")
        store.add_feed(db(), url, section)
    except DigestError as exc:
        db().rollback()
        return _done(f"Not added: {exc}", "console.feeds")
    _audit("added feed", f"{url} ({section})")
    db().commit()
    return _done(f"Feed added: {url}", "console.feeds")


@console.post("/feeds/<int:feed_id>/<action>")
def feed_action(feed_id: int, action: str) -> Any:
    rt = runtime()
    session = db()
    feed = next((f for f in store.list_feeds(session) if f.id == feed_id), None)
    if feed is None or action not in ("pause", "resume", "poll"):
        abort(404)
    if action == "poll":
        report = ingest.ingest_feed(session, rt.settings, feed, rt.clock())
        message = f"{feed.url}: {report.error or f'{report.new} new articles'}"
    else:
        feed.paused = action == "pause"
        message = f"{feed.url}: {'paused' if feed.paused else 'polled again from now on'}"
    _audit(f"feed {action}", feed.url)
    session.commit()
    return _done(message, "console.feeds")


@console.get("/articles")
def articles() -> Any:
    """The articles the next edition of a slot would carry, and the latest stored."""
    rt = runtime()
    slot = request.args.get("slot", "morning")
    if slot not in SLOTS:
        abort(404)
    zone = rt.settings.default_timezone
    now = rt.clock()
    upcoming = [
        Cohort(n.slot, n.local.date(), n.timezone)
        for n in overview.next_sends(db(), rt.settings, now)
        if n.slot == slot and n.timezone == zone
    ]
    cohort = upcoming[0] if upcoming else Cohort(slot, local_day(now, zone), zone)
    cut = max(pipeline.cohort_send_at(rt.settings, cohort), now)
    _, snapshot = pipeline.select_snapshot(db(), rt.settings, cohort, cut)
    picked = store.articles_by_id(db(), [c.id for c in snapshot])
    latest = latest_articles(db(), limit=50)
    return render_template(
        "admin/articles.html",
        cohort=cohort,
        next_articles=[picked[c.id] for c in snapshot if c.id in picked],
        latest=latest,
        slots=SLOTS,
        slot=slot,
        most_read=engagement.most_read(db(), now),
    )


@console.post("/articles/<int:article_id>/<action>")
def article_action(article_id: int, action: str) -> Any:
    article = store.articles_by_id(db(), [_id(article_id)]).get(article_id)
    if article is None or action not in ("hide", "show", "raise", "lower"):
        abort(404)
    if action in ("hide", "show"):
        article.hidden = action == "hide"
    else:
        step = 1 if action == "raise" else -1
        article.priority = max(-1000, min(1000, article.priority + step))
    _audit(f"article {action}", f"{article.title[:120]} (priority {article.priority})")
    db().commit()
    slot = request.args.get("slot", "morning")
    return _done(f"{article.title[:80]}: {action} done.", "console.articles", slot=slot)


# --- audit log ---------------------------------------------------------------------------------


@console.get("/audit")
def audit() -> Any:
    return render_template("admin/audit.html", entries=operators.recent(db(), 200))

