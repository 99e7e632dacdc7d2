"""Fetching feeds over HTTP(S), carefully: conditional GET, one deadline for the whole
fetch, a size cap, and no fetching from loopback, private or link-local addresses
unless settings allow it. The host's addresses are checked before connecting and the
address actually connected to is checked again, so DNS cannot swap it between the two;
every redirect goes through the same checks. Local files (file:// or a path) are read.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit
from urllib.request import url2pathname

from digest.config import tls_client_context
from digest.errors import FeedError, UnsafeURL

USER_AGENT = "digest/0.1 (+https://github.com/digest; feed reader)"
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# Column sizes in digest.models: a longer value from outside is dropped, never stored cut.
_MAX_ETAG = 500
_MAX_LAST_MODIFIED = 100
# Characters left as they are when a URL's path and query are sent on the request line.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass
class Fetched:
    status: int  # 200, or 304 when the feed has not changed
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    url: str = ""  # where the body came from, after redirects
    content_type: str | None = None


# --- addresses and URLs -----------------------------------------------------------------


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """'a loopback address', 'an unspecified address'...: for error messages."""
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            name = kind.replace("_", "-")
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name} address"
    return "a non-public address"


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def check_address(host: str, address: str, allow_private: bool) -> None:
    """Raise UnsafeURL, naming host and address, unless the address may be fetched from."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (mapped, 6to4, NAT64) is judged as the IPv4 it is.
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif ip.sixtofour:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # 0.0.0.0 reaches this very machine on Linux and multicast is no place for a feed:
    # never fetched from, even when private addresses are allowed.
    if ip.is_unspecified or ip.is_multicast:
        raise UnsafeURL(f"refusing to fetch from {host}: {ip} is {_kind(ip)}")
    if not allow_private and not ip.is_global:
        where = f"{ip}" if host.strip("[]") == str(ip) else f"{host}: it resolves to {ip}"
        raise UnsafeURL(
            f"refusing to fetch from {where}, {_kind(ip)} (DIGEST_ALLOW_PRIVATE_FEEDS=1 allows it)"
        )


def _check_host(url: str, host: str, port: int, allow_private: bool) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FeedError(f"{url}: cannot resolve {host}: {exc}") from None
    for *_, sockaddr in infos:
        check_address(host, str(sockaddr[0]), allow_private)


# --- fetching ---------------------------------------------------------------------------


class _CheckedHTTPConnection(http.client.HTTPConnection):
    allow_private = False

    def connect(self) -> None:
        super().connect()
        check_address(self.host, self.sock.getpeername()[0], self.allow_private)


# The MRO runs HTTPSConnection.connect -> _CheckedHTTPConnection.connect -> TCP connect,
# so the peer is checked before the TLS handshake.
class _CheckedHTTPSConnection(http.client.HTTPSConnection, _CheckedHTTPConnection):
    pass


@dataclass
class _Deadline:
    seconds: float
    ends: float

    def left(self, url: str) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise FeedError(f"{url}: no complete response within {self.seconds:g} s")
        return left


def _validator(value: str | None, limit: int) -> str | None:
    """An ETag or Last-Modified fit to store and send back, else None."""
    value = (value or "").strip()
    if not value or len(value) > limit or not (value.isascii() and value.isprintable()):
        return None
    return value


def fetch(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 15.0,
    max_bytes: int = 5_000_000,
    allow_private: bool = False,
) -> Fetched:
    """GET a feed with conditional headers; local files (file:// or a path) are read.

    `timeout` bounds the whole fetch, redirects included. Every error is a FeedError
    (UnsafeURL for a refused address or scheme) naming the URL it is about.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FeedError(f"{url}: not a valid URL: {exc}") from None
    if parts.scheme == "file" or (not parts.scheme and Path(url).exists()):
        return _read_file(url, max_bytes)
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    }
    if etag := _validator(etag, _MAX_ETAG):
        headers["If-None-Match"] = etag
    if last_modified := _validator(last_modified, _MAX_LAST_MODIFIED):
        headers["If-Modified-Since"] = last_modified
    deadline = _Deadline(timeout, time.monotonic() + timeout)
    location = url
    for hop in range(MAX_REDIRECTS + 1):
        try:
            fetched = _get_once(location, headers, deadline, max_bytes, allow_private)
        except FeedError as exc:
            if hop:
                raise type(exc)(f"{exc} (redirected from {url})") from None
            raise
        if isinstance(fetched, Fetched):
            if fetched.status == 304:
                fetched.etag = fetched.etag or etag
                fetched.last_modified = fetched.last_modified or last_modified
            return fetched
        location = fetched
    raise FeedError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _read_file(url: str, max_bytes: int) -> Fetched:
    parts = urlsplit(url)
    path = Path(url2pathname(parts.path)) if parts.scheme == "file" else Path(url)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise FeedError(f"{path} is larger than the {max_bytes} bytes allowed")
    return Fetched(200, data, url=url)


def _get_once(
    url: str, headers: dict[str, str], deadline: _Deadline, max_bytes: int, allow_private: bool
) -> Fetched | str:
    """One GET: a Fetched, or the absolute URL a redirect points to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FeedError(f"{url}: not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL(f"refusing to fetch {url!r}: only http and https feeds are allowed")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    _check_host(url, host, port, allow_private)
    conn: _CheckedHTTPConnection
    if parts.scheme == "https":
        conn = _CheckedHTTPSConnection(
            host, port, timeout=deadline.left(url), context=tls_client_context("https")
        )
    else:
        conn = _CheckedHTTPConnection(host, port, timeout=deadline.left(url))
    conn.allow_private = allow_private
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        if response.status in REDIRECT_STATUSES:
            location = (response.getheader("Location") or "").strip()
            if not location:
                raise FeedError(f"{url}: HTTP {response.status} redirect without a Location")
            return urljoin(url, location)
        if response.status == 304:
            if "If-None-Match" not in headers and "If-Modified-Since" not in headers:
                raise FeedError(f"{url}: HTTP 304 to a request that was not conditional")
            return Fetched(304, b"", *_validators(response), url=url)
        if response.status != 200:
            raise FeedError(f"{url}: HTTP {response.status} {response.reason}")
        body = _read_body(response, url, max_bytes, deadline)
        content_type = response.getheader("Content-Type")
        return Fetched(200, body, *_validators(response), url=url, content_type=content_type)
    except TimeoutError:
        raise FeedError(f"{url}: no complete response within {deadline.seconds:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FeedError(f"{url}: {exc.__class__.__name__}: {exc}") from None
    finally:
        conn.close()


def _validators(response: http.client.HTTPResponse) -> tuple[str | None, str | None]:
    return (
        _validator(response.getheader("ETag"), _MAX_ETAG),
        _validator(response.getheader("Last-Modified"), _MAX_LAST_MODIFIED),
    )


def _read_body(
    response: http.client.HTTPResponse, url: str, max_bytes: int, deadline: _Deadline
) -> bytes:
    declared = (response.getheader("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FeedError(f"{url}: feed is {declared} bytes, more than the {max_bytes} allowed")
    chunks, size = [], 0
    # Each read waits at most the socket timeout; checking the deadline between reads
    # stops a server that trickles bytes from holding the poll open for ever.
    while chunk := response.read1(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise FeedError(f"{url}: feed is more than the {max_bytes} bytes allowed")
        chunks.append(chunk)
        deadline.left(url)
    return b"".join(chunks)
