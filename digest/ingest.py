"""Articles from feeds (RSS/Atom via feedparser) and from JSON files.

Fetching is careful: conditional GET, a timeout, a size cap, and no fetching from
loopback, private or link-local addresses unless settings allow it (checked against
the address actually connected to, so DNS cannot swap it after the check).
"""

from __future__ import annotations

import calendar
import http.client
import ipaddress
import json
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.errors import FeedError, InvalidInput, UnsafeURL
from digest.models import Feed
from digest.sanitize import clean_summary, clean_title, safe_url

USER_AGENT = "digest/0.1 (+https://github.com/digest; feed reader)"
MAX_REDIRECTS = 5
_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")


@dataclass
class Fetched:
    status: int  # 200, or 304 when the feed has not changed
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    url: str = ""


@dataclass
class IngestReport:
    feed_url: str
    new: int = 0
    seen: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    not_modified: bool = False


def check_address(host: str, address: str, allow_private: bool) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if allow_private:
        return
    if not ip.is_global or ip.is_multicast:
        raise UnsafeURL(f"refusing to fetch from {host}: it resolves to non-public address {ip}")


def canonical_url(url: str) -> str:
    """The URL without fragment and tracking parameters, host lower-cased."""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING)
    ]
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(query), "")
    )


class _CheckedHTTPConnection(http.client.HTTPConnection):
    allow_private = False

    def connect(self) -> None:
        super().connect()
        check_address(self.host, self.sock.getpeername()[0], self.allow_private)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    allow_private = False

    def connect(self) -> None:
        super().connect()
        check_address(self.host, self.sock.getpeername()[0], self.allow_private)


def fetch(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 15.0,
    max_bytes: int = 5_000_000,
    allow_private: bool = False,
) -> Fetched:
    """GET a feed with conditional headers; local files (file:// or a path) are read."""
    parts = urlsplit(url)
    if parts.scheme == "file" or (not parts.scheme and Path(url).exists()):
        path = Path(parts.path if parts.scheme == "file" else url)
        try:
            data = path.read_bytes()[: max_bytes + 1]
        except OSError as exc:
            raise FeedError(f"cannot read {path}: {exc.strerror}") from None
        if len(data) > max_bytes:
            raise FeedError(f"{url} is larger than {max_bytes} bytes")
        return Fetched(200, data, url=url)
    for _ in range(MAX_REDIRECTS + 1):
        fetched = _get_once(url, etag, last_modified, timeout, max_bytes, allow_private)
        if isinstance(fetched, Fetched):
            return fetched
        url = fetched  # a redirect: check and fetch the new location
    raise FeedError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _get_once(
    url: str,
    etag: str | None,
    last_modified: str | None,
    timeout: float,
    max_bytes: int,
    allow_private: bool,
) -> Fetched | str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL(f"refusing to fetch {url!r}: only http and https feeds are allowed")
    cls = _CheckedHTTPSConnection if parts.scheme == "https" else _CheckedHTTPConnection
    kwargs: dict[str, Any] = {"timeout": timeout}
    if parts.scheme == "https":
        kwargs["context"] = ssl.create_default_context()
    conn = cls(parts.hostname, parts.port, **kwargs)
    conn.allow_private = allow_private
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    }
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            if not location:
                raise FeedError(f"{url}: redirect without a Location")
            return urljoin(url, location)
        if response.status == 304:
            return Fetched(304, url=url, etag=etag, last_modified=last_modified)
        if response.status != 200:
            raise FeedError(f"{url}: HTTP {response.status} {response.reason}")
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FeedError(f"{url}: feed is {declared} bytes, more than the {max_bytes} allowed")
        body = response.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise FeedError(f"{url}: feed is more than the {max_bytes} bytes allowed")
        return Fetched(
            200, body, response.getheader("ETag"), response.getheader("Last-Modified"), url
        )
    except (OSError, http.client.HTTPException) as exc:
        raise FeedError(f"{url}: {exc.__class__.__name__}: {exc}") from None
    finally:
        conn.close()


def _when(entry: Any, now: datetime) -> datetime:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return now
    when = datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    # A feed that dates its items in the future would pin them to the top: clamp.
    return min(when, now)


def _image(entry: Any) -> str | None:
    for media in entry.get("media_content", []) + entry.get("media_thumbnail", []):
        if url := safe_url(media.get("url")):
            return url
    for link in entry.get("links", []):
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            if url := safe_url(link.get("href")):
                return url
    return None


def parse_entries(
    body: bytes, section: str, now: datetime, feed_id: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Articles from a feed document, and a note for each entry that had to be skipped."""
    parsed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    if not parsed.entries and (parsed.bozo or not parsed.get("version")):
        reason = parsed.get("bozo_exception") or "no RSS or Atom entries"
        raise FeedError(f"not a readable feed: {reason}")
    articles, skipped = [], []
    for index, entry in enumerate(parsed.entries, 1):
        link = safe_url(entry.get("link"))
        title = clean_title(entry.get("title", ""))
        if not link:
            skipped.append(f"entry {index}: no http(s) link ({str(entry.get('link'))[:80]!r})")
            continue
        if not title:
            skipped.append(f"entry {index}: no title")
            continue
        content = entry.get("summary") or ""
        if not content and entry.get("content"):
            content = entry["content"][0].get("value", "")
        articles.append(
            {
                "feed_id": feed_id,
                "guid": (entry.get("id") or "")[:1000] or None,
                "url": canonical_url(link),
                "title": title,
                "summary_html": clean_summary(content),
                "image_url": _image(entry),
                "section": section,
                "priority": 0,
                "published_at": _when(entry, now),
                "seen_at": now,
            }
        )
    return articles, skipped


def ingest_feed(session: Session, settings: Settings, feed: Feed, now: datetime) -> IngestReport:
    """Poll one feed and store its new articles; errors are recorded on the feed row."""
    report = IngestReport(feed.url)
    feed.last_polled_at = now
    try:
        fetched = fetch(
            feed.url,
            etag=feed.etag,
            last_modified=feed.last_modified,
            timeout=settings.feed_timeout,
            max_bytes=settings.feed_max_bytes,
            allow_private=settings.allow_private_feeds,
        )
        if fetched.status == 304:
            report.not_modified = True
        else:
            articles, report.skipped = parse_entries(fetched.body, feed.section, now, feed.id)
            report.new = store.insert_articles(session, articles)
            report.seen = len(articles) - report.new
            feed.etag, feed.last_modified = fetched.etag, fetched.last_modified
    except FeedError as exc:
        report.error = str(exc)
        feed.last_error = report.error
        feed.error_count += 1
        return report
    feed.last_ok_at, feed.last_error, feed.error_count = now, None, 0
    return report


def ingest_all(session: Session, settings: Settings, now: datetime) -> list[IngestReport]:
    """Poll every feed; one broken feed never stops the others (one commit per feed)."""
    reports = []
    for feed in store.list_feeds(session):
        reports.append(ingest_feed(session, settings, feed, now))
        session.commit()
    return reports


def parse_article_records(records: Any, now: datetime) -> tuple[list[dict[str, Any]], list[str]]:
    """Articles from a JSON list of objects; a bad record is reported by index and skipped."""
    if not isinstance(records, list):
        raise InvalidInput("the JSON file must hold a list of article objects")
    articles, errors = [], []
    for index, record in enumerate(records, 1):
        try:
            articles.append(_article_record(record, now))
        except InvalidInput as exc:
            errors.append(f"record {index}: {exc}")
    return articles, errors


def _article_record(record: Any, now: datetime) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise InvalidInput("not an object")
    url = safe_url(record.get("url"))
    if not url:
        raise InvalidInput(f"url {str(record.get('url'))[:80]!r} is not an absolute http(s) URL")
    title = clean_title(str(record.get("title") or ""))
    if not title:
        raise InvalidInput("title is missing")
    published = now
    if record.get("published_at"):
        try:
            published = datetime.fromisoformat(str(record["published_at"]))
        except ValueError:
            raise InvalidInput(f"published_at {record['published_at']!r} is not ISO 8601") from None
        if published.tzinfo is None:
            raise InvalidInput("published_at needs a UTC offset")
        published = min(published.astimezone(UTC), now)
    try:
        priority = int(record.get("priority") or 0)
    except (TypeError, ValueError):
        raise InvalidInput(f"priority {record.get('priority')!r} is not a whole number") from None
    return {
        "feed_id": None,
        "guid": str(record.get("guid") or "")[:1000] or None,
        "url": canonical_url(url),
        "title": title,
        "summary_html": clean_summary(str(record.get("summary") or "")),
        "image_url": safe_url(record.get("image_url")),
        "section": str(record.get("section") or "news").strip().lower()[:64] or "news",
        "priority": priority,
        "published_at": published,
        "seen_at": now,
    }


def import_articles(session: Session, path: Path, now: datetime) -> tuple[int, list[str]]:
    """Load a JSON file of articles; returns (new articles, errors)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
    articles, errors = parse_article_records(records, now)
    new = store.insert_articles(session, articles)
    return new, errors
