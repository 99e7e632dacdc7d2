"""Articles from feeds (RSS/Atom via feedparser, fetched by digest.feeds.fetch) and from JSON
files: parsed, sanitised and stored once (guid, then canonical URL). A broken feed is
recorded on its row and never stops the others.
"""

from __future__ import annotations

import calendar
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

import feedparser
from feedparser.exceptions import ThingsNobodyCaresAboutButMe
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digest import store
from digest.config import Settings
from digest.errors import FeedError, InvalidInput
from digest.feeds.fetch import fetch
from digest.feeds.sanitize import MAX_URL, clean_summary, clean_title, safe_url
from digest.models import Feed

_TRACKING_PREFIXES = ("utm_",)
_TRACKING_KEYS = {"fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "igshid"}
# Column sizes in digest.models: a longer value from outside is dropped, never stored cut.
_MAX_GUID = 1000
_MAX_ERROR = 1000
_INT32 = 2**31 - 1


@dataclass
class IngestReport:
    feed_url: str
    new: int = 0
    seen: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    not_modified: bool = False


_SECTION = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_feed_source(url: str, section: str, *, files: bool = False) -> tuple[str, str]:
    """A feed's URL and section, checked: an http(s) URL with a host (or, with `files`,
    a file:// URL of a readable file, never a folder) and a section of letters, digits,
    '-' or '_'. InvalidInput says what is wrong."""
    url, section = url.strip(), section.strip().lower() or "news"
    parts = urlsplit(url)
    if parts.scheme == "file" and files:
        path = Path(unquote(parts.path))
        if path.is_dir():
            raise InvalidInput(f"{path} is a folder, not a feed file")
        if not path.is_file() or not os.access(path, os.R_OK):
            raise InvalidInput(f"{path} cannot be read")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"a feed is an http:// or https:// URL, not {url[:80]!r}")
    if any(c.isspace() for c in url) or len(url) > 2000:
        raise InvalidInput("a feed URL has no spaces and at most 2,000 characters")
    if not _SECTION.fullmatch(section):
        raise InvalidInput(
            f"a section is 1 to 64 letters, digits, '-' or '_', not {section[:40]!r}"
        )
    return url, section


def _is_tracking(pair: str) -> bool:
    key = unquote_plus(pair.partition("=")[0]).lower()
    return key.startswith(_TRACKING_PREFIXES) or key in _TRACKING_KEYS


def canonical_url(url: str) -> str:
    """The URL without fragment, tracking parameters or default port; host lower-cased.

    The rest of the query is kept byte for byte (not decoded and re-encoded), so the
    canonical URL still leads to the same page.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    userinfo, at, hostport = parts.netloc.rpartition("@")
    hostport = hostport.lower().rstrip(":")
    default_port = {"http": ":80", "https": ":443"}.get(scheme)
    if default_port and hostport.endswith(default_port):
        hostport = hostport[: -len(default_port)]
    query = "&".join(p for p in parts.query.split("&") if p and not _is_tracking(p))
    return urlunsplit((scheme, userinfo + at + hostport, parts.path or "/", query, ""))


# --- parsing ----------------------------------------------------------------------------


def _when(entry: Any, now: datetime) -> datetime:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return now
    try:
        when = datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    except (OverflowError, ValueError, TypeError):
        return now
    # A feed that dates its items in the future would pin them to the top: clamp.
    return min(when, now)


def _image(entry: Any) -> str | None:
    for media in (entry.get("media_content") or []) + (entry.get("media_thumbnail") or []):
        if url := safe_url(media.get("url")):
            return url
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            if url := safe_url(link.get("href")):
                return url
    return None


def _printable(text: str, limit: int) -> str:
    """One line without control characters, for notes and errors shown to operators."""
    cleaned = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _entry_name(index: int, entry: Any) -> str:
    for key in ("id", "title", "link"):
        if value := entry.get(key):
            return f"entry {index} ({_printable(str(value), 80)!r})"
    return f"entry {index}"


def parse_entries(
    body: bytes,
    section: str,
    now: datetime,
    feed_id: int | None = None,
    *,
    url: str = "",
    content_type: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Articles from a feed document, and a note naming each entry that had to be skipped.

    `url` is where the document came from (relative links resolve against it) and
    `content_type` its Content-Type header (which may name the character set).
    """
    headers = {"content-location": url} if url else {}
    if content_type:
        headers["content-type"] = content_type
    # A BytesIO, never the bytes themselves: feedparser treats a bare string as a file
    # name or URL to open, which a hostile server could otherwise choose.
    parsed = feedparser.parse(
        io.BytesIO(body), response_headers=headers, sanitize_html=False, resolve_relative_uris=False
    )
    # feedparser flags small things too (a missing Content-Type, a wrong charset); only
    # real parse errors, or no feed at all, make a feed without entries a broken one.
    problem = parsed.get("bozo_exception")
    if isinstance(problem, ThingsNobodyCaresAboutButMe):
        problem = None
    if not parsed.entries and (problem or not parsed.get("version")):
        reason = problem or "no RSS or Atom elements in it"
        where = f"{url}: " if url else ""
        raise FeedError(f"{where}not a readable feed: {_printable(str(reason), 200)}")
    articles, skipped = [], []
    for index, entry in enumerate(parsed.entries, 1):
        name = _entry_name(index, entry)
        raw_link = entry.get("link")
        link = safe_url(raw_link)
        if not link:
            got = _printable(str(raw_link), 80) if raw_link else "none"
            skipped.append(f"{name}: no absolute http(s) link (got {got!r})")
            continue
        url_key = canonical_url(link)
        if len(url_key) > MAX_URL:
            skipped.append(f"{name}: link longer than {MAX_URL} characters")
            continue
        title = clean_title(entry.get("title") or "")
        if not title:
            skipped.append(f"{name}: no title")
            continue
        content = entry.get("summary") or ""
        if not content and entry.get("content"):
            content = entry["content"][0].get("value", "")
        guid = str(entry.get("id") or "").strip()
        articles.append(
            {
                "feed_id": feed_id,
                # A guid too long to store would be stored cut, and cut guids can
                # collide: dedupe such entries by URL alone.
                "guid": guid if 0 < len(guid) <= _MAX_GUID else None,
                "url": url_key,
                "title": title,
                "summary_html": clean_summary(content, base=url_key),
                "image_url": _image(entry),
                "section": section,
                "priority": 0,
                "published_at": _when(entry, now),
                "seen_at": now,
            }
        )
    if skipped and not articles:
        # Nothing usable is a broken feed, not a quiet one: say so on its row.
        where = f"{url}: " if url else ""
        if problem:
            raise FeedError(f"{where}not a readable feed: {_printable(str(problem), 200)}")
        raise FeedError(f"{where}none of its {len(skipped)} entries could be used; {skipped[0]}")
    return articles, skipped


# --- polling ----------------------------------------------------------------------------


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
            articles, report.skipped = parse_entries(
                fetched.body,
                feed.section,
                now,
                feed.id,
                url=fetched.url,
                content_type=fetched.content_type,
            )
            report.new = store.insert_articles(session, articles)
            report.seen = len(articles) - report.new
    except FeedError as exc:
        _record_failure(feed, report, str(exc))
        return report
    # Validators are kept only after a good poll, so a failed one is retried in full.
    feed.etag, feed.last_modified = fetched.etag, fetched.last_modified
    feed.last_ok_at, feed.last_error, feed.error_count = now, None, 0
    return report


def _record_failure(feed: Feed, report: IngestReport, message: str) -> None:
    report.error = _printable(message, _MAX_ERROR)
    feed.last_error = report.error
    feed.error_count = (feed.error_count or 0) + 1


def ingest_all(session: Session, settings: Settings, now: datetime) -> list[IngestReport]:
    """Poll every feed not paused; one broken feed never stops the others (one commit
    per feed)."""
    reports = []
    for feed in store.list_feeds(session):
        if feed.paused:
            continue
        try:
            with session.begin_nested():
                report = ingest_feed(session, settings, feed, now)
        except (SQLAlchemyError, ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            # Feed errors are handled inside; this is a bug or a database error on this
            # one feed. The savepoint has undone its partial work: record it, move on.
            # (Anything else, such as a task's time limit, is not ours to swallow.)
            report = IngestReport(feed.url)
            feed.last_polled_at = now
            _record_failure(feed, report, f"{feed.url}: {exc.__class__.__name__}: {exc}")
        session.commit()
        reports.append(report)
    return reports


# --- JSON import ------------------------------------------------------------------------


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


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be text, not {type(value).__name__}")
    return value


def _article_record(record: Any, now: datetime) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise InvalidInput(f"expected an object, got {type(record).__name__}")
    raw_url = _text(record, "url")
    if not raw_url.strip():
        raise InvalidInput("url is missing")
    url = safe_url(raw_url)
    if not url or len(canonical_url(url)) > MAX_URL:
        raise InvalidInput(f"url {_printable(raw_url, 80)!r} is not an absolute http(s) URL")
    title = clean_title(_text(record, "title"))
    if not title:
        raise InvalidInput("title is missing")
    image_url = None
    if raw_image := _text(record, "image_url").strip():
        if not (image_url := safe_url(raw_image)):
            raise InvalidInput(
                f"image_url {_printable(raw_image, 80)!r} is not an absolute http(s) URL"
            )
    guid = record.get("guid")
    if isinstance(guid, int) and not isinstance(guid, bool):
        guid = str(guid)
    elif guid is not None and not isinstance(guid, str):
        raise InvalidInput(f"guid must be text, not {type(guid).__name__}")
    guid = (guid or "").strip()
    if len(guid) > _MAX_GUID:
        raise InvalidInput(f"guid is longer than {_MAX_GUID} characters")
    return {
        "feed_id": None,
        "guid": guid or None,
        "url": canonical_url(url),
        "title": title,
        "summary_html": clean_summary(_text(record, "summary"), base=canonical_url(url)),
        "image_url": image_url,
        "section": _text(record, "section").strip().lower()[:64] or "news",
        "priority": _priority(record.get("priority")),
        "published_at": _published(record.get("published_at"), now),
        "seen_at": now,
    }


def _priority(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"priority {value!r} is not a whole number")
    if abs(value) > _INT32:
        raise InvalidInput(f"priority {value} is out of range")
    return value


def _published(value: Any, now: datetime) -> datetime:
    if value is None or value == "":
        return now
    if not isinstance(value, str):
        raise InvalidInput(f"published_at must be an ISO 8601 string, not {type(value).__name__}")
    try:
        published = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"published_at {_printable(value, 60)!r} is not ISO 8601") from None
    if published.tzinfo is None:
        raise InvalidInput(f"published_at {value!r} needs a UTC offset")
    try:
        in_utc = published.astimezone(UTC)
    except (OverflowError, ValueError):  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise InvalidInput(f"published_at {value!r} is out of range") from None
    # As with feeds: a future date would pin the article to the top.
    return min(in_utc, now)


def import_articles(session: Session, path: Path, now: datetime) -> tuple[int, list[str]]:
    """Load a JSON file of articles; returns (new articles, errors naming each bad record)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidInput(f"{path} is nested too deeply to read") from None
    articles, errors = parse_article_records(records, now)
    new = store.insert_articles(session, articles)
    return new, errors
