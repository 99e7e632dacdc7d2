"""Heartbeats of beat and the workers: a row each in the database, written every few
seconds (digest.operations.health.heartbeat_every) by the process's own loop: beat's
scheduler on its ticks, a worker's timer in its event loop. A loop that hangs stops
its heartbeat.

The write happens on that loop's thread, never on a thread of its own: a worker's main
process forks its pool children from the same loop, and a fork while another thread
held a lock (an import, a connection being made) would leave the child stuck on it.
Each write waits at most a few seconds for the database.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker, normalise_url
from digest.operations.health import heartbeat_every
from digest.store import heartbeats

log = logging.getLogger(__name__)
FORGET_HEARTS = timedelta(days=7)
WAIT_SECONDS = 3  # the longest a heartbeat waits for the database


class Pulse:
    """Writes one process's heartbeat row when its loop says it is alive."""

    def __init__(self, settings: Settings, kind: str, name: str, every: float) -> None:
        self.settings, self.kind, self.name, self.every = settings, kind, name, every
        self.pid = os.getpid()
        self.started_at = datetime.now(UTC)
        self.last = 0.0
        self.written = 0
        self._sessions: Any = None

    def _session(self) -> Any:
        if self._sessions is None:
            # No pool: nothing stays open across a fork, and a write every few seconds
            # needs no warm connection.
            kwargs: dict[str, Any] = {"poolclass": NullPool}
            url = self.settings.database_url
            postgres = make_url(normalise_url(url)).get_backend_name() == "postgresql"
            if postgres:
                kwargs["connect_args"] = {"connect_timeout": WAIT_SECONDS}
            engine = make_engine(url, **kwargs)
            if not postgres:

                @event.listens_for(engine, "connect")
                def _short_wait(dbapi_conn: Any, _record: Any) -> None:
                    dbapi_conn.execute(f"PRAGMA busy_timeout={WAIT_SECONDS * 1000}")

            self._sessions = make_sessionmaker(engine)
        return self._sessions()

    def beat(self, force: bool = False) -> None:
        """The loop is alive: write the heartbeat if the last one is about `every` old."""
        now = time.monotonic()
        if force or now - self.last >= self.every * 0.9:
            self.last = now
            self._write(stopping=False)

    def _write(self, *, stopping: bool) -> None:
        now = datetime.now(UTC)
        try:
            with self._session() as session:
                if stopping:
                    heartbeats.stop_heart(session, self.kind, self.name, self.pid, now)
                else:
                    heartbeats.beat_heart(
                        session, self.kind, self.name, self.pid, self.started_at, now
                    )
                    if self.kind == "beat":  # workers long gone (re-created containers)
                        heartbeats.forget_hearts(session, now - FORGET_HEARTS)
                session.commit()
            self.written += 1
        except Exception as exc:  # the check will say the heartbeat is late; go on
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s heartbeat not written: %s", self.kind, first)

    def stop(self) -> None:
        """A clean shutdown: the row says when it stopped."""
        self._write(stopping=True)


def settings_of(app: Any) -> Settings:
    """The settings the Celery app was made with (workers.app.make_app keeps them)."""
    settings = getattr(app, "digest_settings", None)
    return settings if isinstance(settings, Settings) else load_settings()


def beat_name() -> str:
    return socket.gethostname()


class HeartbeatScheduler(PersistentScheduler):
    """Celery beat's scheduler, leaving a heartbeat on every tick (at most every few
    seconds) and waking up often enough to do so."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        settings = settings_of(app)
        # The schedule file lives there; beat may start before anything else made it.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(app, *args, **kwargs)
        self.pulse = Pulse(
            settings, "beat", beat_name(), heartbeat_every(settings.beat_stale_seconds)
        )
        self._pulse_started = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.pulse.beat(force=not self._pulse_started)
        self._pulse_started = True
        interval = super().tick(*args, **kwargs)
        return min(interval, self.pulse.every)

    def close(self) -> None:
        super().close()
        if self._pulse_started:
            self.pulse.stop()


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker's heartbeat, poked by the worker's own timer (its event loop)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.pulse: Pulse | None = None
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        settings = settings_of(worker.app)
        every = heartbeat_every(settings.worker_stale_seconds)
        self.pulse = Pulse(settings, "worker", worker.hostname, every)
        self.pulse.beat(force=True)
        self.tref = worker.timer.call_repeatedly(every, self.pulse.beat, priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.pulse is not None:
            self.pulse.stop()
            self.pulse = None

    def terminate(self, worker: Any) -> None:
        self.stop(worker)
