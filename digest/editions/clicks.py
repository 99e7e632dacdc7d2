"""Click counts without watching readers: article links through /r/<token>, a scanner
filter, and counts buffered in the web process and written in batches.

Three modes (DIGEST_CLICK_TRACKING): `off` (links go straight to the article),
`aggregate` (a signed token names the edition and the article; counts per edition,
article and hour, nothing else) and `reader` (the token's reader part, a per-reader
slot of the rendering, also names who clicked, for the sunset).

Nothing here answers a request: the web view verifies the token, asks `LinkTargets`
where it goes and hands a `Click` to the `ClickBuffer`, which classifies and writes
them later, off the request path. A click lost to a database outage is only a count.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.editions.render import ArticleView
from digest.mail.ratelimit import redis_client
from digest.mail.tokens import click_reader_part, click_token, open_token
from digest.store import clicks as click_store

log = logging.getLogger(__name__)

# One client fetching this many different links of one edition within this many
# seconds is a machine (a mail filter opens every link of a message at once).
BURST_LINKS = 3
BURST_SECONDS = 2.0
FLUSH_EVERY = 2.0
BUFFER_LIMIT = 200_000  # clicks held in memory at most (a long outage drops the rest)

# Link scanners and previewers that say who they are. Those that pose as browsers are
# caught by the time window and the burst rule instead.
SCANNER_AGENTS = re.compile(
    r"bot\b|crawler|spider|preview|scanner|scan\b|safelinks|defender|mimecast|barracuda|"
    r"proofpoint|urldefense|ironport|cisco|fireeye|trellix|forcepoint|websense|symantec|"
    r"messagelabs|sophos|trend ?micro|checkpoint|check point|zscaler|fortinet|"
    r"palo ?alto|microsoft office|ms-office|outlook-ios|googleimageproxy|yahoomailproxy|"
    r"python-|python/|curl/|wget/|go-http-client|java/|okhttp|libwww|httpclient|"
    r"headlesschrome|phantomjs|axios/|node-fetch|aiohttp|httpx|scrapy",
    re.IGNORECASE,
)


# --- links, fixed per rendering ------------------------------------------------------------


def wrap_articles(
    settings: Settings, edition_id: int, article_ids: Sequence[int], views: Sequence[ArticleView]
) -> list[ArticleView]:
    """The article links of one rendering through /r/<token> (same host as the base
    URL); in reader mode each link is followed by the reader slot."""
    if settings.click_tracking == "off":
        return list(views)
    reader = settings.click_tracking == "reader"
    secret, base = settings.secret_key, settings.base_url
    return [
        replace(view, url=f"{base}/r/{click_token(secret, edition_id, aid)}", click_slot=reader)
        for aid, view in zip(article_ids, views, strict=True)
    ]


def pixel_url(settings: Settings, edition_id: int) -> str:
    """The tracking pixel's address (DIGEST_OPEN_TRACKING), else ""."""
    if not settings.open_tracking:
        return ""
    return f"{settings.base_url}/o/{open_token(settings.secret_key, edition_id)}.gif"


def reader_part(settings: Settings, edition_id: int, subscriber_id: int) -> str:
    """The value of one message's click_reader slot: its reader in reader mode, else ""
    (a rendering from reader mode then counts like aggregate)."""
    if settings.click_tracking != "reader":
        return ""
    return click_reader_part(settings.secret_key, edition_id, subscriber_id)


# --- the scanner filter (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    """One request for /r/ or /o/; the client key lives only in memory, never stored."""

    at: datetime
    edition_id: int
    article_id: int  # 0 for an open (the pixel)
    client: str
    first_sent: datetime  # when the edition's first message went
    subscriber_id: int | None = None
    head: bool = False
    scanner_agent: bool = False


def is_scanner_agent(user_agent: str | None) -> bool:
    """Known scanners, and clients that send no User-Agent at all."""
    return not user_agent or not user_agent.strip() or bool(SCANNER_AGENTS.search(user_agent))


def classify(
    clicks: Sequence[Click],
    window: timedelta,
    burst_links: int = BURST_LINKS,
    burst_seconds: float = BURST_SECONDS,
) -> list[bool]:
    """For each click, whether it was a machine: a HEAD request, a scanner's agent, a
    click within `window` of the edition's first message, or part of a burst (one
    client, one edition, `burst_links` different links within `burst_seconds`)."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(clicks):
        if c.article_id:
            groups.setdefault((c.client, c.edition_id), []).append(i)
    in_burst: set[int] = set()
    span = timedelta(seconds=burst_seconds)
    for members in groups.values():
        members.sort(key=lambda i: clicks[i].at)
        start = 0
        for end in range(len(members)):
            while clicks[members[end]].at - clicks[members[start]].at > span:
                start += 1
            window_ids = members[start : end + 1]
            if len({clicks[i].article_id for i in window_ids}) >= burst_links:
                in_burst.update(window_ids)
    return [
        c.head or c.scanner_agent or c.at - c.first_sent < window or i in in_burst
        for i, c in enumerate(clicks)
    ]


@dataclass
class Batch:
    """What one flush writes."""

    clicks: dict[tuple[int, int, datetime], tuple[int, int]]
    opens: dict[tuple[int, datetime], tuple[int, int]]
    readers: list[tuple[int, int, int, datetime]]

    @property
    def empty(self) -> bool:
        return not (self.clicks or self.opens or self.readers)


def tally(clicks: Sequence[Click], machine: Sequence[bool], keep_readers: bool) -> Batch:
    """Counts per (edition, article, hour) and opens per (edition, hour); reader rows
    (human clicks only) when `keep_readers`."""
    batch = Batch({}, {}, [])
    for click, is_machine in zip(clicks, machine, strict=True):
        hour = click.at.replace(minute=0, second=0, microsecond=0)
        add = (0, 1) if is_machine else (1, 0)
        if click.article_id:
            key = (click.edition_id, click.article_id, hour)
            h, m = batch.clicks.get(key, (0, 0))
            batch.clicks[key] = (h + add[0], m + add[1])
            if keep_readers and click.subscriber_id and not is_machine:
                batch.readers.append(
                    (click.subscriber_id, click.edition_id, click.article_id, click.at)
                )
        else:
            okey = (click.edition_id, hour)
            h, m = batch.opens.get(okey, (0, 0))
            batch.opens[okey] = (h + add[0], m + add[1])
    return batch


# --- in the web process ------------------------------------------------------------------------


class ClickBuffer:
    """Clicks held in memory and written in batches: a request only appends to a list.

    A click is classified once BURST_SECONDS have passed after it (so a burst is seen
    whole); those already written stay as context for that long again. `flush` runs on
    a background thread every FLUSH_EVERY seconds (`start`), or when a test calls it.
    """

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], clock: Callable[[], datetime]
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.lock = threading.Lock()
        self.pending: list[Click] = []
        self.context: list[Click] = []
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()
        self.last_purge: float | None = None  # time.monotonic() of the last purge

    def add(self, click: Click) -> None:
        with self.lock:
            if len(self.pending) >= BUFFER_LIMIT:
                self.dropped += 1
                return
            self.pending.append(click)

    def start(self) -> None:
        """Start the flushing thread in this process (once; again after a fork)."""
        import os

        if self._thread is not None and self._pid == os.getpid():
            return
        with self.lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="digest-clicks", daemon=True)
            self._thread.start()
        import atexit

        atexit.register(self.flush, final=True)

    def stop(self) -> None:
        """End the flushing thread (tests; a process that ends flushes at exit)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.wait(FLUSH_EVERY):
            try:
                self.flush()
            except Exception:  # a thread that dies stops counting; log and go on
                log.exception("click counts not written")

    def flush(self, now: datetime | None = None, *, final: bool = False) -> int:
        """Classify and write what is ready; returns how many clicks were written."""
        now = now or self.clock()
        ready_before = now if final else now - timedelta(seconds=BURST_SECONDS)
        with self.lock:
            pending, self.pending = self.pending, []
        ready = [c for c in pending if c.at <= ready_before]
        later = [c for c in pending if c.at > ready_before]
        if not ready:
            with self.lock:
                self.pending[:0] = later
            return 0
        seen = self.context + ready + later
        machine = classify(seen, timedelta(seconds=self.settings.scanner_window_seconds))
        offset = len(self.context)
        batch = tally(
            ready, machine[offset : offset + len(ready)], self.settings.click_tracking == "reader"
        )
        keep_after = now - timedelta(seconds=2 * BURST_SECONDS)
        self.context = [c for c in self.context + ready if c.at > keep_after]
        with self.lock:
            self.pending[:0] = later
        try:
            self.write(batch, now)
        except Exception as exc:  # the database is away: the counts are lost, not the redirect
            log.warning("%d click counts lost: %s", len(ready), type(exc).__name__)
            return 0
        return len(ready)

    def write(self, batch: Batch, now: datetime) -> None:
        purge = self.last_purge is None or time.monotonic() - self.last_purge > 3600
        if batch.empty and not purge:
            return
        with self.sessions() as session:
            click_store.add_click_counts(session, batch.clicks)
            click_store.add_open_counts(session, batch.opens)
            click_store.add_reader_clicks(session, batch.readers)
            if purge:
                retention = timedelta(days=self.settings.click_retention_days)
                click_store.purge_reader_clicks(session, now - retention)
            session.commit()
        if purge:
            self.last_purge = time.monotonic()


# --- where a link goes ---------------------------------------------------------------------


class LinkTargets:
    """An edition's article URLs and first send time, read once per process (and kept
    in Redis when there is one, so links still work while the database is away)."""

    TTL = 300.0  # seconds a process trusts what it read
    SIZE = 512  # editions kept per process
    REDIS_TTL = 60 * 60 * 24 * 45

    def __init__(self, sessions: sessionmaker[Session], redis_url: str | None = None) -> None:
        self.sessions = sessions
        self.redis_url = redis_url
        self._redis: Any = None
        self.cache: OrderedDict[int, tuple[float, datetime, dict[int, str]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, edition_id: int) -> tuple[datetime, dict[int, str]] | None:
        """(first send time, URL per article), or None if no such edition. Raises
        LookupError when neither the database nor Redis can say."""
        with self.lock:
            hit = self.cache.get(edition_id)
            if hit is not None and time.monotonic() - hit[0] < self.TTL:
                self.cache.move_to_end(edition_id)
                return hit[1], hit[2]
        try:
            with self.sessions() as session:
                found = click_store.edition_links(session, edition_id)
        except Exception as exc:
            log.debug("edition links not read", exc_info=True)
            remembered = self._from_redis(edition_id) or (hit[1:] if hit else None)
            if remembered is None:
                raise LookupError(f"edition {edition_id}: {type(exc).__name__}") from exc
            return remembered
        if found is None:
            return None
        with self.lock:
            self.cache[edition_id] = (time.monotonic(), *found)
            while len(self.cache) > self.SIZE:
                self.cache.popitem(last=False)
        if hit is None:
            self._to_redis(edition_id, *found)
        return found

    def close(self) -> None:
        """Let go of the Redis connection (tests; a process that ends needs not)."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def _client(self) -> Any:
        if self._redis is None and self.redis_url:
            self._redis = redis_client(
                self.redis_url, socket_timeout=0.2, socket_connect_timeout=0.2
            )
        return self._redis

    def _to_redis(self, edition_id: int, first: datetime, urls: dict[int, str]) -> None:
        try:
            client = self._client()
            if client is not None:
                value = json.dumps({"first": first.isoformat(), "urls": urls})
                client.set(f"digest:links:{edition_id}", value, ex=self.REDIS_TTL)
        except Exception as exc:
            log.debug("link cache not written: %s", type(exc).__name__)

    def _from_redis(self, edition_id: int) -> tuple[datetime, dict[int, str]] | None:
        try:
            client = self._client()
            raw = client.get(f"digest:links:{edition_id}") if client is not None else None
            if not raw:
                return None
            data = json.loads(raw)
            urls = {int(k): str(v) for k, v in data["urls"].items()}
            return datetime.fromisoformat(data["first"]), urls
        except Exception:
            return None
