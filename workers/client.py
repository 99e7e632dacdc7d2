"""Sending digest's tasks by name from outside a worker (the CLI, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from digest.config import Settings
from digest.errors import DigestError
from workers.config import celery_config, queues


class BrokerUnavailable(DigestError, ConnectionError):
    """The Redis broker could not be reached."""


def client_app(settings: Settings, *, results: bool = True) -> Celery:
    """A Celery app that knows the broker (and the result backend, unless `results` is
    off: then sending subscribes to nothing), but no task code."""
    app = Celery("digest", set_as_current=False)
    app.conf.update(celery_config(settings))
    if not results:
        # Workers still store results with their own settings; only this app, which
        # never reads them, skips the result backend.
        app.conf.result_backend = None
    return app


def enqueue(
    settings: Settings,
    name: str,
    calls: Iterable[tuple[list[Any], dict[str, Any]]],
    **options: Any,
) -> list[str]:
    """Send one `name` task per (args, kwargs), with apply_async `options` (a send
    batch's priority); returns their task ids."""
    app = client_app(settings, results=False)
    try:
        with app.producer_or_acquire() as producer:
            return [
                app.send_task(name, args=args, kwargs=kwargs, producer=producer, **options).id
                for args, kwargs in calls
            ]
    except OperationalError as exc:
        raise BrokerUnavailable(f"cannot reach the broker: {exc}") from None
    finally:
        app.close()


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Tasks waiting in each of digest's queues (not counting those workers hold)."""
    app = client_app(settings, results=False)
    lengths = {}
    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in queues(settings):
                try:
                    lengths[queue] = int(channel.queue_declare(queue, passive=True).message_count)
                except conn.channel_errors:
                    lengths[queue] = 0  # never declared: nothing was ever queued there
    except OperationalError as exc:
        raise BrokerUnavailable(f"cannot reach the broker: {exc}") from None
    finally:
        app.close()
    return lengths
