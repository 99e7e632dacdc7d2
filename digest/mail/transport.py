"""The one seam to the outside mail world: SMTP, or an outbox folder of .eml files.

Only this module imports smtplib. SMTP errors leave it as TransientSendError (try
again later) or PermanentSendError (do not), so the pipeline never sees reply codes.
"""

from __future__ import annotations

import errno
import os
import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from digest.config import SMTPConfig, open_private, private_folder, tls_client_context
from digest.errors import (
    ConfigError,
    OutboxUnwritable,
    PermanentSendError,
    TransientSendError,
)
from digest.mail.message import DotSafe, Gathered
from digest.mail.parked import PARKED
from digest.mail.returns import NO_MAILBOX
from digest.mail.wire import Closed, DeadlineExceeded, Garbled, Wire, deadline_wait

# A mailbox that does not exist: one of returns.NO_MAILBOX's enhanced statuses at the
# start of the reply. Only without an enhanced code do the classic wordings count.
# Anything else (5.7.1 policy, a blocklisted IP that happens to contain "5.1.") fails
# the message but never suppresses the reader.
_ENHANCED = re.compile(rb"^\s*(\d\.\d{1,3}\.\d{1,3})\b")
_UNKNOWN_WORDING = re.compile(rb"user unknown|no such user|unknown user|does not exist", re.I)


def unknown_mailbox(code: int, reply: bytes) -> bool:
    """Whether a 5xx reply to RCPT says the address itself does not exist."""
    if code not in (550, 551, 553):
        return False
    enhanced = _ENHANCED.match(reply)
    if enhanced:
        return enhanced.group(1).decode() in NO_MAILBOX
    return bool(_UNKNOWN_WORDING.search(reply))


class Transport(Protocol):
    """Sends finished messages; used as a context manager around a batch."""

    def __enter__(self) -> Transport: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def send(self, sender: str, recipient: str, message: bytes, message_id: str) -> None: ...

    def describe(self) -> str: ...

    def fresh(self) -> Transport:
        """Another, unconnected transport to the same place (one per parallel lane)."""
        ...


def _classify(code: int, reply: bytes, what: str) -> Exception:
    text = f"{what}: {code} {reply.decode('utf-8', 'replace')}"
    if 400 <= code < 500:
        return TransientSendError(text, code)
    if what == "sender refused":
        # The relay refuses *our* From address: the operator's problem, never the
        # reader's. Defer (retried with backoff, then failed) instead of bouncing anyone.
        return TransientSendError(text, code)
    unknown = what == "recipient refused" and unknown_mailbox(code, reply)
    return PermanentSendError(text, code, unknown_mailbox=unknown)


class _DeadlineReader:
    """What smtplib reads replies from while it sets a connection up: a line reader that
    gives up at the connection's deadline. A socket timeout alone bounds each read, so
    a server that drips one byte at a time could hold a lane (and its rows) for ever."""

    def __init__(self, conn: _DeadlineMixin) -> None:
        assert conn.sock is not None
        self.conn = conn
        self.sock = conn.sock
        self._buffer = b""

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 or (0 < limit <= len(self._buffer)):
                cut = end + 1 if end >= 0 else limit
                if 0 < limit < cut:
                    cut = limit
                line, self._buffer = self._buffer[:cut], self._buffer[cut:]
                return line
            self.conn.limit_wait()
            chunk = self.sock.recv(8192)
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += chunk

    def close(self) -> None:
        self._buffer = b""


class _DeadlineMixin(smtplib.SMTP):
    """smtplib with a total deadline over every read and write, for the set-up of a
    connection (greeting, EHLO, STARTTLS, AUTH); messages go through a Wire."""

    def __init__(self, *args: Any, deadline: float, read_timeout: float, **kwargs: Any) -> None:
        # Set before the constructor connects: it reads the greeting under the deadline.
        self.deadline = deadline
        self.read_timeout = read_timeout
        self._until = 0.0
        super().__init__(*args, **kwargs)

    def limit_wait(self) -> None:
        assert self.sock is not None
        self._until = deadline_wait(self.sock, self.deadline, self.read_timeout, self._until)

    def getreply(self) -> tuple[int, bytes]:
        if not isinstance(self.file, _DeadlineReader) or self.file.sock is not self.sock:
            self.file = _DeadlineReader(self)
            self._until = 0.0  # a new socket (after STARTTLS): its timeout is not ours
        return super().getreply()

    def send(self, s: Any) -> None:
        if self.sock is not None:
            self.limit_wait()  # sendall: the timeout bounds the total, not each chunk
        super().send(s)


class _SMTP(_DeadlineMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_DeadlineMixin, smtplib.SMTP_SSL):
    pass


_STEPS = (("sender refused", 250), ("recipient refused", 250))


def _refusal(replies: list[tuple[int, bytes]], last: str, last_ok: int) -> Exception | None:
    """The first reply of a transaction that says no, classified; None if all say yes."""
    if last_ok == 250 and all(code == 250 for code, _ in replies):
        return None  # the usual case, every step accepted
    steps = (*_STEPS, (last, last_ok))
    for (code, text), (what, ok) in zip(replies, steps, strict=False):
        if code != ok and not (ok == 250 and code == 251):
            return _classify(code, text, what)
    return None


def _dot_stuffed(body: bytes | Gathered) -> list[bytes]:
    """The body for DATA: dot-stuffed (RFC 5321 4.5.2), CRLF-ended, with its end mark.

    digest's own messages (DotSafe, Gathered) have no line that starts with a dot: they
    go out as they are, neither scanned nor copied."""
    if isinstance(body, Gathered):
        return [*body, b".\r\n" if body[-1].endswith(b"\r\n") else b"\r\n.\r\n"]
    if not isinstance(body, DotSafe) and (body[:1] == b"." or b"\n." in body):
        body = body.replace(b"\r\n.", b"\r\n..")
        if body.startswith(b"."):
            body = b"." + body
    return [body, b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"]


def _chunk(body: bytes | Gathered) -> tuple[int, list[bytes]]:
    """The body for BDAT: its size and its pieces (sent as they are, RFC 3030)."""
    if isinstance(body, Gathered):
        return body.size, list(body)
    return len(body), [body]


def _envelope(sender: str, recipient: str) -> bytes:
    """MAIL and RCPT for these addresses; PermanentSendError for one that cannot go
    into a command."""
    both = sender + recipient
    if "\r" in both or "\n" in both:
        raise PermanentSendError(f"refusing address with a line break: {recipient!r}")
    try:
        return b"MAIL FROM:<%b>\r\nRCPT TO:<%b>\r\n" % (
            sender.encode("ascii"),
            recipient.encode("ascii"),
        )
    except UnicodeEncodeError:
        raise PermanentSendError(f"refusing an address not in ASCII: {recipient!r}") from None


class SMTPTransport:
    """One connection per batch, opened on first use and reopened after a drop.

    smtplib sets the connection up (greeting, EHLO, STARTTLS or implicit TLS, AUTH);
    each message then goes through the connection's Wire: one write of MAIL, RCPT and
    BDAT with the body when the relay offers CHUNKING and PIPELINING, two writes with
    PIPELINING alone, a command at a time otherwise. Each message (with the connect,
    TLS and EHLO it may need) has `config.deadline` seconds in all; past it the
    connection is dropped and the send is transient. Every refusal keeps its reply code
    and text, a 421 after which the server hangs up included.
    """

    def __init__(
        self, config: SMTPConfig, local_hostname: str | None = None, *, reuse: bool = False
    ) -> None:
        self.config = config
        self.local_hostname = local_hostname
        # Leave the connection open for this process's next batch to the same relay
        # (see mail/parked.py) instead of QUIT when the batch ends.
        self.reuse = reuse
        self._conn: _DeadlineMixin | None = None
        self._wire: Wire | None = None
        self._pipelining = False
        self._chunking = False
        self._next: bytes | None = None  # the envelope prepare() announced
        # An envelope whose commands went out with the last body, and their replies.
        self._opened: tuple[bytes, list[tuple[int, bytes]]] | None = None
        # A message begun and not yet ended: the replies known, how many more to read,
        # and the envelope that went ahead with it.
        self._waiting: tuple[list[tuple[int, bytes]], int, bytes | None] | None = None
        self._deadline = 0.0  # the message under way's, a time.monotonic() value

    def describe(self) -> str:
        return f"smtp {self.config.host}:{self.config.port} ({self.config.tls})"

    @property
    def _relay_key(self) -> tuple[SMTPConfig, str | None]:
        """What a parked connection must match: the relay as configured, our name."""
        return self.config, self.local_hostname

    def fresh(self) -> SMTPTransport:
        return SMTPTransport(self.config, self.local_hostname, reuse=self.reuse)

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, deadline: float) -> _DeadlineMixin:
        c = self.config
        limits = {
            "deadline": deadline,
            "read_timeout": c.timeout,
            "timeout": max(0.001, min(c.timeout, deadline - time.monotonic())),
        }
        try:
            if c.tls == "implicit":
                conn: _DeadlineMixin = _SMTP_SSL(
                    c.host,
                    c.port,
                    self.local_hostname,
                    context=tls_client_context("smtp"),
                    **limits,
                )
            else:
                conn = _SMTP(c.host, c.port, self.local_hostname, **limits)
                if c.tls == "starttls":
                    conn.starttls(context=tls_client_context("smtp"))
            if c.username:
                conn.login(c.username, c.password or "")
            conn.ehlo_or_helo_if_needed()
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials are the operator's to fix, not the reader's fault: defer
            # (and retry with backoff) rather than fail every delivery of the batch.
            raise TransientSendError(
                f"SMTP login refused by {self.describe()}: {exc.smtp_code}", exc.smtp_code
            ) from None
        except DeadlineExceeded:
            raise
        except smtplib.SMTPResponseException as exc:
            # A 421 greeting ("too busy, try later"), a refused EHLO or STARTTLS: the code
            # goes with it, so the rate limiter and the relays see what the relay said.
            said = exc.smtp_error
            text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
            raise TransientSendError(
                f"cannot connect to {self.describe()}: {exc.smtp_code} {text}", exc.smtp_code
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientSendError(f"cannot connect to {self.describe()}: {exc}") from None
        return conn

    def _open(self, deadline: float) -> Wire:
        parked = PARKED.take(self._relay_key) if self.reuse else None
        if parked is not None:
            self._conn, self._wire, self._pipelining, self._chunking = parked
            return parked[1]
        conn = self._connect(deadline)
        assert conn.sock is not None
        self._conn = conn
        self._pipelining = conn.has_extn("pipelining")
        self._chunking = self._pipelining and conn.has_extn("chunking")
        self._wire = Wire(conn.sock, self.config.timeout)
        return self._wire

    def prepare(self, sender: str, recipient: str) -> None:
        """The next message goes to this envelope: its MAIL and RCPT (and DATA) may go
        out with this message's body, so that each message costs one round trip
        (RFC 2920: the message content may open a group). A next send to another
        envelope, or none at all, abandons it: a reset, or a dropped connection when
        DATA was open (the server discards what it never got the end of)."""
        try:
            self._next = _envelope(sender, recipient)
        except PermanentSendError:
            self._next = None  # its send will say why

    def send(self, sender: str, recipient: str, message: bytes | Gathered, message_id: str) -> None:
        self.begin(sender, recipient, message)
        self.end()

    def begin(self, sender: str, recipient: str, message: bytes | Gathered) -> None:
        """The first half of a send: everything up to the body's write. What the server
        says to the body is end()'s to read, so a caller may begin a message on each of
        several connections before it waits for any (one thread, several lanes)."""
        assert self._waiting is None, "end() the message under way first"
        envelope = _envelope(sender, recipient)
        ahead, self._next = self._next, None
        self._deadline = time.monotonic() + self.config.deadline
        self._guarded(self._start, envelope, message, ahead)

    def end(self) -> None:
        """The second half of a send: the server's answer to the body begin() wrote
        (nothing to do when begin raised)."""
        if self._waiting is not None:
            try:
                self._guarded(self._finish)
            finally:
                self._waiting = None

    def _guarded(self, step: Callable[..., Exception | None], *args: Any) -> None:
        """Run a step of the transaction; a refusal it returns is raised (the transaction
        reset first), and what goes wrong on the way becomes a TransientSendError."""
        try:
            try:
                refused = step(*args)
            except Closed as exc:
                # What the server said before it hung up (a 421 to RCPT, say) is the error.
                said = _refusal(exc.replies, "message refused", 250)
                if said is None:
                    raise
                self._drop()
                raise said from None
            if refused is None:
                return
            if self._opened is not None:
                # The next envelope went out with a refused message: not to be relied on.
                self._abandon()  # which resets the transaction, or drops the connection
            elif self._wire is not None and not (
                isinstance(refused, TransientSendError) and refused.code == 421
            ):
                self._reset(self._wire)
            raise refused
        except TransientSendError as exc:
            if exc.code == 421:  # the server is closing the connection: do not reuse it
                self._drop()
            raise
        except (OSError, DeadlineExceeded, Closed, Garbled, smtplib.SMTPException) as exc:
            # Disconnects, timeouts, the deadline: the connection is not reused (a reply
            # may still be on its way).
            self._drop()
            if time.monotonic() >= self._deadline:
                raise TransientSendError(
                    f"{self.describe()} took longer than {self.config.deadline:g} s over one "
                    "message (deadline)"
                ) from None
            raise TransientSendError(f"connection lost: {exc}") from None

    def _start(
        self, envelope: bytes, body: bytes | Gathered, ahead: bytes | None
    ) -> Exception | None:
        """Write one message, MAIL and RCPT first unless they went ahead with the last
        one (on a connection opened if need be); the first refusal, classified, or None
        once the body is on its way.

        `ahead` is the next message's envelope: with PIPELINING its commands follow
        this body in the same write, and their replies wait in `_opened` for it."""
        if self._opened is not None and self._opened[0] != envelope:
            self._abandon()
        wire = self._wire or self._open(self._deadline)
        wire.deadline = self._deadline
        opened, self._opened = self._opened, None
        if not self._pipelining:
            ahead = None
        if self._chunking:
            size, chunk = _chunk(body)
            if opened is not None:
                known = opened[1]  # MAIL and RCPT went with the last message
                refused = _refusal(known, "message refused", 250)
                if refused is not None:
                    return refused
                pieces = [b"BDAT %d LAST\r\n" % size, *chunk]
            else:
                known = []
                pieces = [b"%bBDAT %d LAST\r\n" % (envelope, size), *chunk]
            if ahead is not None:
                pieces.append(ahead)
            wire.write_all(pieces)
            self._waiting = (known, 3 - len(known), ahead)
            return None
        if opened is not None:
            replies = opened[1]  # MAIL, RCPT and DATA went with the last message
        elif self._pipelining:
            wire.write(envelope + b"DATA\r\n")
            replies = wire.replies(3)
        else:
            replies = []
            for command in (*envelope.split(b"\r\n")[:2], b"DATA"):
                wire.write(command + b"\r\n")
                replies += wire.replies(1)
                if _refusal(replies, "DATA refused", 354) is not None:
                    break
        refused = _refusal(replies, "DATA refused", 354)
        if refused is not None:
            if len(replies) == 3 and replies[2][0] == 354:
                wire.write(b".\r\n")  # the server opened DATA anyway: close it empty
                wire.replies(1)
            return refused
        pieces = _dot_stuffed(body)
        if ahead is not None:
            pieces.append(ahead + b"DATA\r\n")
        wire.write_all(pieces)
        self._waiting = ([(250, b""), (250, b"")], 1, ahead)
        return None

    def _finish(self) -> Exception | None:
        """Read the server's answer to the body _start wrote (and to the envelope that
        went ahead with it); the refusal, classified, or None when accepted."""
        assert self._waiting is not None and self._wire is not None
        known, count, ahead = self._waiting
        wire = self._wire
        replies = known + wire.replies(count)
        self._read_ahead(wire, ahead, 2 if self._chunking else 3)
        return _refusal(replies, "message refused", 250)

    def _read_ahead(self, wire: Wire, ahead: bytes | None, count: int) -> None:
        """The replies to the envelope that went ahead, once this message's own are in:
        whatever goes wrong now is the next message's, so the connection is dropped
        and that message starts again on a new one."""
        if ahead is None:
            return
        try:
            self._opened = (ahead, wire.replies(count))
        except (OSError, DeadlineExceeded, Closed, Garbled):
            self._drop()

    def _abandon(self) -> None:
        """Take back the envelope that went ahead (see prepare)."""
        opened, self._opened = self._opened, None
        if opened is None or self._wire is None:
            return
        if any(code == 354 for code, _ in opened[1]):
            self._drop()  # DATA is open: only hanging up ends it without a message
        else:
            self._reset(self._wire)

    def _reset(self, wire: Wire) -> None:
        try:
            wire.write(b"RSET\r\n")
            if wire.replies(1)[0][0] == 250:
                return
        except (OSError, DeadlineExceeded, Closed, Garbled):
            pass
        self._drop()  # a connection that cannot even reset is not reused

    def _drop(self) -> None:
        self._opened = self._waiting = None
        conn, self._conn, self._wire = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        wire = self._wire
        if wire is not None:
            wire.deadline = time.monotonic() + min(5.0, self.config.deadline)  # a courtesy
            self._abandon()
        wire, conn = self._wire, self._conn
        if wire is not None and conn is not None and self.reuse and self._waiting is None:
            # Between transactions (an envelope that went ahead was reset): parked.
            PARKED.put(self._relay_key, (conn, wire, self._pipelining, self._chunking))
            self._conn, self._wire = None, None
            return
        if wire is not None:
            wire.quit()
        self._drop()


class OutboxTransport:
    """Writes each message to a folder as an .eml file named after its Message-ID,
    so sending the same message twice leaves one file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> str:
        return f"outbox {self.folder}"

    def fresh(self) -> OutboxTransport:
        return OutboxTransport(self.folder)

    def __enter__(self) -> OutboxTransport:
        try:
            private_folder(self.folder)
        except OSError as exc:
            raise ConfigError(
                f"outbox folder {self.folder} cannot be created (DIGEST_OUTBOX_DIR): "
                f"{exc.strerror or exc}"
            ) from None
        if not os.access(self.folder, os.W_OK):  # a read-only mount too, even for root
            why = errno.EROFS if os.statvfs(self.folder).f_flag & os.ST_RDONLY else errno.EACCES
            raise self._unwritable(OSError(why, os.strerror(why)))
        return self

    def _unwritable(self, exc: OSError) -> OutboxUnwritable:
        return OutboxUnwritable(
            f"outbox folder {self.folder} cannot be written (DIGEST_OUTBOX_DIR): "
            f"{exc.strerror or exc}"
        )

    def __exit__(self, *exc: object) -> None:
        return None

    def path_for(self, message_id: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>"))
        return self.folder / f"{name}.eml"

    def send(self, sender: str, recipient: str, message: bytes, message_id: str) -> None:
        path = self.path_for(message_id)
        tmp = path.with_suffix(".tmp")
        try:
            # Only the owner may read it: a message holds an address and a reader's links.
            with open_private(tmp, "wb") as handle:
                handle.write(message)
            os.replace(tmp, path)
        except OSError as exc:
            # A partial file on a full disk keeps it full: never leave one behind (on a
            # read-only folder the cleanup fails too, and there is nothing to clean).
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                # The folder, not this message: stop, and leave the rows untried.
                raise self._unwritable(exc) from None
            raise TransientSendError(f"cannot write {path}: {exc.strerror or exc}") from None
