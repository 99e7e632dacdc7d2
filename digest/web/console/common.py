"""What the console's pages share: the audit entry of an action, ids from the URL,
the flash-and-redirect answer of a POST, and handing sends to Celery or a thread."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Response, abort, flash, redirect, url_for

from digest.config import Settings
from digest.editions.sending import send_batch
from digest.mail.relays import make_transport
from digest.operations import operators
from digest.store.base import MAX_ID
from digest.web.auth import operator_name
from digest.web.base import db, runtime
from digest.words import counted

log = logging.getLogger(__name__)


def record_action(action: str, detail: str = "") -> None:
    operators.record(db(), operator_name(), action, detail, runtime().clock())


def checked_id(value: int) -> int:
    if not 0 < value <= MAX_ID:
        abort(404)
    return value


def done(message: str, endpoint: str, **values: Any) -> Response:
    flash(message)
    return redirect(url_for(endpoint, **values))  # type: ignore[return-value]


# --- sending from the console ---------------------------------------------------------------


def hand_off(batches: list[list[int]], *, first: bool = False) -> str:
    """Send the batches: as Celery tasks with a broker, else on a thread of this process.
    `first`: retried rows, ahead of any edition's backlog."""
    rt = runtime()
    if not batches:
        return "nothing to send"
    if rt.settings.redis_url:
        from workers.client import enqueue
        from workers.config import send_options

        calls: list[tuple[list[Any], dict[str, Any]]] = [([b], {}) for b in batches]
        ids = enqueue(rt.settings, "digest.send_batch", calls, **send_options(first=first))
        return f"{counted(len(ids), 'send task')} enqueued"
    worker = threading.Thread(
        target=send_here, args=(rt.settings, rt.sessions, rt.clock, batches), daemon=True
    )
    worker.start()
    return f"sending {counted(sum(map(len, batches)), 'message')} from the web process"


def send_here(settings: Settings, sessions: Any, clock: Any, batches: list[list[int]]) -> None:
    transport = make_transport(settings)
    try:
        with sessions() as session:
            for batch in batches:
                send_batch(session, settings, transport, batch, clock())
    except Exception:  # a thread's error would vanish: log it, the sweep recovers the rows
        log.exception("console send stopped; the sweep will pick up what is left")
