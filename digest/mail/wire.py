"""SMTP's hot path: one message's commands written in as few writes as the relay allows,
its replies read in bulk from one buffer.

transport.py opens the connection (greeting, EHLO, STARTTLS, AUTH) with smtplib and
hands the socket over here; from then on a message costs one write with CHUNKING
(MAIL, RCPT, BDAT and the body together, RFC 3030 with RFC 2920), two with PIPELINING
(MAIL, RCPT, DATA; then the body), and the replies of each write are parsed from what
one `recv` brought, not line by line. Every wait ends by the message's deadline.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

Reply = tuple[int, bytes]  # (code, text): the text's lines joined by "\n", as smtplib does

_MAX_BUFFER = 1 << 16  # a reply longer than this is no SMTP server's


class DeadlineExceeded(Exception):
    """The whole SMTP exchange for one message took longer than its deadline (not an
    OSError: smtplib would wrap that as a disconnect)."""


class Closed(Exception):
    """The server closed the connection; `replies` are those it gave before (a 421 it
    sent on its way out, say)."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__("the server closed the connection")
        self.replies = replies


class Garbled(Exception):
    """The server sent something that is not an SMTP reply."""


def deadline_wait(sock: socket.socket, deadline: float, read_timeout: float, until: float) -> float:
    """Make the socket's next wait end by `deadline` (and `read_timeout` from now), given
    that its timeout currently runs to `until`; returns the new `until`.

    Setting a socket's timeout costs two fcntl calls and a message makes several reads
    and writes: it is reset only when the one set would run more than a little past
    what is left (the slack is at most a tenth of what is left, and 1 s)."""
    now = time.monotonic()
    if now >= deadline:
        raise DeadlineExceeded("no complete reply before the transaction deadline")
    allowed = min(deadline, now + read_timeout)
    slack = min(1.0, 0.1 * (deadline - now))
    if not allowed - slack <= until <= allowed:
        sock.settimeout(allowed - now)
        return allowed
    return until


class Wire:
    """One connection's socket after its set-up: writes, and replies read from a buffer.

    A plain socket is made non-blocking: each read and write is tried at once, and
    only one that would block waits in poll() (by the deadline). A socket with a
    timeout would poll before every call, and a pipelined reply is usually there
    already: two system calls a message saved. A TLS socket keeps its timeout."""

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        self.sock = sock
        self.read_timeout = read_timeout
        self.deadline = 0.0  # a time.monotonic() value, set per message
        self._until = 0.0  # when the socket's current timeout would run out (TLS)
        self._buffer = b""
        self._plain = not isinstance(sock, ssl.SSLSocket)  # sendmsg, non-blocking
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a test's socket pair): nothing to tune
        if self._plain:
            sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)

    def _ready(self, event: int) -> None:
        """Wait until the socket can be read (POLLIN) or written (POLLOUT), at most
        until the deadline, and `read_timeout` at a time."""
        now = time.monotonic()
        if now >= self.deadline:
            raise DeadlineExceeded("no complete reply before the transaction deadline")
        self._poll.modify(self.sock, event)
        wait = min(self.deadline, now + self.read_timeout) - now
        if not self._poll.poll(max(1, int(wait * 1000 + 0.999))):
            if time.monotonic() >= self.deadline:
                raise DeadlineExceeded("no complete reply before the transaction deadline")
            raise TimeoutError("timed out")

    def write(self, data: bytes) -> None:
        if self._plain:
            self.write_all([data])
            return
        self._until = deadline_wait(self.sock, self.deadline, self.read_timeout, self._until)
        self.sock.sendall(data)  # the timeout bounds the whole write, not each chunk

    def write_all(self, pieces: list[bytes]) -> None:
        """Several pieces in one write (sendmsg's gather: a 20 kB body is not copied
        to join it to its commands); TLS has no gather, so there they are joined."""
        if not self._plain:
            self.write(b"".join(pieces))
            return
        views: list[bytes | memoryview] = list(pieces)
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except BlockingIOError:
                self._ready(select.POLLOUT)
                continue
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = memoryview(views[0])[sent:]

    def replies(self, count: int) -> list[Reply]:
        """The next `count` replies, parsed from the buffer in one pass (a pipelined
        group's replies usually come in one segment); Closed, with those that came, if
        the server hangs up."""
        while self._buffer.count(b"\n") < count and self._fill():
            pass  # too few lines yet for that many replies
        lines = self._buffer.split(b"\n", count)
        if len(lines) > count:
            # The usual case, one line each ("250 2.1.0 Ok"): no reply spans lines.
            got: list[Reply] = []
            for line in lines[:count]:
                code = line[:3]
                if line[3:4] == b"-" or not code.isdigit():
                    break
                got.append((int(code), line[4:].strip(b" \t\r")))
            else:
                self._buffer = lines[count]
                return got
        return self._parse(count)

    def _parse(self, count: int) -> list[Reply]:
        """replies(), line by line: multi-line replies, a hang-up, something not SMTP."""
        got: list[Reply] = []
        texts: list[bytes] = []  # the lines of a multi-line reply so far
        pos = 0
        while len(got) < count:
            buffer = self._buffer
            end = buffer.find(b"\n", pos)
            if end < 0:
                self._buffer, pos = buffer[pos:], 0
                if not self._fill():
                    self._buffer = b""
                    raise Closed(got)
                continue
            code = buffer[pos : pos + 3]
            if not code.isdigit():
                raise Garbled(f"not an SMTP reply: {buffer[pos : pos + 80]!r}")
            texts.append(buffer[pos + 4 : end].strip(b" \t\r"))
            last = buffer[pos + 3 : pos + 4] != b"-"  # "250 ok", or a bare "250"
            pos = end + 1
            if last:
                got.append((int(code), b"\n".join(texts) if len(texts) > 1 else texts[0]))
                texts = []
        self._buffer = self._buffer[pos:]
        return got

    def _fill(self) -> bool:
        """Read what has come (waiting at most until the deadline); False when the
        server has closed the connection. A reply that came in time still counts when
        its connection's turn came late (one thread takes several connections in
        turn); past the deadline with nothing come, DeadlineExceeded."""
        if len(self._buffer) > _MAX_BUFFER:
            raise Garbled("a reply line longer than 64 kB")
        if self._plain:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                    break
                except BlockingIOError:
                    self._ready(select.POLLIN)
        elif time.monotonic() >= self.deadline:
            chunk = self._came()
        else:
            self._until = deadline_wait(self.sock, self.deadline, self.read_timeout, self._until)
            chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _came(self) -> bytes:
        """TLS, past the deadline: what has come in already, without waiting."""
        self._until = 0.0  # the next wait sets a timeout of its own
        self.sock.settimeout(0.0)
        try:
            return self.sock.recv(65536)
        except ssl.SSLWantReadError:
            raise DeadlineExceeded("no complete reply before the transaction deadline") from None

    def clear(self) -> None:
        self._buffer = b""

    def quit(self) -> None:
        """QUIT and its reply, by the deadline already set; a server that is gone or
        answers nonsense is let be (the connection is closed next either way)."""
        try:
            self.write(b"QUIT\r\n")
            self.replies(1)
        except (OSError, DeadlineExceeded, Closed, Garbled):
            pass

    def quiet(self) -> bool:
        """Whether nothing has come in since the last reply read: an idle connection
        whose server has neither hung up nor spoken (a 421 on its idle timeout) since."""
        if self._buffer or (not self._plain and self.sock.pending()):  # type: ignore[attr-defined]
            return False
        try:
            probe = select.poll()
            probe.register(self.sock, select.POLLIN)
            return not probe.poll(0)  # readable, hung up or in error: not quiet
        except (OSError, ValueError):  # closed meanwhile
            return False
