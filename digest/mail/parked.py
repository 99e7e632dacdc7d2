"""SMTP connections that send batches left open, for the next batch of the same process
(transport.SMTPTransport with reuse=True parks its connection when its batch ends and
takes one back when the next batch begins)."""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

from digest.mail.wire import Wire

Connection = tuple[Any, Wire, bool, bool]  # smtplib's object, its Wire, PIPELINING, CHUNKING


class Parked:
    """SMTP connections that batches left open, for this process's next batch to the same
    relay (as configured, with the same local name). A batch opens one connection per
    lane (four by default): with TLS and AUTH that is a handshake, a login and several
    round trips each, which consecutive batches of a busy worker need not repeat.

    A connection is reused only within `IDLE` seconds of its batch's end (a relay may
    close idle connections; Postfix waits 300 s, others less), in the process that
    opened it, and only when nothing has come in on it since (no hang-up, no 421):
    otherwise it is closed and the batch connects afresh. At most `MOST` wait per relay.
    """

    IDLE = 5.0
    MOST = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._waiting: dict[Any, list[tuple[float, Connection]]] = {}

    def take(self, key: Any) -> Connection | None:
        with self._lock:
            self._expire()
            waiting = self._waiting.get(key, [])
            while waiting:
                _, connection = waiting.pop()
                if connection[1].quiet():
                    return connection
                _hang_up(connection, polite=False)
        return None

    def put(self, key: Any, connection: Connection) -> None:
        with self._lock:
            self._expire()
            waiting = self._waiting.setdefault(key, [])
            waiting.append((time.monotonic(), connection))
            while len(waiting) > self.MOST:
                _hang_up(waiting.pop(0)[1], polite=True)

    def close_all(self) -> None:
        """QUIT every parked connection (a process on its way out)."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            for entries in waiting.values():
                for _, connection in entries:
                    _hang_up(connection, polite=os.getpid() == self._pid)

    def _expire(self) -> None:
        if os.getpid() != self._pid:  # a forked child: the parent's sockets are not ours
            self._waiting, self._pid = {}, os.getpid()
            return
        oldest = time.monotonic() - self.IDLE
        for key, entries in list(self._waiting.items()):
            while entries and entries[0][0] < oldest:
                _hang_up(entries.pop(0)[1], polite=True)
            if not entries:
                del self._waiting[key]


def _hang_up(connection: Connection, polite: bool) -> None:
    """QUIT (when `polite`, within a second) and close."""
    conn, wire = connection[0], connection[1]
    if polite:
        wire.deadline = time.monotonic() + 1.0
        wire.quit()
    try:
        conn.close()
    except OSError:
        pass


PARKED = Parked()
atexit.register(PARKED.close_all)
