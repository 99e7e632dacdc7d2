"""The Celery app: `celery -A workers.app worker|beat|flower`.

Configured from digest's Settings (DIGEST_* variables) like the CLI and the web app.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, signals
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings, load_settings
from digest.db import make_engine, make_sessionmaker, preload_driver
from workers.base import DigestTask
from workers.config import celery_config
from workers.heartbeat import WorkerHeartbeat


class Runtime:
    """The settings, and a database engine per process, created after the fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: sessionmaker[Session] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def session(self) -> Session:
        with self._lock:
            # A pool inherited across fork() would share sockets between processes.
            if self._sessions is None or self._pid != os.getpid():
                self._sessions = make_sessionmaker(make_engine(self.settings.database_url))
                self._pid = os.getpid()
            return self._sessions()


def make_app(settings: Settings) -> Celery:
    app = Celery("digest", task_cls=DigestTask)
    app.digest_settings = settings  # for the heartbeats (workers/heartbeat.py)
    if settings.redis_url:  # without one, worker and beat stop at start (below)
        app.conf.update(celery_config(settings))
    # Every worker leaves a heartbeat (beat's comes from its scheduler, workers.config).
    app.steps["worker"].add(WorkerHeartbeat)
    return app


runtime = Runtime(load_settings())
app = make_app(runtime.settings)


@signals.celeryd_init.connect
@signals.beat_init.connect
def _check_settings(**_: Any) -> None:
    # Fail at start with one clear line, not at the first task.
    celery_config(runtime.settings)
    runtime.settings.data_dir.mkdir(parents=True, exist_ok=True)
    preload_driver(runtime.settings.database_url)  # before the pool forks


from workers import tasks  # noqa: E402,F401  (registers the tasks on the app)
