"""A send batch's heartbeat: it writes outcomes that have waited `window` seconds for
their group (the sender writes whole groups itself) and renews the batch's claim while
the batch's process lives.

A worker that stops (SIGKILL, lost machine) stops renewing, so its claim ends
`claim_seconds` after the last renewal and the sweep re-queues its rows: recovery takes
about a minute, not a whole batch lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

MARGIN = 1.0  # seconds a lane keeps between its last message's deadline and the claim's end


def renew_every(claim_seconds: float, per_message: float) -> float:
    """How often to renew a claim of `claim_seconds` so that, just before a renewal,
    a whole message (`per_message` seconds at most) still fits inside it."""
    room = claim_seconds - per_message - MARGIN
    return max(0.2, min(claim_seconds / 3, room / 3 if room > 0 else claim_seconds / 10))


class Heartbeat:
    """Runs beside a batch's lanes: writes what waited `window` seconds in `recorder`, and renews
    the claim on `ids` every `renew_every(...)` seconds, with `clock()` as now."""

    def __init__(
        self,
        recorder: Any,
        ids: Sequence[int],
        clock: Callable[[], datetime],
        claim_seconds: float,
        per_message: float,
        window: float,
    ) -> None:
        self.recorder = recorder
        self.ids = list(ids)
        self.clock = clock
        self.claim = timedelta(seconds=claim_seconds)
        self.window = window
        self.every = renew_every(claim_seconds, per_message)
        # The claim was written just before: it is good until this monotonic instant.
        self.valid_until = time.monotonic() + claim_seconds
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="digest-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def holds(self, seconds: float) -> bool:
        """Whether the claim still lasts `seconds` more (plus a margin)."""
        return time.monotonic() + seconds + MARGIN < self.valid_until

    def _run(self) -> None:
        next_renewal = time.monotonic() + self.every
        tick = min(self.window, self.every)
        while not self._stop.is_set():
            if self._stop.wait(tick):
                return
            try:
                if self.recorder.due(self.window):
                    self.recorder.flush()
                if time.monotonic() >= next_renewal:
                    started = time.monotonic()
                    self.recorder.renew(self.ids, self.clock() + self.claim)
                    self.valid_until = started + self.claim.total_seconds()
                    self.renewals += 1
                    next_renewal = started + self.every
            except Exception as exc:  # the lanes meet the same error and report it
                log.warning("heartbeat: %s", str(exc).splitlines()[0] if str(exc) else exc)
                next_renewal = time.monotonic() + min(self.every, 1.0)
                self._stop.wait(1.0)  # the database is away: try again in a second
