"""How a send batch's lanes learn that an operator paused or cancelled their edition:
between messages they ask `HaltWatch`, which reads the editions' status from the
database at most every `every` seconds (one small query per batch, on a connection of
its own), so a pause reaches every worker within a few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from digest import store

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between two looks at the editions' status


class HaltWatch:
    """Whether an edition of this batch was paused or cancelled (cached for `every`)."""

    def __init__(self, engine: Any, edition_ids: Iterable[int], every: float = CHECK_EVERY):
        self.engine = engine
        self.edition_ids = sorted(set(edition_ids))
        self.every = every
        self._halted: set[int] = set()
        self._next = 0.0
        self._lock = threading.Lock()

    def halted(self, edition_id: int) -> bool:
        """Whether this edition's rows must stop; asks the database when due."""
        if time.monotonic() >= self._next and self._lock.acquire(blocking=False):
            try:
                # A read on its own: no transaction (on SQLite every transaction would
                # take the write lock, which the other senders' records need).
                with (
                    self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
                    Session(conn) as session,
                ):
                    self._halted = store.halted_editions(session, self.edition_ids)
            except Exception as exc:  # the lanes meet a lost database on their own
                log.warning("halt check: %s", str(exc).splitlines()[0] if str(exc) else exc)
            finally:
                self._next = time.monotonic() + self.every
                self._lock.release()
        return edition_id in self._halted
