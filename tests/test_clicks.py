"""Click counts: signed links, redirects only to stored URLs, the scanner filter, what
each mode stores, erasure, and the sunset end to end (real SMTP sink, real database)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, inspect, select

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.editions import pages, pipeline, sending
from digest.editions.clicks import Click, classify, is_scanner_agent, tally
from digest.editions.schedule import Cohort
from digest.errors import InvalidToken
from digest.mail.tokens import click_reader_part, click_token, read_click, read_open
from digest.mail.transport import SMTPTransport
from digest.models import Article, AuditEntry, ClickCount, ReaderClick, Subscriber, SunsetNotice
from digest.readers import reader_admin, sunset
from digest.store import clicks as click_store
from tests.conftest import NOW, add_articles, redis_client

TZ = "Australia/Sydney"
DAY = date(2026, 11, 30)
MORNING = Cohort("morning", DAY, TZ)  # cut at 2026-11-29 19:00 UTC
EVENING = Cohort("evening", DAY, TZ)  # cut at 2026-11-30 06:00 UTC
SENT = datetime(2026, 11, 29, 19, 1, tzinfo=NOW.tzinfo)
BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"}
SECRET = "test-secret-key"


# --- tokens ---------------------------------------------------------------------------------


def test_click_tokens_round_trip() -> None:
    token = click_token(SECRET, 12, 345)
    assert read_click(SECRET, token) == (12, 345, None)
    personal = token + click_reader_part(SECRET, 12, 678)
    assert read_click(SECRET, personal) == (12, 345, 678)


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: _flip(t),  # the MAC
        lambda t: "d" + t[1:],  # another edition
        lambda t: t.replace(".9l.", ".9m."),  # another article (345 is 9l)
        lambda t: t + click_reader_part(SECRET, 13, 678),  # a reader part of another edition
        lambda t: t + click_reader_part("another-key", 12, 678),
        lambda t: t + ".iv." + click_reader_part(SECRET, 12, 678).split(".")[2],  # other reader
        lambda t: t + ".x",
        lambda t: click_token("another-key", 12, 345),
        lambda t: t + "." + t,
        lambda t: "",
    ],
)
def test_tampered_click_tokens_are_refused(tamper: Any) -> None:
    token = click_token(SECRET, 12, 345)
    assert ".9l." in token
    with pytest.raises(InvalidToken):
        read_click(SECRET, tamper(token))


def test_open_tokens_are_signed() -> None:
    from digest.mail.tokens import open_token

    assert read_open(SECRET, open_token(SECRET, 7)) == 7
    with pytest.raises(InvalidToken):
        read_open(SECRET, _flip(open_token(SECRET, 7)))


# --- the scanner filter (pure) --------------------------------------------------------------


def click(seconds: float, article: int, client: str = "198.51.100.7", **kw: Any) -> Click:
    return Click(
        at=SENT + timedelta(seconds=seconds),
        edition_id=1,
        article_id=article,
        client=client,
        first_sent=SENT,
        **kw,
    )


WINDOW = timedelta(seconds=120)


@pytest.mark.parametrize(
    ("clicks", "machine"),
    [
        # A human: one story now, another a few minutes later.
        ([click(900, 1), click(1200, 2)], [False, False]),
        # A HEAD request and a scanner's agent.
        ([click(900, 1, head=True), click(901, 2, scanner_agent=True)], [True, True]),
        # Within the window after the first message, whoever it is.
        ([click(30, 1), click(119, 2), click(121, 3)], [True, True, False]),
        # A filter opening every link of the message within a second: all of them.
        (
            [click(900.0, 1), click(900.3, 2), click(900.5, 3), click(900.9, 4)],
            [True, True, True, True],
        ),
        # The same three links fetched by three different clients: three people.
        (
            [click(900, 1, "a"), click(900.2, 2, "b"), click(900.4, 3, "c")],
            [False, False, False],
        ),
        # One person opening the same story twice and another one: no burst.
        ([click(900, 1), click(900.5, 1), click(901, 2)], [False, False, False]),
        # Three links, but spread over more than two seconds.
        ([click(900, 1), click(901.5, 2), click(903.6, 3)], [False, False, False]),
    ],
)
def test_classify(clicks: list[Click], machine: list[bool]) -> None:
    assert classify(clicks, WINDOW) == machine


@pytest.mark.parametrize(
    ("agent", "scanner"),
    [
        (BROWSER["User-Agent"], False),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36", False),
        ("", True),
        (None, True),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", True),
        ("Mimecast-URL-Protect/1.0", True),
        ("python-requests/2.31", True),
        ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0", True),
        ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0)", True),
    ],
)
def test_scanner_agents(agent: str | None, scanner: bool) -> None:
    assert is_scanner_agent(agent) is scanner


def test_tally_keeps_readers_only_for_human_clicks() -> None:
    clicks = [click(900, 1, subscriber_id=5), click(901, 2, subscriber_id=6)]
    batch = tally(clicks, [False, True], keep_readers=True)
    assert batch.readers == [(5, 1, 1, clicks[0].at)]
    hour = SENT.replace(minute=0)
    assert batch.clicks == {(1, 1, hour): (1, 0), (1, 2, hour): (0, 1)}
    assert tally(clicks, [False, True], keep_readers=False).readers == []


# --- end to end: plan, send, click ----------------------------------------------------------


def add_reader(session: Any, email: str) -> Subscriber:
    return store.add_subscriber(session, email, NOW, timezone=TZ, status="active")


def tracked(settings: Settings, smtp_url: str, mode: str, **more: Any) -> Settings:
    return settings.with_(smtp=parse_smtp_url(smtp_url), click_tracking=mode, **more)


def send(session: Any, settings: Settings, cohort: Cohort, now: datetime) -> int:
    plan = pipeline.plan_edition(session, settings, cohort, now)
    sending.run_edition(session, settings, SMTPTransport(settings.smtp), plan.edition_id, now)
    return plan.edition_id


def links_in(message: EmailMessage) -> list[str]:
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return re.findall(r'href="([^"]+)"', html)


def click_links(message: EmailMessage, base: str) -> list[str]:
    return sorted({u for u in links_in(message) if u.startswith(base + "/r/")})


@pytest.fixture
def news(session: Any) -> dict[str, Subscriber]:
    add_articles(
        session,
        SENT - timedelta(hours=2),
        [("Ferry timetable changes", "news"), ("Harbour swim", "sport"), ("Gardens", "news")],
    )
    readers = {name: add_reader(session, f"{name}@example.com") for name in ("ana", "ben")}
    session.commit()
    return readers


def flush(app: Any, now: datetime) -> int:
    written: int = app.extensions["digest.clicks"].buffer.flush(now)
    return written


def test_aggregate_links_redirect_to_stored_urls_and_store_no_reader(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate")
    edition_id = send(session, s, MORNING, SENT)
    message = sink.to("ana@example.com")[0]
    base = s.base_url
    wrapped = click_links(message, base)
    assert len(wrapped) == 3  # one per article (image, title and "read more" share it)
    # Deliverability: the link host is the base URL's; account links and the
    # List-Unsubscribe header are never wrapped.
    assert {urlsplit(u).netloc for u in links_in(message)} == {urlsplit(base).netloc}
    assert "/r/" not in message["List-Unsubscribe"]
    assert any(u.startswith(base + "/unsubscribe/") for u in links_in(message))
    # Every reader's message carries the very same click links: nothing personal.
    assert click_links(sink.to("ben@example.com")[0], base) == wrapped
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert sorted(set(re.findall(re.escape(base) + r"/r/\S+", text))) == wrapped

    stored = set(session.scalars(select(Article.url)))
    session.commit()  # SQLite: a session's transaction holds the write lock
    app = make_app(s, clock=clock)
    client = app.test_client()
    clock.now = SENT + timedelta(minutes=30)
    targets = []
    for n, link in enumerate(wrapped):
        path = urlsplit(link).path
        # A query string cannot choose the target either.
        response = client.get(
            path + "?url=https://evil.example/",
            headers=BROWSER,
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )
        assert response.status_code == 302
        targets.append(response.headers["Location"])
        clock.advance(seconds=30)
    assert set(targets) <= stored and len(set(targets)) == 3
    assert flush(app, clock.now + timedelta(seconds=5)) == 3

    # What aggregate mode stores: per edition, article and hour; nothing about a reader.
    columns = {c["name"] for c in inspect(session.get_bind()).get_columns("click_count")}
    assert columns == {"edition_id", "article_id", "hour", "human", "machine"}
    rows = session.execute(select(ClickCount)).scalars().all()
    assert sum(r.human for r in rows) == 3 and sum(r.machine for r in rows) == 0
    assert {r.edition_id for r in rows} == {edition_id}
    assert all(r.hour.minute == 0 and r.hour.second == 0 for r in rows)
    assert session.scalar(select(func.count()).select_from(ReaderClick)) == 0
    # The web version shows the same links.
    variant = store.variants(session, edition_id)[0]
    page = pages.public_html(s, variant)
    assert set(re.findall(re.escape(base) + r'/r/[^"]+', page)) == set(wrapped)


def test_redirect_goes_only_to_the_editions_stored_urls(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    _, url = smtp_server
    s = tracked(settings, url, "aggregate")
    edition_id = send(session, s, MORNING, SENT)
    client = make_app(s, clock=clock).test_client()
    in_edition = set(store.edition_article_ids(session, edition_id))
    store.insert_articles(
        session,
        [
            {
                "guid": "elsewhere",
                "url": "https://evil.example/phish",
                "title": "Not in the edition",
                "summary_html": "",
                "section": "news",
                "priority": 0,
                "published_at": SENT,
                "seen_at": SENT,
                "image_url": None,
                "feed_id": None,
            }
        ],
    )
    session.commit()
    other = session.scalar(select(Article.id).where(Article.guid == "elsewhere"))
    session.commit()
    assert other not in in_edition
    # A correctly signed token for an article outside the edition leads nowhere.
    assert client.get(f"/r/{click_token(SECRET, edition_id, other)}").status_code == 404
    assert (
        client.get(f"/r/{click_token(SECRET, edition_id + 50, min(in_edition))}").status_code == 404
    )
    bad = click_token(SECRET, edition_id, min(in_edition))[:-2] + "xx"
    response = client.get(f"/r/{bad}")
    assert response.status_code == 400 and "Location" not in response.headers


def test_scanner_burst_counts_as_machine_and_a_reader_as_human(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate")
    edition_id = send(session, s, MORNING, SENT)
    paths = [urlsplit(u).path for u in click_links(sink.to("ana@example.com")[0], s.base_url)]
    app = make_app(s, clock=clock)
    client = app.test_client()

    def get(path: str, addr: str, **headers: str) -> None:
        response = client.get(path, headers=headers, environ_base={"REMOTE_ADDR": addr})
        assert response.status_code == 302  # scanners are redirected like anyone

    # A filter with a browser's agent scans every link right at delivery...
    clock.now = SENT + timedelta(seconds=20)
    for path in paths:
        get(path, "203.0.113.9", **BROWSER)
        clock.advance(seconds=0.2)
    # ...another one an hour later (a re-scan), again all links within a second...
    clock.now = SENT + timedelta(hours=1)
    for path in paths:
        get(path, "203.0.113.10", **BROWSER)
        clock.advance(seconds=0.3)
    # ...a HEAD and a named scanner...
    assert client.head(paths[0], headers=BROWSER).status_code == 302
    get(paths[1], "203.0.113.11", **{"User-Agent": "Mimecast-URL-Protect/1.0"})
    # ...and a reader who reads one story, then another a few minutes later.
    clock.now = SENT + timedelta(hours=2)
    get(paths[0], "192.0.2.50", **BROWSER)
    clock.advance(minutes=4)
    get(paths[2], "192.0.2.50", **BROWSER)
    # The second burst straddles a flush: classification waits for it to end.
    flush(app, SENT + timedelta(hours=1, seconds=0.4))
    flush(app, clock.now + timedelta(seconds=10))
    per_article = click_store.clicks_by_article(session, [edition_id])
    assert sum(h for h, _ in per_article.values()) == 2
    assert sum(m for _, m in per_article.values()) == 2 * len(paths) + 2


def test_reader_mode_names_the_reader_in_a_slot_and_erase_deletes_it(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "reader")
    edition_id = send(session, s, MORNING, SENT)
    ana, ben = news["ana"], news["ben"]
    ana_links = click_links(sink.to("ana@example.com")[0], s.base_url)
    ben_links = click_links(sink.to("ben@example.com")[0], s.base_url)
    assert ana_links != ben_links
    assert [read_click(SECRET, urlsplit(u).path[3:])[2] for u in ana_links] == [ana.id] * 3
    text = sink.to("ana@example.com")[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert set(re.findall(re.escape(s.base_url) + r"/r/\S+", text)) == set(ana_links)
    # Feed text or the web version never carry a reader: the public page's links
    # are the aggregate ones.
    page = pages.public_html(s, store.variants(session, edition_id)[0])
    public = set(re.findall(re.escape(s.base_url) + r'/r/([^"]+)', page))
    assert {read_click(SECRET, t)[2] for t in public} == {None}
    session.commit()

    app = make_app(s, clock=clock)
    client = app.test_client()
    clock.now = SENT + timedelta(hours=1)
    for who, links in ((ana, ana_links), (ben, ben_links)):
        response = client.get(
            urlsplit(links[0]).path,
            headers=BROWSER,
            environ_base={"REMOTE_ADDR": f"192.0.2.{who.id}"},
        )
        assert response.status_code == 302
    flush(app, clock.now + timedelta(seconds=5))
    rows = session.execute(select(ReaderClick.subscriber_id)).scalars().all()
    assert sorted(rows) == sorted([ana.id, ben.id])
    session.commit()

    exported = reader_admin.export_person(session, ana.id, s.default_timezone)
    assert [c["edition_id"] for c in exported["clicks"]] == [edition_id]
    reader_admin.erase(session, ana.id, clock.now)
    session.commit()
    assert reader_admin.export_person(session, ana.id, s.default_timezone)["clicks"] == []
    rows = session.execute(select(ReaderClick.subscriber_id)).scalars().all()
    assert rows == [ben.id]
    session.commit()
    # A click from an erased reader's old email is counted, but stores no reader row.
    client.get(urlsplit(ana_links[1]).path, headers=BROWSER)
    flush(app, clock.now + timedelta(seconds=5))
    assert session.execute(select(ReaderClick.subscriber_id)).scalars().all() == [ben.id]
    assert sum(h for h, _ in click_store.clicks_by_article(session, [edition_id]).values()) == 3


def test_reader_clicks_are_kept_only_for_the_retention(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "reader", click_retention_days=30)
    send(session, s, MORNING, SENT)
    link = click_links(sink.to("ana@example.com")[0], s.base_url)[0]
    app = make_app(s, clock=clock)
    clock.now = SENT + timedelta(hours=1)
    app.test_client().get(urlsplit(link).path, headers=BROWSER)
    flush(app, clock.now + timedelta(seconds=5))
    assert session.scalar(select(func.count()).select_from(ReaderClick)) == 1
    session.commit()
    app.extensions["digest.clicks"].buffer.last_purge = None  # due again
    app.extensions["digest.clicks"].buffer.write(tally([], [], True), SENT + timedelta(days=31))
    assert session.scalar(select(func.count()).select_from(ReaderClick)) == 0


def test_redirects_while_the_database_is_away(
    session, settings, smtp_server, make_app, clock, news, redis_url, tmp_path
) -> None:
    """A process that has never seen the edition finds its links in Redis; the click
    is then lost, not the redirect."""
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate", redis_url=redis_url)
    plain = redis_client(redis_url)
    plain.delete(*[f"digest:links:{i}" for i in range(1, 20)])
    plain.close()
    send(session, s, MORNING, SENT)
    path = urlsplit(click_links(sink.to("ana@example.com")[0], s.base_url)[0]).path
    clock.now = SENT + timedelta(hours=1)
    warm = make_app(s, clock=clock)
    first = warm.test_client().get(path, headers=BROWSER)
    assert first.status_code == 302
    gone = s.with_(database_url=f"sqlite:///{tmp_path}/missing/nothing.db")
    app = make_app(gone, clock=clock)
    try:
        second = app.test_client().get(path, headers=BROWSER)
        assert second.status_code == 302
        assert second.headers["Location"] == first.headers["Location"]
        assert flush(app, clock.now + timedelta(seconds=5)) == 0  # lost, quietly
        # Without Redis either, a link never seen says "try again", not a traceback.
        cold = make_app(gone.with_(redis_url=None), clock=clock)
        assert cold.test_client().get(path, headers=BROWSER).status_code == 503
    finally:
        for each in (warm, app):
            each.extensions["digest.clicks"].targets.close()


# --- the sunset -----------------------------------------------------------------------------


def test_sunset_end_to_end(session, settings, smtp_server, make_app, clock) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "reader", sunset_editions=2, sunset_days=7)
    add_articles(session, SENT - timedelta(hours=2), [("Morning story", "news")], prefix="m")
    add_articles(
        session,
        datetime(2026, 11, 30, 5, 0, tzinfo=NOW.tzinfo),
        [("Evening story", "news")],
        prefix="e",
    )
    names = ("ana", "ben", "cy", "dee")
    readers = {n: add_reader(session, f"{n}@example.com") for n in names}
    session.commit()
    send(session, s, MORNING, SENT)
    evening_sent = datetime(2026, 11, 30, 6, 1, tzinfo=NOW.tzinfo)
    send(session, s, EVENING, evening_sent)
    app = make_app(s, clock=clock)
    client = app.test_client()
    # Ben reads a story of the evening edition; Ana and Cy read nothing.
    clock.now = evening_sent + timedelta(hours=1)
    evening_mail = [m for m in sink.to("ben@example.com") if "Evening" in m["Subject"]][0]
    assert (
        client.get(
            urlsplit(click_links(evening_mail, s.base_url)[0]).path, headers=BROWSER
        ).status_code
        == 302
    )
    flush(app, clock.now + timedelta(seconds=5))
    before = len(sink.messages)

    asked_at = clock.now + timedelta(hours=1)
    report = sunset.run(session, s, SMTPTransport(s.smtp), asked_at)
    assert (report.asked, report.ended) == (3, 0)
    questions = sink.messages[before:]
    assert sorted(m[1][0] for m in questions) == [
        "ana@example.com",
        "cy@example.com",
        "dee@example.com",
    ]
    # Asked once: a second pass sends nothing more.
    assert sunset.run(session, s, SMTPTransport(s.smtp), asked_at).asked == 0

    ana_mail = [m for m in sink.parsed()[before:] if m["To"] == "ana@example.com"][0]
    assert ana_mail["List-Unsubscribe"] and ana_mail["Message-ID"]
    keep = [u for u in links_in(ana_mail) if "/keep/" in u][0]
    assert urlsplit(keep).netloc == urlsplit(s.base_url).netloc
    # A link scanner opening it right away keeps nobody: it gets a page with a button.
    clock.now = asked_at + timedelta(seconds=5)
    scanned = client.get(urlsplit(keep).path, headers={"User-Agent": "Barracuda Sentinel"})
    assert scanned.status_code == 200 and b"<form" in scanned.data
    assert session.get(SunsetNotice, readers["ana"].id).kept_at is None
    session.commit()
    # Ana clicks it the next morning.
    clock.now = asked_at + timedelta(hours=12)
    kept = client.get(urlsplit(keep).path, headers=BROWSER)
    assert kept.status_code == 200 and b"staying" in kept.data
    session.expire_all()

    # Dee unsubscribes herself meanwhile: that is not the sunset's doing.
    from digest.readers import accounts

    accounts.unsubscribe(session, readers["dee"].id, asked_at + timedelta(days=1))
    session.commit()
    # Seven days on, Cy, who never answered, is unsubscribed as inactive.
    report = sunset.run(session, s, SMTPTransport(s.smtp), asked_at + timedelta(days=7, hours=1))
    assert (report.asked, report.ended) == (0, 1)
    session.expire_all()
    statuses = {n: store.get_subscriber(session, r.id).status for n, r in readers.items()}
    assert statuses == {
        "ana": "active",
        "ben": "active",
        "cy": "unsubscribed",
        "dee": "unsubscribed",
    }
    audit = session.scalars(select(AuditEntry).where(AuditEntry.operator == "sunset")).all()
    assert [a.action for a in audit] == ["keep", "unsubscribe-inactive"]
    assert "inactive" in audit[1].detail and str(readers["cy"].id) in audit[1].detail
    assert click_store.inactive_unsubscribes(session, asked_at) == 1
    from digest.operations.overview import sunset_counts

    later = asked_at + timedelta(days=8)
    assert sunset_counts(session, s, later) == (1, 0)  # the overview's line


# --- what operators see ---------------------------------------------------------------------


def counted_edition(session: Any, s: Settings, sink: Any, make_app: Any, clock: Any) -> int:
    """An aggregate edition whose first article got two reader clicks and whose every
    article got a scanner's burst."""
    edition_id = send(session, s, MORNING, SENT)
    paths = [urlsplit(u).path for u in click_links(sink.to("ana@example.com")[0], s.base_url)]
    first = store.edition_article_ids(session, edition_id)[0]
    session.commit()
    app = make_app(s, clock=clock)
    client = app.test_client()
    clock.now = SENT + timedelta(minutes=1)  # within the scanner window
    for path in paths:
        client.get(path, headers=BROWSER, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    clock.now = SENT + timedelta(hours=3)
    mine = [p for p in paths if read_click(SECRET, p[3:])[1] == first][0]
    for n in range(2):
        client.get(mine, headers=BROWSER, environ_base={"REMOTE_ADDR": f"192.0.2.{n}"})
        clock.advance(minutes=5)
    flush(app, clock.now + timedelta(seconds=5))
    return edition_id


def test_console_shows_clicks_per_article_section_and_hour(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    from digest.operations import operators

    sink, url = smtp_server
    s = tracked(settings, url, "aggregate")
    edition_id = counted_edition(session, s, sink, make_app, clock)
    operators.add(session, "ed", "correct horse battery", NOW)
    session.commit()
    console = make_app(s, clock=clock).test_client()
    r = console.post("/admin/login", data={"name": "ed", "password": "correct horse battery"})
    assert r.status_code == 302
    page = console.get(f"/admin/editions/{edition_id}").get_data(as_text=True)
    # 2 human clicks of 2 delivered: 1000 per thousand; 3 machine.
    assert "<strong>2</strong> human clicks, 1000.0 per thousand delivered" in page
    assert "3 machine" in page
    assert "<svg" in page and "hour 4: 2 human" in page and "hour 1: 3 machine" in page
    assert "<script" not in page.split("<svg", 1)[1].split("</svg>", 1)[0]
    first_title = "Ferry timetable changes"
    row = re.search(
        re.escape(first_title) + r'</td><td>news</td><td class="num">(\d+)</td>'
        r'<td class="num">(\d+)</td>',
        page,
    )
    assert row and row.groups() == ("2", "1")
    assert re.search(r'<td>news</td><td class="num">2</td><td class="num">2</td>', page)
    articles = console.get("/admin/articles").get_data(as_text=True)
    read = articles.split("Most read, last 7 days", 1)[1].split("</table>", 1)[0]
    assert first_title in read


def test_status_prints_a_line_per_article(
    session, settings, smtp_server, make_app, clock, news, tmp_path
) -> None:
    from click.testing import CliRunner

    from digest.cli import cli

    if not settings.database_url.startswith("sqlite"):
        # The command's engine lives as long as its process; one dialect is enough here.
        pytest.skip("runs on SQLite only")
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate")
    edition_id = counted_edition(session, s, sink, make_app, clock)
    env = {
        "DIGEST_DATA_DIR": str(s.data_dir),
        "DIGEST_DATABASE_URL": s.database_url,
        "DIGEST_SECRET_KEY": SECRET,
        "DIGEST_REDIS_URL": "",
        "DIGEST_SMTP_URL": "",
    }
    result = CliRunner(env=env).invoke(cli, ["status", str(edition_id)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines() if "clicks:" in line]
    assert lines[0] == "Ferry timetable changes  clicks: 2 human, 1 machine"
    assert lines[1].endswith("clicks: 0 human, 1 machine")
    assert lines[-1] == "clicks: 2 human, 3 machine  (1000 per thousand delivered)"


def test_rank_by_clicks_orders_the_web_version_within_sections(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate", rank_by_clicks=True, public_archive=True)
    edition_id = send(session, s, MORNING, SENT)
    ids = store.edition_article_ids(session, edition_id)
    titles = {a.id: a.title for a in store.articles_by_id(session, ids).values()}
    variant = store.variants(session, edition_id)[0]
    as_sent = pages.public_html(s.with_(rank_by_clicks=False), variant)

    def order(page: str) -> list[str]:
        found = re.findall(r"<h2[^>]*><a[^>]*>([^<]+)</a></h2>", page)
        return [t for t in found if t in titles.values()]

    news_titles = [t for t in order(as_sent) if t in ("Ferry timetable changes", "Gardens")]
    assert news_titles == ["Ferry timetable changes", "Gardens"]
    gardens = [i for i, t in titles.items() if t == "Gardens"][0]
    session.add(
        ClickCount(
            edition_id=edition_id,
            article_id=gardens,
            hour=SENT.replace(minute=0),
            human=5,
            machine=0,
        )
    )
    session.commit()
    now = SENT + timedelta(hours=2)
    ranked = pages.public_html(s, variant, session=session, now=now)
    assert [t for t in order(ranked) if t in news_titles] == ["Gardens", "Ferry timetable changes"]
    assert sorted(order(ranked)) == sorted(order(as_sent))  # the same articles
    # The links are still the edition's click links; the archive shows the same order.
    assert set(re.findall(r"/r/[^\"]+", ranked)) == set(re.findall(r"/r/[^\"]+", as_sent))
    session.commit()
    clock.now = now
    archived = make_app(s, clock=clock).test_client().get(f"/archive/{edition_id}")
    assert archived.status_code == 200
    assert [t for t in order(archived.get_data(as_text=True)) if t in news_titles] == [
        "Gardens",
        "Ferry timetable changes",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIGEST_CLICK_TRACKING": "everything"}, "DIGEST_CLICK_TRACKING must be one of"),
        ({"DIGEST_CLICK_RETENTION_DAYS": "0"}, "DIGEST_CLICK_RETENTION_DAYS must be at least 1"),
        ({"DIGEST_SCANNER_WINDOW_SECONDS": "soon"}, "DIGEST_SCANNER_WINDOW_SECONDS must be"),
        ({"DIGEST_SUNSET_EDITIONS": "6"}, "DIGEST_SUNSET_EDITIONS needs DIGEST_CLICK_TRACKING"),
        ({"DIGEST_OPEN_TRACKING": "maybe"}, "DIGEST_OPEN_TRACKING must be 1 or 0"),
    ],
)
def test_bad_click_settings_name_the_variable(tmp_path, env: dict[str, str], message: str) -> None:
    from digest.config import load_settings
    from digest.errors import ConfigError

    base = {"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k"}
    with pytest.raises(ConfigError, match=message):
        load_settings({**base, **env})


def test_click_settings_default_to_off(tmp_path) -> None:
    from digest.config import load_settings

    s = load_settings({"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k"})
    assert (s.click_tracking, s.open_tracking, s.rank_by_clicks, s.sunset_editions) == (
        "off",
        False,
        False,
        0,
    )
    assert s.scanner_window_seconds == 120


def test_off_mode_links_go_straight_to_the_article(session, settings, smtp_server, news) -> None:
    sink, url = smtp_server
    s = settings.with_(smtp=parse_smtp_url(url))
    send(session, s, MORNING, SENT)
    links = links_in(sink.to("ana@example.com")[0])
    assert not [u for u in links if "/r/" in u]
    assert "https://news.example.com/a/0" in links


def test_opens_are_counted_per_edition_only_when_asked(
    session, settings, smtp_server, make_app, clock, news
) -> None:
    from digest.models import OpenCount

    sink, url = smtp_server
    s = tracked(settings, url, "aggregate", open_tracking=True)
    edition_id = send(session, s, MORNING, SENT)
    html = sink.to("ana@example.com")[0].get_body(("html",)).get_content()  # type: ignore[union-attr]
    pixels = re.findall(r'<img src="([^"]+/o/[^"]+\.gif)"', html)
    assert len(pixels) == 1 and pixels[0].startswith(s.base_url + "/o/")
    assert pixels[0] in sink.to("ben@example.com")[0].get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "/o/" not in pages.public_html(s, store.variants(session, edition_id)[0])
    session.commit()
    app = make_app(s, clock=clock)
    clock.now = SENT + timedelta(hours=1)
    apple = {"User-Agent": "Mozilla/5.0"}  # a proxy fetching for Mail Privacy Protection
    r = app.test_client().get(urlsplit(pixels[0]).path, headers=apple)
    assert r.status_code == 200 and r.mimetype == "image/gif"
    flush(app, clock.now + timedelta(seconds=5))
    assert click_store.opens_total(session, edition_id) == (1, 0)
    assert session.scalar(select(func.count()).select_from(OpenCount)) == 1
    session.commit()
    # Off (the default): the image still answers, and nothing is counted.
    quiet = make_app(s.with_(open_tracking=False), clock=clock)
    quiet.test_client().get(urlsplit(pixels[0]).path, headers=apple)
    flush(quiet, clock.now + timedelta(seconds=5))
    assert click_store.opens_total(session, edition_id) == (1, 0)
    add_articles(session, SENT + timedelta(hours=9), [("Later", "news")], prefix="late")
    session.commit()
    send(session, settings.with_(smtp=parse_smtp_url(url)), EVENING, SENT + timedelta(hours=11))
    assert "/o/" not in sink.messages[-1][2].decode()


def test_a_non_ascii_article_url_leaves_as_a_valid_location(
    session, settings, smtp_server, make_app, clock
) -> None:
    sink, url = smtp_server
    store.insert_articles(
        session,
        [
            {
                "guid": "unicode",
                "url": "https://news.example.com/été/café",
                "title": "Café",
                "summary_html": "",
                "section": "news",
                "priority": 0,
                "published_at": SENT - timedelta(hours=1),
                "seen_at": SENT - timedelta(hours=1),
                "image_url": None,
                "feed_id": None,
            }
        ],
    )
    add_reader(session, "ana@example.com")
    session.commit()
    s = tracked(settings, url, "aggregate")
    send(session, s, MORNING, SENT)
    link = click_links(sink.to("ana@example.com")[0], s.base_url)[0]
    response = make_app(s, clock=clock).test_client().get(urlsplit(link).path, headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://news.example.com/%C3%A9t%C3%A9/caf%C3%A9"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_sunset_command_needs_reader_mode(tmp_path) -> None:
    from click.testing import CliRunner

    from digest.cli import cli

    env = {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_DATABASE_URL": "",
        "DIGEST_SECRET_KEY": SECRET,
        "DIGEST_CLICK_TRACKING": "aggregate",
        "DIGEST_REDIS_URL": "",
    }
    result = CliRunner(env=env).invoke(cli, ["sunset"])
    assert result.exit_code == 1
    assert "needs DIGEST_CLICK_TRACKING=reader" in result.output
    assert "Traceback" not in result.output


def test_a_served_app_writes_clicks_on_its_own(session, settings, smtp_server, live_server) -> None:
    """Over real HTTP, with the flushing thread the app starts itself (not in tests
    that flush by hand): the count reaches the database a few seconds later."""
    import http.client

    from digest.web import create_app
    from tests.conftest import wait_for

    add_articles(session, SENT - timedelta(hours=2), [("Served", "news")], prefix="s")
    add_reader(session, "ana@example.com")
    session.commit()
    sink, url = smtp_server
    s = tracked(settings, url, "aggregate")
    send(session, s, MORNING, SENT)
    path = urlsplit(click_links(sink.to("ana@example.com")[0], s.base_url)[0]).path
    app = create_app(s)  # the real clock: long after the edition's scanner window
    try:
        base = urlsplit(live_server(app))
        conn = http.client.HTTPConnection(base.hostname or "", base.port, timeout=10)
        conn.request("GET", path, headers=BROWSER)
        response = conn.getresponse()
        assert response.status == 302
        assert response.getheader("Location") == "https://news.example.com/s/0"
        conn.close()

        def written() -> int:
            value = int(session.scalar(select(func.sum(ClickCount.human))) or 0)
            session.rollback()  # SQLite: never hold the write lock while waiting
            return value

        wait_for(written, 15, "the click to be written by the app's own thread")
    finally:
        app.extensions["digest.clicks"].buffer.stop()
        app.extensions["digest"].engine.dispose()


def test_click_and_keep_tokens_stay_out_of_logs() -> None:
    from digest.web.base import redact_path

    token = click_token(SECRET, 12, 345) + click_reader_part(SECRET, 12, 678)
    assert redact_path(f"GET /r/{token} HTTP/1.1") == "GET /r/<token> HTTP/1.1"
    assert redact_path("/keep/abc.def.ghi") == "/keep/<token>"
    assert redact_path("/admin/readers/5") == "/admin/readers/5"


SPAMASSASSIN = shutil.which("spamassassin")


def spam_score(raw: bytes) -> tuple[float, str]:
    """SpamAssassin's score of a message as it left digest, local rules only (-L: no
    network tests, which this machine cannot reach), with the report to explain it."""
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t"], input=raw, capture_output=True, timeout=120, check=False
    )
    report = done.stdout.decode("utf-8", "replace")
    found = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", report, re.M)
    assert found, report[-2000:]
    return float(found.group(1)), report[report.find("Content analysis details") :]


@pytest.mark.skipif(
    SPAMASSASSIN is None, reason="SpamAssassin is not installed (apt-get install spamassassin)"
)
@pytest.mark.parametrize("mode", ["off", "aggregate", "reader"])
def test_wrapped_links_leave_the_spam_score_where_it_was(
    session, settings, smtp_server, news, mode: str
) -> None:
    """Deliverability stays as it is: the bytes on the wire of an edition whose article
    links go through /r/ score as low as one whose links do not (0.0-0.5)."""
    sink, url = smtp_server
    s = settings.with_(
        smtp=parse_smtp_url(url), click_tracking=mode, base_url="https://news.example.com"
    )
    send(session, s, MORNING, SENT)
    raw = next(data for _, rcpts, data in sink.messages if "ana@example.com" in rcpts)
    assert (b"/r/" in raw) == (mode != "off")
    score, report = spam_score(raw)
    assert score <= 0.5, report
