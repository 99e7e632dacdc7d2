"""Feeds from a real HTTP server on loopback into a real database; JSON imports; URLs."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.errors import FeedError, InvalidInput, UnsafeURL
from digest.feeds.fetch import check_address, fetch
from digest.feeds.ingest import (
    canonical_url,
    import_articles,
    ingest_all,
    parse_article_records,
    parse_entries,
)
from digest.models import Article, Feed

# --- a real HTTP server on loopback -------------------------------------------------------


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    trickle: float = 0.0  # seconds between 100-byte pieces of the body
    content_length: bool = True  # without it the body ends when the connection closes


Route = Reply | Callable[[dict[str, str]], Reply]  # a callable sees the request headers


@dataclass
class FeedServer:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    feeds: FeedServer  # set per test by the `server` fixture

    def do_GET(self) -> None:
        feeds = self.feeds  # once: the next test may swap it while this reply is slow
        headers = {k.lower(): v for k, v in self.headers.items()}
        feeds.requests.append((self.path, headers))
        route = feeds.routes.get(self.path, Reply(b"not here", 404))
        reply = route if isinstance(route, Reply) else route(headers)
        try:
            if reply.delay and feeds.stop.wait(reply.delay):
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.content_length:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if not reply.trickle:
                self.wfile.write(reply.body)
                return
            for start in range(0, len(reply.body), 100):
                self.wfile.write(reply.body[start : start + 100])
                self.wfile.flush()
                if feeds.stop.wait(reply.trickle):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, size cap): that is what was tested

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def httpd() -> Iterator[ThreadingHTTPServer]:
    """One HTTP server on 127.0.0.1 for the module; each test brings its own routes."""
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(httpd: ThreadingHTTPServer) -> Iterator[FeedServer]:
    """The server, answering from this test's `routes` and recording its requests."""
    feeds = FeedServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass.feeds = feeds  # type: ignore[attr-defined]
    try:
        yield feeds
    finally:
        feeds.stop.set()  # ends slow replies still waiting


# --- feed documents -----------------------------------------------------------------------


def item(
    title: str | None = "A story",
    link: str | None = "https://news.example.com/a",
    guid: str | None = None,
    published: datetime | None = None,
    summary: str = "",
) -> str:
    parts = ["<item>"]
    if title is not None:
        parts.append(f"<title>{escape(title)}</title>")
    if link is not None:
        parts.append(f"<link>{escape(link)}</link>")
    if guid is not None:
        parts.append(f'<guid isPermaLink="false">{escape(guid)}</guid>')
    if published is not None:
        parts.append(f"<pubDate>{published.strftime('%a, %d %b %Y %H:%M:%S +0000')}</pubDate>")
    if summary:
        parts.append(f"<description><![CDATA[{summary}]]></description>")
    return "".join(parts) + "</item>"


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        "<title>Test feed</title><link>https://news.example.com/</link>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def atom(*entries: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>Atom test</title><id>urn:feed</id><updated>2026-11-29T08:00:00Z</updated>"
        + "".join(entries)
        + "</feed>"
    ).encode()


def entry(id: str, title: str, href: str, updated: str, summary: str = "") -> str:
    return (
        f"<entry><id>{id}</id><title>{escape(title)}</title><link href='{escape(href)}'/>"
        f"<updated>{updated}</updated><summary type='html'>{escape(summary)}</summary></entry>"
    )


RSS_TYPE = {"Content-Type": "application/rss+xml; charset=utf-8"}


def add_feed(session: Session, server: FeedServer, path: str, route: Route, **kw: str) -> Feed:
    server.routes[path] = route
    feed = store.add_feed(session, server.url(path), kw.get("section", "news"))
    session.commit()
    return feed


def articles(session: Session) -> list[Article]:
    return list(session.scalars(select(Article).order_by(Article.id)))


def article_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Article)) or 0


# --- polling feeds into the database ------------------------------------------------------


def test_ingest_stores_rss_and_atom_articles(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    hour_ago = now - timedelta(hours=1)
    rss_feed = add_feed(
        session,
        server,
        "/rss.xml",
        Reply(
            rss(
                item("First story", "https://news.example.com/1", "n-1", hour_ago, "<p>One</p>"),
                item("Second story", "https://news.example.com/2", "n-2", hour_ago),
            ),
            headers={**RSS_TYPE, "ETag": '"abc"'},
        ),
    )
    atom_feed = add_feed(
        session,
        server,
        "/atom.xml",
        Reply(
            atom(entry("urn:a:1", "Atom story", "/stories/a1", "2026-11-29T08:30:00Z", "<p>A</p>")),
            headers={"Content-Type": "application/atom+xml"},
        ),
        section="sport",
    )

    reports = ingest_all(session, settings, now)

    assert [(r.new, r.seen, r.error, r.skipped) for r in reports] == [
        (2, 0, None, []),
        (1, 0, None, []),
    ]
    stored = articles(session)
    assert [(a.title, a.url, a.guid, a.section, a.feed_id) for a in stored] == [
        ("First story", "https://news.example.com/1", "n-1", "news", rss_feed.id),
        ("Second story", "https://news.example.com/2", "n-2", "news", rss_feed.id),
        # A relative link resolves against the feed's own URL.
        ("Atom story", server.url("/stories/a1"), "urn:a:1", "sport", atom_feed.id),
    ]
    assert stored[0].published_at == hour_ago
    assert stored[2].published_at == datetime(2026, 11, 29, 8, 30, tzinfo=UTC)
    assert stored[0].summary_html == "<p>One</p>"
    assert all(a.seen_at == now for a in stored)
    session.refresh(rss_feed)
    assert (rss_feed.etag, rss_feed.last_ok_at, rss_feed.last_error) == ('"abc"', now, None)
    assert server.requests_to("/rss.xml")[0]["user-agent"].startswith("digest/")


def conditional(feed: FeedServer, path: str, etag: str | None, modified: str | None) -> None:
    """Serve feed.routes[path + '#body'] with validators; 304 when the request matches them."""

    def route(headers: dict[str, str]) -> Reply:
        sent_etag, sent_modified = headers.get("if-none-match"), headers.get("if-modified-since")
        if (etag and sent_etag == etag) or (not etag and modified and sent_modified == modified):
            return Reply(status=304)
        validators = {"ETag": etag} if etag else {}
        if modified:
            validators["Last-Modified"] = modified
        body = feed.routes[path + "#body"]
        assert isinstance(body, Reply)
        return Reply(body.body, headers={**RSS_TYPE, **validators})

    feed.routes[path] = route


@pytest.mark.parametrize(
    ("etag", "modified"),
    [
        ('"v1"', None),
        (None, "Sun, 29 Nov 2026 09:00:00 GMT"),
        ('W/"v1"', "Sun, 29 Nov 2026 09:00:00 GMT"),
    ],
)
def test_conditional_get_sends_validators_and_304_stores_nothing(
    session: Session,
    settings: Settings,
    server: FeedServer,
    now: datetime,
    etag: str | None,
    modified: str | None,
) -> None:
    one = item("One", "https://news.example.com/1", "c-1")
    two = item("Two", "https://news.example.com/2", "c-2")
    server.routes["/feed.xml#body"] = Reply(rss(one))
    conditional(server, "/feed.xml", etag, modified)
    feed = store.add_feed(session, server.url("/feed.xml"), "news")
    session.commit()

    first = ingest_all(session, settings, now)
    assert (first[0].new, first[0].not_modified) == (1, False)
    assert (feed.etag, feed.last_modified) == (etag, modified)
    assert "if-none-match" not in server.requests[0][1]
    assert "if-modified-since" not in server.requests[0][1]

    # The document changes but the validators do not: a 304 means nothing is parsed.
    server.routes["/feed.xml#body"] = Reply(rss(one, two))
    later = now + timedelta(minutes=30)
    second = ingest_all(session, settings, later)
    sent = server.requests[-1][1]
    assert sent.get("if-none-match") == etag
    assert sent.get("if-modified-since") == modified
    assert (second[0].not_modified, second[0].new, second[0].error) == (True, 0, None)
    assert article_count(session) == 1
    session.refresh(feed)
    assert (feed.etag, feed.last_modified, feed.last_ok_at) == (etag, modified, later)

    # New validators: the next poll gets a 200 and stores the new entry.
    conditional(server, "/feed.xml", etag and '"v2"', modified and "Sun, 29 Nov 2026 10:00:00 GMT")
    third = ingest_all(session, settings, later)
    assert (third[0].new, third[0].seen) == (1, 1)
    assert article_count(session) == 2


def test_dedupe_by_guid_then_canonical_url_across_polls_and_feeds(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    add_feed(
        session,
        server,
        "/a.xml",
        Reply(
            rss(
                item("Story A", "https://News.Example.com/a?utm_source=rss&id=7#top", "g-1"),
                item("Story B", "https://news.example.com/b?fbclid=xyz"),
                # The same entry twice in one document is stored once.
                item("Story B again", "https://news.example.com/b"),
            )
        ),
    )
    add_feed(
        session,
        server,
        "/b.xml",
        Reply(
            rss(
                # Same guid, new URL (the slug was edited): the same article.
                item("Story A renamed", "https://news.example.com/a-renamed", "g-1"),
                # New guid, same canonical URL: the same article.
                item("Story B too", "https://news.example.com:443/b?utm_medium=email", "g-2"),
                item("Story C", "https://news.example.com/c", "g-3"),
            )
        ),
        section="sport",
    )

    first = ingest_all(session, settings, now)
    assert [(r.new, r.seen) for r in first] == [(2, 1), (1, 2)]
    second = ingest_all(session, settings, now + timedelta(hours=1))
    assert [(r.new, r.seen) for r in second] == [(0, 3), (0, 3)]

    stored = articles(session)
    assert [(a.title, a.url, a.guid, a.section) for a in stored] == [
        ("Story A", "https://news.example.com/a?id=7", "g-1", "news"),
        ("Story B", "https://news.example.com/b", None, "news"),
        ("Story C", "https://news.example.com/c", "g-3", "sport"),
    ]


# Each of these feeds is broken in its own way; the message says how.
BROKEN = {
    "/http-500.xml": (Reply(b"oops", 500), "HTTP 500 Internal Server Error"),
    "/http-404.xml": (Reply(b"gone", 404), "HTTP 404 Not Found"),
    "/garbage.xml": (Reply(b"\x00\xff garbage \x89PNG", headers=RSS_TYPE), "not a readable feed"),
    "/html-page.xml": (
        Reply(b"<html><body><h1>Welcome</h1></body></html>", headers={"Content-Type": "text/html"}),
        "not a readable feed: no RSS or Atom elements in it",
    ),
    "/truncated.xml": (
        Reply(b'<?xml version="1.0"?><rss version="2.0"><channel><item><title>x'),
        "not a readable feed: <unknown>:1:",
    ),
    "/loop.xml": (Reply(status=302, headers={"Location": "/loop.xml"}), "more than 5 redirects"),
    "/nowhere.xml": (Reply(status=301), "HTTP 301 redirect without a Location"),
    "/all-bad.xml": (
        Reply(rss(item("No link", None, "b-1"), item(None, "https://news.example.com/x"))),
        "none of its 2 entries could be used; entry 1 ('b-1'): no absolute http(s) link",
    ),
}


def test_broken_feeds_are_recorded_and_never_stop_the_others(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    add_feed(session, server, "/good1.xml", Reply(rss(item("Good 1", "https://n.example/1"))))
    broken = [add_feed(session, server, path, reply) for path, (reply, _) in BROKEN.items()]
    add_feed(session, server, "/good2.xml", Reply(rss(item("Good 2", "https://n.example/2"))))

    reports = ingest_all(session, settings, now)

    assert [r.new for r in reports] == [1] + [0] * len(BROKEN) + [1]
    assert sorted(a.title for a in articles(session)) == ["Good 1", "Good 2"]
    for feed, report, (path, (_, message)) in zip(
        broken, reports[1:-1], BROKEN.items(), strict=True
    ):
        session.refresh(feed)
        assert report.error is not None and message in report.error, path
        assert feed.last_error == report.error
        assert feed.last_error.startswith(server.url(path))  # names the feed
        assert (feed.error_count, feed.last_polled_at, feed.last_ok_at) == (1, now, None)
    assert reports[0].error is None and reports[-1].error is None

    ingest_all(session, settings, now + timedelta(hours=1))
    session.refresh(broken[0])
    assert broken[0].error_count == 2

    # Once a feed is fixed its error is cleared.
    server.routes["/http-500.xml"] = Reply(rss(item("Fixed", "https://n.example/3")))
    later = now + timedelta(hours=2)
    assert ingest_all(session, settings, later)[1].new == 1
    session.refresh(broken[0])
    assert (broken[0].last_error, broken[0].error_count, broken[0].last_ok_at) == (None, 0, later)


def test_hostile_entries_are_cleaned_clamped_or_skipped_with_a_note(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    hostile_summary = (
        "<p>Real text <a href='https://ok.example/more' onclick='alert(1)'>more</a></p>"
        "<script>alert('s')</script><img src=x onerror=alert('i')>"
        "<a href='javascript:alert(1)'>js</a><a href='data:text/html,alert(2)'>data</a>"
        "<style>body{display:none}</style><iframe src='https://evil.example/'>alert(3)</iframe>"
    )
    body = rss(
        item(
            "<b>Bold</b> move<script>alert(1)</script>",
            "https://n.example/1",
            "h-1",
            summary=hostile_summary,
        ),
        item("Breaking\r\nBcc: victim@example.com", "https://n.example/2", "h-2"),
        item("From the future", "https://n.example/3", "h-3", now + timedelta(days=400)),
        item("Script link", "javascript:alert(1)", "h-4"),
        item("No link at all", None, "h-5"),
        item(None, "https://n.example/6", "h-6"),
        item("   ", "https://n.example/7", "h-7"),
    ).replace(b"Breaking\r\n", b"Breaking&#13;&#10;")
    add_feed(session, server, "/hostile.xml", Reply(body, headers=RSS_TYPE))

    [report] = ingest_all(session, settings, now)

    assert report.error is None and report.new == 3
    assert report.skipped == [
        "entry 4 ('h-4'): no absolute http(s) link (got 'javascript:alert(1)')",
        "entry 5 ('h-5'): no absolute http(s) link (got 'none')",
        "entry 6 ('h-6'): no title",
        "entry 7 ('h-7'): no title",
    ]
    first, second, third = articles(session)
    assert first.title == "Bold move"
    assert first.summary_html == (
        '<p>Real text <a href="https://ok.example/more" rel="noopener noreferrer">more</a></p>'
        '<a rel="noopener noreferrer">js</a><a rel="noopener noreferrer">data</a>'
    )
    assert second.title == "Breaking Bcc: victim@example.com"
    assert (third.title, third.published_at) == ("From the future", now)


def test_atom_xhtml_content_is_sanitised(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    body = atom(
        "<entry><id>urn:x:1</id><title type='html'>&lt;i&gt;Quiet&lt;/i&gt; day</title>"
        "<link href='https://n.example/x1'/><updated>2026-11-29T09:00:00Z</updated>"
        "<content type='xhtml'><div xmlns='http://www.w3.org/1999/xhtml'>"
        "<p onmouseover='alert(1)'>Calm <a href='/local'>here</a></p>"
        "<script>alert(1)</script></div></content></entry>"
    )
    add_feed(
        session, server, "/x.atom", Reply(body, headers={"Content-Type": "application/atom+xml"})
    )
    [report] = ingest_all(session, settings, now)
    assert (report.new, report.error) == (1, None)
    [stored] = articles(session)
    assert stored.title == "Quiet day"
    assert stored.summary_html == (
        '<p>Calm <a href="https://n.example/local" rel="noopener noreferrer">here</a></p>'
    )


def test_feed_from_a_local_file(
    session: Session, settings: Settings, tmp_path: Path, now: datetime
) -> None:
    path = tmp_path / "my feeds" / "local.xml"
    path.parent.mkdir()
    path.write_bytes(rss(item("Local", "https://n.example/local", "l-1")))
    store.add_feed(session, path.as_uri(), "news")
    store.add_feed(session, (tmp_path / "missing.xml").as_uri(), "news")
    session.commit()
    good, missing = ingest_all(session, settings, now)
    assert (good.new, good.error) == (1, None)
    assert missing.error is not None and "missing.xml" in missing.error


# --- fetching: size, time, redirects, private addresses ------------------------------------


def test_size_cap_with_content_length(server: FeedServer) -> None:
    server.routes["/big.xml"] = Reply(
        b"<rss/>", headers={"Content-Length": "10000000"}, content_length=False
    )
    with pytest.raises(FeedError, match=r"/big.xml: feed is 10000000 bytes, more than the 2000"):
        fetch(server.url("/big.xml"), max_bytes=2000, allow_private=True)


def test_size_cap_without_content_length(server: FeedServer) -> None:
    server.routes["/big.xml"] = Reply(
        rss(*[item(f"S{i}") for i in range(500)]), content_length=False
    )
    with pytest.raises(FeedError, match=r"/big.xml: feed is more than the 2000 bytes allowed"):
        fetch(server.url("/big.xml"), max_bytes=2000, allow_private=True)
    # Under the cap the same unsized body is read to its end.
    assert len(fetch(server.url("/big.xml"), allow_private=True).body) > 2000


def test_size_cap_on_ingest_is_recorded_on_the_feed(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    feed = add_feed(session, server, "/big.xml", Reply(b"x" * 5000, content_length=False))
    [report] = ingest_all(session, settings.with_(feed_max_bytes=1000), now)
    assert report.error is not None and "more than the 1000 bytes allowed" in report.error
    session.refresh(feed)
    assert feed.error_count == 1


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(rss(item()), delay=3), id="no-answer"),
        pytest.param(Reply(rss(*[item(f"S{i}") for i in range(40)]), trickle=0.1), id="trickle"),
    ],
)
def test_slow_feed_hits_the_timeout(server: FeedServer, reply: Reply) -> None:
    server.routes["/slow.xml"] = reply
    started = time.monotonic()
    with pytest.raises(FeedError, match=r"/slow.xml: no complete response within 0.5 s"):
        fetch(server.url("/slow.xml"), timeout=0.5, allow_private=True)
    assert time.monotonic() - started < 1.5


def test_slow_feed_on_ingest_is_recorded_and_the_next_is_polled(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    add_feed(session, server, "/slow.xml", Reply(rss(item()), delay=3))
    add_feed(session, server, "/fast.xml", Reply(rss(item("Fast", "https://n.example/f"))))
    slow, fast = ingest_all(session, settings.with_(feed_timeout=0.5), now)
    assert slow.error is not None and "no complete response within 0.5 s" in slow.error
    assert (fast.new, fast.error) == (1, None)


def test_redirects_are_followed(server: FeedServer) -> None:
    server.routes["/old.xml"] = Reply(status=301, headers={"Location": "/moved.xml"})
    server.routes["/moved.xml"] = Reply(status=307, headers={"Location": server.url("/feed.xml")})
    server.routes["/feed.xml"] = Reply(rss(item()), headers={**RSS_TYPE, "ETag": '"r"'})
    fetched = fetch(server.url("/old.xml"), etag='"old"', allow_private=True)
    assert (fetched.status, fetched.url, fetched.etag) == (200, server.url("/feed.xml"), '"r"')
    assert fetched.content_type == RSS_TYPE["Content-Type"]
    assert [p for p, _ in server.requests] == ["/old.xml", "/moved.xml", "/feed.xml"]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("file:///etc/passwd", "refusing to fetch 'file:///etc/passwd': only http and https"),
        ("ftp://127.0.0.1/feed", "only http and https"),
        # 0.0.0.0 reaches this machine: refused even when private addresses are allowed.
        (
            "http://0.0.0.0:{port}/feed.xml",
            "refusing to fetch from 0.0.0.0: 0.0.0.0 is an unspecified",
        ),
        ("http://[ff02::1]/feed.xml", "ff02::1 is a multicast address"),
    ],
)
def test_redirect_targets_are_checked_again(
    server: FeedServer, location: str, message: str
) -> None:
    port = server.base.rsplit(":", 1)[1]
    server.routes["/feed.xml"] = Reply(rss(item()))
    server.routes["/go"] = Reply(status=302, headers={"Location": location.format(port=port)})
    with pytest.raises(UnsafeURL) as caught:
        fetch(server.url("/go"), allow_private=True)
    assert message in str(caught.value)
    assert f"(redirected from {server.url('/go')})" in str(caught.value)
    assert [p for p, _ in server.requests] == ["/go"]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:{port}/feed.xml", "127.0.0.1, a loopback address"),
        ("http://127.8.9.10:{port}/feed.xml", "127.8.9.10, a loopback address"),
        ("http://localhost:{port}/feed.xml", "a loopback address"),
        ("http://[::1]:{port}/feed.xml", "::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/feed.xml", "127.0.0.1, a loopback address"),
        ("http://10.1.2.3/feed.xml", "10.1.2.3, a private address"),
        ("http://192.168.1.1/feed.xml", "192.168.1.1, a private address"),
        ("http://172.16.0.1/feed.xml", "172.16.0.1, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://[fe80::1]/feed.xml", "fe80::1, a link-local address"),
        ("http://[fd00::1]/feed.xml", "fd00::1, a private address"),
        ("http://0.0.0.0:{port}/feed.xml", "0.0.0.0 is an unspecified address"),
        ("http://2130706433:{port}/feed.xml", "127.0.0.1, a loopback address"),
    ],
)
def test_private_addresses_are_refused_unless_allowed(
    server: FeedServer, url: str, address: str
) -> None:
    port = server.base.rsplit(":", 1)[1]
    server.routes["/feed.xml"] = Reply(rss(item()))
    with pytest.raises(UnsafeURL, match="refusing to fetch from") as caught:
        fetch(url.format(port=port), allow_private=False, timeout=2)
    assert address in str(caught.value)
    assert server.requests == []  # refused before connecting, not after


def test_private_feed_refused_on_ingest_names_the_address(
    session: Session, settings: Settings, server: FeedServer, now: datetime
) -> None:
    feed = add_feed(session, server, "/feed.xml", Reply(rss(item())))
    port = server.base.rsplit(":", 1)[1]
    store.add_feed(session, f"http://localhost:{port}/feed.xml", "news")
    session.commit()
    strict = settings.with_(allow_private_feeds=False)
    reports = ingest_all(session, strict, now)
    assert all(r.error and "a loopback address" in r.error for r in reports)
    assert "127.0.0.1" in (reports[0].error or "")
    assert server.requests == [] and article_count(session) == 0
    # With private feeds allowed (as in the test settings) the same feeds are fetched.
    session.refresh(feed)
    assert feed.error_count == 1
    assert ingest_all(session, settings, now)[0].new == 1


def test_304_to_an_unconditional_request_is_an_error(server: FeedServer) -> None:
    server.routes["/feed.xml"] = Reply(status=304)
    with pytest.raises(FeedError, match="304 to a request that was not conditional"):
        fetch(server.url("/feed.xml"), allow_private=True)


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ('"fine"', '"fine"'),
        ('"' + "x" * 600 + '"', None),  # longer than the column: dropped, never cut
        ('"caf\xe9"', None),  # not ASCII: could not be sent back as it came
    ],
)
def test_etag_is_stored_only_when_it_fits(
    server: FeedServer, header: str, stored: str | None
) -> None:
    server.routes["/feed.xml"] = Reply(rss(item()), headers={"ETag": header})
    assert fetch(server.url("/feed.xml"), allow_private=True).etag == stored


def test_bad_url_is_a_feed_error() -> None:
    for url in ("http://news.example.com:99999/feed", "http://[::1/feed"):
        with pytest.raises(FeedError, match="not a valid URL"):
            fetch(url, allow_private=True)
    with pytest.raises(UnsafeURL, match="only http and https"):
        fetch("gopher://news.example.com/feed")


def test_parse_entries_never_opens_a_body_as_a_file_name(tmp_path: Path, now: datetime) -> None:
    local = tmp_path / "secret.xml"
    local.write_bytes(rss(item("Secret", "https://n.example/secret")))
    # feedparser would open a bare string naming a file; a hostile server could send one.
    with pytest.raises(FeedError, match="not a readable feed"):
        parse_entries(str(local).encode(), "news", now)


# --- JSON import ---------------------------------------------------------------------------

GOOD = {"title": "Desk story", "url": "https://news.example.com/desk?utm_campaign=x"}


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ("just a string", "expected an object, got str"),
        (["a", "list"], "expected an object, got list"),
        ({"title": "No URL"}, "url is missing"),
        ({"title": "Bad URL", "url": "javascript:alert(1)"}, "url 'javascript:alert(1)' is not an"),
        ({"title": "Relative", "url": "/desk/1"}, "url '/desk/1' is not an absolute http(s) URL"),
        ({"title": "Number URL", "url": 42}, "url must be text, not int"),
        ({"url": "https://n.example/1"}, "title is missing"),
        ({"url": "https://n.example/1", "title": "<script>x</script>"}, "title is missing"),
        ({"url": "https://n.example/1", "title": 7}, "title must be text, not int"),
        ({**GOOD, "published_at": "yesterday"}, "published_at 'yesterday' is not ISO 8601"),
        ({**GOOD, "published_at": "2026-11-29T08:00:00"}, "needs a UTC offset"),
        ({**GOOD, "published_at": 1764403200}, "published_at must be an ISO 8601 string"),
        ({**GOOD, "priority": "high"}, "priority 'high' is not a whole number"),
        ({**GOOD, "priority": 1.5}, "priority 1.5 is not a whole number"),
        ({**GOOD, "priority": True}, "priority True is not a whole number"),
        ({**GOOD, "priority": 10**12}, "priority 1000000000000 is out of range"),
        ({**GOOD, "image_url": "data:image/png;base64,AAAA"}, "image_url 'data:image/png;base64"),
        ({**GOOD, "guid": ["x"]}, "guid must be text, not list"),
        ({**GOOD, "guid": "g" * 1001}, "guid is longer than 1000 characters"),
        ({**GOOD, "summary": {"html": "x"}}, "summary must be text, not dict"),
    ],
)
def test_bad_json_record_is_reported_by_index_with_the_reason(
    record: object, error: str, now: datetime
) -> None:
    good, bad = parse_article_records([GOOD, record, GOOD], now)
    assert len(good) == 2
    assert len(bad) == 1 and bad[0].startswith("record 2: ")
    assert error in bad[0]


def test_json_record_values(now: datetime) -> None:
    [record], errors = parse_article_records(
        [
            {
                "guid": 1234,
                "title": "Tax <b>cuts</b>\r\nBcc: x@example.com",
                "url": "https://News.example.com/t?utm_source=x#frag",
                "summary": "<p onclick='x()'>Sum <a href='/rel'>rel</a></p><script>x</script>",
                "section": " Business ",
                "priority": "-2",
                "image_url": "https://img.example.com/t.jpg",
                "published_at": "2030-01-01T00:00:00+10:00",
            }
        ],
        now,
    )
    assert errors == []
    assert record == {
        "feed_id": None,
        "guid": "1234",
        "url": "https://news.example.com/t",
        "title": "Tax cuts Bcc: x@example.com",
        "summary_html": (
            '<p>Sum <a href="https://news.example.com/rel" rel="noopener noreferrer">rel</a></p>'
        ),
        "image_url": "https://img.example.com/t.jpg",
        "section": "business",
        "priority": -2,
        "published_at": now,  # the future is clamped
        "seen_at": now,
    }


def test_import_articles_stores_good_records_and_reports_bad_ones(
    session: Session, tmp_path: Path, now: datetime
) -> None:
    path = tmp_path / "articles.json"
    records = [
        {"guid": "d-1", "title": "One", "url": "https://n.example/1", "section": "sport"},
        {"title": "Two", "url": "ftp://n.example/2"},
        {
            "guid": "d-3",
            "title": "Three",
            "url": "https://n.example/3",
            "published_at": "2026-11-29T07:00:00Z",
            "summary": "<p>3</p><script>x</script>",
        },
        42,
        {"guid": "d-1", "title": "One again", "url": "https://n.example/1-again"},
    ]
    # A byte-order mark (Windows editors add one) is fine.
    path.write_text(json.dumps(records), encoding="utf-8-sig")

    new, errors = import_articles(session, path, now)
    session.commit()

    assert new == 2
    assert errors == [
        "record 2: url 'ftp://n.example/2' is not an absolute http(s) URL",
        "record 4: expected an object, got int",
    ]
    stored = articles(session)
    assert [(a.guid, a.title, a.section, a.feed_id) for a in stored] == [
        ("d-1", "One", "sport", None),
        ("d-3", "Three", "news", None),
    ]
    assert stored[1].published_at == datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    assert stored[1].summary_html == "<p>3</p>"
    # Importing the same file again stores nothing twice.
    assert import_articles(session, path, now) == (0, errors)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"[{'title': 'x'}]", "is not valid JSON: Expecting property name"),
        (b'[{"title": "x"},', "is not valid JSON: Expecting value at line 1 column 17"),
        (b"", "is not valid JSON"),
        (b'["caf\xe9"]', "is not UTF-8 text"),
        (b'{"title": "x", "url": "https://n.example/"}', "must hold a list of article objects"),
        (b"[" * 100_000 + b"]" * 100_000, "articles.json"),
    ],
)
def test_unreadable_json_file_is_invalid_input(
    tmp_path: Path, now: datetime, content: bytes | None, message: str
) -> None:
    path = tmp_path / "articles.json"
    if content is not None:
        path.write_bytes(content)
    # The file is refused before the database is touched: a session without one will do.
    with Session() as session, pytest.raises(InvalidInput, match=re.escape(message)) as caught:
        import_articles(session, path, now)
    if "list of article objects" not in message:
        assert str(path) in str(caught.value)


def test_import_a_directory_is_invalid_input(tmp_path: Path, now: datetime) -> None:
    with Session() as session, pytest.raises(InvalidInput, match="cannot read"):
        import_articles(session, tmp_path, now)


# --- canonical URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://news.example.com/a", "https://news.example.com/a"),
        ("HTTPS://News.Example.COM/Path/Case", "https://news.example.com/Path/Case"),
        ("https://news.example.com", "https://news.example.com/"),
        ("https://news.example.com/a#comments", "https://news.example.com/a"),
        ("https://news.example.com/a?utm_source=rss", "https://news.example.com/a"),
        (
            "https://news.example.com/a?id=3&utm_source=rss&UTM_Medium=x&page=2#top",
            "https://news.example.com/a?id=3&page=2",
        ),
        (
            "https://news.example.com/a?fbclid=1&gclid=2&mc_cid=3&mc_eid=4",
            "https://news.example.com/a",
        ),
        ("https://news.example.com/a?fbclid_keep=1", "https://news.example.com/a?fbclid_keep=1"),
        ("https://news.example.com/a?utm%5Fsource=x&b=1", "https://news.example.com/a?b=1"),
        # The rest of the query is kept exactly: not decoded, re-encoded or given "=".
        (
            "https://news.example.com/s?q=caf%C3%A9+bar&flag",
            "https://news.example.com/s?q=caf%C3%A9+bar&flag",
        ),
        ("https://news.example.com/s?a=%2F&&b=", "https://news.example.com/s?a=%2F&b="),
        ("https://news.example.com:443/a", "https://news.example.com/a"),
        ("http://news.example.com:80/a", "http://news.example.com/a"),
        ("http://news.example.com:443/a", "http://news.example.com:443/a"),
        ("https://news.example.com:8443/a", "https://news.example.com:8443/a"),
        ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
    ],
)
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


@pytest.mark.parametrize(
    "address", ["64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::", "2002:c0a8:101::1"]
)
def test_ipv4_inside_ipv6_is_judged_as_ipv4(address: str) -> None:
    with pytest.raises(UnsafeURL, match="refusing"):
        check_address("feeds.example.com", address, allow_private=False)
