"""The one seam to the outside mail world: SMTP, or an outbox folder of .eml files.

Only this module imports smtplib. SMTP errors leave it as TransientSendError (try
again later) or PermanentSendError (do not), so the pipeline never sees reply codes.
"""

from __future__ import annotations

import errno
import os
import re
import smtplib
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from digest.config import SMTPConfig, open_private, private_folder
from digest.errors import (
    ConfigError,
    OutboxUnwritable,
    PermanentSendError,
    TransientSendError,
)

# A mailbox that does not exist: enhanced status 5.1.1 (bad mailbox), 5.1.2 (bad
# domain) or 5.1.10 (null MX) at the start of the reply. Only without an enhanced code
# do the classic wordings count. Anything else (5.7.1 policy, a blocklisted IP that
# happens to contain "5.1.") fails the message but never suppresses the reader.
_ENHANCED = re.compile(rb"^\s*(\d)\.(\d{1,3})\.(\d{1,3})\b")
_NO_MAILBOX = {(5, 1, 1), (5, 1, 2), (5, 1, 10)}
_UNKNOWN_WORDING = re.compile(rb"user unknown|no such user|unknown user|does not exist", re.I)


def unknown_mailbox(code: int, reply: bytes) -> bool:
    """Whether a 5xx reply to RCPT says the address itself does not exist."""
    if code not in (550, 551, 553):
        return False
    enhanced = _ENHANCED.match(reply)
    if enhanced:
        return tuple(int(g) for g in enhanced.groups()) in _NO_MAILBOX
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


class DeadlineExceeded(Exception):
    """The whole SMTP exchange for one message took longer than its deadline (not an
    OSError: smtplib would wrap that as a disconnect)."""


class _DeadlineReader:
    """What smtplib reads replies from: a line reader that gives up at the connection's
    deadline. A socket timeout alone bounds each read, so a server that drips one byte
    at a time could hold a message (and the lane, and its claimed rows) for ever."""

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
    """smtplib with a total deadline over every read and write (set per message)."""

    def __init__(self, *args: Any, deadline: float, read_timeout: float, **kwargs: Any) -> None:
        # Set before the constructor connects: it reads the greeting under the deadline.
        self.deadline = deadline  # a time.monotonic() value, moved on per message
        self.read_timeout = read_timeout
        super().__init__(*args, **kwargs)

    _timeout_until = 0.0  # time.monotonic() at which the socket's timeout would end

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("no complete reply before the transaction deadline")
        return min(left, self.read_timeout)

    def limit_wait(self) -> None:
        """Make the socket's next wait end by the deadline (and the per-read timeout).

        Setting a socket's timeout costs two fcntl calls, and a message makes several
        reads and writes: it is reset only when the one set would run more than a
        little past what is left (the slack is at most a tenth of the deadline)."""
        assert self.sock is not None
        now = time.monotonic()
        allowed = min(self.deadline, now + self.read_timeout)
        if now >= self.deadline:
            raise DeadlineExceeded("no complete reply before the transaction deadline")
        slack = min(1.0, 0.1 * max(0.0, self.deadline - now))
        if not allowed - slack <= self._timeout_until <= allowed:
            self.sock.settimeout(allowed - now)
            self._timeout_until = allowed

    def getreply(self) -> tuple[int, bytes]:
        if not isinstance(self.file, _DeadlineReader) or self.file.sock is not self.sock:
            self.file = _DeadlineReader(self)
        return super().getreply()

    def send(self, s: Any) -> None:
        if self.sock is not None:
            self.limit_wait()  # sendall: the timeout bounds the total, not each chunk
        super().send(s)


class _SMTP(_DeadlineMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_DeadlineMixin, smtplib.SMTP_SSL):
    pass


class SMTPTransport:
    """One connection per batch, opened on first use and reopened after a drop.

    Each message (with the connect, TLS and EHLO it may need) has `config.deadline`
    seconds in all; past it the connection is dropped and the send is transient.
    """

    def __init__(self, config: SMTPConfig, local_hostname: str | None = None) -> None:
        self.config = config
        self.local_hostname = local_hostname
        self._conn: _DeadlineMixin | None = None
        self._pipelining = False

    def describe(self) -> str:
        return f"smtp {self.config.host}:{self.config.port} ({self.config.tls})"

    def fresh(self) -> SMTPTransport:
        return SMTPTransport(self.config, self.local_hostname)

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
                    context=ssl.create_default_context(),
                    **limits,
                )
            else:
                conn = _SMTP(c.host, c.port, self.local_hostname, **limits)
                if c.tls == "starttls":
                    conn.starttls(context=ssl.create_default_context())
            if c.username:
                conn.login(c.username, c.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials are the operator's to fix, not the reader's fault: defer
            # (and retry with backoff) rather than fail every delivery of the batch.
            raise TransientSendError(
                f"SMTP login refused by {self.describe()}: {exc.smtp_code}", exc.smtp_code
            ) from None
        except DeadlineExceeded:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientSendError(f"cannot connect to {self.describe()}: {exc}") from None
        return conn

    def send(self, sender: str, recipient: str, message: bytes, message_id: str) -> None:
        if "\r" in sender + recipient or "\n" in sender + recipient:
            raise PermanentSendError(f"refusing address with a line break: {recipient!r}")
        deadline = time.monotonic() + self.config.deadline
        try:
            if self._conn is None:
                self._conn = self._connect(deadline)
                self._conn.ehlo_or_helo_if_needed()
                self._pipelining = self._conn.has_extn("pipelining")
            self._conn.deadline = deadline
            self._transaction(self._conn, sender, recipient, message)
        except TransientSendError as exc:
            if exc.code == 421:  # the server is closing the connection: do not reuse it
                self._drop()
            raise
        except (smtplib.SMTPException, OSError, DeadlineExceeded) as exc:
            # Disconnects, timeouts, bad EHLO, the deadline: the connection is not reused
            # (a reply may still be on its way).
            self._drop()
            if time.monotonic() >= deadline:
                raise TransientSendError(
                    f"{self.describe()} took longer than {self.config.deadline:g} s over one "
                    "message (deadline)"
                ) from None
            raise TransientSendError(f"connection lost: {exc}") from None

    def _transaction(self, conn: smtplib.SMTP, sender: str, recipient: str, body: bytes) -> None:
        """MAIL, RCPT, DATA: pipelined in one write when the server offers PIPELINING
        (RFC 2920), which saves two round trips a message; one by one otherwise."""
        commands = (f"MAIL FROM:<{sender}>", f"RCPT TO:<{recipient}>", "DATA")
        replies: list[tuple[int, bytes]] = []
        if self._pipelining:
            conn.send("".join(f"{c}\r\n" for c in commands).encode("ascii"))
            replies = [conn.getreply() for _ in commands]
        else:
            for command in commands:
                conn.send(f"{command}\r\n".encode("ascii"))
                replies.append(conn.getreply())
                if replies[-1][0] >= 400:
                    break
        failure = next(
            (
                (code, reply, what)
                for (code, reply), what, ok in zip(
                    replies,
                    ("sender refused", "recipient refused", "DATA refused"),
                    (250, 250, 354),
                    strict=False,
                )
                if code not in (ok, 251)
            ),
            None,
        )
        if failure is not None:
            if len(replies) == 3 and replies[2][0] == 354:
                conn.send(b".\r\n")  # the server opened DATA anyway: close it empty
                conn.getreply()
            self._reset(conn)
            raise _classify(*failure)
        # Dot-stuffing (RFC 5321 4.5.2); messages are built with CRLF line ends already.
        stuffed = body.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        conn.send(stuffed + b".\r\n")
        code, reply = conn.getreply()
        if code != 250:
            self._reset(conn)
            raise _classify(code, reply, "message refused")

    def _reset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()  # a connection that cannot even reset is not reused

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.deadline = time.monotonic() + min(5.0, self.config.deadline)  # QUIT is a courtesy
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


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

