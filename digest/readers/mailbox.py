"""A bounce mailbox read over IMAP (`digest inbound --imap URL`, or beat when
DIGEST_INBOUND_IMAP_URL is set): each message is read like the MTA pipe's
(digest/readers/inbound.py) and acted on through the same one place.

What was processed (an unsubscribe, a bounce, a complaint, a delay warning) is moved
to the folder named by `?move=` or, without it, flagged \\Seen and `$DigestProcessed`.
Everything else (replies, auto-replies, mail that is not ours or not understood) is left
exactly as it was, for a person: nothing is ever deleted.

URL: imaps://user:password@host[:port]/INBOX?move=Processed (imap:// is plain IMAP,
with STARTTLS when the server offers it and `?starttls=no` is not given).
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from digest.config import tls_client_context
from digest.errors import ConfigError, DigestError

PROCESSED_FLAG = "$DigestProcessed"
MAX_PER_RUN = 500
MAX_MESSAGE = 10_000_000


class MailboxError(DigestError):
    """The mailbox could not be reached or read (one line, no password)."""


@dataclass(frozen=True)
class ImapTarget:
    host: str
    port: int
    tls: str  # implicit, starttls, none
    user: str
    password: str = field(repr=False)
    folder: str = "INBOX"
    move_to: str = ""
    timeout: float = 30.0


def parse_imap_url(url: str) -> ImapTarget:
    """The IMAP URL's parts; ConfigError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("imap", "imaps"):
        raise ConfigError("the IMAP URL must start with imap:// or imaps://")
    if not parts.hostname or parts.username is None or parts.password is None:
        raise ConfigError("the IMAP URL must be imap[s]://user:password@host/FOLDER")
    try:
        port = parts.port or (993 if parts.scheme == "imaps" else 143)
    except ValueError:
        raise ConfigError("the IMAP URL's port is not a number") from None
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["yes"])[0].lower() not in ("no", "0", "false")
    tls = "implicit" if parts.scheme == "imaps" else ("starttls" if starttls else "none")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    move_to = query.get("move", [""])[0]
    for name in (folder, move_to):
        if re.search(r'[\r\n"\\]', name):
            raise ConfigError("an IMAP folder name may not hold quotes, backslashes or line breaks")
    return ImapTarget(
        parts.hostname, port, tls, unquote(parts.username), unquote(parts.password), folder, move_to
    )


@dataclass
class Tally:
    """What one pass over the mailbox did."""

    seen: int = 0
    processed: int = 0
    left: int = 0
    lines: list[str] = field(default_factory=list)


# handle(raw) -> (processed?, one line saying what was done)
Handler = Callable[[bytes], tuple[bool, str]]


def _quote(name: str) -> str:
    return '"' + name + '"'


@contextmanager
def connect(target: ImapTarget) -> Iterator[imaplib.IMAP4]:
    conn: imaplib.IMAP4 | None = None
    try:
        if target.tls == "implicit":
            conn = imaplib.IMAP4_SSL(
                target.host,
                target.port,
                ssl_context=tls_client_context("imap"),
                timeout=target.timeout,
            )
        else:
            conn = imaplib.IMAP4(target.host, target.port, timeout=target.timeout)
            if target.tls == "starttls" and "STARTTLS" in conn.capabilities:
                conn.starttls(tls_client_context("imap"))
        conn.login(target.user, target.password)
        # imaplib keeps the capabilities from before login; MOVE and UIDPLUS come after.
        typ, data = conn.capability()
        if typ == "OK" and data and isinstance(data[0], bytes):
            conn.capabilities = tuple(data[0].decode("ascii", "replace").upper().split())
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        if conn is not None:
            _close(conn)
        raise MailboxError(
            f"cannot reach the mailbox at {target.host}:{target.port}: {_why(exc)}"
        ) from None
    try:
        yield conn
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            _close(conn)


def _close(conn: imaplib.IMAP4) -> None:
    try:
        conn.shutdown()
    except OSError:
        pass


def _why(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:200] or exc.__class__.__name__


def _ok(result: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = result
    if status != "OK":
        first = data[0] if data else b""
        raise MailboxError(f"{what} failed: {_why(Exception(first))}")
    return data


def read_mailbox(target: ImapTarget, handle: Handler, limit: int = MAX_PER_RUN) -> Tally:
    """One pass: every message not yet processed, handed to `handle`; what it processed
    is moved (or flagged), the rest left untouched. MailboxError if the server fails."""
    tally = Tally()
    with connect(target) as conn:
        try:
            _ok(conn.select(_quote(target.folder)), f"opening folder {target.folder}")
            if target.move_to:
                conn.create(_quote(target.move_to))  # fails harmlessly when it exists
            data = _ok(conn.uid("SEARCH", "NOT", "KEYWORD", PROCESSED_FLAG), "searching")
            uids = [u.decode() for u in data[0].split()] if isinstance(data[0], bytes) else []
            for uid in uids[:limit]:
                tally.seen += 1
                raw = _fetch(conn, uid)
                if raw is None:
                    tally.left += 1
                    tally.lines.append(f"left: message {uid} is too large or unreadable")
                    continue
                processed, line = handle(raw)
                tally.lines.append(line)
                if not processed:
                    tally.left += 1
                    continue
                _done(conn, uid, target.move_to)
                tally.processed += 1
        except (OSError, imaplib.IMAP4.error) as exc:
            raise MailboxError(f"the mailbox failed: {_why(exc)}") from None
    return tally


def _fetch(conn: imaplib.IMAP4, uid: str) -> bytes | None:
    size_data = _ok(conn.uid("FETCH", uid, "(RFC822.SIZE)"), "reading a message's size")
    found = re.search(
        rb"RFC822\.SIZE (\d+)", size_data[0] if isinstance(size_data[0], bytes) else b""
    )
    if found is None or int(found.group(1)) > MAX_MESSAGE:
        return None
    data = _ok(conn.uid("FETCH", uid, "(BODY.PEEK[])"), "reading a message")
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            return item[1]
    return None


def _done(conn: imaplib.IMAP4, uid: str, move_to: str) -> None:
    """Move a processed message, or flag it; never expunge anything else."""
    if move_to and "MOVE" in conn.capabilities:
        _ok(conn.uid("MOVE", uid, _quote(move_to)), f"moving a message to {move_to}")
        return
    _ok(conn.uid("STORE", uid, "+FLAGS", f"(\\Seen {PROCESSED_FLAG})"), "flagging a message")
    if move_to:
        _ok(conn.uid("COPY", uid, _quote(move_to)), f"copying a message to {move_to}")
        if "UIDPLUS" in conn.capabilities:
            _ok(conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)"), "marking the copied message")
            _ok(conn.uid("EXPUNGE", uid), "removing the copied message")
